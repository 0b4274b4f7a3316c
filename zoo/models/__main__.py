"""``python -m zoo.models [--markdown | --weights]``: every network of the zoo, with its measured
facts; ``--weights``: the zoo's own trained weights (docs/WEIGHTS.md, from zoo/weights)."""

from __future__ import annotations

import argparse

from zoo.models.catalogue import catalogue, markdown_table, text_table


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m zoo.models", description=__doc__)
    parser.add_argument("--markdown", action="store_true",
                        help="print the README's table (FLOPs for one image, native input)")
    parser.add_argument("--weights", action="store_true",
                        help="print the table of the zoo's own trained weights")
    arguments = parser.parse_args(argv)
    if arguments.weights:
        from zoo.weights import markdown_table as weights_table

        print(weights_table())
        return
    entries = catalogue()
    print(markdown_table(entries) if arguments.markdown else text_table(entries))


if __name__ == "__main__":
    main()
