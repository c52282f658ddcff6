"""Negative control (slow): every planted kernel bug of tests/simt/plants.py is caught by the
emulated tests. Each case builds a planted copy of the emulated library (only the translation
units that include the planted header recompile) and runs one op's emulated tests on it."""

import pytest

from tests.simt.build import SimtUnavailable, cuda_include_dirs
from tests.simt.plants import PLANTS, run_plant


@pytest.mark.slow
@pytest.mark.parametrize("plant", PLANTS, ids=lambda p: p.name.split(":")[0].replace(" ", "-"))
def test_planted_bug_is_caught(plant):
    try:
        cuda_include_dirs()
    except SimtUnavailable as e:
        pytest.skip(f"SIMT emulator unavailable: {e}")
    caught, why = run_plant(plant)
    assert caught, f"planted bug not caught: {plant.name}: {why}"
