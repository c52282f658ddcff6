"""WebDataset tar shards (the CC3M/CC12M/LAION format): streaming reader and writer.

A sample is the group of tar members sharing a key: an image (``jpg``/``jpeg``/``png``/``webp``)
and its caption (``txt``, or ``json`` with ``caption``/``text``; the json may also carry
``image_id`` and ``is_noisy``). Shards are split first across ranks (torch.distributed rank /
world size), then across the DataLoader workers of each rank, so every sample is read exactly
once per epoch as long as there are at least ``world_size * num_workers`` shards (a consumer
without a shard simply yields nothing).

Nothing in a shard stops the stream: a sample with a bad caption or image, and a shard that is
missing or cut off, become :class:`~blipx.data.images.Skipped` items of the stream itself, so the
collate counts them with the unreadable images (webdataset's own ``warn_and_continue`` would only
log them, and would report a truncated shard twice).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import zlib
from collections.abc import Iterable, Iterator
from functools import partial
from itertools import islice
from typing import Any

from blipx.data.annotations import check_caption
from blipx.data.images import (BAD_RECORD, BAD_SHARD, MAX_PIXELS, MISSING, MISSING_SHARD, NO_CAPTION, Skipped,
                               decode_image, warn_skipped)
from blipx.data.transforms import apply_transform

IMAGE_KEYS = ("jpg", "jpeg", "png", "webp")


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


def _read_shards(shards: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any] | Skipped]:
    """Samples (grouped tar members) of each shard; a shard that cannot be opened or read to its
    end gives one :class:`Skipped` (the samples before the damage are kept)."""
    wds = _webdataset()
    from webdataset.tariterators import group_by_keys, tar_file_expander

    for shard in shards:
        url = shard["url"]
        try:
            stream = wds.gopen(url)
        except Exception as e:  # FileNotFoundError for a local path; gopen's errors for others
            yield warn_skipped(Skipped(MISSING_SHARD, url, str(e)))
            continue
        try:
            # One shard per expander: an error ends this shard only (reraise is their default).
            yield from group_by_keys(tar_file_expander([{"url": url, "stream": stream}]))
            stream.close()  # a pipe: URL reports a failed command here
        except Exception as e:  # tarfile.ReadError "unexpected end of data", a failing pipe: ...
            yield warn_skipped(Skipped(BAD_SHARD, url, f"{type(e).__name__}: {e.args[0] if e.args else e}"))
        finally:
            with contextlib.suppress(Exception):  # already reported, or closed above
                stream.close()


def _caption_of(sample: dict[str, Any], meta: dict[str, Any], key: str) -> Any:
    if "txt" in sample:
        try:
            return sample["txt"].decode("utf-8")  # strict, as in annotation files
        except UnicodeDecodeError as e:
            return Skipped(BAD_RECORD, key, f"txt is not UTF-8: {e}")
    caption = meta.get("caption", meta.get("text"))
    if isinstance(caption, list):
        caption = caption[0] if caption else None
    return caption


def _decode(sample: dict[str, Any] | Skipped, transform, max_words: int, caption_style: str,
            max_pixels: int | None) -> dict[str, Any] | Skipped:
    if isinstance(sample, Skipped):  # a shard-level skip, passed on to the collate
        return sample
    key = sample.get("__key__", "?")
    meta: Any = {}
    if "json" in sample:
        try:
            meta = json.loads(sample["json"])
        except ValueError as e:  # JSONDecodeError or UnicodeDecodeError
            return warn_skipped(Skipped(BAD_RECORD, key, f"bad json: {e}"))
        if not isinstance(meta, dict):
            return warn_skipped(Skipped(BAD_RECORD, key, f"json is a {type(meta).__name__}, not an object"))
    caption = _caption_of(sample, meta, key)
    if isinstance(caption, Skipped):
        return warn_skipped(caption)
    if caption is None:
        return warn_skipped(Skipped(NO_CAPTION, key, "no txt member and no caption in the json"))
    caption = check_caption(caption, key, max_words, caption_style)
    if isinstance(caption, Skipped):
        return caption
    data = next((sample[k] for k in IMAGE_KEYS if k in sample), None)
    if data is None:
        return warn_skipped(Skipped(MISSING, key, "no image member"))
    image = decode_image(data, key, max_pixels)
    if isinstance(image, Skipped):
        return image
    image_id = meta.get("image_id")
    pixels, caption = apply_transform(transform, image, caption)
    out = {
        "image": pixels,
        "caption": caption,
        "image_id": image_id if isinstance(image_id, int) and not isinstance(image_id, bool) else key_to_image_id(key),
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
    max_pixels: int | None = MAX_PIXELS,
):
    """A ``webdataset.DataPipeline`` (an IterableDataset) of image-text samples: dicts as
    :class:`~blipx.data.ImageTextDataset` yields (plus ``key``), or :class:`Skipped`.

    ``urls``: brace pattern (``"data/shard-{000000..000099}.tar"``), a list, or anything
    webdataset opens (``pipe:`` ...). ``rank``/``world_size`` default to torch.distributed, read
    when this is called (so call it after ``init_process_group``). Ranks may receive different
    sample counts; DDP needs equal step counts, e.g. ``ds.repeat(2).with_epoch(n)``.
    ``shard_shuffle`` / ``sample_shuffle``: buffer sizes (0 = keep order). Bad samples, and shards
    that are missing or truncated (one skip each), are counted ``Skipped`` items of the stream;
    images above ``max_pixels`` are skipped as ``too_large`` before decoding.
    Use with a ``DataLoader(batch_size=..., collate_fn=ImageTextCollator(...))``.
    """
    wds = _webdataset()
    from webdataset.filters import map as map_stage, shuffle

    rank, world_size = _dist_rank_world(rank, world_size)
    # The stages of wds.WebDataset, with its opener + tar expander replaced by _read_shards.
    # A worker with no shard is legitimate when shards < ranks x workers (no empty check).
    stages = [
        wds.SimpleShardList(urls),
        partial(_split_by_rank, rank=rank, world_size=world_size),
        wds.split_by_worker,
        shuffle(shard_shuffle, seed=seed) if shard_shuffle > 0 else None,
        _read_shards,
        map_stage(partial(_decode, transform=transform, max_words=max_words, caption_style=caption_style,
                          max_pixels=max_pixels)),
        shuffle(sample_shuffle) if sample_shuffle > 0 else None,
    ]
    return wds.DataPipeline(*stages)


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
