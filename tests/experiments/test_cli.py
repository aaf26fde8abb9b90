"""The shared command line of every experiment: bad overrides fail early, with one line naming the key.

Each bad command line must exit non-zero, print no traceback, name the offending key and leave no
run folder behind (neither ``out_dir`` nor ``runs/``), because the configuration is checked
before anything is written.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

pytest.importorskip("hydra")

from dcem.experiments.__main__ import available, main  # noqa: E402

NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is visible")

COMMON = [
    ("nosuch=1", "nosuch"),
    ("+nosuch=1", "nosuch"),
    ("scale=huge", "scale"),
    ("scale=[short,tiny]", "scale"),
    ("num_threads=0", "num_threads"),
    ("num_threads=two", "num_threads"),
    ("seed=-1", "seed"),
    ("resume=maybe", "resume"),
]

CASES = {
    "regression": [
        ("train.lr=abc", "train.lr"),
        ("train.lr", "train.lr"),
        ("train.nosuch=1", "train.nosuch"),
        ("train=3", "train"),
        ("train.lr=-1", "train.lr"),
        ("train.lr=1e400", "train.lr"),
        ("train.n_updates=0", "train.n_updates"),
        ("dcem.n_elite=500", "dcem.n_elite"),
        ("train.batch_size=1000", "train.batch_size"),
        ("methods=[sgd]", "methods"),
        ("seeds=[]", "seeds"),
        ("device=gpu", "device"),
        pytest.param("device=cuda", "device", marks=NO_CUDA),
    ],
    "cartpole": [
        ("lr=abc", "lr"),
        ("horizon", "horizon"),
        ("mode=nope", "mode"),
        ("n_train_iter=0", "n_train_iter"),
        ("dcem.n_elite=500", "dcem.n_elite"),
        ("expert.n_elite=5000", "expert.n_elite"),
        ("vis.n_states=1000", "vis.n_states"),
        ("decoder.activation=sigmoid", "decoder.activation"),
        ("device=cuda", "device"),  # runs on the CPU only: not a key
        ("mode=vis", "mode=vis"),  # needs an existing run
    ],
    "chain": [
        ("chain.n_links=1", "chain.n_links"),
        ("chain.max_torque=0", "chain.max_torque"),
        ("task=cartpole", "task"),
        ("dcem.n_elite=500", "dcem.n_elite"),
        ("report.baseline_seeds=[]", "report.baseline_seeds"),
        ("mode=eval", "mode=eval"),  # needs an existing run
    ],
    "pendulum": [
        ("n_steps=abc", "n_steps"),
        ("horizon", "horizon"),
        ("n_systems=0", "n_systems"),
        ("mpc.n_elite=500", "mpc.n_elite"),
        ("mpc.temp=-1", "mpc.temp"),
        ("mpc.shift_fill=bad", "mpc.shift_fill"),
        ("device=cuda", "device"),  # runs on the CPU only: not a key
    ],
    "mbrl": [
        ("model.lr=abc", "model.lr"),
        ("model.lr", "model.lr"),
        ("env=nosuch", "env"),
        ("env.name=cheetah-fly", "env.name"),
        ("planner.cem.n_elite=5000", "planner.cem.n_elite"),
        ("planner.horizon=0", "planner.horizon"),
        ("model.seq_len=500", "model.seq_len"),
        ("ppo.parts=[critic]", "ppo.parts"),
        ("phase=nope", "phase"),
        ("phase=decoder", "phase=decoder"),  # needs the checkpoint of phase=model
        ("device=gpu", "device"),
        pytest.param("device=cuda", "device", marks=NO_CUDA),
    ],
}

def _table() -> list:
    rows = []
    for exp, cases in CASES.items():
        for case in [*COMMON, *cases]:
            values, marks = (case.values, case.marks) if hasattr(case, "values") else (case, ())
            rows.append(pytest.param(exp, *values, marks=marks, id=f"{exp}-{values[0]}"))
    return rows


TABLE = _table()


def test_every_experiment_has_cases():
    assert sorted(CASES) == available()


@pytest.mark.parametrize("exp,arg,key", TABLE)
def test_bad_override_is_one_line_naming_the_key(exp, arg, key, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as err:
        main([exp, f"out_dir={out}", arg])
    msg = str(err.value.code)
    assert err.value.code not in (0, None)
    assert msg.startswith(f"dcem-exp {exp}: error: ")
    assert key in msg, msg
    assert len(msg.splitlines()) <= 2, msg
    assert "Traceback" not in msg + capsys.readouterr().err
    assert not out.exists() and not (tmp_path / "runs").exists()


@pytest.mark.parametrize("exp", ["regression", "cartpole", "chain", "pendulum", "mbrl"])
@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_help_lists_keys_and_scales(exp, flag, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    main([exp, flag])
    text = capsys.readouterr().out
    assert text.startswith(f"usage: dcem-exp {exp} [")
    assert "scale=" in text and "num_threads" in text and "out_dir" in text
    assert not list(tmp_path.iterdir())


def test_help_shows_the_overridden_value(capsys):
    main(["regression", "scale=tiny", "train.lr=0.5", "--help"])
    text = capsys.readouterr().out
    assert "train.lr" in text and "0.5" in text and "tiny" in text


def test_real_process_exit_status_and_stderr(tmp_path):
    """The installed command path: status 1, one line on stderr, nothing created."""
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    cmd = [sys.executable, "-m", "dcem.experiments", "cartpole", "lr=abc"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert proc.stderr.strip() == "dcem-exp cartpole: error: lr='abc': expected float"
    assert proc.stdout == "" and not list(tmp_path.iterdir())
    cmd = [sys.executable, "-m", "dcem.experiments", "pendulum", "--help"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "scale=short|tiny" in proc.stdout and proc.stderr == ""
