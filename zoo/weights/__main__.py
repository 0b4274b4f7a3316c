"""``python -m zoo.weights``: export a finished run as a shipped weight, print the table.

    python -m zoo.weights export RUN_DIR [RUN_DIR ...] --machine "2-core AMD EPYC ..."
    python -m zoo.weights export RUN_DIR --replace   # ship a new file for a name already shipped
    python -m zoo.weights table                      # docs/WEIGHTS.md's table, from the manifest
    python -m zoo.weights table --write docs/WEIGHTS.md
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from zoo.weights import HERE, markdown_table, provenance_lines
from zoo.weights.files import CheckpointError

PAGE_HEAD = """# The zoo's own trained weights

Loadable by name, offline, from the installed package: `zoo.create("resnet56",
pretrained="fashion_mnist")`, or `python train.py model=resnet56 data=fashion_mnist
model.pretrained=fashion_mnist trainer.max_epochs=0`. The preprocessing and class names travel
with the weights, so `zoo.weights.predict.predict(net, images)` takes raw uint8 images. Every file's
SHA-256 is checked on load. Test accuracy (official 10,000 test images, through `predict` from
the raw uint8 files) and eval-mode training error (the run's 55,000 training images, no
augmentation) are measured on the shipped bf16 file, not the training checkpoint.

The validation error is the run's own, on 1,250 held-out training images at the end of each of
its epochs. These nets are trained with the experiments' CPU budget (`experiment=lesion_cpu`:
3 epochs, 2,577 steps at batch 64, cosine schedule), not to convergence: where the error still
falls in the last epoch, the net had not levelled off. `bash scripts/gpu_experiments.sh weights`
trains the same nets on a GPU (`EPOCHS=30` for a longer budget). At this budget ResNet-110 ends
behind ResNet-56, the reverse of He et al.'s order after 64k steps, as in docs/RESULTS.md
section 6, where its recipe was checked: a lower rate or a longer warm-up narrows the gap there
without closing it.

Wall time is the run's fit time on the 2-core AMD EPYC while other jobs shared the machine: an
upper bound. This page is generated from `zoo/weights/manifest.json` by
`python -m zoo.weights table --write docs/WEIGHTS.md`; a test keeps the two equal.

"""


def page() -> str:
    return f"{PAGE_HEAD}{markdown_table()}\n\nFiles:\n\n{provenance_lines()}\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m zoo.weights", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    export_parser = commands.add_parser("export", help="ship a finished run's weights")
    export_parser.add_argument("runs", nargs="+", type=Path)
    export_parser.add_argument("--machine", default=None,
                               help="the machine the run trained on, for the table")
    export_parser.add_argument("--replace", action="store_true",
                               help="replace a name already shipped (its entry and its file)")
    export_parser.add_argument("--commit", default=None,
                               help="the commit that trained the runs, for runs whose record "
                                    "does not hold one (default: the run folder's checkout HEAD)")
    export_parser.add_argument("--out", type=Path, default=HERE,
                               help="folder of the manifest and the files (default: the "
                                    "installed package's zoo/weights)")
    table_parser = commands.add_parser("table", help="the table of shipped weights")
    table_parser.add_argument("--write", type=Path, default=None, help="write the page here")
    args = parser.parse_args(argv)
    try:
        if args.command == "export":
            from zoo.weights.export import ship

            def report(entry: dict) -> None:
                print(f"{entry['file']}: test {entry['test_acc']:.4f}, "
                      f"training error {entry['train_err']:.4f}", flush=True)

            ship(args.runs, args.out, args.machine, args.replace, args.commit, report)
        elif args.write:
            args.write.write_text(page())
            print(args.write)
        else:
            print(markdown_table())
    except (CheckpointError, FileNotFoundError, ValueError) as error:  # a shipped-weights error too
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
