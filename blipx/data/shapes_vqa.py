"""Synthetic VQA on the shapes scenes of :mod:`blipx.data.shapes` (a VQA task that must learn).

Each sample is scene ``i`` of a :class:`~blipx.data.shapes.ShapesDataset` split and one question
about it, drawn from ``(seed, split, i)``: colour, shape or size of the shape in a named cell,
the position of a (colour, shape) that occurs once, or a count (all shapes, or the shapes of one
colour). Every answer is one of :data:`ANSWERS` (25), so ranking over that list and free
generation are both scored. Samples have the fields of :class:`blipx.data.vqa.VqaDataset`'s
training *and* test samples (one answer of weight 1; ten identical "human" answers), so one
:class:`~blipx.data.vqa.VqaCollator` batch serves training and VQA-accuracy scoring.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

from torch.utils.data import Dataset

from blipx.data.shapes import COLORS, POSITIONS, SHAPES, SIZES, ShapesDataset
from blipx.data.vqa import answer_weights, pre_question

QUESTION_TYPES = ("color", "shape", "size", "position", "count")


def position_answer(phrase: str) -> str:
    """'at the top left' -> 'top left', 'in the center' -> 'center' (the answer form)."""
    return phrase.split(" the ", 1)[1]


MAX_COUNT = 3
ANSWERS = (list(COLORS) + list(SHAPES) + list(SIZES) + [position_answer(p) for p in POSITIONS.values()]
           + [str(n) for n in range(MAX_COUNT + 1)])


def make_question(objects: list[dict[str, Any]], rng: random.Random,
                  types: Sequence[str] = QUESTION_TYPES) -> tuple[str, str, str]:
    """(question, answer, type) about ``objects`` (a shapes scene), drawn from ``rng``; its type
    is one of ``types``."""
    kind = rng.choice(types)
    o = rng.choice(objects)
    if kind == "position":
        unique = [x for x in objects if sum((y["color"], y["shape"]) == (x["color"], x["shape"]) for y in objects) == 1]
        if not unique:  # every (colour, shape) repeats: "where is" has no single answer
            kind = next((t for t in types if t != "position"), "color")
        else:
            o = rng.choice(unique)
            return f"where is the {o['color']} {o['shape']}?", position_answer(o["position"]), kind
    if kind == "color":
        return f"what color is the shape {o['position']}?", o["color"], kind
    if kind == "shape":
        return f"what shape is {o['position']}?", o["shape"], kind
    if kind == "size":
        return f"what size is the shape {o['position']}?", o["size"], kind
    if rng.random() < 0.5:
        return "how many shapes are there?", str(len(objects)), kind
    color = rng.choice(list(COLORS))
    return f"how many {color} shapes are there?", str(sum(x["color"] == color for x in objects)), kind


class ShapesVqaDataset(Dataset):
    """``num_samples`` questions on the scenes of ``ShapesDataset(split, max_objects=...)``.

    A sample: ``image`` (``transform`` output), ``question``, ``answers`` [answer] with
    ``weights`` [1.0], ``question_id`` (= index), ``gt_answers`` (the answer 10 times: VQA
    accuracy then equals exact match), ``type`` and ``objects``. ``max_objects`` <= 3 keeps
    every count within :data:`ANSWERS`. ``min_objects`` and ``question_types`` narrow the
    scenes and the questions (the first stage of the shapes-VQA fine-tune asks only about the
    shape in a named cell of a multi-shape scene); the defaults give the held-out questions.
    """

    def __init__(self, split: str = "train", num_samples: int | None = None, image_size: int = 48,
                 max_objects: int = 3, seed: int = 0, transform=None, family: str = "blip", min_objects: int = 1,
                 question_types: Sequence[str] = QUESTION_TYPES) -> None:
        if not 1 <= max_objects <= MAX_COUNT:
            raise ValueError(f"max_objects must be in [1, {MAX_COUNT}] (counts are answers), got {max_objects}")
        if isinstance(question_types, str) or not question_types or not set(question_types) <= set(QUESTION_TYPES):
            raise ValueError(f"question_types must be a non-empty subset of {QUESTION_TYPES}, got {question_types!r}")
        self.scenes = ShapesDataset(split, num_samples, image_size=image_size, seed=seed, max_objects=max_objects,
                                    min_objects=min_objects)
        self.transform, self.family = transform, family
        self.question_types = tuple(question_types)

    def __len__(self) -> int:
        return len(self.scenes)

    def question_rng(self, index: int) -> random.Random:
        """The question's own stream (scene ``index`` keeps the scene's stream)."""
        return random.Random(f"{self.scenes.seed}/{self.scenes.split}/{index}/vqa")

    def __getitem__(self, index: int) -> dict[str, Any]:
        s = self.scenes.raw(index)
        question, answer, kind = make_question(s["objects"], self.question_rng(index), self.question_types)
        image = self.transform(s["image"]) if self.transform else s["image"]
        answers, weights = answer_weights([answer], "vqa", self.family)  # ALBEF: + its eos
        return {"image": image, "question": pre_question(question, self.family), "answers": answers, "weights": weights,
                "question_id": index, "gt_answers": [answer] * 10, "type": kind, "objects": s["objects"]}


__all__ = ["ANSWERS", "QUESTION_TYPES", "ShapesVqaDataset", "make_question", "position_answer"]
