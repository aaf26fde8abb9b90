"""Update rules and the validated, immutable configuration of the trajectory planner."""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any, cast

from dcem._checks import check_bool, check_choice, check_int, check_real
from dcem.optim.capture import CAPTURE_MODES
from dcem.sync import check_sync

__all__ = ["Rule", "PlannerConfig", "RULE_DEFAULTS", "SELECT_MODES", "ConfigView", "resolve_config"]


class Rule(str, Enum):
    """How a planner refits its Gaussian from evaluated candidates (strings work too).

    - ``CEM``: mean/std of the ``n_elite`` lowest-cost candidates (hard top-k);
    - ``DCEM``: weights from the soft top-k of the (standardised) costs at temperature
      ``temp`` (differentiable, eq. 5 of the paper);
    - ``MPPI``: weights ``softmax(-cost / lam)`` (costs standardised first with
      ``normalize``); differentiable like DCEM unless ``differentiable=False``;
    - ``ICEM``: CEM with coloured noise, elite keeping, population decay and momentum
      (Pinneri et al., 2020), with the defaults of :data:`RULE_DEFAULTS`.
    """

    CEM = "cem"
    DCEM = "dcem"
    MPPI = "mppi"
    ICEM = "icem"


#: Defaults of the options left at ``None``:
#: (noise_beta, keep_frac, pop_decay, momentum, std_scale).
#: MPPI's were tuned on the cartpole swing-up; iCEM's were chosen by a coordinate search on
#: one seeded set of start states and checked on another (``benchmarks/bench_planners.py
#: --sections heldout``; the 2020 paper's population decay and momentum did worse there).
RULE_DEFAULTS: dict[Rule, tuple[float, float, float, float, float]] = {
    Rule.CEM: (0.0, 0.0, 1.0, 0.0, 0.5),
    Rule.DCEM: (0.0, 0.0, 1.0, 0.0, 0.5),
    Rule.MPPI: (0.5, 0.0, 1.0, 0.0, 1.0),
    Rule.ICEM: (1.0, 0.3, 1.0, 0.0, 1.0),
}

SELECT_MODES = ("mean", "best", "min")


@dataclass(frozen=True)
class PlannerConfig:
    """Hyper-parameters of a :class:`dcem.planning.Planner`, checked on construction.

    Args:
        rule: ``"cem"``, ``"dcem"``, ``"mppi"`` or ``"icem"`` (or a :class:`Rule`).
        n_sample: candidates drawn per iteration ``N >= 1`` (the current mean and any kept
            elites are evaluated with them in the same call).
        n_elite: elites ``k`` (``1 <= k <= n_sample``): CEM/iCEM average them, DCEM's soft
            top-k weights sum to ``k``; the pool of kept elites. Unused by MPPI's weights.
        n_iter: iterations; each is exactly one call of the objective.
        temp: DCEM soft top-k temperature ``> 0``.
        lam: MPPI temperature ``lambda > 0``, in standard deviations of the costs when
            ``normalize`` (the default 0.05 is tuned for 1000 samples; few samples need a
            larger one, e.g. 0.3 for 100, or the Gaussian collapses onto one sample).
        normalize: standardise each row of costs before the DCEM/MPPI weights.
        noise_beta: exponent of the coloured sampling noise along time (power spectrum
            ``1 / f**beta``; 0 is white noise). Full-plan search only.
        keep_frac: fraction of the elites carried into the next iteration's candidates.
        pop_decay: the population shrinks as ``n_sample / pop_decay**i`` (never below
            ``2 * n_elite``); ``1`` keeps it fixed.
        momentum: ``mu <- momentum * mu_old + (1 - momentum) * mu_new`` (and the std).
        std_scale: initial std as a fraction of the width of the bounds, when
            :meth:`Planner.plan` is not given ``init_std`` (1 where unbounded).
        iter_eps: a problem stops updating once its mean moves less than this (2-norm) in
            one iteration; ``None`` never stops.
        select: plan returned among the evaluated candidates: ``"mean"`` (the mean of the
            last sampled Gaussian), ``"best"`` (best candidate seen) or ``"min"`` (the
            better of the two). A non-finite mean is always replaced by a finite best.
        differentiable: MPPI weights carry gradients (``False``: classic MPPI, weights
            detached; CEM/iCEM never differentiate through their elite choice).
        checkpoint: recompute each iteration in the backward pass
            (``torch.utils.checkpoint``, non-reentrant) instead of storing its activations.
        sync: ``"auto"``, ``"host"`` or ``"free"`` (:mod:`dcem.sync`).
        capture: ``"none"`` (default), ``"auto"``, ``"graph"`` or ``"compile"``: run the
            sync-free loop captured once per shape (:mod:`dcem.planning.capture`); ``"auto"``
            is a CUDA graph for CUDA tensors without gradients and eager otherwise, on CPU
            too: ``"compile"`` runs faster there at steady state but its first call compiles
            for minutes (see :class:`dcem.optim.Solver`), which few plans of one shape repay.

    ``None`` for ``noise_beta``, ``keep_frac``, ``pop_decay``, ``momentum`` or ``std_scale``
    takes the rule's default from :data:`RULE_DEFAULTS`.
    """

    rule: Rule | str = Rule.CEM
    n_sample: int = 100
    n_elite: int = 10
    n_iter: int = 10
    temp: float = 1.0
    lam: float = 0.05
    normalize: bool = True
    noise_beta: float | None = None
    keep_frac: float | None = None
    pop_decay: float | None = None
    momentum: float | None = None
    std_scale: float | None = None
    iter_eps: float | None = None
    select: str = "min"
    differentiable: bool = True
    checkpoint: bool = False
    sync: str = "auto"
    capture: str = "none"

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        rule = self.rule.value if isinstance(self.rule, Rule) else self.rule
        rule = Rule(check_choice("rule", rule, tuple(r.value for r in Rule)))
        set_(self, "rule", rule)
        set_(self, "n_sample", check_int("n_sample", self.n_sample, 1))
        set_(self, "n_elite", check_int("n_elite", self.n_elite, 1, self.n_sample))
        set_(self, "n_iter", check_int("n_iter", self.n_iter, 1))
        set_(self, "temp", check_real("temp", self.temp, 0.0, strict=True))
        set_(self, "lam", check_real("lam", self.lam, 0.0, strict=True))
        check_bool("normalize", self.normalize)
        beta, keep, decay, mom, std = RULE_DEFAULTS[rule]
        opts = (("noise_beta", beta, 0.0, None), ("keep_frac", keep, 0.0, 1.0),
                ("pop_decay", decay, 1.0, None), ("momentum", mom, 0.0, 1.0))  # fmt: skip
        for name, default, low, high in opts:
            v = getattr(self, name)
            v = default if v is None else check_real(name, v, low)
            if high is not None and not v <= high:
                raise ValueError(f"{name} must be a finite float with {low} <= {name} <= {high}, got {v!r}")
            set_(self, name, float(v))
        scale = std if self.std_scale is None else check_real("std_scale", self.std_scale, 0.0, strict=True)
        set_(self, "std_scale", float(scale))
        if cast(float, self.momentum) >= 1.0:  # a float since the loop above
            raise ValueError(f"momentum must be < 1 (1 never moves the mean), got {self.momentum!r}")
        eps = check_real("iter_eps", self.iter_eps, 0.0, none_ok=True)
        set_(self, "iter_eps", eps or None)
        check_choice("select", self.select, SELECT_MODES)
        check_bool("differentiable", self.differentiable)
        check_bool("checkpoint", self.checkpoint)
        check_sync(self.sync)
        check_choice("capture", self.capture, CAPTURE_MODES)

    @property
    def n_keep(self) -> int:
        """Elites carried into the next iteration."""
        return int(round(cast(float, self.keep_frac) * self.n_elite))  # a float after __post_init__

    def population(self, it: int) -> int:
        """Candidates drawn at iteration ``it`` (population decay, floored at ``2 * n_elite``)."""
        if self.pop_decay == 1.0:
            return self.n_sample
        n = int(round(self.n_sample / cast(float, self.pop_decay) ** it))  # a float after __post_init__
        return max(min(self.n_sample, 2 * self.n_elite), n)


#: Keywords of the older controller signatures that name a config field differently.
RENAMED = {"sigma_scale": "std_scale", "dcem_iter_eps": "iter_eps", "dcem_normalize": "normalize"}
_FIELDS = frozenset(f.name for f in dataclasses.fields(PlannerConfig))


def _build(kw: dict[str, Any]) -> PlannerConfig:
    """The config of old-style keywords: ``temp`` ``None``/0 means CEM (else DCEM) unless ``rule``
    says otherwise; ``select=None`` means ``"min"`` for the hard rules and ``"mean"`` otherwise."""
    if "temp" in kw:
        t = check_real("temp", kw["temp"], 0.0, none_ok=True)
        if kw.get("rule") is None:
            kw["rule"] = "dcem" if t else "cem"
        unused = t is None or (not t and kw["rule"] not in (Rule.DCEM, "dcem"))
        kw["temp"] = 1.0 if unused else t  # 0 is an error for DCEM only
    kw = {k: v for k, v in kw.items() if not (k == "rule" and v is None)}
    if kw.get("select", "min") is None:
        hard = kw.get("rule", "cem") in (Rule.CEM, Rule.ICEM, "cem", "icem")
        kw["select"] = "min" if hard else "mean"
    return PlannerConfig(**kw)


def resolve_config(
    owner: str,
    args: tuple[Any, ...],
    legacy: Mapping[str, Any],
    *,
    positional: tuple[str, ...] = (),
    defaults: Mapping[str, Any] | None = None,
    warn: bool = True,
) -> tuple[PlannerConfig, dict[str, Any]]:
    """The one translation of the older keyword forms of the controllers into a :class:`PlannerConfig`.

    Args:
        owner: the caller's name, for messages (``"MPC"``, ``"FullCEMPlanner"``, ...).
        args: the caller's positional arguments from where ``config`` stands: ``(config,)``,
            ``()`` or the older positional values named by ``positional``.
        legacy: keywords the caller did not name itself: config fields (also ``temp`` and the
            :data:`RENAMED` ones) or older positional names.
        positional: names of the older positional arguments, in order.
        defaults: the caller's defaults of config fields (also when ``config`` is not given).
        warn: emit a ``DeprecationWarning`` for an older form (off for :func:`dcem.control.dcem_ctrl`,
            whose keywords are the published interface).

    Returns:
        the config, and the older positional arguments that are not config fields (e.g.
        ``u_lower``). ``TypeError`` for an unknown keyword or a config given with old keywords.

    Example:
        >>> cfg, extra = resolve_config("MPC", (), {"n_sample": 50, "temp": 0.5}, warn=False)
        >>> cfg.rule.value, cfg.n_sample, cfg.temp, extra
        ('dcem', 50, 0.5, {})
    """
    config = args[0] if args else None
    rest = args[1:] if isinstance(config, PlannerConfig) or config is None else args
    config = config if isinstance(config, PlannerConfig) else None
    if len(rest) > len(positional):
        n = len(positional)
        raise TypeError(f"{owner} takes at most {n} positional planner arguments, got {len(rest)}")
    old = dict(zip(positional, rest))
    if dup := old.keys() & legacy.keys():
        raise TypeError(f"{owner} got multiple values for {sorted(dup)}")
    old.update(legacy)
    extra = {k: old.pop(k) for k in list(old) if k not in _FIELDS and k not in RENAMED and k != "temp"}
    if unknown := extra.keys() - set(positional):
        raise TypeError(f"{owner} got unexpected keyword arguments {sorted(unknown)}")
    if config is not None:
        if old:
            raise TypeError(f"{owner}: give config or the planner keywords {sorted(old)}, not both")
        return config, extra
    if (old or rest) and warn:
        names = ", ".join(sorted({*old, *positional[: len(rest)]}))
        warnings.warn(f"{owner}({names}) is deprecated: pass config=dcem.planning.PlannerConfig(...)",
                      DeprecationWarning, stacklevel=3)  # fmt: skip
    return _build({**(defaults or {}), **{RENAMED.get(k, k): v for k, v in old.items()}}), extra


class ConfigView:
    """Read-only attributes of a controller's ``config`` (the names of its older signature)."""

    config: PlannerConfig

    n_sample = property(lambda self: self.config.n_sample)
    n_elite = property(lambda self: self.config.n_elite)
    n_iter = property(lambda self: self.config.n_iter)
    normalize = property(lambda self: self.config.normalize)
    iter_eps = property(lambda self: self.config.iter_eps)
    select = property(lambda self: self.config.select)

    @property
    def temp(self) -> float | None:
        """The soft top-k temperature (DCEM only; ``None`` for the other rules)."""
        return self.config.temp if self.config.rule is Rule.DCEM else None
