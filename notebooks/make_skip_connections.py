"""Build (and with --execute, run and save) notebooks/skip_connections.ipynb.

    python notebooks/make_skip_connections.py --execute --out /tmp/skip_connections.ipynb
    python notebooks/make_skip_connections.py --execute --out notebooks/skip_connections.ipynb \
        --overwrite                              # the committed notebook (a few CPU minutes)
    ZOO_NOTEBOOK_FAST=1 python notebooks/make_skip_connections.py --execute --out /tmp/nb.ipynb

An existing file (the committed notebook included) is replaced only with --overwrite.

The notebook reads ZOO_NOTEBOOK_FAST=1 in its parameters cell: smaller nets and fewer batches,
for the test that executes it (tests/test_notebook.py).
"""

from __future__ import annotations

import argparse
import sys
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
2. the degradation problem: a deeper plain net trains *worse* (He et al. 2015, Figures 1 and 6),
3. lesions: a trained ResNet survives losing a block, a plain net does not (Veit et al. 2016),
4. the memory skips cost: addition is free, concatenation (DenseNet) is not,
5. the same switch in a Vision Transformer: without skips the tokens collapse and depth stalls
   training (Dong et al. 2021).

Every training run uses the zoo's default recipe, nothing set by hand: `optim.lr` 0.1 per 128
images, scaled with the batch (0.025 at batch 32), 5% linear warm-up then cosine, precision
chosen by `trainer.precision=auto`. This is the one-minute version on scikit-learn's 8x8 digits
with one seed; the 3-seed Fashion-MNIST experiments and their numbers are in `docs/RESULTS.md`
(`python train.py -m experiment=degradation_cpu`, `python -m zoo.experiments ...`)."""),
    ("code", """# Parameters: ZOO_NOTEBOOK_FAST=1 (the test suite) runs a smaller version of
# every step.
import os

FAST = os.environ.get("ZOO_NOTEBOOK_FAST") == "1"
GRADIENT_DEPTHS = [8, 20] if FAST else [8, 20, 56, 110]
TRAIN_MODELS = (["plain8", "resnet8"] if FAST
                else ["plain8", "plain20", "plain56", "resnet20", "resnet56"])
EPOCHS = 1 if FAST else 6
LIMIT_TRAIN_BATCHES = 3 if FAST else None
LESION_MAX_DELETED, LESION_DRAWS = (2, 2) if FAST else (6, 4)
MEMORY_MODELS = (["plain8", "resnet8", "densenet40_12"] if FAST
                 else ["plain56", "resnet56", "densenet_bc_100_12"])
MEMORY_BATCH, MEMORY_IMAGE_SIZE = (4, 8) if FAST else (16, 16)
VIT_RANK_DEPTH = 8 if FAST else 32
VIT_BLOCKS, VIT_EPOCHS = (2, 1) if FAST else (8, 10)"""),
    ("code", """import tempfile
from pathlib import Path

import torch
from IPython.display import Image, Markdown, display

import zoo
from zoo import experiments
from zoo.results import collect, redraw, sweep_figures
from zoo.experiments.lesion_figures import lesion_finding
from zoo.experiments.memory import memory_rows

WORK = Path(tempfile.mkdtemp(prefix="skip_connections_"))  # removed by the last cell
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
(every residual branch adds its variance), which is the exploding-gradient experiment's subject.
This is one seed at initialisation only; it says nothing yet about training."""),
    ("code", """nets = experiments.gradient_nets(GRADIENT_DEPTHS, others=False,
                                 norms=["batch", "none"])
rows = experiments.gradient_at_init(nets, seeds=(0,), batch_size=8, image_size=16)
summary = experiments.summarise_gradients(rows)
display(Markdown(experiments.markdown_table(
    summary, ["model", "depth", "first_unit_grad_norm", "head_grad_norm", "first_over_head"])))
for path in experiments.plot_gradient_at_init(rows, WORK / "gradients"):
    display(Image(filename=str(path)))"""),
    ("md", """## 2. Degradation: plain and residual nets with the same recipe

`zoo.runs.train.train` is what `python train.py` runs; here it gets a config composed from the real
`configs/` -- only the model, the data (digits, batch 32), the number of epochs and quiet
logging are chosen. At the end of fit every run measures its **training error as He et al.
mean it**: the trained net in eval mode over all 1,137 training images, no augmentation
(`train_eval/err`, also in the run's `run.json`). `zoo.results` turns the run directories into
tidy rows and draws that error against depth (plain dashed, residual solid) and the curves."""),
    ("code", """from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from zoo.training.compat import quiet_library_noise
from zoo.config.source import register_configs
from zoo.runs.train import train

CONFIGS = str(Path(zoo.__file__).resolve().parents[1] / "configs")
register_configs()  # what train.py registers: the config schemas, model names of any depth
quiet_library_noise()  # and the library lines it silences ("GPU available: False", tips)


def train_on_digits(name: str, seed: int = 0, *extra: str, folder: str = "runs",
                    epochs: int | None = None) -> Path:
    \"\"\"``python train.py model=NAME data=digits ... EXTRA``, in WORK/FOLDER/NAME.\"\"\"
    overrides = [f"model={name}", "data=digits", "data.batch_size=32", f"seed={seed}",
                 f"trainer.max_epochs={epochs or EPOCHS}", "trainer.enable_model_summary=false",
                 "trainer.log_every_n_steps=10", "logger=csv", "callbacks.progress_bar=none",
                 *extra]
    if LIMIT_TRAIN_BATCHES:
        overrides.append(f"trainer.limit_train_batches={LIMIT_TRAIN_BATCHES}")
    with initialize_config_dir(config_dir=CONFIGS, version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides)
    run_dir = WORK / folder / name
    (run_dir / ".hydra").mkdir(parents=True)
    # What train.py's Hydra would save: the run record reads its settings from these files.
    OmegaConf.save(cfg, run_dir / ".hydra" / "config.yaml")
    OmegaConf.save(OmegaConf.create(overrides), run_dir / ".hydra" / "overrides.yaml")
    train(cfg, run_dir=run_dir)
    return run_dir


run_dirs = [train_on_digits(name) for name in TRAIN_MODELS]
run_rows, curves, _ = collect.run_rows([WORK / "runs"])
display(Markdown(redraw.summary_table(run_rows)))"""),
    ("code", """figures = WORK / "figures"
display(Image(filename=str(sweep_figures.plot_against_depth(
    run_rows, "train_eval_err", "training error", figures / "train_error_vs_depth.png"))))
display(Image(filename=str(sweep_figures.plot_curves(run_rows, curves, figures / "curves.png"))))
for (family, _), points in sweep_figures.depth_series(run_rows, "train_eval_err").items():
    print(f"{family:>8}: " + ", ".join(f"{depth} layers {error:.1f}%"
                                       for depth, error, *_ in points))"""),
    ("md", """**What these runs can show, and what they cannot.** The printed line per family is the
final eval-mode training error of one seed after a few epochs on 1,137 images. Read the plain
line across depths: if it rises from 20 to 56 layers while the residual line does not, that is
the degradation problem in miniature -- the deeper plain net is worse *on its own training
data*, so it is an optimisation failure, not overfitting. One seed gives no error bar: a
difference of a point or two between two nets here may be noise, and a few epochs are not the
paper's 64k iterations. The claim with error bars (3 seeds, depths 8-110, Fashion-MNIST) and the
learning-rate sweep that rules out a badly chosen rate are in `docs/RESULTS.md`, section 2."""),
    ("md", """## 3. Lesion: delete blocks of the trained nets

`experiments.lesioned(net, *names)` swaps blocks for what is left without them -- the shortcut
alone for a residual block (`relu(shortcut(x))`), the identity for a plain block whose input and
output shapes match -- and puts them back when the `with` ends. A plain block that changes the
shape (stride 2) cannot be removed at all (a gap in the left panel). `experiments.lesion_runs`
deletes every block in turn, and k random non-downsampling blocks (a few draws per k, Veit et
al.'s curve), and measures accuracy on the whole digits test split (360 images)."""),
    ("code", """single, randomised = experiments.lesion_runs(run_dirs, split="test",
                                            max_deleted=LESION_MAX_DELETED, draws=LESION_DRAWS)
intact = [row for row in single if row["deleted"] == "intact"]
display(Markdown(experiments.markdown_table(intact, ["model", "images", "accuracy"])))
display(Image(filename=str(experiments.plot_lesion(single, WORK / "lesion", randomised))))
print(lesion_finding(single))

# The lesion leaves nothing behind: the network is the one we loaded.
net, _ = experiments.load_network(run_dirs[-1] / "checkpoints" / "last.ckpt")
x = torch.randn(4, 1, 8, 8)
before = {k: v.clone() for k, v in net.state_dict().items()}
with torch.no_grad():
    out = net(x)
    with experiments.lesioned(net, "layer1.0"):
        pass
    assert torch.equal(net(x), out)
assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())
print("network restored: same state dict, same outputs")"""),
    ("md", """Read the printed line: the median accuracy with one non-downsampling block deleted,
per net, against its intact accuracy. A residual net that keeps most of its accuracy while its
plain twin falls towards chance (10%) is Veit et al.'s observation: the residual net behaves like
an ensemble of paths of many lengths, the plain net like one chain. Compare nets whose *intact*
accuracies are similar -- a plain net that never learned has nothing to lose. One seed, 360
images: a single block's bar is a few images wide."""),
    ("md", """### The same on the zoo's trained Fashion-MNIST weights -- no training

The zoo ships trained weights of the nets of `docs/RESULTS.md` (`docs/WEIGHTS.md`), so the
lesion, the residual gains and the gradient flow of a *trained* ResNet-56 and its plain twins
take seconds: `zoo.create("resnet56", pretrained="fashion_mnist")`, and `NAME:fashion_mnist`
wherever the lesion takes a run. Each block's residual gain `||f(x)|| / ||x||` sits beside the
accuracy its deletion costs: a block that adds little to its input should cost little when
deleted -- "a block that learns to do nothing", measured. (Needs Fashion-MNIST:
`apt-get install dataset-fashion-mnist`.)"""),
    ("code", """from zoo.measure.gradients import GradientNormMeter
from zoo.weights import manifest

FMNIST = Path("/usr/share/datasets/fashion-mnist").is_dir()
shipped = [e["name"] for e in manifest() if e["dataset"] == "fashion_mnist"]
print("shipped Fashion-MNIST weights:", ", ".join(shipped))
if FMNIST:
    nets = [f"{name}:fashion_mnist" for name in ("resnet56", "plain20", "plain56")
            if name in shipped]
    single, _ = experiments.lesion_runs(nets, split="test", max_images=500 if FAST else 2000,
                                        gain_images=256)
    display(Image(filename=str(experiments.plot_lesion(single, WORK / "lesion_shipped"))))
    print(lesion_finding(single))
    gains = experiments.plot_gain_against_cost(single, WORK / "lesion_shipped")
    if gains is not None:
        display(Image(filename=str(gains)))
    # gradient flow of the trained nets: one batch of test images, stem over head
    from zoo.data.sources import load_in_memory
    test = load_in_memory("fashion_mnist", None, 5000).test
    for name in ("plain56", "resnet56"):
        if name not in shipped:
            continue
        net = zoo.create(name, pretrained="fashion_mnist").train()
        meter = GradientNormMeter(net)
        images = net.preprocess(test.images[:128])
        torch.nn.functional.cross_entropy(net(images), test.labels[:128]).backward()
        units = meter.measure().units
        print(f"{name}, trained: stem/head gradient norm {float(units[0] / units[-1]):.3g}")
else:
    print("Fashion-MNIST is not installed: skipped")"""),
    ("md", """## 4. The memory skips cost

One training step (forward, backward, optimizer step) and one inference forward pass at a small
batch (`measure_memory`): the peak of each, and the bytes of activations kept from the forward
pass for the backward pass. An identity addition keeps nothing extra, so the ResNet's training
peak is its plain twin's; DenseNet's concatenations keep every earlier feature map.
`memory_efficient=True` (activation checkpointing) trades that memory for recomputation.
`python -m zoo.experiments memory` is the full size (batch 64 at 32 px, and DenseNet against
depth)."""),
    ("code", """memory = memory_rows(MEMORY_MODELS, dense_depths=[], report=lambda row: None,
                     batch_size=MEMORY_BATCH, image_size=MEMORY_IMAGE_SIZE, steps=1)
display(Markdown(experiments.markdown_table(memory, [
    "model", "memory_efficient", "parameters", "train_peak_mb", "inference_peak_mb",
    "saved_for_backward_mb", "measured_by"])))
display(Image(filename=str(experiments.plot_memory(memory, WORK / "memory"))))"""),
    ("md", """## 5. The same switch in a Vision Transformer

Every Transformer block is `x + attn(norm(x))` then `x + mlp(norm(x))`; the zoo's ViT
(`zoo/models/vit.py`) has the CNNs' `skip` switch (`plain_vit_*` names remove the `x +` and
nothing else) and the norm's place (`norm="pre"`, timm's; `"post"`, the original Transformer's).
Dong et al. (2021) prove that self-attention without skips pulls the tokens towards one shared
vector -- a rank-one token matrix -- doubly exponentially in depth. We measure the distance of
the token matrix X from its nearest rank-one matrix, `||X - 1 mean(X)|| / ||X||`, after every
block of freshly initialised ViT-Tiny/4 nets (random 32 px images, attention-only blocks as in
the theorem), then train a pre-LN ViT and its plain twin on the digits (2x2 patches: 16 tokens
and the class token; AdamW, as Transformers are trained) and measure it again. The digits are
not augmented here: a ViT has no convolution's prior for shifted and flipped 8-pixel images, and
with the CNNs' random crop and flip the same 10 epochs (350 steps) left its training error at
43% instead of 3% (one seed, 2026-12-07)."""),
    ("code", """from zoo.experiments import vit_init

rank_rows = vit_init.vit_rank(depth=VIT_RANK_DEPTH, norms=["pre", "post"], seeds=(0,),
                              batch_size=4, mlps=(False,), inits=("timm",))
display(Image(filename=str(vit_init.plot_vit_rank(rank_rows, WORK / "vit")[0])))
for (init, norm, skip, _), (layers, values) in vit_init.rank_curves(rank_rows).items():
    print(f"{vit_init.label(norm, skip):>22}: {values[-1]:.2g} after {layers[-1]} blocks")

# AdamW at 4e-3 per batch of 32 (optim.lr is per 128 images), no augmentation: see the text
ADAMW = ["optim.name=adamw", "optim.lr=0.016", "optim.weight_decay=0.05", "model.init=xavier",
         "data.augment=false"]
vit_runs = [train_on_digits(f"{prefix}vit_mini_p2_d{VIT_BLOCKS}", 0, *ADAMW, folder="vit_runs",
                            epochs=VIT_EPOCHS) for prefix in ("", "plain_")]
vit_rows, _, _ = collect.run_rows([WORK / "vit_runs"])
display(Markdown(redraw.summary_table(vit_rows)))
trained = vit_init.trained_rank(vit_runs, max_images=128)
display(Image(filename=str(vit_init.plot_trained_rank(trained, WORK / "vit")[0])))
for run in vit_runs:
    last = [r for r in trained if r["run"] == run.name][-1]
    print(f"{run.name:>22}, trained: {last['rank_residual']:.2g} after block {last['layer']}")"""),
    ("md", """Read the two printed blocks. At initialisation the nets without skips come close to
rank one within a few blocks while the nets with skips stay far from it -- Dong et al.'s
theorem, measured. After training, the plain ViT's tokens are still (nearly) collapsed and its
training error is the higher one: with one shared vector per image there is little left for the
class token to read. One seed on 1,137 images; the 3-seed Fashion-MNIST sweep (pre-LN, post-LN,
no skip; 2, 6, 12 blocks; with and without warm-up) is `docs/RESULTS.md`, section 8."""),
    ("code", """import shutil

shutil.rmtree(WORK)  # every figure is in the notebook already
print("removed", WORK)"""),
]


def build() -> nbformat.NotebookNode:
    notebook = new_notebook()
    notebook.cells = [new_markdown_cell(text) if kind == "md" else new_code_cell(text)
                      for kind, text in CELLS]
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                       "language": "python"}
    return notebook


def execute(notebook: nbformat.NotebookNode, timeout_s: int = 1800) -> nbformat.NotebookNode:
    from nbclient import NotebookClient

    NotebookClient(notebook, timeout=timeout_s, kernel_name="python3",
                   resources={"metadata": {"path": str(HERE)}}).execute()
    return notebook


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--execute", action="store_true", help="run every cell and keep outputs")
    parser.add_argument("--out", type=Path, required=True,
                        help="where to write it (notebooks/skip_connections.ipynb: the committed "
                             "one, with --overwrite)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing file")
    args = parser.parse_args(argv)
    if args.out.exists() and not args.overwrite:  # checked before minutes of execution
        print(f"error: {args.out} exists; add --overwrite to replace it, or choose another --out",
              file=sys.stderr)
        return 2
    notebook = build()
    if args.execute:
        execute(notebook)
    nbformat.write(notebook, args.out)
    print(f"written {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
