"""Which code may import which, read from the syntax trees of the files themselves (not from a
list of names): the product (the pack's entry point, `nodes/`, `sonic_diffusion/`) imports
nothing that lives outside it in this repository (the test-support package `testing/`, the
tests, the scripts, the benchmarks), and the benchmarks import no test module."""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PRODUCT = [ROOT / "__init__.py", *sorted((ROOT / "nodes").rglob("*.py")),
           *sorted((ROOT / "sonic_diffusion").rglob("*.py"))]


def imported_names(path):
    """Top-level module names a file imports (absolute imports only; relative ones stay
    inside the file's own package)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def modules_in(folder):
    """The names a file or package in `folder` is imported by when the folder is on sys.path."""
    return {p.stem for p in folder.glob("*.py")} | {p.name for p in folder.iterdir()
                                                     if (p / "__init__.py").is_file()}


def repo_only_modules():
    names = {"testing", "tests", "scripts", "bench"}
    for folder in ("tests", "scripts", "bench"):
        names |= modules_in(ROOT / folder)
    return names


def test_product_imports_nothing_from_tests_scripts_or_the_testing_package():
    assert len(PRODUCT) > 40  # the scan sees the whole product
    forbidden = repo_only_modules() - {"__init__"}
    found = {f"{p.relative_to(ROOT)}: {sorted(imported_names(p) & forbidden)}" for p in PRODUCT
             if imported_names(p) & forbidden}
    assert not found, found


def test_product_imports_no_test_framework():
    frameworks = {"pytest", "unittest", "hypothesis", "mutmut"}
    found = {str(p.relative_to(ROOT)) for p in PRODUCT if imported_names(p) & frameworks}
    assert not found, found


def test_test_support_code_lives_outside_the_product():
    """The stand-in weight generator and the workflow converter are in `testing/`."""
    assert (ROOT / "testing" / "fixtures" / "__init__.py").is_file()
    assert (ROOT / "testing" / "workflows.py").is_file()
    assert not (ROOT / "sonic_diffusion" / "fixtures").exists()
    assert not (ROOT / "sonic_diffusion" / "workflows.py").exists()


def test_benchmarks_import_no_test_module():
    test_modules = modules_in(ROOT / "tests") - {"__init__"}
    found = {f"{p.relative_to(ROOT)}: {sorted(imported_names(p) & test_modules)}"
             for p in sorted((ROOT / "bench").glob("*.py")) if imported_names(p) & test_modules}
    assert not found, found


def test_the_scan_sees_imports_of_every_form(tmp_path):
    """The scanner itself: `import a.b`, `from a.b import c`, inside functions; not relative ones."""
    f = tmp_path / "m.py"
    f.write_text("import testing.fixtures\ndef f():\n    from test_workflows import X\n"
                 "    import bench.common as c\nfrom . import sibling\nfrom .x import y\n")
    assert imported_names(f) == {"testing", "test_workflows", "bench"}
