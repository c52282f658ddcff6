"""The shipped recipes parse into TrainConfigs and name real tasks and models."""

from pathlib import Path

import pytest

from blipx.models import list_models
from blipx.train.config import load_config
from blipx.train.run import TASKS

RECIPES = sorted((Path(__file__).resolve().parents[2] / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_recipe_is_valid(path):
    cfg = load_config(path)
    assert cfg.task in TASKS and cfg.model in list_models()
    assert cfg.lr > 0 and cfg.batch_size > 0


def test_there_are_recipes():
    assert len(RECIPES) >= 4
