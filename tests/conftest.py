"""Suite-wide settings.

Torch runs with one intra-op thread in tests: the test networks and volumes are tiny, and on a
2-core machine two threads per process oversubscribe as soon as anything else runs (measured
here: a `test`-preset step took 4-11 s with 2 threads next to another process, 0.6-0.8 s with 1).
"""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="session", autouse=True)
def _single_torch_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
