import csv
import json

import pytest

from dcem.experiments import cartpole

TINY = [
    "progress=false",
    "n_val=4",
    "val_interval=2",
    "ckpt_interval=2",
    "expert.n_sample=40",
    "expert.n_elite=4",
    "expert.n_iter=2",
    "dcem.n_sample=20",
    "dcem.n_elite=4",
    "dcem.n_iter=2",
    "horizon=8",
    "decoder.hidden_sizes=[16]",
    "vis.grid=5",
    "vis.n_states=2",
    "vis.n_lines=5",
]


def _rows(path):
    with open(path) as fh:
        return list(csv.DictReader(fh))


def test_config_composes_with_overrides():
    cfg = cartpole.load_config(["decoder.n_latent=8", "dcem.temp=0.1"])
    assert cfg.decoder.n_latent == 8 and cfg.dcem.temp == 0.1
    assert cfg.horizon == 20 and cfg.dcem.n_sample == 100 and cfg.expert.n_sample >= 10 * cfg.dcem.n_sample


def test_train_writes_outputs_and_resumes(tmp_path):
    out = tmp_path / "run"
    cartpole.main([f"out_dir={out}", "n_train_iter=4", *TINY])
    for f in (
        "config.yaml",
        "log.csv",
        "checkpoint.pt",
        "best.pt",
        "expert.json",
        "summary.json",
        "curves.png",
        "fig3.png",
        "surface.png",
    ):
        assert (out / f).exists(), f
    s = json.loads((out / "summary.json").read_text())
    for k in (
        "expert_cost",
        "latent_cost",
        "improvement_factor",
        "random_decoder_cost",
        "expert_test_cost",
        "latent_test_cost",
        "improvement_factor_test",
        "random_decoder_test_cost",
    ):
        assert isinstance(s[k], float)
    assert s["improvement_factor"] == pytest.approx(s["latent_cost"] / s["expert_cost"])
    rows = _rows(out / "log.csv")
    assert [int(r["iter"]) for r in rows if r["mode"] == "train"] == [0, 1, 2, 3]
    # resume the same run for more updates: the log continues without duplicates
    cartpole.main([f"out_dir={out}", "n_train_iter=6", "plots=false", *TINY])
    rows = _rows(out / "log.csv")
    assert [int(r["iter"]) for r in rows if r["mode"] == "train"] == list(range(6))
    assert [int(r["iter"]) for r in rows if r["mode"] == "val"] == [0, 2, 4, 6]
    s6 = json.loads((out / "summary.json").read_text())
    assert s6["n_train_iter"] == 6
    # the random decoder is the initial one: its validation cost is the first validation row
    assert s6["random_decoder_cost"] == pytest.approx(float(rows[0]["cost"]))
    # mode=eval recomputes the same summary from the checkpoints
    (out / "summary.json").unlink()
    cartpole.main([f"out_dir={out}", "mode=eval", *TINY])
    s_eval = json.loads((out / "summary.json").read_text())
    assert s_eval["latent_test_cost"] == pytest.approx(s6["latent_test_cost"])


def test_resume_after_interruption_matches_uninterrupted(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    cartpole.main([f"out_dir={a}", "n_train_iter=4", "plots=false", *TINY])
    cartpole.main([f"out_dir={b}", "n_train_iter=2", "plots=false", *TINY])  # "interrupted" after 2 updates
    cartpole.main([f"out_dir={b}", "n_train_iter=4", "plots=false", *TINY])
    ra = [r for r in _rows(a / "log.csv") if r["mode"] == "train"]
    rb = [r for r in _rows(b / "log.csv") if r["mode"] == "train"]
    assert [float(r["cost"]) for r in ra] == pytest.approx([float(r["cost"]) for r in rb], rel=1e-5)


def test_ablation_mode(tmp_path):
    out = tmp_path / "abl"
    cartpole.main(
        [
            f"out_dir={out}",
            "mode=ablation",
            "ablation.n_train_iter=2",
            "ablation.temps=[1.0,0.0]",
            "ablation.latent_sizes=[2,3]",
            *TINY,
        ]
    )
    rows = _rows(out / "ablation.csv")
    assert {(float(r["temp"]), int(r["n_latent"])) for r in rows} == {
        (1.0, 2),
        (0.0, 2),
        (1.0, 3),
        (0.0, 3),
    }
    assert (out / "ablation.png").exists() and (out / "tau0_nz3" / "summary.json").exists()


def test_vis_mode_redoes_plots(tmp_path):
    out = tmp_path / "v"
    cartpole.main([f"out_dir={out}", "n_train_iter=2", "plots=false", *TINY])
    assert not (out / "fig3.png").exists()
    cartpole.main([f"out_dir={out}", "mode=vis", *TINY])
    assert (out / "fig3.png").exists() and (out / "surface.png").exists() and (out / "curves.png").exists()


def test_bad_mode(tmp_path):
    with pytest.raises(ValueError, match="mode"):
        cartpole.main([f"out_dir={tmp_path}", "mode=nope"])


@pytest.mark.slow
def test_short_run_beats_random_decoder_and_approaches_expert(tmp_path):
    """~300 Alg. 2 updates at the paper's settings (a few minutes on one core)."""
    out = tmp_path / "short"
    cartpole.main([f"out_dir={out}", "n_train_iter=300", "progress=false", "plots=false", "val_interval=50"])
    s = json.loads((out / "summary.json").read_text())
    assert s["latent_test_cost"] < s["random_decoder_test_cost"] - 5.0
    assert s["improvement_factor_test"] > 0.5
