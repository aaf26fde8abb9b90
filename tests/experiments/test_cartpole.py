import csv
import json

import pytest

from dcem.experiments import cartpole

TINY = ["scale=tiny", "progress=false"]


def _rows(path):
    with open(path) as fh:
        return list(csv.DictReader(fh))


def test_config_composes_with_overrides():
    cfg = cartpole.load_config(["decoder.n_latent=8", "dcem.temp=0.1"])
    assert cfg.decoder.n_latent == 8 and cfg.dcem.temp == 0.1
    assert cfg.horizon == 20 and cfg.dcem.n_sample == 100 and cfg.expert.n_sample >= 10 * cfg.dcem.n_sample


def test_tiny_preset_matches_the_test_sizes():
    cfg = cartpole.load_config(["scale=tiny"])
    assert cfg.n_train_iter == 4 and cfg.n_val == 4 and cfg.horizon == 8 and cfg.dcem.n_sample == 20


def test_train_writes_outputs_and_resumes(tmp_path):
    out = tmp_path / "run"
    cartpole.main([f"out_dir={out}", *TINY])
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
    assert [int(r["iter"]) for r in rows if r["mode"] == "val"] == [0, 2, 4]
    # the random decoder is the initial one: its validation cost is the first validation row
    assert s["random_decoder_cost"] == pytest.approx(float(rows[0]["cost"]))
    # the same run again: finished, nothing retrained, the log unchanged
    cartpole.main([f"out_dir={out}", "plots=false", *TINY])
    assert _rows(out / "log.csv") == rows
    # a shorter schedule is another configuration: refused, config.yaml untouched (longer: see below)
    config = (out / "config.yaml").read_text()
    with pytest.raises(ValueError, match="another configuration.*n_train_iter: 4 there, 2 now"):
        cartpole.main([f"out_dir={out}", "n_train_iter=2", *TINY])
    assert (out / "config.yaml").read_text() == config
    # mode=eval recomputes the same summary from the checkpoints
    (out / "summary.json").unlink()
    cartpole.main([f"out_dir={out}", "mode=eval", *TINY])
    s_eval = json.loads((out / "summary.json").read_text())
    assert s_eval["latent_test_cost"] == pytest.approx(s["latent_test_cost"])


def test_resume_after_interruption_matches_uninterrupted(tmp_path):
    from dcem.experiments.cartpole.run import train

    a, b = tmp_path / "a", tmp_path / "b"
    cartpole.main([f"out_dir={a}", "plots=false", *TINY])
    train(cartpole.load_config(TINY), b, n_train_iter=2)  # "interrupted": the checkpoint after 2 updates
    cartpole.main([f"out_dir={b}", "plots=false", *TINY])
    ra = [r for r in _rows(a / "log.csv") if r["mode"] == "train"]
    rb = [r for r in _rows(b / "log.csv") if r["mode"] == "train"]
    assert [float(r["cost"]) for r in ra] == pytest.approx([float(r["cost"]) for r in rb], rel=1e-5)


def _state(run):
    import torch

    ck = torch.load(run / "checkpoint.pt", weights_only=False)
    best = torch.load(run / "best.pt", weights_only=False)
    rows = [{k: v for k, v in r.items() if k != "wall_s"} for r in _rows(run / "log.csv")]
    return ck, best, rows


def _assert_same_run(a, b):
    import torch

    (ca, ba, ra), (cb, bb, rb) = _state(a), _state(b)
    assert ra == rb  # every logged number, as text: bit for bit
    for k in ca["decoder"]:
        assert torch.equal(ca["decoder"][k], cb["decoder"][k])
        assert torch.equal(ba["decoder"][k], bb["decoder"][k])
    assert ca["sched"] == cb["sched"] and ca["iter"] == cb["iter"] and ba["iter"] == bb["iter"]
    assert torch.equal(ca["g_train"], cb["g_train"]) and torch.equal(ca["g_init"], cb["g_init"])
    sa, sb = ca["opt"]["state"], cb["opt"]["state"]
    assert all(torch.equal(sa[i]["exp_avg_sq"], sb[i]["exp_avg_sq"]) for i in sa)


def test_longer_schedule_extends_a_finished_run_bit_for_bit(tmp_path):
    from omegaconf import OmegaConf

    a, b = tmp_path / "a", tmp_path / "b"
    cartpole.main([f"out_dir={a}", "plots=false", *TINY])  # 4 updates, finished
    cartpole.main([f"out_dir={a}", "plots=false", "n_train_iter=8", *TINY])  # extended to 8
    cartpole.main([f"out_dir={b}", "plots=false", "n_train_iter=8", *TINY])  # 8 from the start
    _assert_same_run(a, b)
    assert OmegaConf.load(a / "config.yaml").n_train_iter == 8
    assert [int(r["iter"]) for r in _rows(a / "log.csv") if r["mode"] == "val"] == [0, 2, 4, 6, 8]
    with pytest.raises(ValueError, match="another configuration.*n_train_iter: 8 there, 6 now"):
        cartpole.main([f"out_dir={a}", "plots=false", "n_train_iter=6", *TINY])
    # a finished length off the validation grid cannot be extended exactly: refused
    c = tmp_path / "c"
    cartpole.main([f"out_dir={c}", "plots=false", "n_train_iter=3", *TINY])
    with pytest.raises(ValueError, match="not a multiple of val_interval"):
        cartpole.main([f"out_dir={c}", "plots=false", "n_train_iter=6", *TINY])


def test_ablation_length_grows_on_resume(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    args = ["mode=ablation", "plots=false", "ablation.seeds=[0]", "ablation.temps=[0.0]", *TINY]
    cartpole.main([f"out_dir={a}", *args])  # 2 updates per cell
    cartpole.main([f"out_dir={a}", *args, "ablation.n_train_iter=4"])
    cartpole.main([f"out_dir={b}", *args, "ablation.n_train_iter=4"])
    _assert_same_run(a / "tau0_nz2_seed0", b / "tau0_nz2_seed0")


def test_corrupt_and_mismatched_checkpoints(tmp_path):
    from dcem.experiments.common.runs import CheckpointError

    out = tmp_path / "run"
    cartpole.main([f"out_dir={out}", "plots=false", *TINY])
    ckpt = out / "checkpoint.pt"
    good = ckpt.read_bytes()
    ckpt.write_bytes(good[:100])
    with pytest.raises(CheckpointError, match="unreadable") as err:
        cartpole.main([f"out_dir={out}", "plots=false", *TINY])
    assert str(ckpt) in str(err.value) and "resume=false" in str(err.value)
    with pytest.raises(CheckpointError, match="unreadable"):
        cartpole.main([f"out_dir={out}", "mode=vis", *TINY])
    # a checkpoint of another decoder size (copied in by hand)
    other = tmp_path / "other"
    cartpole.main([f"out_dir={other}", "plots=false", "decoder.n_latent=3", *TINY])
    ckpt.write_bytes((other / "checkpoint.pt").read_bytes())
    with pytest.raises(CheckpointError, match="does not fit"):
        cartpole.main([f"out_dir={out}", "plots=false", *TINY])
    cartpole.main([f"out_dir={out}", "plots=false", "resume=false", *TINY])
    assert json.loads((out / "summary.json").read_text())["n_latent"] == 2


def test_ablation_mode(tmp_path):
    out = tmp_path / "abl"
    cartpole.main(
        [
            f"out_dir={out}",
            "mode=ablation",
            "ablation.latent_sizes=[2,3]",
            *TINY,
        ]
    )
    rows = _rows(out / "ablation.csv")
    cells = {(float(r["temp"]), int(r["n_latent"]), int(r["seed"])) for r in rows}
    assert cells == {(t, nz, s) for t in (1.0, 0.0) for nz in (2, 3) for s in (0, 1)} and len(rows) == 8
    assert (out / "ablation.png").exists() and (out / "tau0_nz3_seed1" / "summary.json").exists()
    # each seed is its own training run: its decoder (and so its untrained cost) differs
    by_seed = {int(r["seed"]): float(r["random_decoder_test_cost"]) for r in rows
               if float(r["temp"]) == 1.0 and int(r["n_latent"]) == 2}  # fmt: skip
    assert by_seed[0] != by_seed[1]


def test_vis_mode_redoes_plots(tmp_path):
    out = tmp_path / "v"
    cartpole.main([f"out_dir={out}", "plots=false", *TINY])
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
