"""dcem._io: atomic writes honouring the umask, stale temporary files, exact round trips of the
random-number-generator states through the safe loader."""

from __future__ import annotations

import os
import random

import numpy as np
import pytest
import torch

from dcem import _io


def test_atomic_open_honours_the_umask_and_leaves_no_tmp(tmp_path):
    old = os.umask(0o027)
    try:
        _io.atomic_write_text(tmp_path / "a.txt", "x")
    finally:
        os.umask(old)
    assert oct((tmp_path / "a.txt").stat().st_mode & 0o777) == "0o640"
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]


def test_a_failed_write_keeps_the_old_file(tmp_path):
    p = tmp_path / "a.txt"
    p.write_text("old")
    with pytest.raises(RuntimeError), _io.atomic_open(p) as fh:
        fh.write("new")
        raise RuntimeError
    assert p.read_text() == "old" and [q.name for q in tmp_path.iterdir()] == ["a.txt"]


def test_remove_stale_tmp_only_removes_ours(tmp_path):
    (tmp_path / "sub").mkdir()
    ours = [tmp_path / "ck.pt.ab12cd34.tmp", tmp_path / "sub/log.csv.x_9k2m1q.tmp"]
    other = [tmp_path / "notes.tmp", tmp_path / "ck.pt"]
    for p in ours + other:
        p.write_text("")
    assert sorted(_io.remove_stale_tmp(tmp_path)) == sorted(ours)
    assert all(p.exists() for p in other) and not any(p.exists() for p in ours)


def test_rng_states_round_trip_exactly(tmp_path):
    np.random.seed(5)
    random.seed(5)
    g = torch.Generator().manual_seed(5)
    nrng = np.random.default_rng(5)
    for _ in range(3):  # states away from the seed
        np.random.rand(), random.random(), torch.rand(2, generator=g), nrng.random()
    state = {"np": np.random.get_state(), "py": random.getstate(), "torch": torch.get_rng_state(),
             "gen": g.get_state(), "pcg": nrng.bit_generator.state, "scalar": np.float32(0.1)}  # fmt: skip
    _io.save(state, tmp_path / "s.pt")
    back = _io.safe_load(tmp_path / "s.pt")
    want = (np.random.rand(), random.random(), torch.rand(2, generator=g), nrng.random())
    np.random.set_state(back["np"])
    random.setstate(back["py"])
    g2 = torch.Generator()
    g2.set_state(back["gen"])
    n2 = np.random.default_rng()
    n2.bit_generator.state = back["pcg"]
    got = (np.random.rand(), random.random(), torch.rand(2, generator=g2), n2.random())
    assert want[0] == got[0] and want[1] == got[1] and torch.equal(want[2], got[2]) and want[3] == got[3]
    assert torch.equal(back["torch"], state["torch"])
    assert type(back["scalar"]) is np.float32 and back["scalar"] == np.float32(0.1)
    assert back["py"] == state["py"]


def test_safe_load_names_a_truncated_file(tmp_path):
    p = tmp_path / "ck.pt"
    _io.save({"w": torch.ones(100)}, p)
    p.write_bytes(p.read_bytes()[:50])
    with pytest.raises(_io.CheckpointError, match=r"checkpoint '.*ck.pt' is unreadable"):
        _io.safe_load(p)


class _Boom:
    """Would run code if unpickled."""

    def __reduce__(self):
        return (print, ("ran",))


def test_plainly_pickled_numpy_values_load_and_nothing_else_does(tmp_path):
    """Checkpoints of dcem 0.1 pickled NumPy values the plain way: they load (only NumPy's
    array-rebuilding globals are allowed), while a code-running object next to them is refused."""
    state = {"pcg": np.random.default_rng(3).bit_generator.state, "mt": np.random.RandomState(3).get_state(),
             "buf": np.arange(6, dtype=np.uint32).reshape(2, 3), "s": np.float32(0.25),
             "w": torch.ones(2)}  # fmt: skip
    torch.save(state, tmp_path / "old.pt")
    back = _io.safe_load(tmp_path / "old.pt")
    np.testing.assert_array_equal(back["buf"], state["buf"])
    assert back["buf"].dtype == np.uint32 and back["s"] == np.float32(0.25) and back["pcg"] == state["pcg"]
    assert all(np.array_equal(a, b) for a, b in zip(back["mt"], state["mt"]))
    for bad in ({"buf": np.arange(2), "x": _Boom()}, {"obj": np.array([_Boom()], dtype=object)}):
        torch.save(bad, tmp_path / "bad.pt")
        with pytest.raises(_io.CheckpointError, match="refused without running them"):
            _io.safe_load(tmp_path / "bad.pt")
