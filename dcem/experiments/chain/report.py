"""``dcem-exp chain mode=report``: the cartpole report (:mod:`dcem.experiments.cartpole.report`) on
the chain's ablation folders, its baselines and its page ``docs/results/chain.md``."""

from dcem.experiments.cartpole.report import report

__all__ = ["report"]
