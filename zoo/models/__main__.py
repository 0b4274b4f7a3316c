"""``python -m zoo.models [--markdown | --weights]``: every network of the zoo, with its measured
facts; ``--weights``: the zoo's own trained weights (docs/WEIGHTS.md, from zoo/weights)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from zoo.models.catalogue import catalogue, markdown_table, text_table, weights_markdown


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m zoo.models", description=__doc__)
    parser.add_argument("--markdown", action="store_true",
                        help="print the README's table (FLOPs for one image, native input)")
    parser.add_argument("--weights", action="store_true",
                        help="print the table of the zoo's own trained weights")
    arguments = parser.parse_args(argv)
    if arguments.weights:  # the manifest is data: read as a file, not through zoo.weights
        manifest = Path(__file__).resolve().parents[1] / "weights" / "manifest.json"
        entries = json.loads(manifest.read_text())["weights"] if manifest.is_file() else []
        print(weights_markdown(entries))
        return
    entries = catalogue()
    print(markdown_table(entries) if arguments.markdown else text_table(entries))


if __name__ == "__main__":
    main()
