"""AANet tests run many tiny tensor ops: one intra-op thread avoids oversubscribing small CI
machines (the numbers do not depend on it)."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
