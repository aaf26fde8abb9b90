"""Plumbing shared by every experiment (not an experiment itself).

- :mod:`~dcem.experiments.common.config`: typed schemas, ``--help``, override checks;
- :mod:`~dcem.experiments.common.runs`: run folders, atomic files, CSV logs, checkpoints,
  Student-t intervals;
- :mod:`~dcem.experiments.common.plots`: the plot style (a context manager) and the GIF writer.
"""
