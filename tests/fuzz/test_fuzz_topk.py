"""Property-based fuzzing of ``dcem.lml``, ``dcem.LML`` and ``dcem.hard_topk`` (issue 18).

Each draw is a whole call: the function, ``x`` (or something that is not a tensor) with a shape
(empty and one-element included), a dtype and NaN/±inf placements, ``k`` and ``tau`` valid or
not (scalars, tensors of every accepted and some refused shapes, zero, negative, NaN, inf, wrong
types). An independent oracle decides from the draw alone whether the call is valid. A valid call
must give a finite, checked-correct result on BOTH solver paths (shape and dtype, ``0 <= y <= 1``,
``sum = k`` within the documented tolerance, ``+inf -> 1``, ``-inf -> 0``, order preserving,
``scipy.optimize.brentq`` on the dual of the finite entries, the hard top-k as ``tau -> 0``, a
finite gradient tangent to the constraint), and both paths must agree; an invalid call must raise
``ValueError``/``TypeError`` naming one of the arguments the oracle found invalid, on both paths.

Profiles: the default suite runs under the profile loaded by ``tests/conftest.py`` (``dev``: 30
fixed, derandomised examples per test; ``HYPOTHESIS_PROFILE=ci``: 200 random ones); the tests
marked slow draw 3,000 and 1,000 examples (derandomised too unless ``HYPOTHESIS_PROFILE=ci``, so
that CI is repeatable). ``--hypothesis-show-statistics`` prints the counts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from scipy.optimize import brentq
from scipy.special import expit

import dcem
import dcem.soft_topk as soft_topk
from dcem import LML, hard_topk, lml

pytestmark = pytest.mark.filterwarnings("error::RuntimeWarning")

FLOATS = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
OTHER = [torch.int64, torch.int32, torch.bool, torch.complex64]


@dataclass
class Call:
    fn: str
    x: object
    k: object
    tau: object
    invalid: set  # argument names the oracle finds invalid (empty: the call is valid)

    def __repr__(self) -> str:  # short, reproducible description for hypothesis' report
        x = self.x
        desc = f"Tensor{tuple(x.shape)} {x.dtype}\n{x}" if isinstance(x, torch.Tensor) else repr(x)
        return f"Call({self.fn}, k={self.k!r}, tau={self.tau!r}, invalid={self.invalid}, x={desc})"


def _values(draw, shape, rng):
    kind = draw(st.sampled_from(["normal", "ties", "huge", "tiny", "spread"]))
    size = int(np.prod(shape))
    if kind == "normal":
        v = rng.standard_normal(size)
    elif kind == "ties":
        v = rng.integers(-2, 3, size=size).astype(float)
    elif kind == "huge":
        v = rng.standard_normal(size) * 1e6
    elif kind == "tiny":
        v = rng.standard_normal(size) * 1e-7
    else:
        v = rng.standard_normal(size) * 10.0 ** rng.integers(-8, 9, size=size)
    # non-finite placements: none, a few, or whole runs at either end of a row
    p = draw(st.sampled_from([0.0, 0.0, 0.05, 0.3]))
    if p:
        r = rng.random(size)
        which = draw(st.sampled_from(["-inf", "+inf", "both", "nan", "all"]))
        pool = {"-inf": [-math.inf], "+inf": [math.inf], "both": [-math.inf, math.inf], "nan": [math.nan],
                "all": [-math.inf, math.inf, math.nan]}[which]  # fmt: skip
        v = np.where(r < p, rng.choice(pool, size=size), v)
    return np.asarray(v.reshape(shape))


@st.composite
def calls(draw) -> Call:
    fn = draw(st.sampled_from(["lml", "LML", "hard_topk"]))
    invalid: set = set()
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    # ---- x
    xkind = draw(st.sampled_from(["tensor"] * 40 + ["list", "ndarray", "none"]))
    batch = tuple(draw(st.lists(st.integers(0, 3), min_size=0, max_size=2)))
    n = draw(st.sampled_from([1, 2, 3, 4, 5, 8, 13, 40] * 3 + [0]))
    shape = (*batch, n) if draw(st.integers(0, 30)) else ()
    dtype = draw(st.sampled_from(FLOATS * 8 + OTHER))
    vals = _values(draw, shape, rng)
    if xkind != "tensor":
        x = {"list": vals.tolist(), "ndarray": vals, "none": None}[xkind]
        invalid.add("x")
    elif dtype.is_floating_point:
        x = torch.from_numpy(np.asarray(vals, dtype=np.float64)).to(dtype)
    else:
        ints = np.nan_to_num(np.asarray(vals), nan=0, posinf=7, neginf=-7).round()
        x = torch.from_numpy(np.asarray(ints)).to(dtype)
    if isinstance(x, torch.Tensor):
        ok_dtype = dtype.is_floating_point or (fn == "hard_topk" and dtype in (torch.int64, torch.int32))
        if not ok_dtype:
            invalid.add("x")
        if x.dim() == 0 or x.shape[-1] == 0:
            invalid.add("x")
    nn_ = x.shape[-1] if isinstance(x, torch.Tensor) and x.dim() else 0
    # ---- k
    kk = draw(st.sampled_from(["valid"] * 25 + ["n"] * 3 + ["zero", "above", "neg", "float", "intfloat",
                               "str", "none", "bool", "np"]))  # fmt: skip
    k = {"valid": draw(st.integers(1, max(nn_, 1))), "n": nn_, "zero": 0, "above": nn_ + 1, "neg": -1,
         "float": 1.5, "intfloat": float(max(min(nn_, 2), 1)), "str": "2", "none": None, "bool": True,
         "np": np.int64(max(min(nn_, 3), 1))}[kk]  # fmt: skip
    if fn == "LML" and kk in ("float", "intfloat"):
        invalid.add("k")  # the module takes integers only
    if isinstance(k, bool) or not isinstance(k, (int, float, np.integer)) or float(k) != int(k):
        invalid.add("k")
    elif not 1 <= int(k) <= max(nn_, 0):
        invalid.add("k")
    # ---- tau (lml and LML)
    tau = None
    if fn != "hard_topk":
        kinds = ["tiny", "zero", "neg", "nan", "inf", "bool", "str", "tensor", "tensor", "keepdim",
                 "scalar_t",
                 "bad_shape", "int_t", "bad_value_t"]  # fmt: skip
        tk = draw(st.sampled_from(["float"] * 20 + ["tensor", "keepdim", "scalar_t", "tiny"] * 3 + kinds))
        bshape = x.shape[:-1] if isinstance(x, torch.Tensor) and x.dim() else ()
        tdt = dtype if isinstance(x, torch.Tensor) and dtype.is_floating_point else torch.float64
        pos = lambda shape: torch.from_numpy(np.asarray(10.0 ** rng.uniform(-3, 2, size=shape))).to(tdt)  # noqa: E731
        tau = {"float": float(10.0 ** rng.uniform(-3, 3)), "tiny": 1e-6, "zero": 0.0, "neg": -1.0,
               "nan": math.nan, "inf": math.inf, "bool": True, "str": "1"}.get(tk)  # fmt: skip
        if tk in ("zero", "neg", "nan", "inf", "bool", "str"):
            invalid.add("tau")
        elif tk == "tensor":
            tau = pos(tuple(bshape))
        elif tk == "keepdim":
            tau = pos((*bshape, 1))
        elif tk == "scalar_t":
            tau = pos(())
        elif tk == "bad_shape":
            tau = pos((*bshape, 2))
            invalid.add("tau")
        elif tk == "int_t":
            tau = torch.ones(tuple(bshape), dtype=torch.int64)
            invalid.add("tau")
        elif tk == "bad_value_t":
            tau = pos(tuple(bshape))
            if tau.numel():
                tau.view(-1)[rng.integers(tau.numel())] = float(rng.choice([0.0, -1.0, math.nan, math.inf]))
                invalid.add("tau")
        if isinstance(tau, torch.Tensor) and fn == "LML":
            invalid.add("tau")  # the module takes a float temperature
    # ---- the NaN/inf policy (only decidable once x, k are otherwise valid)
    if not invalid & {"x", "k"} and isinstance(x, torch.Tensor) and x.is_floating_point():
        xf = x.double().reshape(-1, nn_)
        kv = int(k)
        if torch.isnan(xf).any():
            invalid.add("x")
        elif ((xf == math.inf).sum(-1) > kv).any() or ((xf > -math.inf).sum(-1) < kv).any():
            invalid.add("x")
    return Call(fn, x, k, tau, invalid)


def _run(call: Call, sync: str):
    with dcem.sync_mode(sync):
        if call.fn == "lml":
            return lml(call.x, call.k, call.tau)
        if call.fn == "LML":
            return LML(call.k, call.tau)(call.x)
        return hard_topk(call.x, call.k)


def _names(err: Exception) -> set:
    msg = str(err)
    return {a for a in ("x", "k", "tau") if msg.startswith(a + " ") or msg.startswith(a + ":")}


def _ref_row(x: np.ndarray, k: int, tau: float) -> np.ndarray:
    """brentq on the dual of the finite entries; +inf -> 1, -inf -> 0."""
    y = np.where(x == np.inf, 1.0, 0.0)
    fin = np.isfinite(x)
    kf = k - int((x == np.inf).sum())
    m = int(fin.sum())
    if kf == 0 or m == 0:
        return y
    if kf == m:
        return np.where(fin, 1.0, y)
    xf = x[fin]
    z = (xf - np.sort(xf)[::-1][kf - 1]) / tau
    nu = brentq(lambda v: float(expit(z + v).sum() - kf), -z.max() - 60.0, -z.min() + 60.0,
                xtol=1e-300, rtol=4 * np.finfo(float).eps, maxiter=2000)  # fmt: skip
    y[fin] = expit(z + nu)
    return y


def _check_result(call: Call, y: torch.Tensor) -> None:
    x, k = call.x, int(call.k)
    assert isinstance(y, torch.Tensor) and y.shape == x.shape and y.dtype == x.dtype
    yd, xd = y.double(), x.double()
    assert torch.isfinite(yd).all(), "non-finite output for a valid input"
    assert ((yd >= 0) & (yd <= 1)).all()
    assert torch.equal(yd[xd == math.inf], torch.ones_like(yd[xd == math.inf]))
    assert torch.equal(yd[xd == -math.inf], torch.zeros_like(yd[xd == -math.inf]))
    low = x.dtype in (torch.float16, torch.bfloat16)
    tol = (0.02 if low else 1e-5 if x.dtype == torch.float32 else 1e-10) * k
    if call.fn == "hard_topk":
        assert set(yd.unique().tolist()) <= {0.0, 1.0}
        assert torch.equal(yd.sum(-1), torch.full(x.shape[:-1], float(k), dtype=torch.float64))
        sel = torch.where(yd > 0, xd, math.inf).amin(-1)
        rest = torch.where(yd > 0, -math.inf, xd).amax(-1)
        assert (sel >= rest).all(), "hard_topk left out a larger entry"
        return
    assert (yd.sum(-1) - k).abs().max().item() <= tol if yd.numel() else True
    tau = call.tau
    t = tau.double() if isinstance(tau, torch.Tensor) else float(tau)
    if isinstance(t, torch.Tensor) and t.dim() == x.dim():
        t = t.squeeze(-1)
    rows = xd.reshape(-1, x.shape[-1])
    if isinstance(t, torch.Tensor):
        trow = t.expand(x.shape[:-1]).reshape(-1)
    else:
        trow = torch.full((rows.shape[0],), t)
    ys = yd.reshape(-1, x.shape[-1])
    # order preserving: a larger entry never gets a smaller weight (up to a few ulps)
    xs, order = torch.sort(rows, -1, descending=True)
    yo = torch.gather(ys, -1, order)
    ulp = 8 * torch.finfo(x.dtype).eps
    assert (yo[:, :-1] >= yo[:, 1:] - ulp).all(), "lml is not order preserving"
    if x.dtype == torch.float64 and x.shape[-1] <= 13:
        for r, tr, yr in zip(rows.numpy(), trow.tolist(), ys.numpy()):
            # y depends on x / tau, whose float64 rounding alone moves y by about eps * |x| / tau
            zmax = float(np.abs(r[np.isfinite(r)]).max(initial=0.0)) / tr
            atol = 1e-8 + 4 * np.finfo(float).eps * zmax
            np.testing.assert_allclose(yr, _ref_row(r, k, tr), rtol=0, atol=atol)
            # tau -> 0: the hard top-k wherever the k-th and (k+1)-th finite values are well apart
            fin = np.sort(r[np.isfinite(r)])[::-1]
            kf = k - int((r == np.inf).sum())
            if 0 < kf < len(fin) and (fin[kf - 1] - fin[kf]) / tr > 80:
                np.testing.assert_allclose(yr, hard_topk(torch.from_numpy(r), k).numpy(), rtol=0, atol=1e-12)


def _check_gradient(call: Call, sync: str) -> None:
    if call.fn != "lml" or call.x.dtype != torch.float64:
        return
    x = call.x.clone().requires_grad_()
    tau = call.tau.clone().requires_grad_() if isinstance(call.tau, torch.Tensor) else call.tau
    with dcem.sync_mode(sync):
        y = lml(x, call.k, tau)
    w = torch.cos(torch.arange(y.numel(), dtype=torch.float64)).reshape(y.shape)
    inputs = (x, tau) if isinstance(tau, torch.Tensor) else (x,)
    grads = torch.autograd.grad((y * w).sum(), inputs)
    assert all(torch.isfinite(g).all() for g in grads)
    gx = grads[0]
    scale = gx.abs().sum(-1).clamp_min(1.0)
    assert ((gx.sum(-1)).abs() / scale).max().item() <= 1e-12 if gx.numel() else True


def _check_call(call: Call) -> None:
    x = call.x
    nonfinite = isinstance(x, torch.Tensor) and x.is_floating_point() and not torch.isfinite(x).all()
    event(f"{call.fn}: " + ("invalid " + ",".join(sorted(call.invalid)) if call.invalid else "valid"))
    if not call.invalid and nonfinite:
        event(f"{call.fn}: valid with +-inf")
    outcomes = {}
    for sync in ("host", "free"):
        try:
            outcomes[sync] = _run(call, sync)
        except (ValueError, TypeError) as err:
            assert call.invalid, f"valid call refused on the {sync} path: {err!r}"
            named = _names(err)
            assert named & call.invalid, f"{sync}: message {str(err)!r} names none of {call.invalid}"
            outcomes[sync] = type(err)
    if call.invalid:
        assert all(isinstance(o, type) for o in outcomes.values()), f"invalid call accepted: {call.invalid}"
        assert outcomes["host"] is outcomes["free"], "the paths raise different errors"
        return
    for sync in ("host", "free"):
        _check_result(call, outcomes[sync])
        _check_gradient(call, sync)
    a, b = outcomes["host"].double(), outcomes["free"].double()
    tol = {torch.float64: 1e-9, torch.float32: 2e-5}.get(call.x.dtype, 2e-2)
    torch.testing.assert_close(a, b, rtol=0, atol=tol)


_SETTINGS = dict(suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@settings(**_SETTINGS)
@given(calls())
def test_fuzz_every_call_is_correct_or_refused_by_name(call):
    _check_call(call)


@settings(**_SETTINGS)
@given(calls())
def test_fuzz_unreadable_x_only_turns_refused_rows_to_nan(call):
    """Where ``x`` cannot be read (simulated: no free host read, sync-free path) nothing raises
    for values: valid calls give the checked result, the rows the check would refuse are NaN."""
    if call.fn == "LML" or call.invalid - {"x"} or not isinstance(call.x, torch.Tensor):
        return
    x = call.x
    if not x.is_floating_point() or x.dim() == 0 or x.shape[-1] == 0 or not x.numel():
        return
    if isinstance(call.tau, torch.Tensor) and not bool(((call.tau > 0) & (call.tau < math.inf)).all()):
        return
    mp = pytest.MonkeyPatch()
    mp.setattr(soft_topk, "host_reads_free", lambda t: False)
    try:
        y = _run(call, "free").double().reshape(-1, x.shape[-1])
    finally:
        mp.undo()
    xf = x.double().reshape(-1, x.shape[-1])
    k = int(call.k)
    refused = torch.isnan(xf).any(-1) | ((xf == math.inf).sum(-1) > k) | ((xf > -math.inf).sum(-1) < k)
    assert torch.isnan(y[refused]).all()
    assert torch.isfinite(y[~refused]).all()
    if refused.any() and (~refused).any():
        keep = (~refused).nonzero().squeeze(1)
        sub = Call(call.fn, x.reshape(-1, x.shape[-1])[keep], call.k, _rows_tau(call.tau, x, keep), set())
        torch.testing.assert_close(y[keep], _run(sub, "free").double(), rtol=0, atol=0)


def _rows_tau(tau, x, keep):
    if not isinstance(tau, torch.Tensor):
        return tau
    t = tau.squeeze(-1) if tau.dim() == x.dim() else tau
    return t.expand(x.shape[:-1]).reshape(-1)[keep]


@pytest.mark.slow
@settings(max_examples=3000, **_SETTINGS)
@given(calls())
def test_fuzz_long_random(call):
    _check_call(call)


@pytest.mark.slow
@settings(max_examples=1000, **_SETTINGS)
@given(calls())
def test_fuzz_unreadable_x_long_random(call):
    test_fuzz_unreadable_x_only_turns_refused_rows_to_nan.hypothesis.inner_test(call)
