"""Data parallelism (:mod:`dcem.experiments.common.distributed`): shards, global-shape draws, and
two CPU processes under torchrun (gloo) against the single-process run with the same global batch."""

from __future__ import annotations

import multiprocessing
import os
import socket
import subprocess
import sys
import traceback
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from dcem.experiments.common.config import ConfigError
from dcem.experiments.common.distributed import Shard, _GlobalDraws, launch_info, per_process
from dcem.experiments.common.runs import CsvLog

ROOT = Path(__file__).resolve().parents[2]


def torchrun(args: list[str], n: int = 2, timeout: float = 300) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc_per_node=n -m dcem.experiments ARGS`` (a free port, CPU, gloo)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "MUJOCO_GL": "disable",
           "CUDA_VISIBLE_DEVICES": ""}  # fmt: skip
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}",
           "-m", "dcem.experiments", *args]  # fmt: skip
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def _ok(r: subprocess.CompletedProcess) -> None:
    assert r.returncode == 0, r.stderr[-4000:]


def _child(rank: int, n: int, port: int, target: Callable[..., None], args: tuple) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(n), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port), CUDA_VISIBLE_DEVICES="")  # fmt: skip
    code = 0
    try:
        target(*args)
    except BaseException:  # noqa: BLE001 - reported through the exit status
        traceback.print_exc()
        code = 1
    finally:
        os._exit(code)


def forked(target: Callable[..., None], *args, n: int = 2, timeout: float = 120) -> None:
    """Run ``target(*args)`` in ``n`` forked processes with torchrun's environment variables (a free
    port on 127.0.0.1): the same code path as torchrun without a launcher and fresh interpreters."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_child, args=(r, n, port, target, args)) for r in range(n)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout)
    codes = [p.exitcode for p in procs]
    for p in procs:
        if p.exitcode is None:
            p.kill()
    assert codes == [0] * n, f"exit codes {codes}"


def cli(argv: list[str]) -> None:
    """``dcem-exp ARGV`` in this process (joins the process group when WORLD_SIZE > 1)."""
    from dcem.experiments.__main__ import main

    main(argv)


def _rows(path: Path) -> list[dict]:
    return CsvLog(path, []).rows()


def _close(a: list[dict], b: list[dict], keys: tuple[str, ...], rtol: float) -> None:
    assert [r["step"] for r in a] == [r["step"] for r in b]
    for ra, rb in zip(a, b):
        for k in keys:
            if ra[k] == ra[k]:  # not nan
                assert rb[k] == pytest.approx(ra[k], rel=rtol), (k, ra["step"], ra[k], rb[k])


# ------------------------------------------------------------------------------ in one process


def test_per_process_batch_must_divide_and_names_the_key():
    assert per_process("train.batch_size", 8, 2) == 4
    with pytest.raises(ConfigError, match=r"^train.batch_size=7: must be a multiple .*WORLD_SIZE=2"):
        per_process("train.batch_size", 7, 2)
    with pytest.raises(ConfigError, match="n_batch=1"):
        per_process("n_batch", 1, 2)
    assert launch_info({"n_batch": 3}) == {"world_size": 1, "backend": None,
                                           "per_process_batch": {"n_batch": 3}}  # fmt: skip


def test_one_process_shard_is_the_identity():
    s = Shard.of("k", 6)
    t = torch.arange(6.0)
    assert s.rows(t) is t and s.world == 1
    g = torch.Generator().manual_seed(0)
    with s.draws(g):
        a = torch.randn(6, 3, generator=g)
    ref = torch.randn(6, 3, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(a, ref, rtol=0, atol=0)
    assert s.average([], torch.tensor(2.0))[0] == 2.0


def test_global_draws_give_each_rank_its_rows_of_the_global_draw():
    full = torch.randn(8, 5, 2, generator=torch.Generator().manual_seed(3))
    parts = []
    for rank in range(2):
        g = torch.Generator().manual_seed(3)
        with _GlobalDraws(Shard("k", 8, rank, 2), g):
            parts.append(torch.randn((4, 5, 2), generator=g))
            other = torch.randn(3, generator=torch.Generator())  # another generator: untouched
        assert other.shape == (3,)
    torch.testing.assert_close(torch.cat(parts), full, rtol=0, atol=0)
    g = torch.Generator()
    with pytest.raises(RuntimeError, match="per-process batch"), _GlobalDraws(Shard("k", 8, 0, 2), g):
        torch.randn(5, generator=g)


def test_sharded_dcem_predictor_gradients_sum_to_the_full_batch_gradient():
    """The DCEM samples of a shard are its rows of the full draw, so per-shard sums of losses
    differentiate to the full-batch gradient (float64: exact up to the soft top-k's tolerance)."""
    from dcem.experiments.regression.model import DCEMPredictor, EnergyNet

    torch.manual_seed(0)
    energy = EnergyNet(1, 1, n_hidden=8, n_layers=2).double()
    pred = DCEMPredictor(energy, n_iter=4, n_sample=12, n_elite=3, init_sigma=3.0)
    x = torch.linspace(0, 6, 8, dtype=torch.float64).unsqueeze(-1)

    def grads(rank: int, world: int) -> list[torch.Tensor]:
        g = torch.Generator().manual_seed(5)
        s = Shard("k", 8, rank, world)
        with _GlobalDraws(s, g) if world > 1 else torch.enable_grad():
            y = pred(s.rows(x), generator=g)
        energy.zero_grad()
        (y - torch.sin(s.rows(x))).pow(2).sum().backward()
        return [p.grad.clone() for p in energy.parameters()]

    full = grads(0, 1)
    halves = [a + b for a, b in zip(grads(0, 2), grads(1, 2))]
    for f, h in zip(full, halves):
        torch.testing.assert_close(h, f, rtol=1e-6, atol=1e-8)


# ------------------------------------------------------------------------------ two processes

_REG = ("batch_loss", "train_mse", "test_mse", "grad_norm")


def test_regression_torchrun_two_processes_match_one(tmp_path):
    """``torchrun --nproc_per_node=2 -m dcem.experiments regression``: GD and DCEM on 2 gloo processes
    equal 1 process (global batch 8, 4 per process) to float-reduction tolerance: each DCEM problem's
    solve is batch invariant (it depends only on its own rows), so only the all-reduce of the
    gradients rounds differently. Only rank 0 writes and the saved config records the launch."""
    base = ["scale=tiny", "progress=false", "analyse=false", "seeds=[0]"]
    cli(["regression", *base, f"out_dir={tmp_path / 'one'}"])
    _ok(torchrun(["regression", *base, f"out_dir={tmp_path / 'two'}"]))
    for m, rtol in (("gd", 1e-5), ("dcem", 1e-5)):
        a, b = _rows(tmp_path / f"one/{m}/seed0/log.csv"), _rows(tmp_path / f"two/{m}/seed0/log.csv")
        _close(a, b, _REG, rtol)
    launch = OmegaConf.load(tmp_path / "two/config.yaml").launch
    assert launch.world_size == 2 and launch.backend == "gloo"
    assert launch.per_process_batch["train.batch_size"] == 4
    assert OmegaConf.load(tmp_path / "one/config.yaml").launch.world_size == 1
    files = [sorted(p.relative_to(d) for p in d.rglob("*")) for d in (tmp_path / "one", tmp_path / "two")]
    assert files[0] == files[1]  # rank 1 wrote nothing of its own


def test_regression_resumes_on_another_process_count(tmp_path):
    """A run interrupted after 3 of its 6 updates on one process resumes on two and ends where the
    uninterrupted single-process run ends."""
    base = ["regression", "scale=tiny", "progress=false", "analyse=false", "methods=[gd]", "seeds=[0]"]
    cli([*base, f"out_dir={tmp_path / 'one'}"])
    cli([*base, "train.n_updates=3", f"out_dir={tmp_path / 'cut'}"])
    cfg = (tmp_path / "cut/config.yaml").read_text().replace("n_updates: 3", "n_updates: 6")
    (tmp_path / "cut/config.yaml").write_text(cfg)
    forked(cli, [*base, f"out_dir={tmp_path / 'cut'}"])
    _close(_rows(tmp_path / "one/gd/seed0/log.csv"), _rows(tmp_path / "cut/gd/seed0/log.csv"), _REG, 1e-5)
    assert OmegaConf.load(tmp_path / "cut/config.yaml").launch.world_size == 2


def test_bad_global_batch_is_a_one_line_error_naming_the_key(tmp_path, monkeypatch, capsys):
    from dcem.experiments.common import distributed

    monkeypatch.setattr(distributed, "world_size", lambda: 2)
    msg = r"^dcem-exp regression: error: train.batch_size=7: must be a multiple"
    with pytest.raises(SystemExit, match=msg):
        cli(["regression", "scale=tiny", "train.batch_size=7", f"out_dir={tmp_path / 'r'}"])
    with pytest.raises(SystemExit, match=r"^dcem-exp cartpole: error: n_batch=1: must be a multiple"):
        cli(["cartpole", "scale=tiny", f"out_dir={tmp_path / 'c'}"])
    assert not (tmp_path / "r").exists() and not (tmp_path / "c").exists()


def test_cartpole_two_processes_match_one(tmp_path):
    base = ["cartpole", "scale=tiny", "progress=false", "plots=false", "n_batch=4"]
    cli([*base, f"out_dir={tmp_path / 'one'}"])
    forked(cli, [*base, f"out_dir={tmp_path / 'two'}"])
    a, b = _rows(tmp_path / "one/log.csv"), _rows(tmp_path / "two/log.csv")
    assert [(r["iter"], r["mode"]) for r in a] == [(r["iter"], r["mode"]) for r in b] and len(a) == 7
    for ra, rb in zip(a, b):
        for k in ("cost", "loss", "grad_norm"):
            if ra[k] is not None:
                assert rb[k] == pytest.approx(ra[k], rel=1e-5, abs=1e-6), (k, ra, rb)
    launch = OmegaConf.load(tmp_path / "two/config.yaml").launch
    assert launch.world_size == 2 and launch.per_process_batch.n_batch == 2
    sa = torch.load(tmp_path / "one/checkpoint.pt", weights_only=True)["decoder"]
    sb = torch.load(tmp_path / "two/checkpoint.pt", weights_only=True)["decoder"]
    for k in sa:
        torch.testing.assert_close(sb[k], sa[k], rtol=1e-5, atol=1e-6)


def _rl_updates(tmp: Path, out: Path) -> None:
    """Two episodes into the replay buffer, then one world-model and one decoder update (global
    batches 4 and 2); rank 0 saves the parameters and the logged losses to ``out``."""
    from dcem.experiments.common import distributed
    from dcem.experiments.mbrl import compose
    from dcem.experiments.mbrl.trainer import MBRLTrainer, seed_everything

    distributed.init()
    try:
        cfg = compose(["scale=test", "model.batch_size=4", "decoder.batch_size=2", f"out_dir={tmp}"])
        seed_everything(cfg["seed"])
        tr = MBRLTrainer(cfg, tmp)
        for _ in range(2):
            tr.replay.add(*tr.run_episode(tr.env, "random"))
        tr._set_obs_stats()
        init = {k: v.clone() for k, v in tr.model.state_dict().items()}
        stats = tr.model_update()
        dec_loss = tr.decoder_update()
        if distributed.is_main():
            torch.save({"model": tr.model.state_dict(), "decoder": tr.decoder.state_dict(), "stats": stats,
                        "decoder_loss": dec_loss, "init": init}, out)  # fmt: skip
    finally:
        distributed.shutdown()


@pytest.mark.rl
def test_rl_world_model_and_decoder_updates_two_processes_match_one(tmp_path, monkeypatch):
    monkeypatch.setenv("MUJOCO_GL", "disable")
    pytest.importorskip("dm_control")
    pytest.importorskip("torchrl")
    _rl_updates(tmp_path / "one", tmp_path / "one.pt")
    forked(_rl_updates, tmp_path / "two", tmp_path / "two.pt")
    a, b = torch.load(tmp_path / "one.pt"), torch.load(tmp_path / "two.pt")
    for part in ("model", "decoder"):
        assert a[part].keys() == b[part].keys()
        for k in a[part]:
            torch.testing.assert_close(b[part][k], a[part][k], rtol=1e-5, atol=1e-6, msg=f"{part}.{k}")
    assert b["decoder_loss"] == pytest.approx(a["decoder_loss"], rel=1e-5)
    for k, v in a["stats"].items():
        assert b["stats"][k] == pytest.approx(v, rel=1e-5), k
    moved = [k for k in a["model"] if not torch.allclose(a["model"][k], a["init"][k], rtol=1e-4, atol=1e-6)]
    assert len(moved) > len(a["model"]) // 2  # the update moved the weights: the comparison is not vacuous
