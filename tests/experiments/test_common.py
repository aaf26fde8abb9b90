"""The plumbing shared by the experiments: atomic files, CSV logs, intervals, run folders, plot style."""

from __future__ import annotations

import math

import pytest
import torch

from dcem.experiments.common import plots
from dcem.experiments.common.runs import (
    CheckpointError,
    CsvLog,
    RunError,
    atomic_open,
    load_torch,
    mean_ci95,
    open_run,
    save_torch,
    t_quantile,
)


def test_atomic_open_leaves_old_file_on_error(tmp_path):
    p = tmp_path / "f.txt"
    p.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_open(p) as fh:
            fh.write("half")
            raise RuntimeError("crash")
    assert p.read_text() == "old" and [q.name for q in tmp_path.iterdir()] == ["f.txt"]
    with atomic_open(p) as fh:
        fh.write("new")
    assert p.read_text() == "new"


def test_torch_checkpoint_round_trip_and_errors(tmp_path):
    p = tmp_path / "c.pt"
    save_torch({"format": "x-v1", "w": torch.arange(3)}, p)
    assert torch.equal(load_torch(p, fmt="x-v1")["w"], torch.arange(3))
    with pytest.raises(CheckpointError, match="not a y-v1 checkpoint"):
        load_torch(p, fmt="y-v1")
    p.write_bytes(p.read_bytes()[:10])
    with pytest.raises(CheckpointError, match="unreadable.*resume=false") as err:
        load_torch(p)
    assert str(p) in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_torch(tmp_path / "nope.pt")


def test_csv_log_append_rewrite_and_types(tmp_path):
    log = CsvLog(tmp_path / "log.csv", ["step", "loss", "mode"])
    log.append([{"step": 0, "loss": None, "mode": "val"}])
    log.append([{"step": 1, "loss": 0.5, "mode": "train", "extra": 3}])
    assert log.rows() == [{"step": 0, "loss": None, "mode": "val"}, {"step": 1, "loss": 0.5, "mode": "train"}]
    log.rewrite(r for r in log.rows() if r["step"] < 1)
    assert log.rows() == [{"step": 0, "loss": None, "mode": "val"}]


def test_student_t_from_scipy():
    stats = pytest.importorskip("scipy.stats")
    for df in (1, 2, 5, 30, 31, 100):
        assert t_quantile(df) == pytest.approx(stats.t.ppf(0.975, df), rel=1e-12)
    assert math.isnan(t_quantile(0))
    m, h = mean_ci95([1.0, 3.0])
    assert m == 2.0 and h == pytest.approx(stats.t.ppf(0.975, 1) * math.sqrt(2) / math.sqrt(2))
    assert mean_ci95([4.0])[0] == 4.0 and math.isnan(mean_ci95([4.0])[1])
    assert all(math.isnan(v) for v in mean_ci95([]))


def test_open_run_writes_config_once_and_refuses_another(tmp_path):
    from omegaconf import OmegaConf

    cfg = OmegaConf.create({"out_dir": str(tmp_path / "r"), "lr": 0.1, "progress": True})
    out = open_run("x", cfg, free_keys=("out_dir", "progress"))
    text = (out / "config.yaml").read_text()
    assert open_run("x", OmegaConf.merge(cfg, {"progress": False}), ("out_dir", "progress")) == out
    assert (out / "config.yaml").read_text() == text
    with pytest.raises(RunError, match="lr: 0.1 there, 0.2 now"):
        open_run("x", OmegaConf.merge(cfg, {"lr": 0.2}), ("out_dir", "progress"))
    out2 = open_run("x", OmegaConf.merge(cfg, {"lr": 0.2}), ("out_dir", "progress"), resume=False)
    assert out2 == out and "0.2" in (out / "config.yaml").read_text()
    assert len(list(tmp_path.glob("r.old-*"))) == 1
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "keep.txt").write_text("not a run")
    with pytest.raises(RunError, match="holds no run"):
        open_run("x", OmegaConf.merge(cfg, {"out_dir": str(tmp_path / "other")}), (), resume=False)
    assert (tmp_path / "other" / "keep.txt").exists()


def test_plot_style_is_local_and_figures_save(tmp_path):
    import matplotlib

    before = dict(matplotlib.rcParams)
    with plots.style():
        assert matplotlib.rcParams["axes.titlesize"] == 10
        fig = plots.figure(figsize=(2, 2))
        (line,) = fig.subplots().plot([0, 1], [1, 0])
        plots.save(fig, tmp_path / "a.png", dpi=50)
        frames = []
        for y in (0.0, 1.0):
            line.set_ydata([y, 1 - y])
            frames.append(plots.frame(fig, dpi=30))
    assert dict(matplotlib.rcParams) == before
    assert (tmp_path / "a.png").read_bytes()[:4] == b"\x89PNG"
    assert frames[0].shape[-1] == 3 and frames[0].dtype.name == "uint8"
    pytest.importorskip("PIL")
    plots.write_gif(tmp_path / "a.gif", frames, fps=5)
    from PIL import Image

    with Image.open(tmp_path / "a.gif") as im:
        assert im.n_frames == 2


def test_open_run_reads_keys_missing_from_an_old_run_as_their_legacy_value(tmp_path):
    import yaml
    from omegaconf import OmegaConf

    from dcem.experiments.common.runs import RunError, open_run

    out = tmp_path / "run"
    open_run("x", OmegaConf.create({"out_dir": str(out), "a": 1, "train": {"workers": 1}}), ("out_dir",))
    text = yaml.safe_load((out / "config.yaml").read_text())
    del text["train"]["workers"]  # a folder written before the key existed
    (out / "config.yaml").write_text(yaml.safe_dump(text))
    same = OmegaConf.create({"out_dir": str(out), "a": 1, "train": {"workers": 1}})
    with pytest.raises(RunError, match="train.workers"):
        open_run("x", same, ("out_dir",))  # without a legacy value the missing key is a difference
    assert open_run("x", same, ("out_dir",), legacy={"train.workers": 1}) == out
    other = OmegaConf.create({"out_dir": str(out), "a": 1, "train": {"workers": 2}})
    with pytest.raises(RunError, match="train.workers: 1 there, 2 now"):
        open_run("x", other, ("out_dir",), legacy={"train.workers": 1})
