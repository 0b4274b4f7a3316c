"""The measurement layer: plain functions and small classes, no Lightning inside.

* :mod:`zoo.measure.gradients` -- gradient norms per depth unit (in fp32), residual gains.
* :mod:`zoo.measure.memory` -- peak memory of a training step, activation memory kept for
  backward.
* :mod:`zoo.measure.rank` -- rank collapse: a token matrix's relative distance from rank one.

Callbacks (:mod:`zoo.callbacks`), experiments (:mod:`zoo.experiments`) and benchmarks
(:mod:`zoo.bench`) all measure through here, so that each measurement exists once.
"""
