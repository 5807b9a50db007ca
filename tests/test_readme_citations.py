"""The documentation holds to the code: every test the README, docs/ and the help pages cite
exists; docs/behaviour.md maps each behaviour to exactly one existing test and lists every test
the other docs cite; every node the pack registers has its README section with a workflow that
uses it; every workflow named exists and every shipped one is in the README; every relative
link, image and anchor resolves.

Citations look like `tests/test_x.py::test_name` or, after one of those, `::test_name`
(same file); parametrized ids in brackets are ignored."""
import ast
import json
import re
from pathlib import Path

from conftest import PACK_MODULE

import nodes

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
BEHAVIOUR = ROOT / "docs" / "behaviour.md"
WORKFLOWS = ROOT / "workflows"
CITATION = re.compile(r"(tests/test_[A-Za-z0-9_]+\.py)?::(test_[A-Za-z0-9_]+)")
FILE = re.compile(r"tests/test_[A-Za-z0-9_]+\.py")
ROW_TEST = re.compile(r"`(tests/test_[A-Za-z0-9_]+\.py)::(test_[A-Za-z0-9_]+)`")
# A workflow is named as `workflows/<file>` or by its file name, which starts with sonic_
# (the example inputs, sonic_example_*.wav/png, are not workflows).
WORKFLOW_NAME = re.compile(r"workflows/([A-Za-z0-9_.-]+\.(?:json|png))|\b(sonic_[a-z0-9_]+\.json)\b")
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
README_SIZE_LIMIT = 20_000  # bytes: the README is for users; details go to docs/


def _test_names(path):
    tree = ast.parse(path.read_text())
    return {n.name for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))
            and n.name.startswith("test_")}


def _docs():
    """Every page a user or developer reads: the README, docs/, the weights page, the help pages."""
    return [README, *sorted((ROOT / "docs").glob("*.md")), ROOT / "weights" / "README.md",
            *sorted((ROOT / "web" / "docs").glob("*.md"))]


def _prose(text):
    """The text outside fenced code blocks (a `# comment` in a shell block is no heading)."""
    return re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)


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


def behaviour_rows(text):
    """[(line number, [cells])] of the table rows under the header rows and separators."""
    rows = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.startswith("|") or re.fullmatch(r"\|[-| :]+\|", line.strip()):
            continue
        cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
        if cells == ["behaviour", "test"]:
            continue
        rows.append((number, cells))
    return rows


def sections(text):
    """{heading line: its body up to the next heading}, outside code blocks."""
    out, heading = {}, None
    for line in _prose(text).splitlines():
        if line.startswith("#"):
            heading = line
            out[heading] = ""
        elif heading is not None:
            out[heading] += line + "\n"
    return out


def slug(heading):
    """GitHub's anchor for a heading: lower case, punctuation but - and _ dropped, spaces to -."""
    text = heading.lstrip("#").strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def _pack_nodes():
    return sorted(k for k, v in nodes.NODE_CLASS_MAPPINGS.items() if v.__module__.startswith(PACK_MODULE.__name__))


def _workflow_node_types(name):
    return {n["type"] for n in json.loads((WORKFLOWS / name).read_text())["nodes"]}


def test_bare_citations_follow_their_file():
    text = "see `tests/test_a.py::test_one` and `::test_two`; `tests/test_b.py` then `::test_three`"
    assert citations(text) == [("tests/test_a.py", "test_one"), ("tests/test_a.py", "test_two"),
                               ("tests/test_b.py", "test_three")]


def test_every_cited_test_exists():
    missing, seen = [], 0
    for doc in _docs():
        for file, name in citations(doc.read_text()):
            seen += 1
            path = ROOT / file if file else None
            if path is None or not path.exists():
                missing.append(f"{doc.name}: {file}::{name} (no such file)")
            elif name not in _test_names(path):
                missing.append(f"{doc.name}: {file}::{name}")
    assert seen > 100, seen  # docs/behaviour.md alone cites 200; a parser that finds none is broken
    assert not missing, "\n".join(missing)


def test_each_behaviour_row_names_exactly_one_existing_test():
    rows = behaviour_rows(BEHAVIOUR.read_text())
    assert len(rows) > 100, len(rows)  # the map has about 220 rows; a parser that finds none is broken
    wrong, seen = [], set()
    for number, cells in rows:
        where = f"docs/behaviour.md:{number}"
        if len(cells) != 2 or not cells[0] or citations(cells[0]):
            wrong.append(f"{where}: want '| behaviour | `tests/test_x.py::test_name` |', got {cells}")
            continue
        cited = ROW_TEST.fullmatch(cells[1])
        if not cited or len(citations(cells[1])) != 1:
            wrong.append(f"{where}: the test cell must name exactly one test as file::name: {cells[1]}")
        elif cited.groups() in seen:
            wrong.append(f"{where}: {cells[1]} is listed twice; one row per behaviour")
        elif not (ROOT / cited[1]).exists() or cited[2] not in _test_names(ROOT / cited[1]):
            wrong.append(f"{where}: no test {cells[1]}")
        else:
            seen.add(cited.groups())
    assert not wrong, "\n".join(wrong)


def test_every_test_the_docs_cite_is_in_the_behaviour_map():
    mapped = {tuple(m.groups()) for m in ROW_TEST.finditer(BEHAVIOUR.read_text())}
    unmapped = sorted({f"{doc.relative_to(ROOT)}: {file}::{name}" for doc in _docs() if doc != BEHAVIOUR
                       for file, name in citations(doc.read_text()) if (file, name) not in mapped})
    assert not unmapped, "add a row to docs/behaviour.md for:\n" + "\n".join(unmapped)


def test_every_registered_node_has_a_readme_section_with_a_workflow_that_uses_it():
    pack_nodes = _pack_nodes()
    assert len(pack_nodes) >= 6, pack_nodes
    readme = sections(README.read_text())
    problems = []
    for node_id in pack_nodes:
        headings = [h for h in readme if re.match(r"#{2,4} ", h) and f"`{node_id}`" in h]
        if len(headings) != 1:
            problems.append(f"{node_id}: want one README heading naming `{node_id}`, found {headings}")
            continue
        named = {m[1] or m[2] for m in WORKFLOW_NAME.finditer(readme[headings[0]])}
        using = sorted(n for n in named if n.endswith(".json") and (WORKFLOWS / n).exists()
                       and node_id in _workflow_node_types(n))
        if not using:
            problems.append(f"{node_id}: its README section names no workflow that uses it (named: {sorted(named)})")
    strays = sorted(set(re.findall(r"`(Sonic[A-Za-z0-9]+)`", "".join(h for h in readme if h.startswith("#"))))
                    - set(pack_nodes))
    assert not strays, f"README headings name nodes the pack does not register: {strays}"
    assert not problems, "\n".join(problems)


def test_named_workflows_exist_and_every_shipped_workflow_is_in_the_readme():
    missing = sorted({f"{doc.relative_to(ROOT)}: {m[1] or m[2]}" for doc in _docs()
                      for m in WORKFLOW_NAME.finditer(doc.read_text()) if not (WORKFLOWS / (m[1] or m[2])).exists()})
    assert not missing, "documents name workflows that do not exist:\n" + "\n".join(missing)
    readme = README.read_text()
    shipped = sorted(p.name for p in WORKFLOWS.glob("*.json"))
    assert shipped, "no workflows found"
    absent = [name for name in shipped if name not in readme]
    assert not absent, f"shipped workflows the README does not mention: {absent}"


def test_relative_links_images_and_anchors_resolve():
    broken = []
    for doc in [README, *sorted((ROOT / "docs").glob("*.md")), ROOT / "weights" / "README.md"]:
        for target in LINK.findall(_prose(doc.read_text())):
            if re.match(r"[a-z]+:", target):
                continue  # http:, https:, mailto:
            path, _, anchor = target.partition("#")
            page = (doc.parent / path).resolve() if path else doc
            if not page.exists():
                broken.append(f"{doc.relative_to(ROOT)}: {target} (no such file)")
            elif anchor and page.suffix == ".md" and anchor not in {slug(h) for h in sections(page.read_text())}:
                broken.append(f"{doc.relative_to(ROOT)}: {target} (no heading with that anchor)")
    assert not broken, "\n".join(broken)


def test_slug_is_githubs():
    assert slug("## Build and set-up (scripts/demo.sh, scripts/run_tests.sh)") == \
        "build-and-set-up-scriptsdemosh-scriptsrun_testssh"
    assert slug("### Load Audio (Sonic) (`SonicLoadAudio`)") == "load-audio-sonic-sonicloadaudio"


def test_readme_stays_short():
    size = len(README.read_bytes())
    assert size <= README_SIZE_LIMIT, (
        f"README.md is {size} bytes, over {README_SIZE_LIMIT}: move detail to docs/reference.md, "
        "docs/behaviour.md or docs/measurements.md")
