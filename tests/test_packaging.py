"""What the Comfy Registry shows and ships: pyproject's icon is a small picture in this
repository, the classifiers name the operating systems and accelerators, and
scripts/check_archive.py (run by scripts/lint.sh on `comfy node pack`'s archive) refuses
tests, build folders and exec/eval calls."""
import re
import sys
import zipfile

import tomllib
from conftest import ROOT

sys.path.insert(0, str(ROOT / "scripts"))
import check_archive

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_icon_is_a_small_svg_in_the_repository():
    url = PYPROJECT["tool"]["comfy"]["Icon"]
    m = re.fullmatch(r"https://raw\.githubusercontent\.com/sonicdiffusion/comfyui-sonicdiffusion/main/(.+)", url)
    assert m, url
    icon = ROOT / m.group(1)
    assert icon.suffix == ".svg" and icon.stat().st_size < 4096
    assert icon.read_text().lstrip().startswith("<svg")


def test_classifiers_name_operating_systems_and_accelerators():
    classifiers = PYPROJECT["project"]["classifiers"]
    assert any(c.startswith("Operating System ::") for c in classifiers)
    assert any(c.startswith("Environment :: GPU ::") for c in classifiers)


def test_archive_check_refuses_tests_builds_and_exec(tmp_path):
    good = {name: "x = 1\n" for name in check_archive.REQUIRED}
    bad = dict(good, **{"tests/test_x.py": "", ".build/venv/x": "", "nodes/evil.py": "exec('1')\nprint(eval('2'))\n"})
    for name, files in (("good.zip", good), ("bad.zip", bad)):
        with zipfile.ZipFile(tmp_path / name, "w") as z:
            for n, text in files.items():
                z.writestr(n, text)
    assert check_archive.check(tmp_path / "good.zip")[1] == []
    problems = check_archive.check(tmp_path / "bad.zip")[1]
    assert any("tests/test_x.py" in p for p in problems) and any(".build/venv/x" in p for p in problems)
    assert "nodes/evil.py:1: exec()" in problems and "nodes/evil.py:2: eval()" in problems


def test_comfyignore_keeps_tests_fixtures_and_builds_out():
    patterns = {line.strip() for line in (ROOT / ".comfyignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")}
    assert {"tests/", "testing/", ".build/", ".build-hosts/"} <= patterns
    assert set(check_archive.KEPT_OUT) - {".git/"} <= patterns
