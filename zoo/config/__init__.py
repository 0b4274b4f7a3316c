"""Configuration: the schemas that type every key the zoo owns (:mod:`zoo.config.schemas`) and
the Hydra config source that resolves model names of any depth (:mod:`zoo.config.source`)."""
