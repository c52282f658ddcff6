"""Image-text pairs from the official JSON / JSONL annotation format plus an image root.

Format (BLIP/ALBEF ``*.json`` files, or one such object per line in ``*.jsonl``)::

    [{"image": "rel/path.jpg", "caption": "a dog" | ["a dog", "a brown dog"], "image_id": 42}, ...]

``image_id`` is optional (the image path is used instead). As in the official datasets, every
distinct image gets a contiguous integer id in order of first appearance; retrieval losses and
evaluation use those ids as positives.

Annotation files come from the web, so one bad record never stops a run: a line that is not JSON
or not UTF-8, a record without ``"image"`` or ``"caption"``, a caption that is not a string or
holds a lone surrogate (:data:`~blipx.data.images.BAD_RECORD`), and a caption without a letter
or digit after cleaning (:data:`~blipx.data.images.NO_CAPTION`) become :class:`Skipped` records
named ``file:line``, logged and counted like unreadable images. Only a ``.json`` file that is not a JSON
list at all is an error (it names the file, line and column), since no record of it can be trusted.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from blipx.data.images import BAD_RECORD, MAX_PIXELS, NO_CAPTION, Skipped, read_image, warn_skipped
from blipx.data.text import pre_caption
from blipx.data.transforms import apply_transform

_WS = re.compile(r"[ \t\n\r]*")  # JSON whitespace


@dataclass(frozen=True)
class Annotation:
    """A record that passed the checks: its usable captions, raw and cleaned (same order)."""

    image: str
    image_id: Any  # the record's "image_id", or its image path
    captions: tuple[str, ...]  # as written in the file
    texts: tuple[str, ...]  # pre_caption'ed
    record: dict[str, Any]  # the whole record (is_noisy, objects, ... travel with it)
    where: str  # "file:line"


def _decode(raw: bytes) -> str:
    # Bytes that are not UTF-8 become lone surrogates (U+DC80..U+DCFF) instead of failing the
    # whole file; the record checks below refuse any caption or path that holds one.
    return raw.decode("utf-8", errors="surrogateescape")


def _jsonl_records(path: Path) -> Iterator[tuple[str, Any] | Skipped]:
    with path.open("rb") as f:  # streamed: memory stays flat for multi-GB files
        for lineno, raw in enumerate(f, 1):
            line = _decode(raw).rstrip("\r\n")  # keeps the error's column on this line
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                yield where, json.loads(line)
            except json.JSONDecodeError as e:  # the file's line, not "line 1" of the string
                yield warn_skipped(Skipped(BAD_RECORD, where, f"not JSON: {e.msg} (column {e.colno})"))


def _json_list_records(path: Path) -> Iterator[tuple[str, Any]]:
    """Elements of a JSON list with the line each starts on (raw_decode element by element)."""
    text = _decode(path.read_bytes()).lstrip("\ufeff")
    dec = json.JSONDecoder()
    try:
        pos = _WS.match(text).end()
        if text[pos:pos + 1] != "[":
            data = json.loads(text)  # raises with the position if not JSON at all
            raise ValueError(f"{path}: expected a JSON list of annotations, got {type(data).__name__}")
        pos = _WS.match(text, pos + 1).end()
        line, counted = 1, 0
        closed = text[pos:pos + 1] == "]"  # an empty list
        if closed:
            pos = _WS.match(text, pos + 1).end()
        while not closed:
            obj, end = dec.raw_decode(text, pos)
            line += text.count("\n", counted, pos)
            counted = pos
            yield f"{path}:{line}", obj
            pos = _WS.match(text, end).end()
            sep = text[pos:pos + 1]
            if sep not in (",", "]"):
                raise json.JSONDecodeError("expected ',' or ']' after a list element", text, pos)
            closed = sep == "]"
            pos = _WS.match(text, pos + 1).end()
        if pos < len(text):
            raise json.JSONDecodeError("extra data after the list", text, pos)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON at line {e.lineno} column {e.colno}: {e.msg}") from None


def iter_records(path: str | os.PathLike) -> Iterator[tuple[str, Any] | Skipped]:
    """``(where, parsed JSON value)`` per record of a ``.jsonl`` (streamed) or ``.json`` (a list)
    file, ``where`` being ``"file:line"``; a JSONL line that is not JSON is a :class:`Skipped`."""
    path = Path(path)
    return _jsonl_records(path) if path.suffix == ".jsonl" else _json_list_records(path)


def _bad_string(value: str) -> str | None:
    """Why ``value`` cannot be used as text (a lone surrogate / non-UTF-8 byte), or None."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        return f"not valid UTF-8 (U+{ord(value[e.start]):04X} at character {e.start})"
    return None


def check_caption(caption: Any, where: str, max_words: int | None, style: str = "blip") -> str | Skipped:
    """The cleaned caption, or :class:`Skipped`: ``BAD_RECORD`` for a non-string or invalid text,
    ``NO_CAPTION`` when cleaning leaves no letter or digit (``""``, ``"..."``, ``"?!"``). Shared by
    annotation files and WebDataset shards, so both skip the same captions."""
    if not isinstance(caption, str):
        return warn_skipped(Skipped(BAD_RECORD, where, f"caption is a {type(caption).__name__}, not a string"))
    why = _bad_string(caption)
    if why is not None:
        return warn_skipped(Skipped(BAD_RECORD, where, f"caption is {why}"))
    text = pre_caption(caption, max_words, style)
    if not any(ch.isalnum() for ch in text):  # "", "...", and BLIP's surviving "?" / "," alone
        return warn_skipped(Skipped(NO_CAPTION, where, f"caption {caption!r} has no word after cleaning"))
    return text


def parse_annotation(record: Any, where: str, max_words: int | None = 30,
                     caption_style: str = "blip") -> tuple[Annotation | None, list[Skipped]]:
    """``(annotation or None, skips)``: a record with a list of captions keeps its good ones and
    gives one :class:`Skipped` per bad one; a record without any usable caption is None."""
    def bad(why: str) -> tuple[None, list[Skipped]]:
        return None, [warn_skipped(Skipped(BAD_RECORD, where, why))]

    if not isinstance(record, dict):
        return bad(f"record is a {type(record).__name__}, not an object")
    image = record.get("image")
    if not isinstance(image, str) or not image:
        return bad("no 'image' path" if image is None else f"'image' is {image!r}, not a path")
    if _bad_string(image) is not None:
        return bad(f"'image' is {_bad_string(image)}")
    image_id = record.get("image_id", image)
    if isinstance(image_id, bool) or not isinstance(image_id, (str, int)):
        return bad(f"'image_id' is a {type(image_id).__name__}, not a string or integer")
    if "caption" not in record:
        return bad("no 'caption' field")
    raw = record["caption"] if isinstance(record["caption"], list) else [record["caption"]]
    if not raw:
        return None, [warn_skipped(Skipped(NO_CAPTION, where, "empty caption list"))]
    captions, texts, skips = [], [], []
    for cap in raw:
        text = check_caption(cap, where, max_words, caption_style)
        if isinstance(text, Skipped):
            skips.append(text)
        else:
            captions.append(cap)
            texts.append(text)
    if not texts:
        return None, skips
    return Annotation(image, image_id, tuple(captions), tuple(texts), record, where), skips


def iter_annotations(path: str | os.PathLike, max_words: int | None = 30,
                     caption_style: str = "blip") -> Iterator[Annotation | Skipped]:
    """Checked records of an annotation file (JSONL streams): :class:`Annotation` or, for what
    was refused, :class:`Skipped` (already logged)."""
    for item in iter_records(path):
        if isinstance(item, Skipped):
            yield item
            continue
        ann, skips = parse_annotation(item[1], item[0], max_words, caption_style)
        yield from skips
        if ann is not None:
            yield ann


def read_annotations(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The usable records of a ``.json`` (a list) or ``.jsonl`` (one object per line) file, as
    written (bad records are logged and left out; captions are not cleaned)."""
    return [a.record for a in iter_annotations(path, max_words=None) if isinstance(a, Annotation)]


def write_jsonl(entries: Sequence[dict[str, Any]], path: str | os.PathLike) -> None:
    """Write annotations as JSONL (atomically: temp file + rename, so readers never see half a file)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for e in entries:
            f.write(json.dumps(e) + "\n")
    os.replace(tmp, path)


class ImageTextDataset(Dataset):
    """Annotated image-text pairs.

    ``mode="pairs"`` (training, captioning eval): one sample per (image, caption), a list of
    captions expands into several samples. ``mode="images"`` (retrieval eval): one sample per
    image with its first caption; all captions are in :attr:`texts` with :attr:`txt2img` /
    :attr:`img2txt` (the official ``coco_karpathy_retrieval_eval`` layout).

    Samples are dicts (``image``, ``caption``, ``image_id``, ``index``, and ``is_noisy`` when the
    annotation has it) or :class:`Skipped` when the image cannot be read, is larger than
    ``max_pixels`` (see :data:`~blipx.data.images.MAX_PIXELS`) or lies outside ``image_root``
    (refused unless ``allow_outside_root=True``) — pair with
    :class:`~blipx.data.collate.ImageTextCollator`, which drops and counts those.

    Records refused while reading (:attr:`skipped`) are not lost from the counts: they sit at the
    indices after the good samples (``len(self)`` includes them) and come back as their
    :class:`Skipped`, so the same collate counts them once per epoch, like unreadable images,
    in every DataLoader worker and rank layout.
    """

    def __init__(
        self,
        ann_files: str | os.PathLike | Sequence[str | os.PathLike],
        image_root: str | os.PathLike,
        transform=None,
        max_words: int = 30,
        caption_style: str = "blip",
        mode: str = "pairs",
        allow_outside_root: bool = False,
        max_pixels: int | None = MAX_PIXELS,
    ) -> None:
        if mode not in ("pairs", "images"):
            raise ValueError(f"mode must be 'pairs' or 'images', got {mode!r}")
        files = [ann_files] if isinstance(ann_files, (str, os.PathLike)) else list(ann_files)
        self.image_root = Path(image_root)
        self._real_root = os.path.realpath(self.image_root)  # once, not per sample
        self.transform, self.mode = transform, mode
        self.allow_outside_root, self.max_pixels = allow_outside_root, max_pixels
        self.image_paths: list[str] = []  # per distinct image
        self.texts: list[str] = []  # every caption, cleaned
        self.txt2img: list[int] = []
        self.img2txt: list[list[int]] = []
        self.noisy: list[bool | None] = []  # per caption, from an optional "is_noisy" field
        self.skipped: list[Skipped] = []  # records refused while reading
        ids: dict[Any, int] = {}
        for f in files:
            for ann in iter_annotations(f, max_words, caption_style):
                if isinstance(ann, Skipped):
                    self.skipped.append(ann)
                    continue
                if ann.image_id not in ids:
                    ids[ann.image_id] = len(self.image_paths)
                    self.image_paths.append(ann.image)
                    self.img2txt.append([])
                img = ids[ann.image_id]
                for text in ann.texts:
                    self.img2txt[img].append(len(self.texts))
                    self.texts.append(text)
                    self.txt2img.append(img)
                    self.noisy.append(ann.record.get("is_noisy"))

    def __len__(self) -> int:
        return (len(self.texts) if self.mode == "pairs" else len(self.image_paths)) + len(self.skipped)

    def __getitem__(self, index: int) -> dict[str, Any] | Skipped:
        good = len(self) - len(self.skipped)
        if index >= good:
            return self.skipped[index - good]
        if self.mode == "pairs":
            text, img = index, self.txt2img[index]
        else:
            img = index
            text = self.img2txt[index][0]
        image = read_image(self.image_root, self.image_paths[img], self.allow_outside_root, self._real_root, self.max_pixels)
        if isinstance(image, Skipped):
            return image
        pixels, caption = apply_transform(self.transform, image, self.texts[text])
        sample = {"image": pixels, "caption": caption, "image_id": img, "index": index}
        if self.noisy[text] is not None:
            sample["is_noisy"] = bool(self.noisy[text])
        return sample
