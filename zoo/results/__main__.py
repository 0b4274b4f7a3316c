"""One command for every figure and table drawn from runs:

    python -m zoo.results collect RUN_DIRS --out docs/results/<experiment>
    python -m zoo.results redraw [docs/results] [--figures docs/figures]
    python -m zoo.results report RUN_DIRS --out report/       error curves + summary table
    python -m zoo.results gradflow RUN_DIRS --out figures/    gradient flow per depth unit
    python -m zoo.results gain RUN_DIRS --out figures/        residual gain per block
"""

import sys

from zoo.results import collect, plot, report


def main(argv: list[str]) -> int:
    command = argv[0] if argv else None
    if command == "report":
        return report.main(argv[1:])
    if command in ("gradflow", "gain"):
        plot.main(argv)  # exits 2 itself on an error, as before
        return 0
    return collect.main(argv)


sys.exit(main(sys.argv[1:]))
