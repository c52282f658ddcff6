"""Synthetic NLVR2 on the shapes scenes of :mod:`blipx.data.shapes` (an NLVR2 task that must learn).

Each sample is a pair of scenes -- drawn with the shapes generator (:func:`random_scene`,
:func:`draw_scene`) from ``(seed, split, index)`` -- and a statement about the pair that is true
or false. Labels are exactly balanced (of samples ``2k`` and ``2k + 1`` one is true, one false,
in a random order). Three kinds of statement, each false one chosen to be wrong in one detail:

- ``side``: "the left image contains a red circle" / "... a red shape" / "... a circle"; a
  false one names, half of the time, a shape that is in the *other* image (right thing, wrong
  image), else one absent from the named image;
- ``both``: "both images contain a square" / "... a blue shape"; a false one holds for exactly
  one of the two images (three times in four) or for neither;
- ``count``: "there are more shapes in the right image" (scenes of 1..``max_objects`` shapes;
  false when that image has fewer shapes or as many).

Nothing in a statement names a position inside an image, so 'left'/'right' always mean the
image, and BLIP's official left/right swap of the pair (``swap=True``) keeps every label.
:func:`statement_truth` re-derives a label from the statement text and the scene objects.
"""

from __future__ import annotations

import random
import re
from typing import Any

import torch
from torch.utils.data import Dataset

from blipx.data.nlvr import swap_pair
from blipx.data.shapes import COLORS, SHAPES, SPLITS, draw_scene, random_scene
from blipx.data.text import pre_caption

KINDS = ("side", "both", "count")
MAX_OBJECTS = 3  # a 'side' statement needs a (colour, shape) absent from a scene: <= 3 shapes keep one
SIDES = ("left", "right")
_VALUES = {"color": tuple(COLORS), "shape": SHAPES}


def noun_phrase(color: str | None = None, shape: str | None = None) -> str:
    """'a red circle', 'an orange shape', 'a square'."""
    words = " ".join(w for w in (color, shape or "shape") if w)
    return ("an " if words[0] in "aeiou" else "a ") + words


def contains(objects: list[dict[str, Any]], color: str | None = None, shape: str | None = None) -> bool:
    return any((color is None or o["color"] == color) and (shape is None or o["shape"] == shape) for o in objects)


def _scene_of(rng: random.Random, n: int, max_objects: int) -> list[dict[str, Any]]:
    """A scene of exactly ``n`` shapes (redrawn until :func:`random_scene` gives n: odds >= 1/3)."""
    while True:
        objects = random_scene(rng, max_objects)
        if len(objects) == n:
            return objects


def _side(rng, scenes, label):
    s = rng.randrange(2)
    here, other = scenes[s], scenes[1 - s]
    attrs = rng.choice((("color", "shape"), ("color", "shape"), ("color",), ("shape",)))
    if label:
        o = rng.choice(here)
        phrase = {a: o[a] for a in attrs}
    else:
        named = [{a: o[a] for a in attrs} for o in other]
        elsewhere = [p for p in named if not contains(here, **p)]
        if elsewhere and rng.random() < 0.5:
            phrase = rng.choice(elsewhere)
        else:
            combos = [dict(zip(attrs, c)) for c in _combos(attrs)]
            phrase = rng.choice([p for p in combos if not contains(here, **p)])
    return f"the {SIDES[s]} image contains {noun_phrase(**phrase)}"


def _combos(attrs):
    if attrs == ("color", "shape"):
        return [(c, s) for c in COLORS for s in SHAPES]
    return [(v,) for v in _VALUES[attrs[0]]]


def _both(rng, scenes, label):
    attr = rng.choice(("color", "shape"))
    values = _VALUES[attr]
    if label:
        v = rng.choice(scenes[0])[attr]
        if not contains(scenes[1], **{attr: v}):  # give the right scene one
            rng.choice(scenes[1])[attr] = v
    else:
        unused = [x for x in values if not contains(scenes[0] + scenes[1], **{attr: x})]
        if unused and rng.random() < 0.25:
            v = rng.choice(unused)  # in neither image
        else:  # in exactly one image: the other loses it
            src = rng.randrange(2)
            v = rng.choice(scenes[src])[attr]
            for o in scenes[1 - src]:
                if o[attr] == v:
                    o[attr] = rng.choice([x for x in values if x != v])
    return f"both images contain {noun_phrase(**{attr: v})}"


def _count(rng, scenes, label, max_objects):
    s = rng.randrange(2)
    if label:  # the named image has more shapes
        n_other = rng.randint(1, max_objects - 1)
        n_here = rng.randint(n_other + 1, max_objects)
    else:  # fewer, or as many
        n_here = rng.randint(1, max_objects)
        n_other = rng.randint(n_here, max_objects)
    scenes[s], scenes[1 - s] = _scene_of(rng, n_here, max_objects), _scene_of(rng, n_other, max_objects)
    return f"there are more shapes in the {SIDES[s]} image"


def make_statement(rng: random.Random, label: bool, max_objects: int = 2):
    """(left objects, right objects, statement, kind) with the statement's truth = ``label``."""
    kinds = KINDS if max_objects > 1 else KINDS[:2]  # one shape per scene: no count contrast
    kind = rng.choice(kinds)
    scenes = [random_scene(rng, max_objects), random_scene(rng, max_objects)]
    if kind == "side":
        sentence = _side(rng, scenes, label)
    elif kind == "both":
        sentence = _both(rng, scenes, label)
    else:
        sentence = _count(rng, scenes, label, max_objects)
    return scenes[0], scenes[1], sentence, kind


_SIDE_RE = re.compile(r"the (left|right) image contains an? (.+)")
_BOTH_RE = re.compile(r"both images contain an? (.+)")
_MORE_RE = re.compile(r"there are more shapes in the (left|right) image")


def _parse_phrase(phrase: str) -> dict[str, str | None]:
    words = phrase.split()
    color = words[0] if words[0] in COLORS else None
    shape = words[-1] if words[-1] in SHAPES else None
    if words[-1] not in SHAPES + ("shape",) or len(words) - (color is not None) != 1:
        raise ValueError(f"not a shapes noun phrase: {phrase!r}")
    return {"color": color, "shape": shape}


def statement_truth(sentence: str, left: list[dict[str, Any]], right: list[dict[str, Any]]) -> bool:
    """Whether a shapes-NLVR2 statement holds for the scenes (objects as the generator gives them)."""
    if m := _SIDE_RE.fullmatch(sentence):
        return contains(left if m.group(1) == "left" else right, **_parse_phrase(m.group(2)))
    if m := _BOTH_RE.fullmatch(sentence):
        p = _parse_phrase(m.group(1))
        return contains(left, **p) and contains(right, **p)
    if m := _MORE_RE.fullmatch(sentence):
        here, other = (left, right) if m.group(1) == "left" else (right, left)
        return len(here) > len(other)
    raise ValueError(f"not a shapes-NLVR2 statement: {sentence!r}")


class ShapesNlvrDataset(Dataset):
    """``num_samples`` (default: the split's :data:`~blipx.data.shapes.SPLITS` size) statements,
    each about its own pair of scenes of 1..``max_objects`` shapes. Splits use separate seed
    streams (held-out scenes). A sample has the fields of :class:`blipx.data.nlvr.NlvrDataset`
    (``image0``, ``image1`` as ``transform`` outputs, ``sentence``, ``label``, ``index``) plus
    ``kind`` and the true scenes ``objects0`` / ``objects1``. ``swap``: BLIP's training swap
    of the pair (with probability 0.5, torch's generator), applied to the objects as well."""

    def __init__(self, split: str = "train", num_samples: int | None = None, image_size: int = 48,
                 max_objects: int = 2, seed: int = 0, transform=None, family: str = "blip", swap: bool = False) -> None:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {sorted(SPLITS)}, got {split!r}")
        if not 1 <= max_objects <= MAX_OBJECTS:
            raise ValueError(f"max_objects must be in [1, {MAX_OBJECTS}], got {max_objects}")
        if family not in ("blip", "albef"):
            raise ValueError(f"family must be 'blip' or 'albef', got {family!r}")
        self.split, self.seed, self.max_objects, self.image_size = split, seed, max_objects, image_size
        self.num_samples = SPLITS[split] if num_samples is None else int(num_samples)
        self.transform, self.family, self.swap = transform, family, bool(swap)

    def __len__(self) -> int:
        return self.num_samples

    def label(self, index: int) -> bool:
        """Exactly one of samples 2k, 2k + 1 is true (which one: a coin of pair k)."""
        coin = random.Random(f"{self.seed}/{self.split}/{index // 2}/nlvr-label").random() < 0.5
        return bool(index % 2) != coin

    def raw(self, index: int) -> dict[str, Any]:
        """The sample before the transform and the swap (PIL images)."""
        if not 0 <= index < self.num_samples:
            raise IndexError(index)
        rng = random.Random(f"{self.seed}/{self.split}/{index}/nlvr")
        label = self.label(index)
        left, right, sentence, kind = make_statement(rng, label, self.max_objects)
        image0, image1 = draw_scene(left, self.image_size, rng), draw_scene(right, self.image_size, rng)
        return {"image0": image0, "image1": image1, "sentence": pre_caption(sentence, None, self.family),
                "label": int(label), "kind": kind, "objects0": left, "objects1": right, "index": index}

    def __getitem__(self, index: int) -> dict[str, Any]:
        s = self.raw(index)
        if self.swap and torch.rand(()) < 0.5:
            (s["image0"], s["objects0"]), (s["image1"], s["objects1"]), s["sentence"] = swap_pair(
                (s["image0"], s["objects0"]), (s["image1"], s["objects1"]), s["sentence"])
        if self.transform is not None:
            s["image0"], s["image1"] = self.transform(s["image0"]), self.transform(s["image1"])
        return s


__all__ = ["KINDS", "ShapesNlvrDataset", "make_statement", "noun_phrase", "statement_truth"]
