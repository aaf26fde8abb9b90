"""Shared fixtures of the model-based RL tests."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    """One CPU thread: many times faster than two for these small models on a busy 2-core machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
