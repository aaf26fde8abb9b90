"""Moved: the demo is application code, now :mod:`dcem.experiments.demo` (``dcem demo`` is unchanged).

This thin alias keeps ``dcem.demo.run(...)`` and the other public names importable.
"""

from dcem.experiments.demo import (
    DEFAULT_OUT,
    BumpObjective,
    DemoConfig,
    DemoResult,
    add_arguments,
    run,
    run_from_args,
)

__all__ = ["DEFAULT_OUT", "BumpObjective", "DemoConfig", "DemoResult", "add_arguments", "run",
           "run_from_args"]
