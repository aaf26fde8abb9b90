"""``dcem-exp chain``: the cartpole pipeline on the 6-torque pendulum chain (tiny preset)."""

import csv
import json

import pytest
import torch

from dcem.control import PendulumChainDx
from dcem.experiments import chain

TINY = ["scale=tiny", "progress=false"]


def _rows(path):
    with open(path) as fh:
        return list(csv.DictReader(fh))


def test_config_and_task():
    cfg = chain.load_config([])
    assert cfg.task == "chain" and cfg.chain.n_links >= 6 and cfg.horizon >= 12
    assert cfg.dcem.n_sample == 100 and cfg.dcem.n_iter == 10 and cfg.expert.n_sample == 1000
    assert list(cfg.ablation.latent_sizes) == [2, 8] and list(cfg.ablation.temps) == [1.0, 0.0]
    assert len(cfg.ablation.seeds) == 3 and len(cfg.report.baseline_seeds) >= 3
    dx, cost = chain.make_task(chain.load_config(["chain.n_links=7", "chain.coupling=0.5"]))
    assert isinstance(dx, PendulumChainDx) and dx.n_ctrl == 7 and float(dx.params[3]) == 0.5
    x = dx.sample_state(3)
    assert cost(x, torch.zeros(3, 7)).shape == (3,)
    tiny = chain.load_config(["scale=tiny"])
    assert tiny.n_train_iter == 4 and tiny.chain.n_links == 3 and tiny.horizon == 4


def test_help(capsys):
    chain.main(["--help"])
    text = capsys.readouterr().out
    assert text.startswith("usage: dcem-exp chain [scale=full|tiny]") and "chain.n_links" in text


def test_train_writes_outputs_and_resumes(tmp_path):
    out = tmp_path / "run"
    chain.main([f"out_dir={out}", *TINY])
    written = {p.name for p in out.iterdir()}
    assert {"config.yaml", "log.csv", "checkpoint.pt", "best.pt", "expert.json", "summary.json"} <= written
    assert "curves.png" in written and "fig3.png" not in written  # fig. 3 draws the cartpole's one force
    s = json.loads((out / "summary.json").read_text())
    assert s["n_latent"] == 8 and isinstance(s["latent_test_cost"], float)
    rows = _rows(out / "log.csv")
    assert [int(r["iter"]) for r in rows if r["mode"] == "val"] == [0, 2, 4]
    chain.main([f"out_dir={out}", "plots=false", *TINY])  # finished: nothing retrained
    assert _rows(out / "log.csv") == rows
    with pytest.raises(ValueError, match="another configuration.*chain.coupling"):
        chain.main([f"out_dir={out}", "chain.coupling=1.0", *TINY])


def test_interrupted_and_extended_runs_equal_an_uninterrupted_one(tmp_path):
    from dcem.experiments.cartpole.run import train

    a, b = tmp_path / "a", tmp_path / "b"
    chain.main([f"out_dir={a}", "plots=false", "n_train_iter=6", *TINY])
    train(chain.load_config([*TINY, "n_train_iter=6"]), b, n_train_iter=2)  # interrupted after 2 updates
    chain.main([f"out_dir={b}", "plots=false", "n_train_iter=4", *TINY])  # resumed, finished at 4
    chain.main([f"out_dir={b}", "plots=false", "n_train_iter=6", *TINY])  # extended to 6
    ra = [{k: v for k, v in r.items() if k != "wall_s"} for r in _rows(a / "log.csv")]
    rb = [{k: v for k, v in r.items() if k != "wall_s"} for r in _rows(b / "log.csv")]
    assert ra == rb


def test_ablation_cells(tmp_path):
    out = tmp_path / "abl"
    chain.main([f"out_dir={out}", "mode=ablation", "plots=false", *TINY])
    rows = _rows(out / "ablation.csv")
    assert {(float(r["temp"]), int(r["n_latent"]), int(r["seed"])) for r in rows} == {
        (t, 2, s) for t in (1.0, 0.0) for s in (0, 1)
    }
