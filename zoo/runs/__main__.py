"""``python -m zoo.runs PATH...``: a line per run (label, status, steps, test accuracy)."""

import sys

from zoo.runs.reader import main

sys.exit(main())
