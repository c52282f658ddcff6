import pytest
import torch

from tests.simt.backend import SIMT, Simt

# Parametrize device-generic tests over these; CUDA cases are skipped on machines without a GPU.
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]
# Kernel tests add the CUDA kernels run on the SIMT emulator (tests/simt): CPU tensors, every
# call run under two schedules (see tests/simt/backend.py).
KERNEL_DEVICES = DEVICES + [pytest.param(SIMT, id="simt", marks=pytest.mark.simt)]


def sized(device, full, simt):
    """A test size: ``simt`` for the emulated kernels (thread by thread on the CPU), else ``full``."""
    return simt if isinstance(device, Simt) else full


def pytest_configure(config):
    config.addinivalue_line("markers", "simt: runs the CUDA kernels on the SIMT emulator (tests/simt)")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _simt_backend(request):
    """Routes blipx's ops to the emulated kernels for test cases with a ``Simt`` parameter."""
    params = getattr(getattr(request.node, "callspec", None), "params", {})
    if not any(isinstance(v, Simt) for v in params.values()):
        yield
        return
    from tests.simt import backend
    from tests.simt.build import SimtUnavailable

    try:
        backend.load()
    except SimtUnavailable as e:
        pytest.skip(f"SIMT emulator unavailable: {e}")
    with backend.active():
        yield
