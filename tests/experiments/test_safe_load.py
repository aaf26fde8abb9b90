"""Opening a run folder never runs code: a checkpoint holding a code-executing object is refused
in one line naming the file, and the object's code does not run (one test per experiment)."""

from __future__ import annotations

import builtins
import json

import pytest
import torch

from dcem.experiments.common.runs import CheckpointError


class Planted:
    """Unpickling this object creates the file ``marker`` (``open(marker, "w")``)."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (builtins.open, (self.marker, "w"))


def plant(path, tmp_path):
    """Add a :class:`Planted` object to the checkpoint ``path``; returns the marker file."""
    marker = tmp_path / "code-ran"
    ck = torch.load(path, weights_only=True)
    ck["planted"] = Planted(str(marker))
    torch.save(ck, path)
    with open(marker, "w"):  # the planted object really runs code when unpickled the unsafe way
        pass
    marker.unlink()
    torch.load(path, weights_only=False)
    assert marker.exists()
    marker.unlink()
    return marker


def _refused(err, path, marker) -> None:
    msg = str(err.value)
    assert str(path) in msg and "refused without running them" in msg and "\n" not in msg
    assert not marker.exists()


def _rerun_refused(main, args, path, tmp_path):
    """Run ``main(args)``, plant code in the checkpoint ``path``, rerun: refused, nothing ran."""
    main(args)
    marker = plant(path, tmp_path)
    with pytest.raises(CheckpointError) as err:
        main(args)
    _refused(err, path, marker)


def test_regression_checkpoint_with_code_is_refused(tmp_path):
    from dcem.experiments import regression

    args = [f"out_dir={tmp_path / 'r'}", "scale=tiny", "progress=false", "analyse=false", "methods=[dcem]",
            "seeds=[0]", "train.n_updates=4", "train.ckpt_every=2", "train.eval_every=2"]  # fmt: skip
    _rerun_refused(regression.main, args, tmp_path / "r/dcem/seed0/ckpt.pt", tmp_path)


def test_pendulum_checkpoint_with_code_is_refused(tmp_path):
    from dcem.experiments import pendulum

    args = [f"out_dir={tmp_path / 'p'}", "scale=tiny", "progress=false", "animate=false", "n_systems=2",
            "n_steps=4", "ckpt_every=2"]  # fmt: skip
    _rerun_refused(pendulum.main, args, tmp_path / "p/checkpoint.pt", tmp_path)


@pytest.mark.parametrize("name, mode", [("checkpoint.pt", "train"), ("best.pt", "vis")])
def test_cartpole_checkpoint_with_code_is_refused(tmp_path, name, mode):
    from dcem.experiments import cartpole

    args = [f"out_dir={tmp_path / 'c'}", "scale=tiny", "progress=false", "plots=false"]
    cartpole.main(args)
    path = tmp_path / "c" / name
    marker = plant(path, tmp_path)
    with pytest.raises(CheckpointError) as err:
        cartpole.main([*args, f"mode={mode}"])
    _refused(err, path, marker)


def test_cartpole_cache_that_is_not_json_is_one_line(tmp_path):
    from dcem.experiments import cartpole

    args = [f"out_dir={tmp_path / 'c'}", "scale=tiny", "progress=false", "plots=false"]
    cartpole.main(args)
    cache = tmp_path / "c/expert_test.json"
    cache.write_text('{"key": ')
    (tmp_path / "c/summary.json").unlink()
    with pytest.raises(ValueError) as err:
        cartpole.main([*args, "mode=eval"])
    assert str(cache) in str(err.value) and "\n" not in str(err.value)


def test_mbrl_checkpoint_with_code_is_refused(tmp_path):
    pytest.importorskip("dm_control")
    pytest.importorskip("torchrl")
    from dcem.experiments.mbrl import main

    args = ["scale=test", f"out_dir={tmp_path / 'm'}", "train.episodes=0", "decoder.episodes=0",
            "ppo.iterations=0", "eval.every=0", "eval.episodes=1", "phase=model"]  # fmt: skip
    main(args)
    path = tmp_path / "m/checkpoint.pt"
    marker = plant(path, tmp_path)
    with pytest.raises(CheckpointError) as err:
        main(args)
    _refused(err, path, marker)


def test_rl_library_checkpoint_with_code_is_refused(tmp_path):
    import numpy as np

    from dcem.rl import load_checkpoint, save_checkpoint

    path = tmp_path / "ck.pt"
    rng = np.random.default_rng(3)
    save_checkpoint(path, {"w": torch.arange(3.0), "rng": rng.bit_generator.state, "buf": np.eye(2)})
    back = load_checkpoint(path)
    assert back["rng"] == rng.bit_generator.state and np.array_equal(back["buf"], np.eye(2))
    marker = plant(path, tmp_path)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    assert str(path) in str(err.value) and not marker.exists()


def test_json_results_file_that_is_not_json_names_the_file(tmp_path):
    from dcem._io import read_json

    bad = tmp_path / "results.json"
    bad.write_text("{not json")
    with pytest.raises(CheckpointError, match=r"results file '.*results.json' is unreadable"):
        read_json(bad, "results file")
    bad.write_text(json.dumps({"a": 1}))
    assert read_json(bad) == {"a": 1}
