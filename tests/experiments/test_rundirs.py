"""Run folders that survive anything: bad out_dir, torn logs, stale temporary files, stable formats,
exact resumes between log points, config.yaml only after the checks, Ctrl-C, memory estimates,
duplicated keys, the umask, and the experiment entry point without its extra."""

from __future__ import annotations

import csv
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dcem.experiments import pendulum, regression
from dcem.experiments.common.config import ConfigError
from dcem.experiments.common.gather import gather
from dcem.experiments.common.runs import CheckpointError, CsvLog, RunError
from dcem.experiments.regression import train as reg_train

# one DCEM run of 8 updates, a row every 4, a checkpoint every 2
REG = ["scale=tiny", "progress=false", "analyse=false", "methods=[dcem]", "seeds=[0]", "train.n_updates=8",
       "train.eval_every=4", "train.ckpt_every=2"]  # fmt: skip
PEN = ["scale=tiny", "progress=false", "animate=false", "n_systems=2", "n_steps=4", "ckpt_every=2"]


def _cli(*argv: str) -> None:
    from dcem.experiments.__main__ import main

    main(list(argv))


def _interrupt_at(monkeypatch, update: int) -> None:
    """Ctrl-C as update number ``update`` starts (after the checkpoint of the update before)."""
    orig = reg_train._Run.update

    def update_(self, xb, yb):
        if self.step == update - 1:
            raise KeyboardInterrupt
        return orig(self, xb, yb)

    monkeypatch.setattr(reg_train._Run, "update", update_)


# --------------------------------------------------------------------------- out_dir


def test_out_dir_that_is_a_file_is_one_line_naming_the_key(tmp_path, capsys):
    f = tmp_path / "file"
    f.write_text("x")
    for out in (f, f / "sub"):
        with pytest.raises(SystemExit) as err:
            _cli("regression", f"out_dir={out}", *REG)
        msg = str(err.value.code)
        assert msg.startswith("dcem-exp regression: error: out_dir=") and "\n" not in msg
        assert str(out) in msg and "choose another out_dir" in msg
    assert f.read_text() == "x"


def test_unwritable_out_dir_is_one_line(tmp_path, monkeypatch):
    out = tmp_path / "ro"
    out.mkdir()
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, m, **kw: False if Path(p) == out else real(p, m, **kw))
    with pytest.raises(RunError, match=r"out_dir=.*ro: the folder is not writable"):
        pendulum.main([f"out_dir={out}", *PEN])
    assert not any(out.iterdir())


def test_demo_out_that_is_a_file_is_one_line(tmp_path):
    from dcem.__main__ import main

    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(SystemExit) as err:
        main(["demo", "--out", str(f), "--quick", "--no-gif"])
    msg = str(err.value.code)
    assert msg == f"dcem demo: error: --out={f}: is a file, not a folder; choose another --out"


# --------------------------------------------------------------------------- CSV logs


def test_torn_last_line_is_dropped_with_a_warning_and_appends_go_on(tmp_path, caplog):
    log = CsvLog(tmp_path / "log.csv", ["step", "loss"])
    log.append([{"step": 1, "loss": 0.5}, {"step": 2, "loss": 0.25}])
    with open(log.path, "a") as fh:
        fh.write("3,0.12")  # an append cut by a kill
    with caplog.at_level(logging.WARNING):
        assert log.rows() == [{"step": 1, "loss": 0.5}, {"step": 2, "loss": 0.25}]
    assert str(log.path) in caplog.text and "torn" in caplog.text
    log.append([{"step": 3, "loss": 0.125}])
    assert log.path.read_text().splitlines() == ["step,loss", "1,0.5", "2,0.25", "3,0.125"]


def test_torn_log_neither_blocks_resume_nor_gather(tmp_path, monkeypatch, caplog):
    sweep = tmp_path / "sweep"
    out = sweep / "0"
    _interrupt_at(monkeypatch, 7)
    with pytest.raises(KeyboardInterrupt):
        regression.main([f"out_dir={out}", *REG])
    log_csv = out / "dcem/seed0/log.csv"
    with open(log_csv, "a") as fh:
        fh.write("5,0.3,1.")  # torn
    with caplog.at_level(logging.WARNING):
        rows = gather(sweep)  # the finished rows of the interrupted run
    assert rows[0]["n_seeds"] == 1 and str(log_csv) in caplog.text
    monkeypatch.undo()
    regression.main([f"out_dir={out}", *REG])  # resumes from update 6
    steps = [r["step"] for r in CsvLog(log_csv, []).rows()]
    assert steps == [0, 4, 8]


def test_stale_tmp_files_are_removed_on_the_next_open(tmp_path):
    out = tmp_path / "run"
    regression.main([f"out_dir={out}", *REG])
    stale = [out / "dcem/seed0/ckpt.pt.k3j_9x2a.tmp", out / "config.yaml.0123abcd.tmp"]
    for p in stale:
        p.write_bytes(b"half")
    keep = out / "notes.tmp"  # not a temporary file of ours
    keep.write_text("mine")
    regression.main([f"out_dir={out}", *REG])
    assert not any(p.exists() for p in stale) and keep.exists()


def test_reopening_a_finished_run_leaves_its_log_untouched(tmp_path):
    out = tmp_path / "run"
    regression.main([f"out_dir={out}", *REG])
    pendulum.main([f"out_dir={tmp_path / 'pen'}", *PEN])
    logs = [out / "dcem/seed0/log.csv", tmp_path / "pen/log.csv"]
    before = [(p.read_bytes(), p.stat().st_mtime_ns) for p in logs]
    regression.main([f"out_dir={out}", *REG])
    pendulum.main([f"out_dir={tmp_path / 'pen'}", *PEN])
    assert [(p.read_bytes(), p.stat().st_mtime_ns) for p in logs] == before
    assert before[0][0].decode().splitlines()[1].startswith("0,")  # integers stay integers


# --------------------------------------------------------------------------- resume


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return [{k: v for k, v in r.items() if k != "wall_s"} for r in csv.DictReader(fh)]


def test_resume_between_log_points_gives_the_uninterrupted_row(tmp_path, monkeypatch):
    regression.main([f"out_dir={tmp_path / 'a'}", *REG])
    _interrupt_at(monkeypatch, 3)  # the checkpoint at update 2 holds half of the window of row 4
    with pytest.raises(KeyboardInterrupt):
        regression.main([f"out_dir={tmp_path / 'b'}", *REG])
    monkeypatch.undo()
    regression.main([f"out_dir={tmp_path / 'b'}", *REG])
    a, b = (_rows(tmp_path / x / "dcem/seed0/log.csv") for x in "ab")
    assert [r["step"] for r in a] == ["0", "4", "8"]
    assert a == b


def test_checkpoint_mismatch_names_the_key_and_writes_no_config(tmp_path):
    out = tmp_path / "run"
    regression.main([f"out_dir={out}", *REG])
    (out / "config.yaml").unlink()  # e.g. a run folder assembled by hand
    with pytest.raises(CheckpointError) as err:
        regression.main([f"out_dir={out}", *REG, "n_hidden=8"])
    msg = str(err.value)
    assert "n_hidden: 16 there, 8 now" in msg and "{" not in msg and "\n" not in msg
    assert not (out / "config.yaml").exists()


def test_sigint_is_one_line_and_exit_130(tmp_path, monkeypatch, capsys):
    _interrupt_at(monkeypatch, 5)
    with pytest.raises(SystemExit) as err:
        _cli("regression", f"out_dir={tmp_path / 'run'}", *REG)
    assert err.value.code == 130
    last = capsys.readouterr().err.splitlines()[-1]
    assert last == "interrupted at update 4; run the same command to resume"


# --------------------------------------------------------------------------- command line


@pytest.mark.parametrize("mod, args, key", [
    (pendulum, [*PEN, "horizon=1000000000"], "horizon=1000000000"),
    (regression, [*REG, "dcem.n_sample=2000000000"], "dcem.n_sample=2000000000"),
    ("mbrl", ["scale=test", "planner.horizon=100000000000"], "planner.horizon=100000000000"),
    ("mbrl", ["scale=test", "planner.dcem.n_sample=1000000000"], "planner.dcem.n_sample=1000000000"),
])  # fmt: skip
def test_huge_sizes_are_refused_with_a_memory_estimate_before_the_folder(tmp_path, mod, args, key):
    if mod == "mbrl":
        pytest.importorskip("dm_control")
        from dcem.experiments import mbrl as mod
    out = tmp_path / "run"
    with pytest.raises(ConfigError, match="GiB of memory") as err:
        mod.main([f"out_dir={out}", *args])
    assert key in str(err.value) and not out.exists()


def test_a_key_given_twice_on_the_command_line_is_refused(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as err:
        _cli("regression", f"out_dir={out}", "seeds=[0]", "scale=tiny", "seeds=[1]")
    assert err.value.code == ("dcem-exp regression: error: seeds is given twice ('seeds=[0]' and "
                              "'seeds=[1]'); give it once")  # fmt: skip
    assert not out.exists()


def test_output_files_honour_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        regression.main([f"out_dir={tmp_path / 'run'}", *REG])
    finally:
        os.umask(old)
    files = [p for p in (tmp_path / "run").rglob("*") if p.is_file()]
    assert files and {oct(p.stat().st_mode & 0o777) for p in files} == {"0o644"}


def test_entry_point_without_the_extra_says_what_to_install():
    code = ("import sys; sys.modules['omegaconf'] = None; sys.argv = ['dcem-exp', 'regression']; "
            "from dcem.experiments.__main__ import main; main()")  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert res.returncode == 1
    assert res.stderr.strip().splitlines() == [
        "dcem-exp: error: the experiments need the 'omegaconf' package, which is not installed; "
        "install the experiments extra: pip install -e '.[experiments]'"
    ]
