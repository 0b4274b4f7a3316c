"""One training run, its directory and its record.

    train       config -> data, module, starting weights; fit and test (``train.py`` calls it)
    trainer     loggers, callbacks and the Lightning ``Trainer``
    reader      the ``run.json`` record and the one reader of run directories
    files       a run folder's files read as data (YAML without resolvers, CSV, events)
    directory   a run directory that can be written, and its path resolvers
    resume      a resume's settings from its run directory
    log         the run's own log lines and the logging interval
    signals     SIGTERM, Ctrl-C, SIGUSR1, SIGHUP: the pre-emption save and requeue
    sweep       a sweep that runs every job it can, and its summary
    objective   the metric ``train.py`` returns to Hydra's sweepers

``python -m zoo.runs PATH...`` lists the runs at or below PATH.
"""
