"""Tests of the energy-based regression experiment (paper sect. 4.1, 5.1, app. B)."""

from __future__ import annotations

import csv
import json
import math

import pytest
import torch
from torch import nn
from torch.func import functional_call

from dcem.experiments.regression import load_config, main
from dcem.experiments.regression.analysis import grid_argmin, mean_ci
from dcem.experiments.regression.model import DCEMPredictor, EnergyNet, UnrolledGD, make_data
from dcem.experiments.regression.train import read_log, train_run


class Quadratic(nn.Module):
    """E(x, y) = a/2 (y - b x)^2 + c: minimiser b x, closed-form GD iterates."""

    n_x = 1
    n_y = 1

    def __init__(self, a: float = 2.0, b: float = -1.5, c: float = 0.3) -> None:
        super().__init__()
        self.a = nn.Parameter(torch.tensor(a, dtype=torch.float64))
        self.b = nn.Parameter(torch.tensor(b, dtype=torch.float64))
        self.c = c

    def forward(self, x, y):
        return (0.5 * self.a * (y - self.b * x).pow(2) + self.c).squeeze(-1)


def _small_net(seed: int = 0) -> EnergyNet:
    torch.manual_seed(seed)
    return EnergyNet(1, 1, n_hidden=8).double()


# ---------------------------------------------------------------- data and energy


def test_make_data():
    x, y, xt, yt = make_data(100)
    assert x.shape == (100, 1) and xt.shape == (99, 1)
    assert float(x[0]) == 0.0 and math.isclose(float(x[-1]), 2 * math.pi, rel_tol=1e-6)
    torch.testing.assert_close(y, x * torch.sin(x))
    assert bool(((xt > x[:-1]) & (xt < x[1:])).all())
    with pytest.raises(ValueError, match="n_points"):
        make_data(1)


def test_energy_net_shapes_and_broadcast():
    E = _small_net()
    x = torch.randn(5, 1, 1, dtype=torch.float64)
    Y = torch.randn(5, 7, 1, dtype=torch.float64)
    out = E(x, Y)
    assert out.shape == (5, 7)
    ref = E(x.expand(5, 7, 1).reshape(-1, 1), Y.reshape(-1, 1)).view(5, 7)
    torch.testing.assert_close(out, ref)
    acts = [m for m in E.net if isinstance(m, nn.Softplus)]
    lins = [m for m in E.net if isinstance(m, nn.Linear)]
    assert len(acts) == 3 and len(lins) == 4 and lins[0].in_features == 2
    with pytest.raises(ValueError, match="expected x"):
        E(torch.zeros(3, 2, dtype=torch.float64), torch.zeros(3, 1, dtype=torch.float64))
    with pytest.raises(ValueError, match="n_hidden"):
        EnergyNet(n_hidden=0)


# ---------------------------------------------------------------- unrolled gradient descent


def test_unrolled_gd_matches_closed_form_on_quadratic():
    E = Quadratic()
    x = torch.linspace(0, 6, 9, dtype=torch.float64).unsqueeze(-1)
    lr, T, y0 = 0.1, 10, 0.4
    gd = UnrolledGD(E, n_iter=T, inner_lr=lr, y0=y0)
    a, b = E.a.detach(), E.b.detach()
    expected = b * x + (1 - lr * a) ** T * (y0 - b * x)
    torch.testing.assert_close(gd(x), expected)
    traj = gd(x, trajectory=True)
    assert traj.shape == (T + 1, 9, 1)
    for t in range(T + 1):
        torch.testing.assert_close(traj[t], b * x + (1 - lr * a) ** t * (y0 - b * x))


def test_unrolled_gd_matches_hand_written_loop():
    """Per point, step by step: exactly against per-point autograd, and against central finite
    differences of the energy (an independent gradient)."""
    E = _small_net(1)
    x = torch.linspace(0, 2 * math.pi, 6, dtype=torch.float64).unsqueeze(-1)
    gd = UnrolledGD(E, n_iter=7, inner_lr=0.1, y0=0.0)
    out = gd(x)
    ref_ad, ref_fd = [], []
    h = 1e-6
    for i in range(x.shape[0]):
        xi = x[i : i + 1]
        y_ad = torch.zeros(1, 1, dtype=torch.float64)
        y_fd = torch.zeros(1, 1, dtype=torch.float64)
        for _ in range(7):
            yv = y_ad.clone().requires_grad_(True)
            (g,) = torch.autograd.grad(E(xi, yv).sum(), yv)
            y_ad = y_ad - 0.1 * g
            with torch.no_grad():
                g_fd = (E(xi, y_fd + h) - E(xi, y_fd - h)) / (2 * h)
            y_fd = y_fd - 0.1 * g_fd.view(1, 1)
        ref_ad.append(y_ad)
        ref_fd.append(y_fd)
    torch.testing.assert_close(out, torch.cat(ref_ad), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(out.detach(), torch.cat(ref_fd), rtol=0, atol=1e-7)
    # the same steps without a graph (evaluation mode) give the same values
    with torch.no_grad():
        torch.testing.assert_close(gd(x), out)
        assert not gd(x).requires_grad
    torch.testing.assert_close(gd(x, n_iter=3), gd(x, trajectory=True)[3])


def test_unrolled_gd_gradcheck_theta():
    """Gradient w.r.t. theta through the unrolled steps equals finite differences (float64)."""
    E = _small_net(2)
    gd = UnrolledGD(E, n_iter=4, inner_lr=0.1)
    x = torch.linspace(0.0, 6.0, 5, dtype=torch.float64).unsqueeze(-1)
    y = x * torch.sin(x)
    names = [n for n, _ in gd.named_parameters()]
    params = tuple(p.detach().clone().requires_grad_(True) for p in gd.parameters())

    def loss(*ps):
        return (functional_call(gd, dict(zip(names, ps)), (x,)) - y).pow(2).mean()

    assert torch.autograd.gradcheck(loss, params, eps=1e-6, atol=1e-5, rtol=1e-4)


def test_unrolled_gd_gradients_reach_theta():
    """Every weight gets a finite non-zero gradient through the unrolled steps."""
    E = _small_net(3)
    gd = UnrolledGD(E, n_iter=5, inner_lr=0.1)
    x = torch.linspace(0, 6, 5, dtype=torch.float64).unsqueeze(-1)
    (gd(x) - 1.0).pow(2).mean().backward()
    w = E.net[0].weight
    assert w.grad is not None and torch.isfinite(w.grad).all() and w.grad.abs().sum() > 0
    for n, p in E.named_parameters():
        if n != "net.6.bias":
            assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, n
    # the last bias shifts E uniformly and does not enter dE/dy: no gradient at all
    assert E.net[-1].bias.grad is None


def test_unrolled_gd_validation():
    E = _small_net()
    with pytest.raises(ValueError, match="n_iter"):
        UnrolledGD(E, n_iter=0)
    with pytest.raises(ValueError, match="inner_lr"):
        UnrolledGD(E, inner_lr=-1.0)
    gd = UnrolledGD(E)
    with pytest.raises(ValueError, match="x must have shape"):
        gd(torch.zeros(4, dtype=torch.float64))
    with pytest.raises(TypeError, match="floating-point"):
        gd(torch.zeros(4, 1, dtype=torch.long))


# ---------------------------------------------------------------- DCEM predictor


def test_dcem_predictor_finds_minimiser_of_quadratic():
    E = Quadratic(a=2.0, b=-0.8)
    x = torch.linspace(0, 2 * math.pi, 50, dtype=torch.float64).unsqueeze(-1)
    pred = DCEMPredictor(E, n_iter=10, n_sample=100, n_elite=10, temp=1.0, init_sigma=7.0)
    g = torch.Generator().manual_seed(0)
    out = pred(x, generator=g)
    assert out.shape == (50, 1) and out.dtype == torch.float64
    torch.testing.assert_close(out, -0.8 * x, atol=0.15, rtol=0)
    # reproducible with a seeded generator
    a = pred(x, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(a, pred(x, generator=torch.Generator().manual_seed(3)))


def test_dcem_predictor_gradients_reach_theta():
    E = _small_net(4)
    pred = DCEMPredictor(E, n_iter=5, n_sample=30, n_elite=5, init_sigma=3.0, iter_eps=None)
    x = torch.linspace(0, 6, 7, dtype=torch.float64).unsqueeze(-1)
    y = x * torch.sin(x)
    loss = (pred(x, generator=torch.Generator().manual_seed(0)) - y).pow(2).mean()
    loss.backward()
    for n, p in E.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), n
        if n != "net.6.bias":
            assert p.grad.abs().sum() > 0, n
    # with normalised energies the output is invariant to a shift of E: zero gradient on the last bias
    torch.testing.assert_close(E.net[-1].bias.grad, torch.zeros_like(E.net[-1].bias), atol=1e-9, rtol=0)


def test_dcem_predictor_gradcheck_theta():
    """With the samples fixed by a generator, d loss / d theta equals finite differences."""
    E = _small_net(5)
    pred = DCEMPredictor(E, n_iter=3, n_sample=16, n_elite=4, init_sigma=3.0, iter_eps=None)
    x = torch.linspace(0.5, 5.5, 3, dtype=torch.float64).unsqueeze(-1)
    y = x * torch.sin(x)
    w0 = E.net[2].weight.detach().clone().requires_grad_(True)

    def loss(w):
        gen = torch.Generator().manual_seed(0)
        out = functional_call(pred, {"energy.net.2.weight": w}, (x,), {"generator": gen}, strict=False)
        return (out - y).pow(2).mean()
    assert torch.autograd.gradcheck(loss, (w0,), eps=1e-6, atol=1e-5, rtol=1e-3)


def test_dcem_predictor_validation():
    E = _small_net()
    with pytest.raises(ValueError, match="n_elite"):
        DCEMPredictor(E, n_sample=10, n_elite=11)
    with pytest.raises(ValueError, match="init_sigma"):
        DCEMPredictor(E, init_sigma=0.0)
    with pytest.raises(ValueError, match="n_iter"):
        DCEMPredictor(E)(torch.zeros(3, 1, dtype=torch.float64), n_iter=0)


def test_functional_call_compatible():
    """The predictors work with torch.func.functional_call (swapped parameters)."""
    E = _small_net(6)
    gd = UnrolledGD(E, n_iter=3)
    x = torch.linspace(0, 6, 4, dtype=torch.float64).unsqueeze(-1)
    params = {k: torch.zeros_like(v) for k, v in gd.named_parameters()}
    out = functional_call(gd, params, (x,))
    torch.testing.assert_close(out, torch.zeros_like(out))  # constant energy: no movement from y0


# ---------------------------------------------------------------- analysis helpers


def test_mean_ci_and_grid_argmin():
    stats = pytest.importorskip("scipy.stats")
    m, h = mean_ci([1.0, 2.0, 3.0])
    assert m == 2.0 and math.isclose(h, stats.t.ppf(0.975, 2) * 1.0 / math.sqrt(3), rel_tol=1e-12)
    assert math.isclose(mean_ci([1.0, 3.0])[1], 12.706 * math.sqrt(2) / math.sqrt(2), rel_tol=1e-4)
    assert math.isnan(mean_ci([1.0])[1])
    E = Quadratic(a=1.0, b=0.5)
    x = torch.tensor([[0.0], [2.0], [4.0]], dtype=torch.float64)
    torch.testing.assert_close(grid_argmin(E, x, -5.0, 5.0, n=1001), 0.5 * x, atol=1e-2, rtol=0)


# ---------------------------------------------------------------- end to end


def _tiny(tmp_path, *extra):
    return ["scale=tiny", f"out_dir={tmp_path}", "progress=false", *extra]


def test_end_to_end_tiny(tmp_path):
    main(_tiny(tmp_path))
    for name in ("summary.csv", "ablation.csv", "results.json", "summary.md", "config.yaml",
                 "loss_curves.png", "energy_surfaces.png", "energy_surfaces_all_seeds.png",
                 "ablation_mse.png", "ablation_predictions.png"):  # fmt: skip
        assert (tmp_path / name).stat().st_size > 0, name
    res = json.loads((tmp_path / "results.json").read_text())
    assert set(res["methods"]) == {"gd", "dcem"}
    for a in res["methods"].values():
        assert len(a["ablation_train_mse"]["mean"]) == 4
        assert math.isfinite(a["train_mse"]["mean"])
    with open(tmp_path / "ablation.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 2 * 2 * 4
    lg = read_log(tmp_path / "dcem" / "seed1" / "log.csv")
    assert [r["step"] for r in lg] == [0, 3, 6]
    # the summary's final train MSE is the one of the final model in the log
    with open(tmp_path / "summary.csv") as fh:
        summ = {(r["method"], r["seed"]): float(r["train_mse"]) for r in csv.DictReader(fh)}
    assert math.isclose(summ[("dcem", "1")], lg[-1]["train_mse"], rel_tol=1e-5)

    # finished runs are not retrained
    mtime = (tmp_path / "gd" / "seed0" / "ckpt.pt").stat().st_mtime_ns
    config = (tmp_path / "config.yaml").read_bytes()
    summary = (tmp_path / "summary.md").read_text()
    main(_tiny(tmp_path, "analyse=false"))
    assert [r["step"] for r in read_log(tmp_path / "gd" / "seed0" / "log.csv")] == [0, 3, 6]
    assert (tmp_path / "gd" / "seed0" / "ckpt.pt").stat().st_mtime_ns == mtime
    assert "6 updates" in summary
    # another configuration (or a bad override) pointed at the run is refused; nothing is rewritten
    for bad in (["train.n_updates=12"], ["train.lr=0.1"], ["methods=[gd]"]):
        with pytest.raises(ValueError, match="another configuration"):
            main(_tiny(tmp_path, *bad))
    with pytest.raises(ValueError, match="train.lr"):
        main(_tiny(tmp_path, "train.lr=abc"))
    assert (tmp_path / "config.yaml").read_bytes() == config
    assert (tmp_path / "summary.md").read_text() == summary
    assert (tmp_path / "gd" / "seed0" / "ckpt.pt").stat().st_mtime_ns == mtime


def test_corrupt_and_mismatched_checkpoints(tmp_path):
    from dcem.experiments.common.runs import CheckpointError

    out = tmp_path / "run"
    main(_tiny(out, "methods=[gd]", "seeds=[0]", "analyse=false"))
    ckpt = out / "gd" / "seed0" / "ckpt.pt"
    good = ckpt.read_bytes()
    ckpt.write_bytes(good[: len(good) // 2])  # truncated by a crash of something else
    with pytest.raises(CheckpointError, match="unreadable") as err:
        main(_tiny(out, "methods=[gd]", "seeds=[0]", "analyse=false"))
    assert str(ckpt) in str(err.value) and "resume=false" in str(err.value)
    assert len(str(err.value).splitlines()) == 1
    # a checkpoint of another configuration (copied in by hand)
    other = tmp_path / "other"
    main(_tiny(other, "methods=[gd]", "seeds=[0]", "analyse=false", "train.lr=0.01"))
    ckpt.write_bytes((other / "gd" / "seed0" / "ckpt.pt").read_bytes())
    with pytest.raises(CheckpointError, match="does not fit"):
        main(_tiny(out, "methods=[gd]", "seeds=[0]", "analyse=false"))
    # the way out: resume=false moves the old run aside and starts over
    main(_tiny(out, "methods=[gd]", "seeds=[0]", "analyse=false", "resume=false"))
    assert [r["step"] for r in read_log(out / "gd" / "seed0" / "log.csv")] == [0, 3, 6]
    aside = [p for p in tmp_path.iterdir() if p.name.startswith("run.old-")]
    assert len(aside) == 1 and (aside[0] / "config.yaml").exists()


@pytest.mark.parametrize("method", ["gd", "dcem"])
def test_resume_is_bit_identical(tmp_path, method):
    """Training 6 updates at once equals 3 updates, an interruption, then 3 more."""
    from omegaconf import OmegaConf

    cfg = OmegaConf.to_container(load_config(["scale=tiny"]), resolve=True)
    train_run(cfg, method, 0, tmp_path / "a", progress=False)
    cfg3 = {**cfg, "train": {**cfg["train"], "n_updates": 3}}
    train_run(cfg3, method, 0, tmp_path / "b", progress=False)
    # simulate rows written after the last checkpoint by a killed process
    with open(tmp_path / "b" / "log.csv", "a") as fh:
        fh.write("4,1,1,1,1,1,1\n")
    train_run(cfg, method, 0, tmp_path / "b", progress=False)
    a = torch.load(tmp_path / "a" / "model.pt")
    b = torch.load(tmp_path / "b" / "model.pt")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)
    la, lb = read_log(tmp_path / "a" / "log.csv"), read_log(tmp_path / "b" / "log.csv")
    assert [r["step"] for r in lb] == [0, 3, 6]
    assert [r["train_mse"] for r in la] == [r["train_mse"] for r in lb]


def test_config_scales():
    short = load_config([])
    paper = load_config(["scale=paper"])
    assert short.train.n_updates <= 2000 and paper.train.n_updates == 100000
    assert paper.train.batch_size == 1 and paper.train.n_repeat == 3 and paper.train.lr == 1e-3
    for cfg in (short, paper):
        assert cfg.gd.n_iter == 10 and cfg.gd.inner_lr == 0.1
        assert (cfg.dcem.n_iter, cfg.dcem.n_sample, cfg.dcem.n_elite) == (10, 100, 10)
        assert cfg.dcem.temp == 1.0 and cfg.dcem.init_sigma == 7.0 and cfg.dcem.normalize
        assert cfg.n_points == 100 and cfg.n_hidden == 128 and list(cfg.seeds) == [0, 1, 2]
    with pytest.raises(ValueError, match="methods"):
        load_config(["methods=[sgd]", "scale=tiny"])


def test_robust_final_metric_and_report(tmp_path):
    run = tmp_path / "run"
    main(_tiny(run, "report.last_evals=2"))
    # the reported final MSE is the mean of the last 2 evaluations of each run's log
    with open(run / "summary.csv") as fh:
        summ = {(r["method"], r["seed"]): r for r in csv.DictReader(fh)}
    lg = read_log(run / "dcem" / "seed1" / "log.csv")
    want = (lg[-1]["train_mse"] + lg[-2]["train_mse"]) / 2
    assert math.isclose(float(summ[("dcem", "1")]["train_mse_last"]), want, rel_tol=1e-6)
    res = json.loads((run / "results.json").read_text())
    vals = [float(summ[("gd", s)]["test_mse_last"]) for s in ("0", "1")]
    assert math.isclose(res["methods"]["gd"]["test_mse_last"]["mean"], sum(vals) / 2, rel_tol=1e-9)
    # the page's generated blocks come from the run; prose outside the markers is kept
    page = tmp_path / "page.md"
    page.write_text("# Regression\n\nprose\n")
    rep = [f"out_dir={run}", "mode=report", f"report.page={page}", f"report.img_dir={tmp_path / 'img'}"]
    main([*rep, "scale=tiny", "report.last_evals=2"])
    text = page.read_text()
    assert "prose" in text and "mean of last 2 evals" in text
    for block in ("setup", "main", "ablation"):
        assert f"<!-- report:{block} begin" in text
    assert f"{float(summ[('dcem', '1')]['train_mse_last']):.3g}" in text
    assert (tmp_path / "img" / "regression_loss_curves.png").is_file()
    with pytest.raises(ValueError, match="not an analysed regression run"):
        main([f"out_dir={tmp_path / 'nothing'}", "mode=report", f"report.page={page}", "scale=tiny"])
