"""Numbers in the docs cannot drift from the committed data: every generated table of
docs/RESULTS.md and README.md is the file it names, and that file is what `python -m zoo.results
redraw` writes from docs/results/ today."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from zoo.results import redraw

REPO = Path(__file__).resolve().parents[1]
BLOCKS = [(page, source, body) for page in redraw.GENERATED_DOCS
          for source, body in redraw.generated_blocks((REPO / page).read_text())]


def test_the_results_page_has_generated_tables():
    assert any(page == Path("docs/RESULTS.md") for page, _, _ in BLOCKS)


@pytest.mark.parametrize("page,source,body", BLOCKS, ids=lambda v: str(v)[:60])
def test_each_generated_table_is_its_file(page, source, body):
    assert body == (REPO / source).read_text(), \
        f"{page} is out of date: run python -m zoo.results redraw"


REDRAWN = sorted({source for _, source, _ in BLOCKS if source.startswith("docs/figures/")})


@pytest.mark.parametrize("source", REDRAWN)
def test_each_generated_file_is_what_the_committed_data_give(source, tmp_path):
    folder = Path(source).parent.name  # docs/figures/<experiment>/summary.md
    results = REPO / "docs" / "results"
    shutil.copytree(results / folder, tmp_path / "results" / folder)
    meta = results / folder / "meta.json"
    named = json.loads(meta.read_text()).get("memory") if meta.is_file() else None
    if named:  # the memory measurements its figure reads (collect --memory), with it
        shutil.copytree((results / folder / named).resolve(),
                        (tmp_path / "results" / folder / named).resolve())
    redraw.redraw(tmp_path / "results", tmp_path / "figures")
    assert (tmp_path / "figures" / folder / Path(source).name).read_text() == \
        (REPO / source).read_text(), f"{source} no longer matches docs/results/{folder}"


def test_the_launcher_benchmark_table_is_its_record():
    # docs/results/launchers is written by scripts/bench_launchers.sh itself (no redraw): the
    # table's ratio must be the recorded times' ratio
    import json
    record = json.loads((REPO / "docs/results/launchers/result.json").read_text())
    assert record["ratio"] == pytest.approx(record["serial_s"] / record["joblib_s"], abs=0.006)
    table = (REPO / "docs/results/launchers/summary.md").read_text()
    assert f"**{record['ratio']:.2f}x**" in table and f"{record['serial_s']:.1f} s" in table
    assert any(s == "docs/results/launchers/summary.md" for _, s, _ in BLOCKS)
    assert f"{record['ratio']:.2f}x faster with joblib" in (REPO / "README.md").read_text()


def test_refresh_copies_the_file_between_the_markers(tmp_path):
    (tmp_path / "table.md").write_text("| a |\n")
    page = tmp_path / "page.md"
    page.write_text("intro\n<!-- generated from table.md -->\nold\n<!-- end generated -->\nend\n")
    assert redraw.refresh_generated(page, tmp_path)
    assert page.read_text() == ("intro\n<!-- generated from table.md -->\n| a |\n"
                                "<!-- end generated -->\nend\n")
    assert not redraw.refresh_generated(page, tmp_path)  # nothing left to change
