"""Experiments of the paper, each runnable as ``dcem-exp NAME [hydra overrides...]``.

Every experiment is a subpackage ``dcem.experiments.NAME`` whose ``__init__`` exposes
``main(argv: list[str]) -> None``, declares its typed schema in ``schema.py`` and ships its Hydra
configs in ``conf/``. Two subpackages are not experiments: :mod:`dcem.experiments.common` (the
shared command line, run folders, logs, checkpoints and plotting) and :mod:`dcem.experiments.demo`
(``dcem demo``).
"""
