"""notebooks/skip_connections.ipynb executes from top to bottom (in its small FAST version), so
that the story it tells never rots; and the committed notebook is the one its builder writes."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import nbformat

from zoo.weights import manifest

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "notebooks" / "skip_connections.ipynb"
BUILDER = REPO / "notebooks" / "make_skip_connections.py"


def _builder():
    spec = importlib.util.spec_from_file_location("make_skip_connections", BUILDER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_notebook_matches_its_builder_and_has_outputs():
    committed = nbformat.read(NOTEBOOK, as_version=4)
    built = _builder().build()
    assert [c.source for c in committed.cells] == [c.source for c in built.cells]
    code = [c for c in committed.cells if c.cell_type == "code"]
    assert all(c.get("execution_count") for c in code), (
        "run: python notebooks/make_skip_connections.py --execute")
    assert not any(o.get("output_type") == "error" for c in code for o in c.get("outputs", []))


def test_notebook_executes(monkeypatch, tmp_path):
    # In the default (CI) set so that the notebook never rots: its FAST version took about 2
    # minutes on the 2-core machine under load. TMPDIR: the kernel's working folder lands in
    # tmp_path, and the notebook's last cell must have removed it.
    monkeypatch.setenv("ZOO_NOTEBOOK_FAST", "1")
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setenv("WANDB_MODE", os.environ.get("WANDB_MODE", "offline"))
    notebook = _builder().execute(_builder().build(), timeout_s=900)
    outputs = [o for c in notebook.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not any(o.get("output_type") == "error" for o in outputs)
    text = "".join(str(o.get("text", "")) for o in outputs)
    # Library lines a reader cannot act on, which train.py silences too (zoo/training/compat.py)
    for noise in ("GPU available", "TPU available", "Tip:", "litlogger",
                  "Loading `train_dataloader`", "LeafSpec"):
        assert noise not in text, noise
    tables = "".join(str(o.get("data", {}).get("text/markdown", "")) for o in outputs)
    assert "network restored: same state dict, same outputs" in text
    # The degradation runs measured the eval-mode training error, per family and depth.
    assert "train-eval error (%)" in tables
    assert "   plain: 8 layers" in text and "residual: 8 layers" in text
    assert "keeps 90% of intact accuracy (mean over seeds): plain8" in text
    shipped = [e["name"] for e in manifest() if e["dataset"] == "fashion_mnist"]
    assert f"shipped Fashion-MNIST weights: {', '.join(shipped)}" in text
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) >= 6  # 2 gradient figures, error vs depth, curves, lesion, memory
    assert not list(tmp_path.glob("skip_connections_*")), "the notebook left its working folder"


def test_the_builder_never_replaces_a_notebook_unless_asked(tmp_path, capsys):
    builder = _builder()
    existing = tmp_path / "skip_connections.ipynb"
    existing.write_text("a notebook with outputs\n")
    assert builder.main(["--out", str(existing)]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"error: {existing} exists; add --overwrite to replace it, or choose another --out"]
    assert existing.read_text() == "a notebook with outputs\n"
    assert builder.main(["--out", str(existing), "--overwrite"]) == 0
    assert [c.source for c in nbformat.read(existing, as_version=4).cells] == [
        c.source for c in builder.build().cells]
    fresh = tmp_path / "new.ipynb"
    assert builder.main(["--out", str(fresh)]) == 0 and fresh.is_file()
