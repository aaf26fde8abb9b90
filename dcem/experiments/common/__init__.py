"""Plumbing shared by every experiment (not an experiment itself).

- :mod:`~dcem.experiments.common.config`: typed schemas, ``--help``, override checks;
- :mod:`~dcem.experiments.common.runs`: atomic files, checkpoints (read without unpickling code,
  through :mod:`dcem._io`), cached results; it re-exports the run folders of
  :mod:`~dcem.experiments.common.rundir` and the intervals of :mod:`~dcem.experiments.common.stats`;
- :mod:`~dcem.experiments.common.planner`: the planner sections of the configs as one
  :class:`dcem.planning.PlannerConfig`;
- :mod:`~dcem.experiments.common.csvlog`: torn-line tolerant CSV logs that keep their text;
- :mod:`~dcem.experiments.common.provenance`: the code, versions and config of each run folder;
- :mod:`~dcem.experiments.common.plots`: the plot style (a context manager) and the GIF writer;
- :mod:`~dcem.experiments.common.distributed`: data parallelism under ``torchrun``;
- :mod:`~dcem.experiments.common.sweep`, :mod:`~dcem.experiments.common.gather`: Hydra
  multiruns (``dcem-exp NAME -m``) and their summary (``dcem-exp gather SWEEP_DIR``).
"""
