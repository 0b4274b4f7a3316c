"""``python -m zoo.bench``: see :mod:`zoo.bench`."""

from zoo.bench.cli import main

main()
