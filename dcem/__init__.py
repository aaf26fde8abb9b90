"""dcem: the Differentiable Cross-Entropy Method (Amos & Yarats, ICML 2020) in PyTorch.

Core API:

- :func:`dcem.lml` / :class:`dcem.LML`: the temperature-scaled soft top-k projection (eq. 4).
- :func:`dcem.hard_topk`: its ``tau -> 0`` limit.
- :func:`dcem.dcem`: CEM (``temp=None``) and differentiable CEM (``temp > 0``), Alg. 1.
- :func:`dcem.sync_mode`: the host-checked or sync-free solver path (:mod:`dcem.sync`).
- :func:`dcem.dcem_ctrl`: model-predictive control with (D)CEM over action sequences (eq. 7).
"""

from dcem.cem import dcem
from dcem.control.mpc import dcem_ctrl
from dcem.soft_topk import LML, hard_topk, lml
from dcem.sync import sync_mode

__all__ = ["LML", "dcem", "dcem_ctrl", "hard_topk", "lml", "sync_mode"]
__version__ = "0.2.0.dev0"
