"""``dcem-exp pendulum``: the swing-up works at the quick preset, logs CSV and resumes exactly."""

from __future__ import annotations

import csv
import json
import math

import pytest
import torch

pytest.importorskip("hydra")

from dcem.control import PendulumDx  # noqa: E402
from dcem.experiments import pendulum  # noqa: E402
from dcem.experiments.common.runs import CheckpointError  # noqa: E402

# a short run for the resume and checkpoint tests (the swing-up itself is not checked there)
SHORT = ["scale=tiny", "progress=false", "animate=false", "n_systems=2", "n_steps=6", "ckpt_every=2",
         "horizon=5", "mpc.n_sample=20", "mpc.n_elite=4", "mpc.n_iter=2"]  # fmt: skip


def _rows(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _upright_fraction(x: torch.Tensor) -> float:
    """Fraction of systems within 0.2 rad of upright over all of the last 10 states."""
    return float((x[-10:, :, 0] > math.cos(0.2)).all(0).float().mean())


def test_tiny_preset_swings_every_pendulum_up(tmp_path):
    out = tmp_path / "p"
    pendulum.main([f"out_dir={out}", "scale=tiny", "progress=false"])
    for f in ("config.yaml", "log.csv", "checkpoint.pt", "trajectories.png", "trajectories.pt",
              "summary.json", "swingup.gif"):  # fmt: skip
        assert (out / f).stat().st_size > 0, f
    s = json.loads((out / "summary.json").read_text())
    traj = torch.load(out / "trajectories.pt")
    x, u = traj["x"], traj["u"]
    assert s["n_steps"] == 80 and x.shape == (81, 4, 3) and u.shape == (80, 4, 1)
    # the controller: every pendulum upright and still over the last 10 steps (0.5 s)
    assert s["frac_upright_last_10_steps"] == 1.0 == _upright_fraction(x)
    assert float(x[-10:, :, 2].abs().max()) < 1.0
    assert float(u.abs().max()) <= 2.0 + 1e-6
    # the same initial states without control: (almost) none ends upright
    dx = PendulumDx()
    xs = [x[0]]
    for _ in range(80):
        xs.append(dx.step(xs[-1], torch.zeros(4, 1)))
    assert _upright_fraction(torch.stack(xs)) < 0.5
    # log.csv: one row per checkpoint, fraction upright rising to 1
    rows = _rows(out / "log.csv")
    assert [int(r["step"]) for r in rows] == [0, 20, 40, 60, 80]
    assert float(rows[-1]["frac_upright"]) == 1.0 and float(rows[0]["frac_upright"]) < 1.0


def test_resume_after_interruption_is_exact(tmp_path, monkeypatch):
    from dcem.experiments.pendulum import loop

    a, b = tmp_path / "a", tmp_path / "b"
    pendulum.main([f"out_dir={a}", *SHORT])
    save = loop.save_torch

    def save_then_die(obj, path):
        save(obj, path)
        raise KeyboardInterrupt  # killed right after the first checkpoint (step 2)

    monkeypatch.setattr(loop, "save_torch", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        pendulum.main([f"out_dir={b}", *SHORT])
    assert [int(r["step"]) for r in _rows(b / "log.csv")] == [0, 2]
    monkeypatch.setattr(loop, "save_torch", save)
    pendulum.main([f"out_dir={b}", *SHORT])
    ta, tb = torch.load(a / "trajectories.pt"), torch.load(b / "trajectories.pt")
    for k in ta:
        torch.testing.assert_close(ta[k], tb[k], rtol=0, atol=0)
    ra, rb = _rows(a / "log.csv"), _rows(b / "log.csv")
    assert [r["step"] for r in rb] == ["0", "2", "4", "6"]
    assert [r["mean_cost"] for r in ra] == [r["mean_cost"] for r in rb]
    # a finished run is not simulated again
    mtime = (b / "checkpoint.pt").stat().st_mtime_ns
    pendulum.main([f"out_dir={b}", *SHORT])
    assert (b / "checkpoint.pt").stat().st_mtime_ns == mtime


def test_other_config_and_bad_checkpoints_are_refused(tmp_path):
    out = tmp_path / "p"
    pendulum.main([f"out_dir={out}", *SHORT])
    config = (out / "config.yaml").read_text()
    with pytest.raises(ValueError, match="another configuration.*n_steps: 6 there, 8 now"):
        pendulum.main([f"out_dir={out}", *SHORT, "n_steps=8"])
    assert (out / "config.yaml").read_text() == config
    ckpt = out / "checkpoint.pt"
    ckpt.write_bytes(ckpt.read_bytes()[:64])
    with pytest.raises(CheckpointError, match="unreadable") as err:
        pendulum.main([f"out_dir={out}", *SHORT])
    assert str(ckpt) in str(err.value) and "resume=false" in str(err.value)
    torch.save({"x": torch.zeros(7, 5, 3)}, ckpt)  # another number of systems
    with pytest.raises(CheckpointError, match="does not fit"):
        pendulum.main([f"out_dir={out}", *SHORT])
    pendulum.main([f"out_dir={out}", *SHORT, "resume=false"])
    assert json.loads((out / "summary.json").read_text())["n_steps"] == 6
