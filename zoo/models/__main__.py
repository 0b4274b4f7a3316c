"""``python -m zoo.models [--markdown]``: every network of the zoo, with its measured facts."""

from __future__ import annotations

import argparse

from zoo.models.catalogue import catalogue, markdown_table, text_table


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m zoo.models", description=__doc__)
    parser.add_argument("--markdown", action="store_true",
                        help="print the README's table (FLOPs for one image, native input)")
    arguments = parser.parse_args(argv)
    entries = catalogue()
    print(markdown_table(entries) if arguments.markdown else text_table(entries))


if __name__ == "__main__":
    main()
