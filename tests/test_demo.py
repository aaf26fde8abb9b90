"""Tests of the ``dcem demo`` command (dcem/experiments/demo/)."""

from __future__ import annotations

import csv
import math

import pytest
import torch

pytest.importorskip("matplotlib")
pytest.importorskip("tqdm")

from dcem.__main__ import main  # noqa: E402
from dcem.experiments.demo import BumpObjective, DemoConfig, run  # noqa: E402
from dcem.experiments.demo.compute import run_cem as _run_cem  # noqa: E402

PNGS = ("cem_iterates.png", "dcem_loss.png", "dcem_surface.png")


def test_objective_matches_hand_computed_values() -> None:
    obj = BumpObjective(
        centers=[[1.0, 2.0]], heights=[3.0], widths=[0.5], tilt=[0.1, -0.2], dtype=torch.float64
    )
    x = torch.tensor([[1.0, 2.0], [1.5, 2.0], [0.0, 0.0]], dtype=torch.float64)
    # f(x) = 0.1 x1 - 0.2 x2 - 3 exp(-||x - (1, 2)||^2 / (2 * 0.25))
    expected = [
        0.1 - 0.4 - 3.0,
        0.15 - 0.4 - 3.0 * math.exp(-0.25 / 0.5),
        -3.0 * math.exp(-5.0 / 0.5),
    ]
    torch.testing.assert_close(obj(x), torch.tensor(expected, dtype=torch.float64))
    # batch shapes are kept: (n_batch, n_sample, 2) -> (n_batch, n_sample), as dcem.dcem needs
    assert BumpObjective()(torch.zeros(4, 7, 2)).shape == (4, 7)
    assert obj(x).dtype == torch.float64


def test_objective_default_minimum_and_gradients() -> None:
    obj = BumpObjective(dtype=torch.float64)
    xs = torch.linspace(-3, 3, 301, dtype=torch.float64)
    grid = torch.stack(torch.meshgrid(xs, xs, indexing="xy"), -1)
    i = int(obj(grid).argmin())
    best = grid.reshape(-1, 2)[i]
    # the deepest bump (lower right) holds the global minimum of the default objective
    assert torch.linalg.vector_norm(best - obj.centers[0].detach()) < 0.2
    # every parameter receives a gradient
    obj(grid).mean().backward()
    for name, p in obj.named_parameters():
        assert p.grad is not None and bool(p.grad.abs().sum() > 0), name


@pytest.mark.parametrize(
    "kwargs",
    [
        {"centers": [1.0, 2.0]},
        {"heights": [1.0, 2.0]},
        {"widths": [1.0, 0.0, 1.0]},
        {"tilt": [1.0, 2.0, 3.0]},
    ],
)
def test_objective_rejects_bad_parameters(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        BumpObjective(**kwargs)


def test_objective_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="x must have shape"):
        BumpObjective()(torch.zeros(5, 3))


def test_quick_demo_writes_its_files(tmp_path) -> None:
    res = run(tmp_path / "out", quick=True, progress=False)
    names = {p.name for p in res.files}
    assert names == {*PNGS, "dcem_loss.csv", "dcem_training.gif"}
    for p in res.files:
        assert p.parent == tmp_path / "out" and p.stat().st_size > 0
    for name in PNGS:
        with open(tmp_path / "out" / name, "rb") as fh:
            assert fh.read(8) == b"\x89PNG\r\n\x1a\n"
    from PIL import Image

    with Image.open(tmp_path / "out" / "dcem_training.gif") as im:
        assert im.format == "GIF" and im.n_frames >= 2
    with open(tmp_path / "out" / "dcem_loss.csv", newline="") as fh:
        rows = list(csv.reader(fh))
    steps = DemoConfig.quick().steps
    assert rows[0] == ["step", "loss"] and len(rows) == steps + 1
    assert len(res.losses) == steps and all(math.isfinite(v) for v in res.losses)
    assert not list((tmp_path / "out").glob("*.tmp"))


def test_learned_minimiser_moves_towards_target(tmp_path) -> None:
    res = run(tmp_path, quick=True, steps=20, gif=False, progress=False)
    assert not (tmp_path / "dcem_training.gif").exists()
    # the DCEM minimiser (same evaluation noise before and after) ends much closer to the target
    assert res.initial_distance > 2.0
    assert res.final_distance < 0.5 * res.initial_distance
    assert res.losses[-1] < 0.1 * res.losses[0]
    # the vanilla CEM run of part 1 finds the deepest bump of the initial objective
    assert math.dist(res.cem_solution, res.initial_grid_minimiser) < 0.3


def test_same_seed_same_numbers(tmp_path) -> None:
    a = run(tmp_path / "a", quick=True, steps=3, gif=False, progress=False, seed=3)
    b = run(tmp_path / "b", quick=True, steps=3, gif=False, progress=False, seed=3)
    assert a.losses == b.losses and a.final_minimiser == b.final_minimiser
    assert a.cem_solution == b.cem_solution
    # another seed draws other samples
    obj, cfg = BumpObjective(), DemoConfig.quick()
    trace3, _ = _run_cem(obj, cfg, 3)
    trace4, _ = _run_cem(obj, cfg, 4)
    assert torch.equal(trace3.X[0], _run_cem(obj, cfg, 3)[0].X[0])
    assert not torch.equal(trace3.X[0], trace4.X[0])


@pytest.mark.parametrize("kwargs", [{"steps": 0}, {"steps": 1.5}, {"seed": -1}])
def test_run_rejects_bad_arguments(tmp_path, kwargs: dict) -> None:
    with pytest.raises(ValueError):
        run(tmp_path, quick=True, progress=False, **kwargs)


def test_cli_reports_the_output_folder(tmp_path, capsys) -> None:
    out = tmp_path / "cli-out"
    main(["demo", "--quick", "--no-gif", "--steps", "2", "--seed", "1", "--out", str(out)])
    captured = capsys.readouterr()
    assert str(out.resolve()) in captured.out
    assert {p.name for p in out.iterdir()} == {*PNGS, "dcem_loss.csv"}
    with pytest.raises(SystemExit):
        main(["demo", "--steps", "0", "--out", str(out)])
