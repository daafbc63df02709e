"""The docs: README stays a front page, every measured figure comes from bench/results, the flags reference is current.

`bench/render_docs.py` writes the tables between `<!-- results:NAME -->` markers and the figures between
`<!-- fig FILE:key -->` markers from bench/results/*.json; its check is what CI runs here. The planted tests copy the
docs and results into a temporary folder and show that the check fails on a stale figure.
"""

import importlib.util
import json
import re
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("render_docs", ROOT / "bench" / "render_docs.py")
render_docs = importlib.util.module_from_spec(spec)
spec.loader.exec_module(render_docs)

# Written by other helpers' areas (their measured prose is theirs to source); every other page is checked for
# untagged figures.
OTHERS: set[str] = set()


def test_readme_is_a_front_page():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 250
    text = "\n".join(lines)
    for link in re.findall(r"\]\((docs/[^)#]+)", text):
        assert (ROOT / link).is_file(), link


def test_every_documented_figure_is_current():
    assert render_docs.stale(ROOT) == []


def _copy(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    shutil.copytree(ROOT / "docs", root / "docs")
    shutil.copytree(ROOT / "bench" / "results", root / "bench" / "results")
    shutil.copy(ROOT / "README.md", root / "README.md")
    return root


def test_a_planted_stale_number_fails_the_check(tmp_path):
    root = _copy(tmp_path)
    assert render_docs.stale(root) == []
    # a results file changed without the docs being regenerated
    path = root / "bench" / "results" / "imbalance.json"
    results = json.loads(path.read_text())
    results["means"]["none"]["eval_macro_f1"] = 0.5
    path.write_text(json.dumps(results))
    assert render_docs.stale(root) == [
        "docs/benchmarks.md: figures differ from bench/results; run python bench/render_docs.py",
        "docs/guides/imbalance.md: figures differ from bench/results; run python bench/render_docs.py"]
    render_docs.main(["--root", str(root)])
    assert render_docs.stale(root) == [] and "| no correction | 0.796 | 0.500 |" in (root / "docs/guides/imbalance.md").read_text()


def test_a_number_typed_into_a_table_fails_the_check(tmp_path):
    root = _copy(tmp_path)
    page = root / "docs" / "guides" / "cv.md"
    page.write_text(page.read_text().replace("0.9640 ± 0.0064", "0.9840 ± 0.0064", 1))
    assert render_docs.stale(root) == [
        "docs/guides/cv.md: figures differ from bench/results; run python bench/render_docs.py"]


def test_a_figure_without_a_results_entry_fails_the_check(tmp_path):
    root = _copy(tmp_path)
    page = root / "docs" / "guides" / "cv.md"
    page.write_text(page.read_text() + "\nAbout <!-- fig cv_default:wall_seconds_quiet .0f -->250<!-- /fig --> s.\n"
                    "<!-- fig nothing:x -->1<!-- /fig -->\n")
    assert render_docs.stale(root) == ["docs/guides/cv.md: bench/results/cv_default.json has no 'wall_seconds_quiet'"]
    page.write_text(page.read_text().replace("wall_seconds_quiet", "wall_seconds"))
    assert render_docs.stale(root) == ["docs/guides/cv.md: bench/results/nothing.json does not exist"]


# An accuracy-like figure (0.964), a time (80.1 s, 2 min), a speed-up (7.8x) or a share (19 %) typed into prose.
FIGURE = re.compile(r"\b0\.\d{2,4}\b|\b\d+(\.\d+)? ?(s|min|ms)\b(?! \w+ =)|\b\d+(\.\d+)?x\b|\b\d+(\.\d+)? ?%")


def untagged_figures(text: str) -> list[str]:
    text = re.sub(r"```.*?```", "", text, flags=re.S)                                 # code blocks
    text = re.sub(r"<!-- results:[\w-]+ -->.*?<!-- /results -->", "", text, flags=re.S)  # generated tables
    text = re.sub(r"<!-- fig .*?<!-- /fig -->", "", text)                              # generated figures
    text = re.sub(r"`[^`]*`", "", text)                                                 # flags, code, output
    return [m.group(0) for m in FIGURE.finditer(text)]


def test_no_measured_figure_is_typed_by_hand():
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
    found = {str(p.relative_to(ROOT)): untagged_figures(p.read_text()) for p in pages
             if str(p.relative_to(ROOT)) not in OTHERS and p.name != "flags.md"}
    assert {page: figures for page, figures in found.items() if figures} == {}


def test_the_scan_sees_a_planted_figure():
    assert untagged_figures("augmentation only slows convergence (0.964 against 0.984)") == ["0.964", "0.984"]
    assert untagged_figures("the probe is 73x faster and took 80.1 s") == ["73x", "80.1 s"]
    assert untagged_figures("`--freeze fraction:0.5` at <!-- fig a:b -->0.980<!-- /fig -->") == []


def test_every_table_row_has_its_header_s_columns():
    """A generated table whose rows gained a cell its header lacks reads as shifted columns (caught once by review)."""
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
    ragged = []
    for page in pages:
        text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
        header = None
        for number, line in enumerate(text.splitlines(), 1):
            if not line.startswith("|"):
                header = None
                continue
            cells = len(re.split(r"(?<!\\)\|", line.strip().strip("|")))
            if header is None:
                header = cells
            elif cells != header:
                ragged.append(f"{page.relative_to(ROOT)}:{number}: {cells} cells, header {header}")
    assert ragged == []
