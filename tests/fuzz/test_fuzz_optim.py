"""Property-based fuzzing of the optimiser's public entry points (issue 18, item 6).

``dcem.dcem``, ``dcem.optim.{CEMConfig, init_state, ask, tell, step, solve, Solver}``,
``dcem.layers.DCEMArgmin`` and ``dcem.planning.Planner.plan`` get drawn shapes, dtypes, NaN/+-inf
placements (in costs, means, scales and bounds), wrong types and bad argument values, on both
solver paths. Every draw must end either in a finite result that passes an independent check
(bounds, the refit recomputed from the weights, hard elites by sorting) or in a
``ValueError``/``TypeError`` whose message names the offending argument.

The cost policy is checked exactly: the costs are a fixed NaN/+-inf pattern over (problem,
sample) on top of a quadratic, so a draw knows in advance whether some problem has no valid cost
(then ``ValueError`` on CPU, on both paths) or not (then no such error).

Profiles: the ``*_ci`` tests run a fixed (derandomised) set of examples in the default suite;
the ``*_long`` tests, marked slow, draw ``FUZZ_EXAMPLES`` (default 1000) random examples each.
"""

from __future__ import annotations

import math
import os

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import dcem
from dcem.layers import DCEMArgmin
from dcem.optim import CEMConfig, CEMState, Solver, ask, init_state, solve, step, tell
from dcem.planning import Planner

_HC = [HealthCheck.too_slow, HealthCheck.differing_executors, HealthCheck.filter_too_much]
CI = settings(max_examples=40, derandomize=True, deadline=None, suppress_health_check=_HC, database=None)
LONG = settings(
    max_examples=int(os.environ.get("FUZZ_EXAMPLES", "1000")), deadline=None, suppress_health_check=_HC
)

SPECIAL = [math.nan, math.inf, -math.inf]
DTYPES = [torch.float32, torch.float64]


class Drawn(Exception):
    """Marks a draw that was expected to be refused (the test then requires the error)."""


def _names_argument(err: Exception, names: tuple[str, ...]) -> bool:
    msg = str(err)
    return any(n in msg for n in names)


def _value(draw, *, allow_special=True, allow_bad_type=False):
    """A float, maybe NaN/+-inf; maybe a wrong type."""
    opts = [st.floats(-3, 3, allow_nan=False)]
    if allow_special:
        opts.append(st.sampled_from(SPECIAL))
    if allow_bad_type:
        opts.append(st.sampled_from(["1.0", True, [1.0]]))
    return draw(st.one_of(*opts))


@st.composite
def cost_pattern(draw, B: int, N: int):
    """A ``(B, N)`` pattern of special values (0 = valid) applied to every iteration's costs."""
    kind = draw(st.sampled_from(["clean", "sparse", "row", "dense"]))
    pat = torch.zeros(B, N)
    if kind == "clean":
        return pat
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))
    p = {"sparse": 0.2, "row": 0.0, "dense": 0.8}[kind]
    mask = torch.rand(B, N, generator=g) < p
    vals = torch.tensor(SPECIAL)[torch.randint(0, 3, (B, N), generator=g)]
    pat = torch.where(mask, vals, pat)
    if kind == "row":  # one problem entirely NaN/+inf (or entirely -inf)
        r = draw(st.integers(0, B - 1))
        pat[r] = draw(st.sampled_from(SPECIAL))
    return pat


def _apply(pattern: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    p = pattern.to(v)
    return torch.where(p == 0, v, p + 0 * v)


def _no_valid_row(pattern: torch.Tensor) -> bool:
    """Some problem has only NaN/+inf costs (``-inf`` counts as valid)."""
    invalid = torch.isnan(pattern) | (pattern == math.inf)
    return bool(invalid.all(-1).any())


# ------------------------------------------------------------------------------------- dcem.dcem


@st.composite
def dcem_case(draw):
    B, nx = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    N = draw(st.integers(1, 12))
    k = draw(st.one_of(st.integers(1, N), st.sampled_from([0, N + 1, 2.5])))
    temp = draw(
        st.one_of(
            st.none(), st.sampled_from([0, 0.3, 1.0, 5.0]), st.sampled_from([-1.0, math.nan, math.inf, "hot"])
        )
    )
    lb = draw(st.one_of(st.none(), st.just(-2.0), st.sampled_from([math.nan, math.inf, -math.inf, 2.5])))
    ub = draw(st.one_of(st.none(), st.just(2.0), st.sampled_from([math.nan, -math.inf, math.inf, -2.5])))
    mu0 = draw(st.one_of(st.none(), st.just(0.5), st.sampled_from(SPECIAL)))
    sigma0 = draw(st.one_of(st.none(), st.just(1.5), st.sampled_from([0.0, -1.0, *SPECIAL])))
    kw = dict(
        n_batch=B, n_sample=N, n_elite=k, n_iter=draw(st.integers(1, 3)), temp=temp, lb=lb, ub=ub,
        init_mu=mu0, init_sigma=sigma0, dtype=draw(st.sampled_from(DTYPES)),
        return_best=draw(st.booleans()), iter_eps=draw(st.sampled_from([None, 1e-4])),
        sync=draw(st.sampled_from(["host", "free"])),
    )  # fmt: skip
    if draw(st.booleans()):  # tensor arguments, with special values at drawn places
        name = draw(st.sampled_from(["init_mu", "init_sigma", "lb", "ub"]))
        base = {"init_mu": 0.0, "init_sigma": 1.0, "lb": -2.0, "ub": 2.0}[name]
        t = torch.full((B, nx), base, dtype=kw["dtype"])
        if draw(st.booleans()):
            t[draw(st.integers(0, B - 1)), draw(st.integers(0, nx - 1))] = _value(draw)
        kw[name] = t
    return nx, kw, draw(cost_pattern(B, N))


def _expected_dcem_error(nx, kw) -> tuple[str, ...] | None:
    """The argument a draw must be refused for, if any (None: valid arguments)."""
    N, k, temp = kw["n_sample"], kw["n_elite"], kw["temp"]
    bad = []  # every bad argument: the error may name any of them
    if isinstance(k, float) or not 1 <= k <= N:
        bad.append("n_elite")
    if isinstance(temp, str) or (isinstance(temp, float) and not (temp >= 0 and math.isfinite(temp))):
        bad.append("temp")
    for name in ("init_mu", "init_sigma"):
        v = kw[name]
        t = torch.as_tensor(1.0 if v is None else v)
        if not bool(torch.isfinite(t).all()) or (name == "init_sigma" and bool((t < 0).any())):
            bad.append(name)
    lb, ub = kw["lb"], kw["ub"]
    lo = None if lb is None else torch.as_tensor(lb, dtype=torch.float64)
    hi = None if ub is None else torch.as_tensor(ub, dtype=torch.float64)
    if lo is not None and bool((torch.isnan(lo) | (lo == math.inf)).any()):
        bad.append("lb")
    if hi is not None and bool((torch.isnan(hi) | (hi == -math.inf)).any()):
        bad.append("ub")
    if lo is not None and hi is not None and not bool((lo < hi).all()):
        bad += ["lb", "ub"]
    return tuple(bad) or None


def _check_dcem(case):
    nx, kw, pattern = case
    target = torch.linspace(-1, 1, nx)
    calls = []

    def f(X):
        return _apply(pattern, (X - target.to(X)).pow(2).sum(-1))

    def cb(i, X, fX, I, X_I, mu, sigma):
        calls.append((X.detach(), fX.detach(), I.detach(), mu.detach()))

    expected = _expected_dcem_error(nx, kw)
    try:
        out = dcem.dcem(f, nx, iter_cb=cb, generator=torch.Generator().manual_seed(0), **kw)
    except (ValueError, TypeError) as err:
        if expected is not None:
            assert _names_argument(err, expected), (expected, err)
            return
        assert _no_valid_row(pattern) and "NaN or +inf" in str(err), err
        return
    assert expected is None, f"accepted a bad {expected}: {kw}"
    assert not _no_valid_row(pattern), "a problem without a valid cost was accepted"
    assert out.shape == (kw["n_batch"], nx) and out.dtype == kw["dtype"]
    assert bool(torch.isfinite(out).all())
    lo = -math.inf if kw["lb"] is None else kw["lb"]
    hi = math.inf if kw["ub"] is None else kw["ub"]
    assert bool((out >= torch.as_tensor(lo).to(out)).all() and (out <= torch.as_tensor(hi).to(out)).all())
    for X, fX, I, mu in calls:  # the refit, recomputed from the weights (Props. 1 and 3)
        assert bool((I.squeeze(-1)[torch.isnan(fX) | (fX == math.inf)] == 0).all()), (
            "an invalid cost got weight"
        )
        assert bool(torch.isfinite(mu).all())
        if kw["iter_eps"] is None:  # no problem is frozen: mu is the weighted mean of the samples
            ref = (I * X).sum(1) / I.sum(1)
            torch.testing.assert_close(mu, ref, rtol=1e-4, atol=1e-5)


@CI
@given(dcem_case())
def test_dcem_fuzz_ci(case):
    _check_dcem(case)


@pytest.mark.slow
@LONG
@given(dcem_case())
def test_dcem_fuzz_long(case):
    _check_dcem(case)


# ------------------------------------------------------------------------------ dcem.optim.*


@st.composite
def optim_case(draw):
    B, D = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    N = draw(st.integers(2, 10))
    dtype = draw(st.sampled_from(DTYPES))
    cfg_kw = dict(
        n_sample=N, n_elite=draw(st.integers(1, N)), n_iter=draw(st.integers(1, 3)),
        temp=draw(st.sampled_from([None, 0.5, 1.0])), iter_eps=draw(st.sampled_from([None, 1e-3])),
        track_best=draw(st.booleans()), sync=draw(st.sampled_from(["host", "free"])),
    )  # fmt: skip
    fields = ["n_sample", "n_elite", "n_iter", "temp", "lb", "iter_eps", "normalize", "sync"]
    bad_cfg = draw(st.sampled_from([None, None, None, *fields]))
    if bad_cfg is not None:
        cfg_kw[bad_cfg] = {"n_sample": 0, "n_elite": N + 1, "n_iter": 1.5, "temp": -2.0, "lb": math.nan,
                           "iter_eps": -1.0, "normalize": "yes", "sync": "gpu"}[bad_cfg]  # fmt: skip
    elif draw(st.booleans()):
        cfg_kw["lb"], cfg_kw["ub"] = -2.0, draw(st.sampled_from([2.0, -3.0]))  # -3.0: lb >= ub
        if cfg_kw["ub"] < 0:
            bad_cfg = "lb"
    mu = torch.zeros(B, D, dtype=dtype)
    sigma: object = 1.0
    bad_state = draw(st.sampled_from([None, None, "mu", "sigma", "sigma_shape", "mu_dtype"]))
    if bad_state == "mu":
        mu[draw(st.integers(0, B - 1)), 0] = draw(st.sampled_from(SPECIAL))
    elif bad_state == "sigma":
        sigma = draw(st.sampled_from([-1.0, *SPECIAL]))
    elif bad_state == "sigma_shape":
        sigma = torch.ones(B + 1, D)
    elif bad_state == "mu_dtype":
        mu = mu.long()
    bad_call = draw(
        st.sampled_from([None, None, None, "cfg", "transposed", "short", "bool", "list", "noise"])
    )
    return cfg_kw, bad_cfg, mu, sigma, bad_state, bad_call, draw(cost_pattern(B, N))


def _hard_refit(X, fX, k):
    """Mean and std of the k best valid samples per row, by sorting (the independent reference),
    and which rows have a unique elite set (no tie across the k-th value; ties, such as several
    -inf costs, may be broken either way)."""
    v = torch.where(torch.isnan(fX) | (fX == math.inf), math.inf, fX)
    srt, order = torch.sort(v, dim=-1, stable=True)
    mus, sds, unique = [], [], []
    for b in range(X.shape[0]):
        keep = [i for i in order[b, :k].tolist() if v[b, i] < math.inf]
        E = X[b, keep]
        m = E.mean(0)
        mus.append(m)
        sds.append((E - m).pow(2).mean(0).sqrt())
        unique.append(k == v.shape[1] or bool(srt[b, k - 1] < srt[b, k]) or bool(srt[b, k - 1] == math.inf))
    return torch.stack(mus), torch.stack(sds), torch.tensor(unique)


def _check_optim(case):
    cfg_kw, bad_cfg, mu, sigma, bad_state, bad_call, pattern = case
    try:
        cfg = CEMConfig(**cfg_kw)
    except (ValueError, TypeError) as err:
        assert bad_cfg is not None and bad_cfg in str(err), (bad_cfg, err)
        return
    assert bad_cfg is None, f"CEMConfig accepted a bad {bad_cfg}"
    try:
        state = init_state(mu, sigma)
    except (ValueError, TypeError) as err:
        assert bad_state is not None and _names_argument(err, ("mu", "sigma")), (bad_state, err)
        return
    assert bad_state is None, f"init_state accepted a bad {bad_state}"
    g = torch.Generator().manual_seed(0)
    target = torch.linspace(-1, 1, mu.shape[-1], dtype=mu.dtype)

    def f(X):
        return _apply(pattern, (X - target).pow(2).sum(-1))

    X = ask(state, cfg, generator=g)
    fX = f(X)
    bad_args = {"cfg": (state, {"n_sample": 3}, X, fX), "transposed": (state, cfg, X, fX.T.contiguous()),
                "short": (state, cfg, X, fX[:, :1]), "bool": (state, cfg, X, fX > 0),
                "list": (state, cfg, X, fX.tolist())}  # fmt: skip
    if bad_call in bad_args:
        if bad_call == "transposed" and fX.shape[0] == fX.shape[1]:
            return
        with pytest.raises((ValueError, TypeError), match="cfg|fX"):
            tell(*bad_args[bad_call])
        return
    if bad_call == "noise":
        with pytest.raises(ValueError, match="noise"):
            solve(f, state, cfg, noise=torch.randn(cfg.n_iter + 1, *X.shape, dtype=mu.dtype))
        return
    no_valid = _no_valid_row(pattern)
    for run in (lambda: tell(state, cfg, X, fX), lambda: step(f, state, cfg, generator=g),
                lambda: solve(f, state, cfg, generator=g),
                lambda: Solver(f, cfg, capture="none")(mu, sigma, generator=g)):  # fmt: skip
        try:
            new = run()
        except ValueError as err:
            assert no_valid and "NaN or +inf" in str(err), err
            continue
        assert not no_valid, "a problem without a valid cost was accepted"
        assert isinstance(new, CEMState) and not bool(new.failed.any())
        assert all(bool(torch.isfinite(t).all()) for t in (new.mu, new.sigma))
        assert not bool(torch.isnan(new.best_f).any())
    if cfg.hard and not no_valid:  # tell's refit against sorting
        new = tell(state, cfg, X, fX)
        m, s, unique = _hard_refit(X, fX, cfg.n_elite)
        torch.testing.assert_close(new.mu[unique], m[unique])
        torch.testing.assert_close(new.sigma[unique], s[unique])
        if cfg.lb is not None:
            assert bool((X >= cfg.lb).all() and (X <= cfg.ub).all())


@CI
@given(optim_case())
def test_optim_fuzz_ci(case):
    _check_optim(case)


@pytest.mark.slow
@LONG
@given(optim_case())
def test_optim_fuzz_long(case):
    _check_optim(case)


# ------------------------------------------------------------------------ DCEMArgmin, Planner


@st.composite
def layer_case(draw):
    B, n_x, n_y = draw(st.integers(1, 3)), draw(st.integers(1, 2)), draw(st.integers(1, 2))
    kw = dict(
        n_sample=draw(st.integers(2, 12)), n_iter=draw(st.integers(1, 3)),
        temp=draw(st.sampled_from([None, 1.0, -1.0])), init_sigma=draw(st.sampled_from([1.0, 0.0, math.nan])),
        init_mu=draw(st.sampled_from([0.0, math.inf])), sync=draw(st.sampled_from(["host", "free"])),
    )  # fmt: skip
    kw["n_elite"] = draw(st.integers(1, kw["n_sample"]))
    x = torch.randn(B, n_x, dtype=draw(st.sampled_from(DTYPES)))
    if draw(st.integers(0, 4)) == 0:
        x[0, 0] = draw(st.sampled_from(SPECIAL))
    return n_y, kw, x, draw(cost_pattern(B, kw["n_sample"]))


def _check_layer(case):
    n_y, kw, x, pattern = case
    w = torch.nn.Parameter(torch.tensor(0.7, dtype=x.dtype))

    def energy(xs, Y):
        return _apply(pattern, (Y - w * xs.sum(-1, keepdim=True)).pow(2).sum(-1))

    bad = [n for n, ok in (("temp", kw["temp"] != -1.0), ("init_sigma", kw["init_sigma"] == 1.0),
                           ("init_mu", kw["init_mu"] == 0.0)) if not ok]  # fmt: skip
    try:
        layer = DCEMArgmin(energy, n_y, **kw)
    except (ValueError, TypeError) as err:
        assert bad and _names_argument(err, tuple(bad)), (bad, err)
        return
    assert not bad, f"DCEMArgmin accepted a bad {bad}"
    try:
        y = layer(x, generator=torch.Generator().manual_seed(0))
    except ValueError as err:
        if not bool(torch.isfinite(x).all()):
            assert "x must be finite" in str(err), err
        else:
            assert _no_valid_row(pattern) and "NaN or +inf" in str(err), err
        return
    assert bool(torch.isfinite(x).all()) and not _no_valid_row(pattern)
    assert y.shape == (x.shape[0], n_y) and bool(torch.isfinite(y).all())
    if kw["temp"] is not None:
        y.sum().backward()
        assert w.grad is not None and bool(torch.isfinite(w.grad))


@CI
@given(layer_case())
def test_dcem_argmin_fuzz_ci(case):
    _check_layer(case)


@pytest.mark.slow
@LONG
@given(layer_case())
def test_dcem_argmin_fuzz_long(case):
    _check_layer(case)


@st.composite
def plan_case(draw):
    B, H, A = draw(st.integers(1, 3)), draw(st.integers(1, 3)), draw(st.integers(1, 2))
    rule = draw(st.sampled_from(["cem", "dcem", "mppi", "icem"]))
    N = draw(st.integers(4, 12))
    opts = dict(rule=rule, n_sample=N, n_elite=draw(st.integers(1, 3)), n_iter=draw(st.integers(1, 3)),
                sync=draw(st.sampled_from(["host", "free"])))  # fmt: skip
    bounds = draw(
        st.sampled_from([(None, None), (-1.0, 1.0), (1.0, -1.0), (math.nan, 1.0), (-1.0, math.inf)])
    )
    init_mean = draw(st.sampled_from([None, 0.0, math.nan, math.inf]))
    opts["init_std"] = draw(st.sampled_from([None, 0.5]))
    return (
        B,
        H,
        A,
        opts,
        bounds,
        init_mean,
        draw(st.integers(0, 2**16)),
        draw(st.sampled_from(["clean", "sparse", "row"])),
    )


def _check_plan(case):
    B, H, A, opts, (lo, hi), init_mean, seed, kind = case
    opts = dict(opts)
    init_std = opts.pop("init_std")
    infinite_box = lo is not None and math.isinf(hi) and (init_mean is None or init_std is None)
    bad_bounds = lo is not None and (math.isnan(lo) or not lo < hi)
    try:
        p = Planner(H, A, lower=lo, upper=hi, **opts)
    except (ValueError, TypeError) as err:
        assert bad_bounds and _names_argument(err, ("lower", "upper")), err
        return
    assert not bad_bounds, "Planner accepted bad bounds"
    g = torch.Generator().manual_seed(seed)
    row = torch.randint(0, B, (), generator=g).item()

    def cost(U):
        c = U.pow(2).sum((-1, -2))
        if kind == "sparse":
            m = torch.rand(c.shape, generator=torch.Generator().manual_seed(seed)) < 0.2
            c = torch.where(m, torch.tensor(math.nan, dtype=c.dtype), c)
        elif kind == "row":
            c = torch.cat([c[:row], torch.full_like(c[row : row + 1], math.inf), c[row + 1 :]])
        return c

    mean = None if init_mean is None else torch.full((B, H, A), init_mean)
    try:
        res = p.plan(
            cost,
            batch_shape=(B,),
            init_mean=mean,
            init_std=init_std,
            generator=torch.Generator().manual_seed(0),
        )
    except ValueError as err:
        if infinite_box:
            assert "pass init_mean" in str(err) or "pass init_std" in str(err), err
        elif init_mean is not None and not math.isfinite(init_mean):
            assert "init_mean" in str(err), err
        else:
            assert "NaN or +inf" in str(err), err
            assert kind != "clean", err
        return
    assert not infinite_box, "an infinite box gave default init_mean/init_std"
    assert init_mean is None or math.isfinite(init_mean)
    assert kind != "row", "a problem without a valid cost was accepted"
    assert bool(torch.isfinite(res.plan).all()) and bool(torch.isfinite(res.mean).all())
    assert not bool(res.failed.any())
    if lo is not None:
        assert bool((res.plan >= lo).all() and (res.plan <= hi).all())


@CI
@given(plan_case())
def test_planner_fuzz_ci(case):
    _check_plan(case)


@pytest.mark.slow
@LONG
@given(plan_case())
def test_planner_fuzz_long(case):
    _check_plan(case)
