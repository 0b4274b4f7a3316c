"""What the zoo prints holds nothing a user cannot act on and leaves nothing out (issue 25, item
8): the model summary lists the network, not the metric objects; the progress bar has no logger
version (v_num); zoo.results.report names every file it wrote."""

from __future__ import annotations

from pathlib import Path

import pytorch_lightning as pl
from pytorch_lightning.callbacks import TQDMProgressBar
from pytorch_lightning.loggers import CSVLogger

from zoo.config.schemas import plain
from zoo.data import build_datamodule
from zoo.runs.trainer import SummaryWithoutMetrics, TQDMBar, build_callbacks
from zoo.training.compat import quiet_library_noise
from zoo.training.module import ZooModule

DIGITS = {"name": "digits", "num_classes": 10, "in_channels": 1, "image_size": 8,
          "mean": [0.3052], "std": [0.3755], "batch_size": 32, "num_workers": 0,
          "loader": "device", "val_size": 300, "seed": 0}


def test_summary_lists_the_network_not_the_metrics_and_the_bar_has_no_v_num(
        compose, tmp_path, capsys, caplog):
    cfg = plain(compose("model=resnet8", "data=digits", "callbacks=none",
                        "callbacks.progress_bar=tqdm"))
    callbacks, _ = build_callbacks(cfg, tmp_path)
    bar = next(c for c in callbacks if isinstance(c, TQDMProgressBar))
    assert isinstance(bar, TQDMBar)
    module = ZooModule({"name": "resnet8", "num_classes": 10, "in_channels": 1}, batch_size=32,
                       dataset={"image_size": 8, "in_channels": 1})  # summary with sizes
    quiet_library_noise()
    trainer = pl.Trainer(max_steps=1, limit_val_batches=1, accelerator="cpu", devices=1,
                         num_sanity_val_steps=0, enable_checkpointing=False, log_every_n_steps=1,
                         logger=CSVLogger(tmp_path, version="7"),  # v_num would be 7
                         callbacks=[c for c in callbacks if c is bar] + [SummaryWithoutMetrics()])
    trainer.fit(module, datamodule=build_datamodule(DIGITS))
    printed = capsys.readouterr()
    summary = printed.out[:printed.out.index("Total params")]
    assert " net " in summary and "CifarResNet" in summary
    for metric in ("train_acc", "val_acc", "test_acc5", "Multiclass"):
        assert metric not in summary, summary
    assert "?" not in summary  # the metric rows were the ones without sizes
    assert "│ 0 │ net" in summary and "│ 1 │" not in summary  # numbered again
    assert "Trainer already configured" not in printed.out + printed.err + caplog.text
    # Lightning's own bar would show the logger's version; the zoo's does not
    assert TQDMProgressBar.get_metrics(bar, trainer, module)["v_num"] == "7"
    assert "v_num" not in bar.get_metrics(trainer, module)


def test_report_names_every_file_it_wrote(tmp_path, capsys):
    from test_report import _fake_run

    from zoo.results import report

    _fake_run(tmp_path / "runs", "0-resnet8-digits-s42", "resnet8", [0.5, 0.9], [0.6, 0.8],
              losses=[(1, 2.0), (2, 1.5)])
    assert report.main([str(tmp_path / "runs"), "--out", str(tmp_path / "out")]) == 0
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith("written: ")
    written = [Path(path) for path in line.removeprefix("written: ").split(", ")]
    assert sorted(path.name for path in written) == ["error_curves.png", "loss_curves.png",
                                                     "summary.md"]
    assert all(path.is_file() for path in written)


def test_bench_table_gives_a_verdict_beside_each_ratio_with_a_target(capsys):
    from zoo.bench.common import Reporter

    env = {"device_name": "a CPU (2 cores)", "torch": "2", "pytorch_lightning": "2"}
    reporter = Reporter(env, out=None)
    for case, ratio, target in (("fast", 0.99, 0.97), ("slow", 0.90, 0.95), ("free", 1.2, None)):
        reporter.emit({"benchmark": "loop", "case": case, "zoo_img_per_s": 100 * ratio,
                       "baseline_img_per_s": 100.0, "ratio": ratio, "target": target,
                       "zoo": "zoo", "baseline": "hand-written"})
    capsys.readouterr()
    reporter.print_table()
    rows = {line.split()[1]: line for line in capsys.readouterr().out.splitlines()
            if line.startswith("loop")}
    assert "0.99x  >= 0.97x  meets the target" in rows["fast"]
    assert "0.90x  >= 0.95x  MISSES the target" in rows["slow"]
    assert "target" not in rows["free"]
