"""Video-text pairs for zero-shot video retrieval (``salesforce/BLIP data/video_dataset.py``).

An annotation file (JSON list or JSONL) holds one record per video::

    {"video": "rel/path.mp4" | "rel/frames_dir", "caption": "a man is cooking" | [...]}
    {"clip_name": "video7020", "caption": "..."}     # BLIP's msrvtt_test.jsonl

``"video"`` is a path under ``video_root``; ``"clip_name"`` is the official field, read as
``video_root / (clip_name + video_fmt)`` (".mp4"), or as the folder ``video_root / clip_name``
when that exists. A video is either a file, decoded with PyAV (``pip install av``), or a folder
of frame images (``.jpg``/``.png``/..., in natural name order: ``frame2`` before ``frame10``).

Frames are chosen by the official ``'uniform'`` strategy (:func:`uniform_frame_indices`) and
each goes through the one test-time image path, :func:`blipx.data.processing.eval_transform`
(square bicubic resize + CLIP normalisation; the official reader resizes with decord's
``VideoReader(width=S, height=S)``, which stretches to the same square, then applies the same
CLIP normalisation). Captions are cleaned with ``pre_caption(caption, 40)`` as officially.

Unreadable videos and bad records are :class:`~blipx.data.images.Skipped` (counted, never fatal),
as for images; a video file when PyAV is not installed is an error that says what to install.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from blipx.data.annotations import iter_records, parse_annotation
from blipx.data.images import (BAD_RECORD, CORRUPT, MAX_PIXELS, MISSING, TOO_LARGE, Skipped, load_image,
                               resolve_image_path, warn_skipped)

FRAME_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff")
MAX_WORDS = 40  # eval_retrieval_video.py's VideoDataset: pre_caption(ann['caption'], 40)
_DIGITS = re.compile(r"(\d+)")


def uniform_frame_indices(num_video_frames: int, num_frames: int) -> list[int]:
    """The official ``'uniform'`` frame indices, ``np.arange(0, vlen, vlen / num_frm, dtype=int)``.

    numpy's ``arange`` with an integer dtype steps by ``int(start + step) - int(start)``, not by
    the float step, so the indices are ``i * floor(vlen / num_frm)`` (300 frames, 8 -> 0, 37, ...,
    259: the tail of a clip is never sampled), and there are ``ceil(vlen / (vlen / num_frm))`` of
    them. Transcribed as numpy computes it (tested against numpy), with two departures where the
    official formula breaks:

    - float rounding sometimes yields ``num_frm + 1`` indices (17 frames, 7 -> 8 indices), which
      the official loader cannot batch with other videos: the first ``num_frames`` are kept;
    - a clip shorter than ``num_frames`` gets the step ``int(vlen / num_frm) = 0``, i.e. frame 0
      repeated (the rest of the clip thrown away): here ``floor(i * vlen / num_frames)`` instead,
      every frame used, each repeated about ``num_frames / vlen`` times (MSRVTT clips, 10-30 s,
      never reach this case).
    """
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    if num_video_frames < 1:
        raise ValueError(f"a video needs at least one frame, got {num_video_frames}")
    if num_video_frames < num_frames:
        return [i * num_video_frames // num_frames for i in range(num_frames)]
    step = num_video_frames / num_frames
    count = math.ceil(num_video_frames / step)  # numpy's length for a float step
    delta = int(step)  # numpy's integer-dtype step: int(0 + step) - int(0)
    return [i * delta for i in range(count)][:num_frames]


def _natural_key(name: str) -> list:
    return [int(t) if t.isdigit() else t.lower() for t in _DIGITS.split(name)]


def frame_files(folder: str | os.PathLike) -> list[Path]:
    """The frame images of a folder in natural name order (``2.jpg`` before ``10.jpg``)."""
    files = [p for p in Path(folder).iterdir() if p.suffix.lower() in FRAME_EXTENSIONS and p.is_file()]
    return sorted(files, key=lambda p: _natural_key(p.name))


def _require_av():
    try:
        import av
    except ImportError as e:
        raise ImportError(
            "reading video files needs PyAV: `pip install av` (or give each video as a folder of frame images)"
        ) from e
    return av


def _decode_with_av(av, path: str, wanted: set[int] | None, max_pixels: int | None):
    """``(frames decoded, {index: PIL image})``; stops after the largest wanted index."""
    kept, count = {}, 0
    with av.open(path) as container:
        stream = container.streams.video[0]
        w, h = stream.codec_context.width, stream.codec_context.height
        if max_pixels is not None and w * h > max_pixels:
            raise _TooLarge(f"{w}x{h} = {w * h} pixels per frame > max_pixels={max_pixels}")
        last = max(wanted) if wanted else None
        for count, frame in enumerate(container.decode(stream), 1):
            i = count - 1
            if wanted is None or i in wanted:
                kept[i] = frame.to_image()
            if last is not None and i >= last:
                break
    return count, kept


class _TooLarge(Exception):
    pass


def read_video_file(path: str | os.PathLike, num_frames: int, max_pixels: int | None = MAX_PIXELS):
    """``num_frames`` RGB PIL frames of a video file (PyAV), or :class:`Skipped`."""
    path = os.fspath(path)
    if not os.path.exists(path):
        return warn_skipped(Skipped(MISSING, path, "no such video file"))
    av = _require_av()
    try:
        with av.open(path) as container:
            n = container.streams.video[0].frames if container.streams.video else -1
            if n == -1:
                return warn_skipped(Skipped(CORRUPT, path, "no video stream"))
            if n <= 0:  # containers without a frame count: count the packets (no decoding)
                n = sum(1 for packet in container.demux(container.streams.video[0]) if packet.size)
        if n < 1:
            return warn_skipped(Skipped(CORRUPT, path, "the video has no frames"))
        idx = uniform_frame_indices(n, num_frames)
        decoded, kept = _decode_with_av(av, path, set(idx), max_pixels)
        if any(i not in kept for i in idx):  # the header over-counted: sample the frames that exist
            if decoded < 1:
                return warn_skipped(Skipped(CORRUPT, path, "no frame could be decoded"))
            idx = uniform_frame_indices(decoded, num_frames)
            _, kept = _decode_with_av(av, path, set(idx), max_pixels)
        return [kept[i].convert("RGB") for i in idx]
    except _TooLarge as e:
        return warn_skipped(Skipped(TOO_LARGE, path, str(e)))
    except (getattr(av, "FFmpegError", OSError), OSError, ValueError, IndexError) as e:
        return warn_skipped(Skipped(CORRUPT, path, f"{type(e).__name__}: {e}"))


def read_frame_folder(folder: str | os.PathLike, num_frames: int, max_pixels: int | None = MAX_PIXELS):
    """``num_frames`` RGB PIL frames of a folder of frame images, or :class:`Skipped`."""
    files = frame_files(folder)
    if not files:
        return warn_skipped(Skipped(CORRUPT, os.fspath(folder), f"no frame images ({', '.join(FRAME_EXTENSIONS)})"))
    frames = []
    for i in uniform_frame_indices(len(files), num_frames):
        img = load_image(files[i], max_pixels)
        if isinstance(img, Skipped):
            return img  # one bad frame drops the video: its frame sampling would no longer be the official one
        frames.append(img)
    return frames


def read_video(path: str | os.PathLike, num_frames: int, max_pixels: int | None = MAX_PIXELS):
    """Frames of a video file or a folder of frame images (see the module doc), or :class:`Skipped`."""
    if os.path.isdir(path):
        return read_frame_folder(path, num_frames, max_pixels)
    return read_video_file(path, num_frames, max_pixels)


def stack_frames(frames: Sequence[Any], transform=None):
    """Apply ``transform`` to every frame; tensors are stacked to [F, 3, S, S]."""
    if transform is None:
        return list(frames)
    out = [transform(f) for f in frames]
    return torch.stack(out) if isinstance(out[0], torch.Tensor) else out


class VideoTextDataset(Dataset):
    """Annotated videos for retrieval: one sample per video, ``{"video": [F, 3, S, S] (or a list
    of PIL frames without a transform), "caption": its first caption, "video_id", "index"}``.

    All captions are in :attr:`texts` with :attr:`txt2video` / :attr:`video2txt` (the official
    ``VideoDataset.text`` / ``txt2video`` / ``video2txt``; a record may hold a list of captions).
    Unreadable videos come back as :class:`Skipped`, and records refused while reading sit at the
    indices after the videos (as :class:`~blipx.data.annotations.ImageTextDataset` does). Paths
    must resolve inside ``video_root`` unless ``allow_outside_root``.
    """

    def __init__(
        self,
        ann_file: str | os.PathLike,
        video_root: str | os.PathLike,
        num_frames: int = 8,
        transform=None,
        max_words: int | None = MAX_WORDS,
        video_fmt: str = ".mp4",
        allow_outside_root: bool = False,
        max_pixels: int | None = MAX_PIXELS,
    ) -> None:
        if num_frames < 1:
            raise ValueError(f"num_frames must be >= 1, got {num_frames}")
        self.video_root, self.num_frames, self.transform = Path(video_root), int(num_frames), transform
        self.allow_outside_root, self.max_pixels = allow_outside_root, max_pixels
        self._real_root = os.path.realpath(self.video_root)
        self.video_paths: list[str] = []
        self.texts: list[str] = []
        self.txt2video: list[int] = []
        self.video2txt: list[list[int]] = []
        self.skipped: list[Skipped] = []
        for item in iter_records(ann_file):
            if isinstance(item, Skipped):
                self.skipped.append(item)
                continue
            where, record = item
            name = self._video_name(record, video_fmt)
            if isinstance(name, str):  # parse_annotation checks the path and captions as for images
                ann, skips = parse_annotation({**record, "image": name, "image_id": name}, where, max_words)
            else:
                ann, skips = None, [warn_skipped(Skipped(BAD_RECORD, where, name[0]))]
            self.skipped.extend(skips)
            if ann is None:
                continue
            self.video2txt.append([])
            for text in ann.texts:
                self.video2txt[-1].append(len(self.texts))
                self.texts.append(text)
                self.txt2video.append(len(self.video_paths))
            self.video_paths.append(name)
        if any((self.video_root / p).is_file() for p in self.video_paths):  # fail now, not after a long run, when video files cannot be decoded
            _require_av()

    def _video_name(self, record: Any, video_fmt: str) -> str | tuple[str]:
        """The record's video path under video_root, or ``(why,)`` when it has none."""
        if not isinstance(record, dict):
            return (f"record is a {type(record).__name__}, not an object",)
        if "video" in record:
            v = record["video"]
            return v if isinstance(v, str) and v else (f"'video' is {v!r}, not a path",)
        clip = record.get("clip_name")
        if not isinstance(clip, str) or not clip:
            return ("no 'video' path or 'clip_name'" if clip is None else f"'clip_name' is {clip!r}, not a name",)
        return clip if (self.video_root / clip).is_dir() else clip + video_fmt

    def __len__(self) -> int:
        return len(self.video_paths) + len(self.skipped)

    def __getitem__(self, index: int) -> dict[str, Any] | Skipped:
        if index >= len(self.video_paths):
            return self.skipped[index - len(self.video_paths)]
        path = resolve_image_path(self.video_root, self.video_paths[index], self.allow_outside_root, self._real_root)
        if isinstance(path, Skipped):
            return path
        frames = read_video(path, self.num_frames, self.max_pixels)
        if isinstance(frames, Skipped):
            return frames
        return {"video": stack_frames(frames, self.transform), "caption": self.texts[self.video2txt[index][0]],
                "video_id": index, "index": index}  # fmt: skip


def collate_videos(samples: Sequence[Any]) -> dict[str, Any]:
    """``samples -> {"video": [B, F, 3, S, S], "index": int64 [B], "skipped": {reason: count}}``;
    :class:`Skipped` samples are dropped and counted (in the worker, as
    :class:`~blipx.data.collate.ImageTextCollator` does). An all-skipped batch has B = 0."""
    from blipx.data.collate import keep_samples

    kept, header = keep_samples(samples)
    return {"video": torch.stack([s["video"] for s in kept]) if kept else torch.empty(0),
            "index": torch.tensor([int(s["index"]) for s in kept], dtype=torch.long), "skipped": header["skipped"]}
