"""Build (and with --execute, run and save) notebooks/skip_connections.ipynb.

    python notebooks/make_skip_connections.py --execute            # full size (a few CPU minutes)
    ZOO_NOTEBOOK_FAST=1 python notebooks/make_skip_connections.py --execute --out /tmp/nb.ipynb

The notebook reads ZOO_NOTEBOOK_FAST=1 in its parameters cell: smaller nets and fewer batches,
for the test that executes it (tests/test_notebook.py).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).resolve().parent

CELLS = [
    ("md", """# What a skip connection does, measured

A ResNet block computes `relu(f(x) + x)`; its *plain twin* computes `relu(f(x))` -- the same
layers, the same initialisation, one line different (`zoo/models/cifar_resnet.py`). This notebook
measures four consequences with the zoo's own API, small enough for a laptop CPU:

1. the gradient that reaches the first layer at initialisation,
2. the degradation problem: a deeper plain net trains *worse* (He et al. 2015),
3. lesions: a trained ResNet survives losing a block, a plain net does not (Veit et al. 2016),
4. the memory cost of skips: addition is free, concatenation (DenseNet) is not.

The full-size versions are `python -m zoo.experiments ...` and `python train.py -m
experiment=degradation`; their numbers are in `docs/RESULTS.md`."""),
    ("code", """# Parameters: ZOO_NOTEBOOK_FAST=1 (the test suite) runs a smaller version of every step.
import os
FAST = os.environ.get("ZOO_NOTEBOOK_FAST") == "1"
GRADIENT_DEPTHS = [8, 20] if FAST else [8, 20, 56, 110]
TRAIN_MODELS = ["plain8", "resnet8"] if FAST else ["plain8", "plain20", "resnet20"]
EPOCHS = 1 if FAST else 3
LIMIT_TRAIN_BATCHES = 3 if FAST else None
MEMORY_IMAGE_SIZE = 8 if FAST else 16"""),
    ("code", """import tempfile
from pathlib import Path

import matplotlib.pyplot as plt
import torch
from IPython.display import Image, Markdown, display

import zoo
from zoo import experiments, report

WORK = Path(tempfile.mkdtemp(prefix="skip_connections_"))
torch.set_num_threads(max(1, torch.get_num_threads()))
print("models in the zoo:", len(zoo.list_models()), "- working in", WORK)"""),
    ("md", """## 1. The gradient at initialisation

One forward and backward pass of freshly initialised plain and residual nets (BatchNorm in
training mode, as in the first training step), on a batch of random images with random labels.
`net.depth_units()` lists the stem, every block and the head; we look at the gradient norm of
each, and at the stem's against the head's.

We build each net twice: with BatchNorm (as trained) and with `norm="none"` (no
normalisation, the setting of the textbook story). Without normalisation the plain net's
gradient *vanishes* toward the input; with BatchNorm it *explodes* instead (Yang et al. 2019)
-- either way, without the skip the first layers receive a gradient that has lost touch with
the loss. In the BatchNorm ResNet the stem's gradient stays within a small factor of the head's
at every depth; the norm-free ResNet keeps that ratio too, but its whole signal grows with depth
(every residual branch adds its variance), which is the exploding-gradient experiment's subject."""),
    ("code", """nets = experiments.gradient_nets(GRADIENT_DEPTHS, others=False, norms=["batch", "none"])
rows = experiments.gradient_at_init(nets, seeds=(0,), batch_size=8, image_size=16)
summary = experiments.summarise_gradients(rows)
display(Markdown(experiments.markdown_table(
    summary, ["model", "depth", "first_unit_grad_norm", "head_grad_norm", "first_over_head"])))
for path in experiments.plot_gradient_at_init(rows, WORK / "gradients"):
    display(Image(filename=str(path)))"""),
    ("md", """## 2. Degradation: train plain and residual nets with the same schedule

`zoo.run.train` is what `python train.py` runs; here it gets a config composed from the real
`configs/`, on scikit-learn's 8x8 digits (1,137 training images, always available offline).
`zoo.report` then draws training error (dashed) and validation error (bold) per epoch, as in
He et al. 2015, Figure 6."""),
    ("code", """from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from zoo.run import train

CONFIGS = str(Path(zoo.__file__).resolve().parents[1] / "configs")
test_acc = {}
for name in TRAIN_MODELS:
    # configs/model/ has the named depths; any other 6n+2 depth reuses the plain20 file's settings
    # (identical for plain and ResNet nets) under its own name.
    overrides = ["model=plain20", f"model.name={name}", "data=digits", "data.batch_size=32", "data.num_workers=0",
                 f"trainer.max_epochs={EPOCHS}", "trainer.accelerator=cpu", "trainer.enable_model_summary=false",
                 "trainer.log_every_n_steps=10", "logger=csv", "callbacks.progress_bar=none"]
    if LIMIT_TRAIN_BATCHES:
        overrides.append(f"trainer.limit_train_batches={LIMIT_TRAIN_BATCHES}")
    with initialize_config_dir(config_dir=CONFIGS, version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides)
    run_dir = WORK / "runs" / name
    (run_dir / ".hydra").mkdir(parents=True)
    OmegaConf.save(cfg, run_dir / ".hydra" / "config.yaml")  # what train.py's Hydra would save
    test_acc[name] = train(cfg, run_dir=run_dir)["test/acc"]
written = report.write_report([WORK / "runs"], WORK / "report")
display(Markdown(written["summary"].read_text().split("![")[0]))
display(Image(filename=str(written["figure"])))"""),
    ("md", """## 3. Lesion: delete one block of a trained net

`experiments.lesioned(net, name)` swaps a block for what is left without it -- the shortcut
alone for a residual block (`relu(shortcut(x))`), the identity for a plain block whose input
and output shapes match -- and puts the block back when the `with` ends. A plain block that
changes the shape (stride 2) cannot be removed at all."""),
    ("code", """checkpoints = [WORK / "runs" / name / "checkpoints" / "last.ckpt" for name in TRAIN_MODELS]
lesion_rows = experiments.lesion_checkpoints(checkpoints, split="val", max_images=300)
display(Markdown(experiments.markdown_table(
    lesion_rows, ["model", "unit_name", "deleted", "accuracy"])))
display(Image(filename=str(experiments.plot_lesion(lesion_rows, WORK / "lesion"))))

# The lesion leaves nothing behind: the network is the one we loaded.
net, _ = experiments.load_network(checkpoints[-1])
x = torch.randn(4, 1, 8, 8)
before = {k: v.clone() for k, v in net.state_dict().items()}
with torch.no_grad():
    out = net(x)
    with experiments.lesioned(net, "layer1.0"):
        pass
    assert torch.equal(net(x), out)
assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())
print("network restored: same state dict, same outputs")"""),
    ("md", """## 4. The memory skips cost

For one training step at a fixed batch: the bytes of activations kept from the forward pass
for the backward pass (on CPU PyTorch has no peak-memory counter; on a GPU
`python -m zoo.experiments memory` also reports `torch.cuda.max_memory_allocated`). An identity
addition saves nothing extra, so ResNet-56 keeps exactly what plain-56 keeps; DenseNet's
concatenations keep every earlier feature map. `memory_efficient=True` (activation
checkpointing) trades that memory for recomputation."""),
    ("code", """memory_rows = [
    experiments.measure_memory(name, efficient, batch_size=4, image_size=MEMORY_IMAGE_SIZE, steps=1)
    for name in ("plain56", "resnet56", "densenet_bc_100_12") for efficient in (False, True)
]
display(Markdown(experiments.markdown_table(
    memory_rows, ["model", "skip", "memory_efficient", "parameters", "saved_for_backward_mb"])))"""),
]


def build() -> nbformat.NotebookNode:
    notebook = new_notebook()
    notebook.cells = [new_markdown_cell(text) if kind == "md" else new_code_cell(text) for kind, text in CELLS]
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    return notebook


def execute(notebook: nbformat.NotebookNode, timeout_s: int = 1800) -> nbformat.NotebookNode:
    from nbclient import NotebookClient

    NotebookClient(notebook, timeout=timeout_s, kernel_name="python3",
                   resources={"metadata": {"path": str(HERE)}}).execute()
    return notebook


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--execute", action="store_true")
    parser.add_argument("--out", type=Path, default=HERE / "skip_connections.ipynb")
    args = parser.parse_args()
    notebook = build()
    if args.execute:
        execute(notebook)
    nbformat.write(notebook, args.out)
    print(f"written {args.out}")


if __name__ == "__main__":
    main()
