"""A tiny random HF BLIP captioner (transformers' ``BlipConfig`` classes) and the same weights in blipx.

N(0, 0.5) weights and a +15 bias on [SEP]: with these, captions are varied and rows stop at
mixed steps, so the padding of finished rows and the beam bookkeeping are exercised
(test_generate_parity.py::test_fixture_exercises_padding asserts both)."""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")

from blipx.models import BlipCaptioner  # noqa: E402
from tests.models.hf_tiny import pixels, tiny_blip_config  # noqa: E402

from .helpers import SEP, randomize  # noqa: E402


@pytest.fixture(scope="session")
def captioners(tmp_path_factory):
    """(HF BlipForConditionalGeneration, blipx BlipCaptioner) with identical weights."""
    torch.manual_seed(0)
    hf = randomize(transformers.BlipForConditionalGeneration(tiny_blip_config()), seed=1, std=0.5)
    with torch.no_grad():
        hf.text_decoder.cls.predictions.bias[SEP] += 15.0
    d = tmp_path_factory.mktemp("hf_gen")
    hf.save_pretrained(d)
    return hf, BlipCaptioner.from_pretrained(d).eval()


@pytest.fixture(scope="session")
def px():
    return pixels(4)


@pytest.fixture
def reference_ops():
    """The reference sample_tokens draws with torch.multinomial on the global RNG, like HF (the
    kernels draw otherwise): id parity with HF's sampling needs it."""
    from blipx import ops

    before = ops.use_kernels()
    ops.set_use_kernels(False)
    yield
    ops.set_use_kernels(before)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """These models are tiny: on a shared CPU, intra-op threads only add OpenMP wake-up waits
    (measured ~10x slower per decode step at 2 threads under load). Restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
