"""Shared fixtures of the whole suite (every test runs seeded, on one intra-op thread).

Parametrisation:

* ``device``: ``"cpu"`` always, ``"cuda"`` when a GPU is visible (skipped otherwise);
* ``dtype``: float32 and float64;
* ``batch_shape``: leading shapes of ``(..., n)`` inputs, from none to two dimensions;
* ``sync_path``: the solvers' host-checked and sync-free paths (:mod:`dcem.sync`), both on
  CPU, so CI runs the accelerator logic on every commit. Modules opt in with
  ``pytestmark = pytest.mark.usefixtures("sync_path")``; tests of behaviour that exists on
  one path only mark themselves ``@pytest.mark.host_path`` or ``@pytest.mark.free_path``.

Hypothesis runs under the profile named by ``HYPOTHESIS_PROFILE`` (default ``dev``: few
examples, no deadline so the first call's start-up cost does not flake); ``ci`` runs more.
"""

from __future__ import annotations

import os

import pytest
import torch
from hypothesis import HealthCheck, settings

import dcem

settings.register_profile(
    "dev",
    max_examples=30,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.differing_executors],
)
settings.register_profile(
    "ci",
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.differing_executors],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))

CUDA = torch.cuda.is_available()

DEVICES = [
    "cpu",
    pytest.param("cuda", marks=pytest.mark.skipif(not CUDA, reason="no CUDA device available")),
]
DTYPES = [torch.float32, torch.float64]
BATCH_SHAPES = [(), (1,), (7,), (3, 4)]


@pytest.fixture(autouse=True)
def _seed_and_threads():
    """Every test starts from the same global RNG state, on one intra-op thread.

    The tensors here are small: with several threads a loaded CI machine spends far more time
    in thread hand-offs than in arithmetic (a 6 x 10000 sigmoid: 0.1 ms on one thread, 10 ms
    on two when the cores are busy).
    """
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(params=DEVICES)
def device(request) -> torch.device:
    return torch.device(request.param)


@pytest.fixture(params=DTYPES, ids=lambda d: str(d).removeprefix("torch."))
def dtype(request) -> torch.dtype:
    return request.param


@pytest.fixture(params=BATCH_SHAPES, ids=lambda s: "x".join(map(str, s)) or "none")
def batch_shape(request) -> tuple[int, ...]:
    return request.param


@pytest.fixture(params=["host", "free"])
def sync_path(request):
    """Run the test under ``dcem.sync_mode(param)``; skip path-specific tests on the other path."""
    path = request.param
    other = "free_path" if path == "host" else "host_path"
    if request.node.get_closest_marker(other) is not None:
        pytest.skip(f"behaviour of the {other.removesuffix('_path')} path only")
    with dcem.sync_mode(path):
        yield path
