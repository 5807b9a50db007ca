"""Every test the README and docs/ cite by name exists: a claim must point at a test that runs.
Citations look like `tests/test_x.py::test_name` or, after one of those, `::test_name`
(same file); parametrized ids in brackets are ignored."""
import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CITATION = re.compile(r"(tests/test_[A-Za-z0-9_]+\.py)?::(test_[A-Za-z0-9_]+)")
FILE = re.compile(r"tests/test_[A-Za-z0-9_]+\.py")


def _test_names(path):
    tree = ast.parse(path.read_text())
    return {n.name for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))
            and n.name.startswith("test_")}


def citations(text):
    """[(file, test name)] in order; a bare `::name` belongs to the last file named before it."""
    out, current = [], None
    for m in re.finditer(rf"{FILE.pattern}|{CITATION.pattern}", text):
        if m.group(0).startswith("tests/") and "::" not in m.group(0):
            current = m.group(0)
            continue
        current = m.group(1) or current
        out.append((current, m.group(2)))
    return out


def test_bare_citations_follow_their_file():
    text = "see `tests/test_a.py::test_one` and `::test_two`; `tests/test_b.py` then `::test_three`"
    assert citations(text) == [("tests/test_a.py", "test_one"), ("tests/test_a.py", "test_two"),
                               ("tests/test_b.py", "test_three")]


def test_every_cited_test_exists():
    docs = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    missing, seen = [], 0
    for doc in docs:
        for file, name in citations(doc.read_text()):
            seen += 1
            path = ROOT / file if file else None
            if path is None or not path.exists():
                missing.append(f"{doc.name}: {file}::{name} (no such file)")
            elif name not in _test_names(path):
                missing.append(f"{doc.name}: {file}::{name}")
    assert seen > 50, seen  # the README cites its tests; a parser that finds none is broken
    assert not missing, "\n".join(missing)
