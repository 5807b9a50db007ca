"""Checks the archive `comfy node pack` made (the one `comfy node publish` uploads), for
scripts/lint.sh: it lists its files, and fails when a test, stand-in weights, a build folder
or a developer script is in it (.comfyignore keeps them out), or when a shipped Python file
calls exec or eval (the Registry's S102/S307 checks, by the syntax tree, not by text).
    python scripts/check_archive.py node.zip"""
import ast
import sys
import zipfile

KEPT_OUT = ("tests/", "testing/", "bench/", "scripts/", ".ci/", ".build/", ".build-hosts/",
            "demo_output/", ".git/")
# What a ComfyUI user needs: the pack's entry point, nodes, model code, web files and workflows.
REQUIRED = ("__init__.py", "pyproject.toml", "README.md", "LICENSE", "nodes/__init__.py",
            "sonic_diffusion/__init__.py", "web/js/sonic_load_audio.js")


def exec_or_eval_calls(name, source):
    tree = ast.parse(source, filename=name)
    return [f"{name}:{n.lineno}: {n.func.id}()" for n in ast.walk(tree)
            if isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id in ("exec", "eval")]


def check(path):
    with zipfile.ZipFile(path) as z:
        names = sorted(z.namelist())
        problems = [f"kept out by .comfyignore, yet packed: {n}" for n in names if n.startswith(KEPT_OUT)]
        problems += [f"missing from the archive: {n}" for n in REQUIRED if n not in names]
        for n in names:
            if n.endswith(".py"):
                problems += exec_or_eval_calls(n, z.read(n).decode("utf-8"))
    return names, problems


def main(argv):
    names, problems = check(argv[1])
    tops = {}
    for n in names:
        top = n.split("/")[0] + ("/" if "/" in n else "")
        tops[top] = tops.get(top, 0) + 1
    print(f"{argv[1]}: {len(names)} files: " + ", ".join(f"{t} ({c})" if t.endswith("/") else t
                                                       for t, c in sorted(tops.items())))
    for p in problems:
        print("ERROR:", p)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
