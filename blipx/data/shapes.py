"""A built-in, deterministic captioned-shapes dataset (for demos, tests and CapFilt in miniature).

Each image is drawn with PIL on a grey background: 1-3 shapes, each in its own cell of a 3x3
grid, with a colour, a size (small/large) and a position named after its cell ("at the top
left", "in the center"). Captions describe every shape with one of several templates. Sample
``i`` of a split depends only on ``(seed, split, i)`` (string-seeded ``random.Random``, stable
across processes, workers and Python versions), so any index can be drawn in any order.

``noise`` replaces exactly ``round(noise * num_samples)`` captions with captions of another
scene whose (colour, shape) content differs (so they are wrong, not just re-worded); those
samples carry ``is_noisy=True`` and the true caption in ``clean_caption`` — the ground truth for
measuring a CapFilt filter.
"""

from __future__ import annotations

import os
import random
import re
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw
from torch.utils.data import Dataset

from blipx.data.annotations import write_jsonl
from blipx.data.transforms import apply_transform

SHAPES = ("circle", "square", "triangle", "diamond")
COLORS = {
    "red": (220, 30, 30),
    "green": (30, 160, 40),
    "blue": (30, 60, 220),
    "yellow": (240, 210, 20),
    "purple": (140, 40, 180),
    "orange": (250, 130, 10),
}
BACKGROUND = (128, 128, 128)
# Shape extent as a fraction of its grid cell. At the demo's 48 px a cell is 16 px: "small" at
# 0.45 left ~7 px shapes that a patch-8 ViT told apart (triangle vs diamond) only 77 % of the time
# after 800 supervised steps; at 0.6 (~9 px) it reached 94 %.
SIZES = {"small": 0.6, "large": 0.9}
SUPERSAMPLE = 4  # draw at 4x and box-downsample: anti-aliased edges carry sub-pixel shape cues
# 3x3 grid cells (row, col) -> the phrase that names them.
POSITIONS = {
    (0, 0): "at the top left", (0, 1): "at the top", (0, 2): "at the top right",
    (1, 0): "on the left", (1, 1): "in the center", (1, 2): "on the right",
    (2, 0): "at the bottom left", (2, 1): "at the bottom", (2, 2): "at the bottom right",
}  # fmt: skip
TEMPLATES = ("{}", "there is {}", "an image of {}", "{} on a gray background")
SPLITS = {"train": 10000, "val": 1000, "test": 1000}

# Longest position first: regex alternation takes the first match ("at the top" < "at the top left").
_POSITION_ALT = "|".join(map(re.escape, sorted(POSITIONS.values(), key=len, reverse=True)))
_OBJECT_RE = re.compile(rf"\b({'|'.join(SIZES)}) ({'|'.join(COLORS)}) ({'|'.join(SHAPES)})(?: ({_POSITION_ALT}))?")


def random_scene(rng: random.Random, max_objects: int = 3, min_objects: int = 1) -> list[dict[str, Any]]:
    """min_objects..max_objects objects in distinct grid cells, each {shape, color, size,
    position, row, col} (the default min_objects=1 keeps every scene stream as it always was)."""
    cells = rng.sample(sorted(POSITIONS), rng.randint(min_objects, max_objects))
    return [
        {"shape": rng.choice(SHAPES), "color": rng.choice(list(COLORS)), "size": rng.choice(list(SIZES)),
         "position": POSITIONS[cell], "row": cell[0], "col": cell[1]}
        for cell in cells
    ]  # fmt: skip


def describe(objects: Sequence[dict[str, Any]], rng: random.Random) -> str:
    """A caption naming every object (random order and template)."""
    order = rng.sample(list(objects), len(objects))
    phrases = [f"a {o['size']} {o['color']} {o['shape']} {o['position']}" for o in order]
    return rng.choice(TEMPLATES).format(" and ".join(phrases))


def parse_caption(caption: str) -> list[dict[str, str | None]]:
    """Objects a caption mentions as '<size> <colour> <shape> [<position>]', in order."""
    return [
        {"size": m.group(1), "color": m.group(2), "shape": m.group(3), "position": m.group(4)}
        for m in _OBJECT_RE.finditer(caption.lower())
    ]


def caption_matches(
    caption: str, objects: Sequence[dict[str, Any]], attributes: Sequence[str] = ("color", "shape")
) -> bool:
    """True when the caption mentions exactly the image's objects, compared on ``attributes``
    (default colour + shape, the demo's caption accuracy; add "size"/"position" to be stricter)."""
    said = Counter(tuple(o[a] for a in attributes) for o in parse_caption(caption))
    return said == Counter(tuple(o[a] for a in attributes) for o in objects)


FULL_DESCRIPTION = ("size", "color", "shape", "position")


def caption_match_matrix(
    captions: Sequence[str], scenes: Sequence[Sequence[dict[str, Any]]], attributes: Sequence[str] = FULL_DESCRIPTION
):
    """bool tensor [N_scenes, N_captions]: caption j describes scene i (``caption_matches``).

    The retrieval ground truth "the retrieved caption describes the query image", for
    ``evaluate_retrieval(..., positives=...)``: identical scenes drawn twice count as hits.
    """
    import torch

    said = [Counter(tuple(o[a] for a in attributes) for o in parse_caption(c)) for c in captions]
    truth = [Counter(tuple(o[a] for a in attributes) for o in objs) for objs in scenes]
    return torch.tensor([[s == t for s in said] for t in truth], dtype=torch.bool)


def draw_scene(objects: Sequence[dict[str, Any]], image_size: int, rng: random.Random) -> Image.Image:
    """Render objects, anti-aliased by supersampling (edges blend with the background; each
    shape's centre pixel, recorded in ``o["center"]`` as (x, y), is still exactly its colour)."""
    img = Image.new("RGB", (image_size * SUPERSAMPLE, image_size * SUPERSAMPLE), BACKGROUND)
    draw = ImageDraw.Draw(img)
    cell = image_size * SUPERSAMPLE / 3
    for o in objects:
        extent = SIZES[o["size"]] * cell * rng.uniform(0.9, 1.0)
        slack = (cell - extent) / 2  # jitter the centre without leaving the cell
        cx = (o["col"] + 0.5) * cell + rng.uniform(-slack, slack) * 0.8
        cy = (o["row"] + 0.5) * cell + rng.uniform(-slack, slack) * 0.8
        r = extent / 2
        box = [cx - r, cy - r, cx + r, cy + r]
        fill = COLORS[o["color"]]
        if o["shape"] == "circle":
            draw.ellipse(box, fill=fill)
        elif o["shape"] == "square":
            draw.rectangle(box, fill=fill)
        elif o["shape"] == "triangle":
            draw.polygon([(cx, cy - r), (cx + r, cy + r), (cx - r, cy + r)], fill=fill)
        else:  # diamond
            draw.polygon([(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)], fill=fill)
        o["center"] = (int(cx) // SUPERSAMPLE, int(cy) // SUPERSAMPLE)
    return img.resize((image_size, image_size), Image.Resampling.BOX) if SUPERSAMPLE > 1 else img


def _content(objects: Sequence[dict[str, Any]]) -> Counter:
    return Counter((o["color"], o["shape"]) for o in objects)


class ShapesDataset(Dataset):
    """Captioned shapes. ``split`` in train/val/test (different seed streams = held-out scenes);
    ``max_objects`` (1-9, default 3) bounds the shapes per image (1 makes an easy demo task);
    ``min_objects`` (default 1) their lower bound.

    A sample is a dict: ``image`` (PIL, or the ``transform`` output), ``caption`` (possibly
    wrong), ``clean_caption``, ``is_noisy``, ``objects`` (the true scene, before augmentation),
    ``image_id`` (= ``index``: one caption per image). ``transform`` may be a plain image
    transform or a joint one with ``.apply_pair(image, caption)`` such as ``TrainTransform(flip="swap")``.
    """

    def __init__(
        self,
        split: str = "train",
        num_samples: int | None = None,
        image_size: int = 64,
        noise: float = 0.0,
        seed: int = 0,
        transform=None,
        max_objects: int = 3,
        min_objects: int = 1,
    ) -> None:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {sorted(SPLITS)}, got {split!r}")
        if not 0.0 <= noise <= 1.0:
            raise ValueError(f"noise must be in [0, 1], got {noise}")
        if not 1 <= max_objects <= len(POSITIONS):
            raise ValueError(f"max_objects must be in [1, {len(POSITIONS)}], got {max_objects}")
        if not 1 <= min_objects <= max_objects:
            raise ValueError(f"min_objects must be in [1, max_objects={max_objects}], got {min_objects}")
        self.max_objects, self.min_objects = max_objects, min_objects
        self.split, self.image_size, self.noise, self.seed = split, image_size, noise, seed
        self.num_samples = SPLITS[split] if num_samples is None else int(num_samples)
        self.transform = transform
        n_noisy = round(noise * self.num_samples)
        self.noisy_indices = frozenset(random.Random(f"{seed}/{split}/noise").sample(range(self.num_samples), n_noisy))

    def __len__(self) -> int:
        return self.num_samples

    def raw(self, index: int) -> dict[str, Any]:
        """The un-transformed sample (PIL image)."""
        if not 0 <= index < self.num_samples:
            raise IndexError(index)
        rng = random.Random(f"{self.seed}/{self.split}/{index}")
        objects = random_scene(rng, self.max_objects, self.min_objects)
        image = draw_scene(objects, self.image_size, rng)
        clean = describe(objects, rng)
        caption, noisy = clean, index in self.noisy_indices
        if noisy:
            wrong_rng = random.Random(f"{self.seed}/{self.split}/{index}/wrong")
            other = random_scene(wrong_rng, self.max_objects)
            while _content(other) == _content(objects):
                other = random_scene(wrong_rng, self.max_objects)
            caption = describe(other, wrong_rng)
        return {"image": image, "caption": caption, "clean_caption": clean, "is_noisy": noisy,
                "objects": objects, "image_id": index, "index": index}  # fmt: skip

    def __getitem__(self, index: int) -> dict[str, Any]:
        sample = self.raw(index)
        sample["image"], sample["caption"] = apply_transform(self.transform, sample["image"], sample["caption"])
        return sample

    def annotations(self, image_dir: str = "images") -> list[dict[str, Any]]:
        """JSONL entries (official format + ``is_noisy``, ``clean_caption``, ``objects``) for
        images saved as ``{image_dir}/{split}/{index:06d}.png``."""
        out = []
        for i in range(self.num_samples):
            s = self.raw(i)
            path = f"{image_dir}/{self.split}/{i:06d}.png"
            keep = ("caption", "image_id", "is_noisy", "clean_caption", "objects")
            out.append({"image": path, **{k: s[k] for k in keep}})
        return out

    def export(self, out_dir: str | os.PathLike, image_dir: str = "images") -> Path:
        """Write PNG images and ``{out_dir}/{split}.jsonl``; returns the annotation path.

        Read it back with ``ImageTextDataset(path, image_root=out_dir)``.
        """
        out_dir = Path(out_dir)
        (out_dir / image_dir / self.split).mkdir(parents=True, exist_ok=True)
        entries = self.annotations(image_dir)
        for i, entry in enumerate(entries):
            self.raw(i)["image"].save(out_dir / entry["image"])
        path = out_dir / f"{self.split}.jsonl"
        write_jsonl(entries, path)
        return path

    def export_shards(self, pattern: str | os.PathLike, maxcount: int = 1000) -> list[str]:
        """Write the split as WebDataset shards (``pattern`` like ``"out/shapes-%06d.tar"``)."""
        from blipx.data.shards import write_shards

        samples = (
            {"key": f"{self.split}_{i:06d}", "image": s["image"], "caption": s["caption"], "image_id": i,
             "is_noisy": s["is_noisy"], "clean_caption": s["clean_caption"]}
            for i in range(self.num_samples) for s in [self.raw(i)]
        )  # fmt: skip
        return write_shards(samples, pattern, maxcount=maxcount)
