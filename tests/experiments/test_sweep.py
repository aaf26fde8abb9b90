"""Sweeps: ``dcem-exp NAME -m`` on Hydra's joblib and submitit launchers, and ``dcem-exp gather``."""

from __future__ import annotations

import math
import os
import stat

import pytest
from omegaconf import OmegaConf

from dcem.experiments.__main__ import main as cli
from dcem.experiments.common.runs import CsvLog

pytest.importorskip("hydra_plugins.hydra_joblib_launcher")


def test_local_multirun_one_folder_per_job_then_gather(tmp_path, capsys):
    sweep = tmp_path / "sweep"
    cli(["regression", "-m", "scale=tiny", "analyse=false", "methods=[gd]", "seeds=[0],[1]",
         "hydra.launcher.n_jobs=2", f"hydra.sweep.dir={sweep}"])  # fmt: skip
    jobs = sorted(p.name for p in sweep.iterdir() if p.is_dir())
    assert jobs == ["0", "1"]
    seeds = [OmegaConf.load(sweep / j / "config.yaml").seeds for j in jobs]
    assert seeds == [[0], [1]] and not (sweep / "0" / ".hydra").exists()
    # job 1 is the single run with seeds=[1]
    cli(["regression", "scale=tiny", "analyse=false", "methods=[gd]", "seeds=[1]", "progress=false",
         f"out_dir={tmp_path / 'single'}"])  # fmt: skip
    final = [
        CsvLog(sweep / j / f"gd/seed{s}/log.csv", []).rows()[-1]["test_mse"] for j, s in zip(jobs, (0, 1))
    ]
    assert final[1] == CsvLog(tmp_path / "single/gd/seed1/log.csv", []).rows()[-1]["test_mse"]

    capsys.readouterr()
    cli(["gather", str(sweep)])
    assert "| method=gd | 2 |" in capsys.readouterr().out
    (row,) = CsvLog(sweep / "gather/results.csv", []).rows()
    assert row["group"] == "method=gd" and row["n_seeds"] == 2
    mean = sum(final) / 2
    half = (
        12.706204736174698 * abs(final[0] - final[1]) / math.sqrt(2) / math.sqrt(2)
    )  # t_{0.975, 1} s / sqrt(n)
    assert row["test_mse_mean"] == pytest.approx(mean) and row["test_mse_ci95"] == pytest.approx(half)
    assert (sweep / "gather/curves.png").stat().st_size > 0 and (sweep / "gather/results.md").exists()


def test_sweep_checks_every_job_before_launching(tmp_path):
    sweep = tmp_path / "sweep"
    with pytest.raises(SystemExit, match=r"^dcem-exp cartpole -m: error: dcem.temp=-1\.0: must be >= 0$"):
        cli(["cartpole", "-m", "scale=tiny", "dcem.temp=1.0,-1.0", f"hydra.sweep.dir={sweep}"])
    with pytest.raises(SystemExit, match="unknown key 'seedz'"):
        cli(["cartpole", "-m", "seedz=0,1", f"hydra.sweep.dir={sweep}"])
    assert not sweep.exists()


def test_gather_refuses_a_folder_that_is_no_sweep(tmp_path):
    with pytest.raises(SystemExit, match=r"^dcem-exp gather: error: sweep_dir=.*: not a directory$"):
        cli(["gather", str(tmp_path / "missing")])
    with pytest.raises(SystemExit, match=r"^dcem-exp gather: error: sweep_dir=.*: no run folders"):
        cli(["gather", str(tmp_path)])


def test_slurm_launcher_config_composes_and_submitit_writes_the_job_script(tmp_path, monkeypatch):
    """``hydra/launcher=slurm`` with a fake ``sbatch`` that keeps the script and refuses to submit."""
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, body in (
        ("srun", "exit 0"),
        ("sbatch", f'cp "$1" {tmp_path}/job.sh; echo refused >&2; exit 1'),
    ):
        (bin_dir / name).write_text(f"#!/bin/sh\n{body}\n")
        (bin_dir / name).chmod(stat.S_IRWXU)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    sweep = tmp_path / "sweep"
    with pytest.raises(SystemExit):  # Hydra reports the refused submission and exits 1
        cli(["cartpole", "-m", "scale=tiny", "seed=0,1,2", "hydra/launcher=slurm",
             "hydra.launcher.partition=gpu", "hydra.launcher.timeout_min=30",
             "hydra.launcher.cpus_per_task=3", f"hydra.sweep.dir={sweep}"])  # fmt: skip
    script = (tmp_path / "job.sh").read_text()
    for line in ("#SBATCH --partition=gpu", "#SBATCH --time=30", "#SBATCH --cpus-per-task=3",
                 "#SBATCH --array=0-2%3", "#SBATCH --job-name=cartpole", "#SBATCH --mem=8GB"):  # fmt: skip
        assert line in script, line
    assert f"{sweep}/.submitit" in script and len(list((sweep / ".submitit").glob("*.pkl"))) == 3
