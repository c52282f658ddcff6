"""Synthetic captioned videos for zero-shot video retrieval: one shape moving across the 3x3 grid.

Each video shows one shape (the colours, shapes and sizes of :mod:`blipx.data.shapes`) gliding
along a row from left to right or down a column from top to bottom, from the centre of the
line's first cell to the centre of its last, in equal steps over ``num_video_frames`` frames
(default 16, of which the evaluation samples 8 by the official rule), each frame drawn by
:func:`blipx.data.shapes.draw_scene` (the renderer, jitter and anti-aliasing of the
captioned-shapes images). Its caption says where the shape is, in order, with the image
captions' own words::

    "a large red circle at the top left then at the top then at the top right"      (top row)
    "a small blue diamond at the top then in the center then at the bottom"          (middle column)

Why this design. The model is to match these captions zero-shot after pretraining on
single-shape scenes ("a large red circle at the top left"), so a caption uses that vocabulary
for what the frames show (size, colour, shape, the cells' phrases), and the one new word,
"then", is in every caption. BLIP's protocol cannot see the order of frames (ITC averages the
frame features; ITM cross-attends to the concatenated frame tokens, which carry no time
embedding, so it is permutation-invariant too): no model evaluated this way could tell a
direction, so each line is travelled in one direction only and the caption states it
truthfully. A caption is matched against a video by what it says
(:func:`video_caption_match_matrix`): every video it describes is a hit. 4 shapes x 6 colours x
2 sizes x 6 lines = 288 distinct videos.

Measured zero-shot with the demo's model (200 held-out videos, 8 frames, k_test 128, text->video
R@1; chance 0.8 %): this caption 75.5 %; "... moving from the top left to the top right" 50 %
(the words "moving from ... to" and the place names without their preposition are unseen);
the three cells as three shapes joined by "and" 82 % (but it reads as three shapes);
``"... at the top left then a large red circle at the top then ..."`` 79.5 %. Frames that hop
from cell centre to cell centre instead of gliding raise "moving from ... to" to 79 %: shapes
between cells are out of the pretraining distribution.

Sample ``i`` of a split depends only on ``(seed, split, i)`` (string-seeded ``random.Random``),
like :class:`~blipx.data.shapes.ShapesDataset`; the size jitter and the in-cell offset are drawn
once per video, so the shape keeps its size and its track across frames.
"""

from __future__ import annotations

import os
import random
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from blipx.data.annotations import write_jsonl
from blipx.data.shapes import COLORS, POSITIONS, SHAPES, SIZES, SPLITS, draw_scene
from blipx.data.video import stack_frames

AXES = ("row", "column")
LINES = tuple((axis, i) for axis in AXES for i in range(3))  # the 6 lines a shape can travel


def line_cells(axis: str, line: int) -> tuple[tuple[int, int], ...]:
    """The (row, col) cells of a line in the order they are travelled (rows left -> right,
    columns top -> bottom)."""
    if axis == "row":
        return tuple((line, c) for c in range(3))
    if axis == "column":
        return tuple((r, line) for r in range(3))
    raise ValueError(f"axis must be 'row' or 'column', got {axis!r}")


def describe_video(video: dict[str, Any]) -> str:
    places = " then ".join(POSITIONS[c] for c in line_cells(video["axis"], video["line"]))
    return f"a {video['size']} {video['color']} {video['shape']} {places}"


_POSITION_ALT = "|".join(map(re.escape, sorted(POSITIONS.values(), key=len, reverse=True)))
_CAPTION_RE = re.compile(rf"\b({'|'.join(SIZES)}) ({'|'.join(COLORS)}) ({'|'.join(SHAPES)}) ({_POSITION_ALT}) then "
                         rf"({_POSITION_ALT}) then ({_POSITION_ALT})\b")  # fmt: skip


def parse_video_caption(caption: str) -> tuple[str, ...] | None:
    """``(size, colour, shape, first place, second place, third place)`` a caption states, or None."""
    m = _CAPTION_RE.search(caption.lower())
    return None if m is None else m.groups()


def _key(video: dict[str, Any]) -> tuple[str, ...]:
    places = (POSITIONS[c] for c in line_cells(video["axis"], video["line"]))
    return (video["size"], video["color"], video["shape"], *places)


def video_caption_match_matrix(captions: Sequence[str], videos: Sequence[dict[str, Any]]):
    """bool [N_videos, N_captions]: caption j describes video i (shape, colour, size and the cells
    it passes, in order, as it states them). The retrieval ground truth: identical videos drawn
    twice both count."""
    import torch

    said = [parse_video_caption(c) for c in captions]
    truth = [_key(v) for v in videos]
    return torch.tensor([[s is not None and s == t for s in said] for t in truth], dtype=torch.bool)


def random_video(rng: random.Random) -> dict[str, Any]:
    axis, line = rng.choice(LINES)
    return {"shape": rng.choice(SHAPES), "color": rng.choice(list(COLORS)), "size": rng.choice(list(SIZES)),
            "axis": axis, "line": line}  # fmt: skip


def track(video: dict[str, Any], num_video_frames: int) -> list[tuple[float, float]]:
    """The shape's (row, col) grid coordinates per frame: from the centre of the start cell to
    the centre of the end cell in equal steps (fractional coordinates lie between cells)."""
    cells = line_cells(video["axis"], video["line"])
    (r0, c0), (r1, c1) = cells[0], cells[-1]
    n = max(num_video_frames - 1, 1)
    return [(r0 + (r1 - r0) * t / n, c0 + (c1 - c0) * t / n) for t in range(num_video_frames)]


def draw_video(video: dict[str, Any], num_video_frames: int, image_size: int, draw_seed: str):
    """The frames (PIL) of ``video``: :func:`draw_scene` per frame with the same random stream,
    so the size jitter and the in-cell offset stay fixed while the shape moves."""
    frames = []
    for row, col in track(video, num_video_frames):
        obj = {k: video[k] for k in ("shape", "color", "size")} | {"row": row, "col": col}
        frames.append(draw_scene([obj], image_size, random.Random(draw_seed)))
    return frames


class ShapesVideoDataset(Dataset):
    """Captioned moving-shape videos (see the module doc). ``split`` in train/val/test (different
    seed streams); a sample is ``{"video": [F, 3, S, S] (``transform`` per frame; PIL frames without
    one), "caption", "shape", "color", "size", "axis", "line", "video_id", "index"}`` with
    F = ``num_video_frames`` (the evaluation samples its ``num_frames`` out of them, officially)."""

    def __init__(self, split: str = "test", num_samples: int | None = None, image_size: int = 48,
                 num_video_frames: int = 16, seed: int = 0, transform=None) -> None:  # fmt: skip
        if split not in SPLITS:
            raise ValueError(f"split must be one of {sorted(SPLITS)}, got {split!r}")
        if num_video_frames < 1:
            raise ValueError(f"num_video_frames must be >= 1, got {num_video_frames}")
        self.split, self.image_size, self.num_video_frames, self.seed = split, image_size, num_video_frames, seed
        self.num_samples = SPLITS[split] if num_samples is None else int(num_samples)
        self.transform = transform

    def __len__(self) -> int:
        return self.num_samples

    def video(self, index: int) -> dict[str, Any]:
        """What video ``index`` shows (no drawing): shape, colour, size, axis, line, caption."""
        if not 0 <= index < self.num_samples:
            raise IndexError(index)
        v = random_video(random.Random(f"video/{self.seed}/{self.split}/{index}"))
        return v | {"caption": describe_video(v)}

    def raw(self, index: int) -> dict[str, Any]:
        """The sample with PIL frames."""
        v = self.video(index)
        frames = draw_video(v, self.num_video_frames, self.image_size, f"video/{self.seed}/{self.split}/{index}/draw")
        return v | {"video": frames, "video_id": index, "index": index}

    def __getitem__(self, index: int) -> dict[str, Any]:
        s = self.raw(index)
        s["video"] = stack_frames(s["video"], self.transform)
        return s

    def export(self, out_dir: str | os.PathLike) -> Path:
        """Write every video as a folder of PNG frames, ``{out_dir}/{split}/{index:06d}/{t:03d}.png``,
        and ``{out_dir}/{split}.jsonl`` in the official test format (one ``{"video", "caption"}`` a line);
        returns the annotation path (read it with ``VideoTextDataset(path, video_root=out_dir)``)."""
        out_dir = Path(out_dir)
        entries = []
        for i in range(self.num_samples):
            s = self.raw(i)
            rel = f"{self.split}/{i:06d}"
            (out_dir / rel).mkdir(parents=True, exist_ok=True)
            for t, frame in enumerate(s["video"]):
                frame.save(out_dir / rel / f"{t:03d}.png")
            entries.append({"video": rel, "caption": s["caption"]})
        path = out_dir / f"{self.split}.jsonl"
        write_jsonl(entries, path)
        return path
