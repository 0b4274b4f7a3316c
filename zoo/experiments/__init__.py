"""Skip-connection experiments that need no training loop of their own, one module each:

* :mod:`~zoo.experiments.gradients` -- ``gradient_at_init``: the stem / head gradient ratio of
  freshly initialised plain nets and ResNets against depth (He et al. 2015, section 4.1);
* :mod:`~zoo.experiments.lesion` -- ``lesion``: delete blocks of trained nets, one at a time and
  k at random (Veit et al. 2016);
* :mod:`~zoo.experiments.memory` -- ``memory``: training and inference peak memory of plain,
  residual and dense nets, and DenseNet's memory against depth.

Each writes tidy CSV files and ``meta.json`` (:mod:`~zoo.experiments.tidy`); every figure
function takes tidy rows, so ``python -m zoo.experiments redraw DIR`` redraws from the files.
The command line is in :mod:`zoo.experiments.__main__` (``python -m zoo.experiments --help``).
"""

from zoo.experiments.gradients import (
    gradient_at_init,
    gradient_nets,
    plot_gradient_at_init,
    summarise_gradients,
)
from zoo.experiments.lesion import (
    LesionError,
    ShortcutOnly,
    lesion_network,
    lesion_random,
    lesioned,
    random_deletions,
    reestimated_batchnorm,
)
from zoo.experiments.lesion_figures import plot_gain_against_cost, plot_lesion
from zoo.experiments.lesion_sources import lesion_runs, load_network
from zoo.experiments.memory import measure_memory, plot_memory
from zoo.experiments.tidy import markdown_table, read_csv, write_csv, write_meta

__all__ = [
    "LesionError", "ShortcutOnly", "gradient_at_init", "gradient_nets",
    "lesion_network", "lesion_random", "lesion_runs", "lesioned", "load_network", "markdown_table",
    "measure_memory", "plot_gain_against_cost", "plot_gradient_at_init", "plot_lesion",
    "plot_memory", "random_deletions", "read_csv", "reestimated_batchnorm", "summarise_gradients",
    "write_csv", "write_meta",
]
