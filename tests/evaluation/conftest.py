import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    # The tiny models are latency-bound: on a shared 2-core machine, 2 intra-op threads contend
    # and run ~30x slower than 1. Restored afterwards so other test folders keep their setting.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
