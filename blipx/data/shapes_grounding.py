"""Synthetic weakly supervised grounding on the shapes scenes (a grounding task that must learn).

Sample ``i`` of a split is a scene of 2-3 shapes (``min_objects``..``max_objects``; drawn with
:func:`blipx.data.shapes.random_scene` / :func:`~blipx.data.shapes.draw_scene` from the
string-seeded stream ``(seed, split, i)``, so any index can be drawn in any order) and a
referring expression that names exactly one of its shapes without saying where it is: "the red
circle" (``forms`` "color_shape"), optionally also "the red shape" ("color") or "the circle"
("shape") when that colour or shape occurs once in the scene. The referred shape's grid cell is
the ground truth: a Grad-CAM hit is a map whose peak lies in that cell
(:func:`blipx.evaluation.grounding.peak_in_cell`).

Training pairs (image, expression) are what ALBEF's ``Grounding.py`` trains on (ITC + ITM, image
ids as positives): samples carry ``image`` / ``caption`` / ``image_id`` for
:class:`~blipx.data.collate.ImageTextCollator`, plus ``objects``, ``target`` (index into
``objects``), ``cell`` ((row, col)) and ``num_objects``.
"""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

from torch.utils.data import Dataset

from blipx.data.shapes import POSITIONS, SPLITS, draw_scene, random_scene

FORMS = ("color_shape", "color", "shape")


def referring_expressions(objects: list[dict[str, Any]], i: int, forms=FORMS) -> list[str]:
    """The expressions of ``forms`` that name object ``i`` of ``objects`` and no other."""
    o = objects[i]
    pairs = Counter((x["color"], x["shape"]) for x in objects)
    colors = Counter(x["color"] for x in objects)
    shapes = Counter(x["shape"] for x in objects)
    out = []
    if "color_shape" in forms and pairs[(o["color"], o["shape"])] == 1:
        out.append(f"the {o['color']} {o['shape']}")
    if "color" in forms and colors[o["color"]] == 1:
        out.append(f"the {o['color']} shape")
    if "shape" in forms and shapes[o["shape"]] == 1:
        out.append(f"the {o['shape']}")
    return out


class ShapesGroundingDataset(Dataset):
    """``num_samples`` (scene, referring expression) pairs; see the module docstring."""

    def __init__(self, split: str = "train", num_samples: int | None = None, image_size: int = 48,
                 min_objects: int = 2, max_objects: int = 3, seed: int = 0, transform=None,
                 forms: tuple[str, ...] | list[str] = ("color_shape",)) -> None:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {sorted(SPLITS)}, got {split!r}")
        if not 2 <= min_objects <= max_objects <= len(POSITIONS):
            raise ValueError(f"need 2 <= min_objects <= max_objects <= {len(POSITIONS)}, got "
                             f"min_objects={min_objects}, max_objects={max_objects}")
        bad = [f for f in forms if f not in FORMS]
        if not forms or bad:
            raise ValueError(f"forms must be a non-empty subset of {FORMS}, got {list(forms)}")
        self.split, self.image_size, self.seed = split, image_size, seed
        self.min_objects, self.max_objects, self.forms = min_objects, max_objects, tuple(forms)
        self.num_samples = SPLITS[split] if num_samples is None else int(num_samples)
        self.transform = transform

    def __len__(self) -> int:
        return self.num_samples

    def raw(self, index: int) -> dict[str, Any]:
        if not 0 <= index < self.num_samples:
            raise IndexError(index)
        rng = random.Random(f"{self.seed}/{self.split}/{index}/grounding")
        while True:  # redraw until the scene has enough shapes and one of them can be named alone
            objects = random_scene(rng, self.max_objects)
            if len(objects) < self.min_objects:
                continue
            named = [(i, e) for i in range(len(objects)) for e in referring_expressions(objects, i, self.forms)]
            if named:
                break
        target, expression = rng.choice(named)
        image = draw_scene(objects, self.image_size, rng)
        o = objects[target]
        return {"image": image, "caption": expression, "image_id": index, "index": index, "objects": objects,
                "target": target, "cell": (o["row"], o["col"]), "num_objects": len(objects)}

    def __getitem__(self, index: int) -> dict[str, Any]:
        s = self.raw(index)
        if self.transform is not None:
            s["image"] = self.transform(s["image"])
        return s


__all__ = ["FORMS", "ShapesGroundingDataset", "referring_expressions"]
