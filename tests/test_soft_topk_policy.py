"""The NaN/infinity policy, the temperature shapes and the batch invariance of ``dcem.lml``,
``dcem.LML`` and ``dcem.hard_topk`` (issue 18), on the host-checked and the sync-free path.

Policy (one rule per function, the same on both paths):

* NaN anywhere in ``x``: ``ValueError`` naming ``x``;
* ``+inf`` entries get 1 and ``-inf`` entries 0 (``hard_topk``: always / never selected) while a
  row has at most ``k`` entries ``+inf`` and at least ``k`` above ``-inf``; else ``ValueError``;
* where ``x`` cannot be read (sync-free path on an accelerator, ``torch.compile``) the check is
  skipped and the rows it would refuse come out as NaN rows; simulated here on CPU.

Batch invariance: a row's output and gradient are bitwise the same alone, in a batch of 1,000
other rows and in any order.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import dcem
import dcem.soft_topk as soft_topk
from dcem import LML, hard_topk, lml

pytestmark = [pytest.mark.filterwarnings("error::RuntimeWarning"), pytest.mark.usefixtures("sync_path")]

INF, NAN = math.inf, math.nan


def _x(rows, dtype=torch.float64):
    return torch.tensor(rows, dtype=dtype)


# --------------------------------------------------------------------------- NaN


@pytest.mark.parametrize("n,k", [(4, 2), (4, 4), (1, 1), (300, 7)])
@pytest.mark.parametrize("fn", ["lml", "LML", "hard_topk"])
def test_nan_is_refused_naming_x(dtype, fn, n, k):
    x = torch.randn(3, n, dtype=dtype)
    x[1, n // 2] = NAN
    call = {"lml": lambda: lml(x, k, 0.5), "LML": lambda: LML(k, 0.5)(x)}
    call["hard_topk"] = lambda: hard_topk(x, k)
    with pytest.raises(ValueError, match="x must not contain NaN"):
        call[fn]()  # on main: the soft top-k with k = n returned NaN, hard_topk selected the NaN


# --------------------------------------------------------------------------- infinities


@pytest.mark.parametrize("low", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_minus_inf_gets_zero_plus_inf_gets_one(low):
    x = _x([[0.3, -INF, 1.0, INF, -0.2, -INF], [-INF, 2.0, 0.0, 1.0, -1.0, 0.5]]).to(low)
    for k in (1, 2, 3):
        y = lml(x, k, 0.7)
        assert torch.isfinite(y).all()
        assert torch.equal(y[x == INF], torch.ones_like(y[x == INF]))
        assert torch.equal(y[x == -INF], torch.zeros_like(y[x == -INF]))
        tol = 0.02 * k if low in (torch.float16, torch.bfloat16) else 1e-5 * k
        assert (y.double().sum(-1) - k).abs().max() <= tol
        h = hard_topk(x, k)
        assert torch.equal(h[x == INF], torch.ones_like(h[x == INF]))
        assert torch.equal(h[x == -INF], torch.zeros_like(h[x == -INF]))


def test_infinite_entries_leave_the_finite_problem_exact(dtype):
    # the finite entries solve the problem with k - (#+inf) over the finite entries only
    g = torch.Generator().manual_seed(3)
    fin = torch.randn(5, 7, generator=g, dtype=dtype)
    x = torch.cat([fin, torch.full((5, 2), INF, dtype=dtype), torch.full((5, 3), -INF, dtype=dtype)], -1)
    for k in (3, 5, 8):
        y = lml(x, k, 0.4)
        ref = lml(fin, k - 2, 0.4)
        tol = 4e-6 if dtype == torch.float32 else 1e-13  # two solves, each within 2e-6 (test_lml)
        torch.testing.assert_close(y[:, :7], ref, rtol=0, atol=tol)
    # exactly k entries +inf: they take all the mass; exactly k above -inf: all of them get 1
    zeros, ones = torch.zeros(5, 7, dtype=dtype), torch.ones(5, 9, dtype=dtype)
    assert torch.equal(lml(x, 2, 0.4), torch.cat([zeros, ones[:, :2], zeros[:, :3]], -1))
    assert torch.equal(lml(x, 9, 0.4), torch.cat([ones, zeros[:, :3]], -1))


def test_gradient_is_zero_at_infinite_entries_and_finite_everywhere(dtype):
    x = _x([[0.3, -INF, 1.0, INF, -0.2], [INF, INF, 0.0, 1.0, -INF]], dtype).requires_grad_()
    tau = torch.tensor([0.5, 2.0], dtype=dtype, requires_grad=True)
    y = lml(x, 2, tau)
    gx, gt = torch.autograd.grad((y * torch.arange(5.0, dtype=dtype)).sum(), (x, tau))
    assert torch.isfinite(gx).all() and torch.isfinite(gt).all()
    assert torch.equal(gx[~torch.isfinite(x)], torch.zeros_like(gx[~torch.isfinite(x)]))
    assert torch.equal(gx[1], torch.zeros_like(gx[1])) and gt[1] == 0  # row 1 is settled by its infinities


@pytest.mark.parametrize("fn", ["lml", "hard_topk"])
def test_infeasible_infinities_are_refused_naming_x(fn):
    f = lml if fn == "lml" else hard_topk
    with pytest.raises(ValueError, match="x: row 1 .* 3 entries \\+inf"):
        f(_x([[0.0, 1.0, 2.0, 3.0], [INF, INF, INF, 0.0]]), 2)
    with pytest.raises(ValueError, match="x: row 0 .* 1 above -inf"):
        f(_x([[-INF, -INF, 2.0, -INF], [0.0, 1.0, 2.0, 3.0]]), 2)
    with pytest.raises(ValueError, match="x: row 0"):
        f(_x([[-INF, 0.0, 1.0]]), 3)  # k = n: every entry is selected, a -inf cannot be


def test_k_equals_n_with_plus_inf_is_all_ones():
    x = _x([[INF, 0.0, -3.0]]).requires_grad_()
    y = lml(x, 3, 0.5)
    assert torch.equal(y.detach(), torch.ones(1, 3, dtype=torch.float64))
    y.sum().backward()
    assert torch.equal(x.grad, torch.zeros_like(x))


def test_unreadable_x_gives_nan_rows_and_leaves_the_others(monkeypatch, sync_path):
    """Where the check is skipped (no free host read), refused rows come out NaN; the rest is unchanged."""
    if sync_path == "host":
        pytest.skip("the host-checked path always reads x")
    x = _x([[0.0, 1.0, 2.0, 3.0], [INF, INF, INF, 0.0], [0.0, NAN, 1.0, 2.0], [-INF, -INF, -INF, 1.0]])
    ok = lml(x[:1], 2, 0.5)
    monkeypatch.setattr(soft_topk, "host_reads_free", lambda t: False)
    y = lml(x, 2, 0.5)
    assert torch.isnan(y[1:]).all() and torch.equal(y[:1], ok)
    y = lml(x, 4, 0.5)  # k = n: rows 1 (three +inf) and 0 are all ones, NaN and -inf rows NaN
    assert torch.equal(y[:2], torch.ones(2, 4, dtype=torch.float64)) and torch.isnan(y[2:]).all()
    tau = torch.tensor([0.5, -1.0, NAN, 1.0], dtype=torch.float64)
    y = lml(x[[0, 0, 0, 0]], 2, tau)
    assert torch.equal(y[0], ok[0]) and torch.isnan(y[1:3]).all() and torch.isfinite(y[3]).all()
    h = hard_topk(x, 2)
    assert torch.isnan(h[1:]).all() and torch.equal(h[0], hard_topk(x[0], 2))


# --------------------------------------------------------------------------- dtypes and shapes


@pytest.mark.parametrize("dt", [torch.int64, torch.int32, torch.bool, torch.complex64])
def test_non_float_x_is_refused_by_lml(dt):
    with pytest.raises(TypeError, match="x must be a floating-point tensor"):
        lml(torch.zeros(2, 4, dtype=dt), 2)
    with pytest.raises(TypeError, match="x must be a floating-point tensor"):
        LML(2)(torch.zeros(2, 4, dtype=dt))


def test_hard_topk_takes_integers_and_refuses_bool_and_complex():
    x = torch.tensor([[3, 1, 2, 2], [0, 5, 5, -1]])
    assert torch.equal(hard_topk(x, 2), torch.tensor([[1, 0, 1, 0], [0, 1, 1, 0]]))
    for dt in (torch.bool, torch.complex64):
        with pytest.raises(TypeError, match="x must be a real"):
            hard_topk(torch.zeros(2, 4, dtype=dt), 2)


@pytest.mark.parametrize("fn", [lml, hard_topk])
def test_empty_last_dim_and_zero_dim_name_x(fn):
    for shape in ((3, 0), (0,), ()):
        with pytest.raises(ValueError, match="x must have shape"):
            fn(torch.zeros(shape), 1)


@pytest.mark.parametrize("fn", [lml, hard_topk])
def test_k_zero_and_k_above_n_name_k(fn):
    for k in (0, 5, -1, 2.5):
        with pytest.raises(ValueError, match="k must be an integer with 1 <= k <= n = 4"):
            fn(torch.zeros(3, 4), k)
    for k in ("2", [2], torch.tensor(2)):
        with pytest.raises(TypeError, match="k must be"):
            fn(torch.zeros(3, 4), k)


# --------------------------------------------------------------------------- temperature shapes


def test_keep_dim_tau_equals_batch_tau(dtype):
    x = torch.randn(4, 6, dtype=dtype)
    t = torch.rand(4, dtype=dtype) + 0.2
    assert torch.equal(lml(x, 2, t.unsqueeze(-1)), lml(x, 2, t))  # (B, 1) for (B, n)
    x3 = torch.randn(2, 3, 6, dtype=dtype)
    t3 = torch.rand(2, 3, dtype=dtype) + 0.2
    assert torch.equal(lml(x3, 2, t3.unsqueeze(-1)), lml(x3, 2, t3))  # (2, 3, 1)
    assert torch.equal(lml(x3, 2, t3[:, :1, None]), lml(x3, 2, t3[:, :1]))  # (2, 1, 1) broadcasts
    assert torch.equal(lml(x3, 2, torch.tensor([[0.5]], dtype=dtype)), lml(x3, 2, 0.5))


@pytest.mark.parametrize("shape", [(3, 1), (3,), (1, 1), ()])
def test_gradcheck_tau_shapes(shape):
    x = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)
    tau = (torch.rand(shape, dtype=torch.float64) + 0.3).requires_grad_()
    assert torch.autograd.gradcheck(lambda a, t: lml(a, 2, t), (x, tau), eps=1e-6, atol=1e-7, rtol=1e-5)


def test_bad_tau_tensors_name_tau():
    x = torch.zeros(3, 5)
    for shape in ((5,), (3, 2), (2, 1), (3, 1, 1)):
        with pytest.raises(ValueError, match=r"tau of shape .* broadcasts neither to the batch shape \(3,\)"):
            lml(x, 2, torch.ones(shape))
    for bad in (INF, 0.0, -1.0, NAN):
        with pytest.raises(ValueError, match="tau must be finite and > 0"):
            lml(x, 2, torch.tensor([1.0, bad, 1.0]).unsqueeze(-1))
    with pytest.raises(TypeError, match="tau must be a float for LML"):
        LML(2, torch.tensor(0.5))


# --------------------------------------------------------------------------- batch invariance


def _rows_and_grads(x, k, tau, sync):
    x = x.detach().clone().requires_grad_()
    y = lml(x, k, tau, sync=sync)
    w = torch.cos(torch.arange(x.numel(), dtype=x.dtype)).reshape(x.shape)  # fixed per position
    (g,) = torch.autograd.grad(y, x, w[..., : x.shape[-1]])
    return y.detach(), g


@pytest.mark.parametrize("n,k", [(100, 10), (7, 3), (33, 30)])
def test_row_alone_equals_row_in_a_batch_of_1000(dtype, sync_path, n, k):
    g = torch.Generator().manual_seed(n)
    scale = 10.0 ** torch.randint(-3, 4, (1000, 1), generator=g)
    x = (torch.randn(1000, n, generator=g, dtype=torch.float64) * scale).to(dtype)
    x[5, :3] = INF if k >= 3 else 0.0
    x[6, k - n :] = -INF  # exactly k entries above -inf: they get 1
    tau = torch.rand(1000, 1, generator=g, dtype=dtype) + 0.05
    ya, ga = _rows_and_grads(x, k, tau, sync_path)
    w = torch.cos(torch.arange(1000 * n, dtype=dtype)).reshape(1000, n)
    for i in [0, 5, 6, 499, 998, 999]:
        xi = x[i : i + 1].clone().requires_grad_()
        yi = lml(xi, k, tau[i : i + 1], sync=sync_path)
        (gi,) = torch.autograd.grad(yi, xi, w[i : i + 1])
        assert torch.equal(yi, ya[i : i + 1]), i
        assert torch.equal(gi, ga[i : i + 1]), i


@st.composite
def batches(draw):
    n = draw(st.integers(2, 40))
    k = draw(st.integers(1, n - 1))
    rows = draw(st.integers(1, 12))
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((rows, n)) * 10.0 ** rng.integers(-6, 7, size=(rows, 1))
    x[rng.random((rows, n)) < 0.1] = -INF
    tau = draw(st.sampled_from([1e-3, 0.1, 1.0, 30.0, "rows"]))
    if tau == "rows":
        tau = torch.from_numpy(10.0 ** rng.uniform(-3, 2, size=(rows, 1)))
    perm = draw(st.permutations(range(rows)))
    sub = draw(st.lists(st.integers(0, rows - 1), min_size=1, max_size=rows))
    return x, k, tau, list(perm), sub


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])  # sync_path holds for all draws
@given(batches(), st.sampled_from([torch.float32, torch.float64]))
def test_property_batch_composition_and_order_do_not_change_a_row(sync_path, batch, dt):
    xnp, k, tau, perm, sub = batch
    x = torch.from_numpy(xnp).to(dt)
    t = tau.to(dt) if isinstance(tau, torch.Tensor) else tau
    live = (x > -INF).sum(-1)
    x[live < k] = 0.0  # keep every row feasible (infeasible rows are refused as a whole)
    y, g = _rows_and_grads(x, k, t, sync_path)
    tp = t[perm] if isinstance(t, torch.Tensor) else t
    yp, gp = _rows_and_grads(x[perm], k, tp, sync_path)
    assert torch.equal(yp, y[perm])
    w = torch.cos(torch.arange(x.numel(), dtype=dt)).reshape(x.shape)
    ts = t[sub] if isinstance(t, torch.Tensor) else t
    xs = x[sub].clone().requires_grad_()
    (gs,) = torch.autograd.grad(lml(xs, k, ts, sync=sync_path), xs, w[sub])
    ys = lml(x[sub], k, ts, sync=sync_path)
    assert torch.equal(ys, y[sub])
    assert torch.equal(gs, _grad_with(x, k, t, sync_path, w)[sub])
    assert torch.isfinite(g).all() and torch.isfinite(gp).all()


def _grad_with(x, k, t, sync, w):
    xr = x.clone().requires_grad_()
    (g,) = torch.autograd.grad(lml(xr, k, t, sync=sync), xr, w)
    return g


def test_host_and_free_paths_agree_within_the_contract(dtype):
    x = torch.randn(50, 30, dtype=dtype) * 5
    x[0, :4] = -INF
    x[1, :2] = INF
    a, b = lml(x, 4, 0.3, sync="host"), lml(x, 4, 0.3, sync="free")
    torch.testing.assert_close(a, b, rtol=0, atol=1e-5 if dtype == torch.float32 else 1e-12)
    assert dcem.hard_topk(x, 4).sum() == 200


def test_unreadable_nan_row_with_exactly_k_plus_inf_is_nan(monkeypatch, sync_path):
    # found by tests/fuzz: a NaN row whose k-th largest value is +inf was settled as a k-inf row
    if sync_path == "host":
        pytest.skip("the host-checked path always reads x")
    x = _x([[INF, NAN, NAN, 0.7585, 1.4755], [-INF, 0.9, -0.1, -1.7, -0.9]], torch.float32)
    monkeypatch.setattr(soft_topk, "host_reads_free", lambda t: False)
    y = lml(x, 3, 1.5)
    assert torch.isnan(y[0]).all() and torch.isfinite(y[1]).all()


@pytest.mark.parametrize("n,k", [(100, 10), (9, 7)])
def test_cpu_loops_equal_the_tensor_loop_bitwise(monkeypatch, dtype, sync_path, n, k):
    # on CPU the Newton state lives in NumPy (and one row on Python floats); accelerators,
    # torch.compile and torch.func run the tensor loop: the same operations, so the same bits
    from dcem import _lml_dual

    g = torch.Generator().manual_seed(n)
    x = (torch.randn(60, n, generator=g, dtype=torch.float64) * 10.0 ** torch.randint(-3, 4, (60, 1))).to(
        dtype
    )
    x[3, :2], x[4, k - n :] = INF, -INF
    tau = torch.rand(60, 1, generator=g, dtype=dtype) + 0.05
    inputs = [(x, tau)] + [(x[i : i + 1], tau[i : i + 1]) for i in (0, 3, 4, 59)]  # one row: Python floats
    cpu = [_rows_and_grads(xi, k, ti, sync_path) for xi, ti in inputs]
    monkeypatch.setattr(_lml_dual, "_newton", _lml_dual._newton_tensors)
    monkeypatch.setattr(_lml_dual, "_one_row", lambda x: False)
    for (xi, ti), (y, gr) in zip(inputs, cpu):
        yt, gt = _rows_and_grads(xi, k, ti, sync_path)
        assert torch.equal(y, yt) and torch.equal(gr, gt)
