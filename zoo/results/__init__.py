"""What is shown: committed results and every figure and table drawn from runs.

    collect        run directories -> docs/results/<experiment>/ tidy files; redraw every figure
    style          one matplotlib set-up: a colour per depth, plain dashed, residual solid
    sweep_figures  the figures of a training sweep (against depth, cost, learning rate; curves)
    report         error curves and a summary table of a sweep, straight from its run folders
    plot           gradient-flow and residual-gain figures from the callbacks' tidy files

One command draws them all (``python -m zoo.results``; :mod:`zoo.results.__main__`).
"""
