"""WebDataset tar shards (the CC3M/CC12M/LAION format): streaming reader and writer.

A sample is the group of tar members sharing a key: an image (``jpg``/``jpeg``/``png``/``webp``)
and its caption (``txt``, or ``json`` with ``caption``/``text``; the json may also carry
``image_id`` and ``is_noisy``). Shards are split first across ranks (torch.distributed rank /
world size), then across the DataLoader workers of each rank, so every sample is read exactly
once per epoch as long as there are at least ``world_size * num_workers`` shards (a consumer
without a shard simply yields nothing).
"""

from __future__ import annotations

import io
import json
import os
import zlib
from collections.abc import Iterable, Iterator
from functools import partial
from itertools import islice
from typing import Any

from blipx.data.images import CORRUPT, MISSING, Skipped, decode_image
from blipx.data.text import pre_caption
from blipx.data.transforms import apply_transform

IMAGE_KEYS = ("jpg", "jpeg", "png", "webp")
NO_CAPTION = "no_caption"  # a skip reason of shards only: annotation files always have captions


def _webdataset():
    # Imported on use, so annotation files and the shapes dataset work without the package.
    try:
        import webdataset
    except ImportError as e:
        raise ImportError("WebDataset shards need the 'webdataset' package: pip install webdataset") from e
    return webdataset


def _split_by_rank(src: Iterable, rank: int, world_size: int) -> Iterator:
    yield from islice(src, rank, None, world_size)


def _dist_rank_world(rank: int | None, world_size: int | None) -> tuple[int, int]:
    if rank is not None and world_size is not None:
        return rank, world_size
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def key_to_image_id(key: str) -> int:
    """A stable integer id for a WebDataset key (CRC32; identical in every process and run)."""
    return zlib.crc32(key.encode("utf-8"))


def _decode(sample: dict[str, Any], transform, max_words: int, caption_style: str) -> dict[str, Any] | Skipped:
    key = sample.get("__key__", "?")
    meta: dict[str, Any] = {}
    if "json" in sample:
        try:
            meta = json.loads(sample["json"])
        except ValueError as e:
            return Skipped(CORRUPT, key, f"bad json: {e}")
    caption = sample["txt"].decode("utf-8", errors="replace") if "txt" in sample else meta.get("caption", meta.get("text"))
    if isinstance(caption, list):
        caption = caption[0] if caption else None
    if not caption:
        return Skipped(NO_CAPTION, key)
    data = next((sample[k] for k in IMAGE_KEYS if k in sample), None)
    if data is None:
        return Skipped(MISSING, key, "no image member")
    image = decode_image(data, key)
    if isinstance(image, Skipped):
        return image
    image_id = meta.get("image_id")
    pixels, caption = apply_transform(transform, image, pre_caption(caption, max_words, caption_style))
    out = {
        "image": pixels,
        "caption": caption,
        "image_id": image_id if isinstance(image_id, int) else key_to_image_id(key),
        "key": key,
    }
    if "is_noisy" in meta:
        out["is_noisy"] = bool(meta["is_noisy"])
    return out


def webdataset_pairs(
    urls: str | list[str],
    transform=None,
    max_words: int = 30,
    caption_style: str = "blip",
    rank: int | None = None,
    world_size: int | None = None,
    shard_shuffle: int = 0,
    sample_shuffle: int = 0,
    seed: int = 0,
):
    """A ``webdataset.WebDataset`` (an IterableDataset) of image-text samples: dicts as
    :class:`~blipx.data.ImageTextDataset` yields (plus ``key``), or :class:`Skipped`.

    ``urls``: brace pattern (``"data/shard-{000000..000099}.tar"``), a list, or anything
    webdataset opens (``pipe:`` ...). ``rank``/``world_size`` default to torch.distributed, read
    when this is called (so call it after ``init_process_group``). Ranks may receive different
    sample counts; DDP needs equal step counts, e.g. ``ds.repeat(2).with_epoch(n)``.
    ``shard_shuffle`` / ``sample_shuffle``: buffer sizes (0 = keep order). Unreadable tar members
    are skipped by webdataset with a warning; unreadable images become counted ``Skipped``.
    Use with a ``DataLoader(batch_size=..., collate_fn=ImageTextCollator(...))``.
    """
    wds = _webdataset()
    rank, world_size = _dist_rank_world(rank, world_size)
    ds = wds.WebDataset(
        urls,
        shardshuffle=shard_shuffle if shard_shuffle > 0 else False,
        nodesplitter=partial(_split_by_rank, rank=rank, world_size=world_size),
        workersplitter=wds.split_by_worker,
        handler=wds.warn_and_continue,
        empty_check=False,  # a worker with no shard is legitimate when shards < ranks x workers
        seed=seed,
    )
    ds = ds.map(partial(_decode, transform=transform, max_words=max_words, caption_style=caption_style))
    if sample_shuffle > 0:
        ds = ds.shuffle(sample_shuffle)
    return ds


def write_shards(
    samples: Iterable[dict[str, Any]], pattern: str | os.PathLike, maxcount: int = 1000, image_ext: str = "png"
) -> list[str]:
    """Write samples ``{"key", "image" (PIL), "caption", **json_extras}`` to tar shards.

    ``pattern`` is a printf pattern such as ``"out/shard-%06d.tar"``. Returns the shard paths.
    """
    wds = _webdataset()
    written: list[str] = []
    with wds.ShardWriter(os.fspath(pattern), maxcount=maxcount, verbose=0, post=written.append) as sink:
        for s in samples:
            buf = io.BytesIO()
            s["image"].save(buf, format="JPEG" if image_ext in ("jpg", "jpeg") else image_ext.upper())
            extras = {k: v for k, v in s.items() if k not in ("key", "image", "caption")}
            sink.write(
                {
                    "__key__": s["key"],
                    image_ext: buf.getvalue(),
                    "txt": s["caption"].encode("utf-8"),
                    "json": json.dumps({"caption": s["caption"], **extras}).encode("utf-8"),
                }
            )
    return written
