"""Annotation files and images from the web: bad records, paths leaving image_root and huge images
are skipped and counted through the same collate as unreadable images, never fatal."""

import json
import logging
import os
import struct
import zlib

import pytest
from PIL import Image, ImageFile
from torch.utils.data import DataLoader

import blipx.data.images as images
from blipx.data import ImageTextCollator, ImageTextDataset, SkipCounter, eval_transform, read_annotations
from blipx.data.annotations import iter_annotations
from blipx.data.images import (BAD_RECORD, MAX_PIXELS, NO_CAPTION, OUTSIDE_ROOT, TOO_LARGE, Skipped, decode_image,
                               load_image)
from blipx.tokenizer import blip_tokenizer

from tests.data.conftest import save_png


@pytest.fixture(autouse=True)
def fresh_warnings(monkeypatch):
    monkeypatch.setattr(images, "_warned", 0)  # the per-process warning budget: these tests read the log


def count_through_loader(ds, workers=0):
    counter = SkipCounter()
    kept = []
    for batch in DataLoader(ds, batch_size=4, num_workers=workers, collate_fn=ImageTextCollator(blip_tokenizer(), 12)):
        counter.update(batch)
        kept += batch["captions"]
    return sorted(kept), counter.as_dict()


# --- item 10: one bad record never stops a run -------------------------------------------------

BAD_JSONL_LINES = [
    b'{"image": "a.png", "caption": "A red square."}',  # 1 good
    b'{"image": "a.png", "caption": 5}',  # 2 not a string
    b'{"image": "a.png"}',  # 3 no caption field
    b'{"image": "a.png", "caption": "lone \\ud800 surrogate"}',  # 4 lone surrogate
    b'{"image": "a.png", "caption": "caf\xe9 latin-1"}',  # 5 not UTF-8
    b'{"image": "a.png", "caption": ',  # 6 not JSON
    b'{"image": "a.png", "caption": "..."}',  # 7 punctuation only
    b'{"image": "a.png", "caption": ["ok two", null]}',  # 8 one good, one bad
    b"[1, 2]",  # 9 not an object
    b"   ",  # 10 blank: ignored
    b'{"image": "a.png", "caption": "last one"}',  # 11 good
]


@pytest.fixture
def bad_jsonl(tmp_path):
    save_png(tmp_path / "a.png", (255, 0, 0))
    path = tmp_path / "bad.jsonl"
    path.write_bytes(b"\n".join(BAD_JSONL_LINES) + b"\n")
    return path


def test_bad_jsonl_records_are_skipped_located_and_counted(bad_jsonl, caplog):
    with caplog.at_level(logging.WARNING, logger="blipx.data.images"):
        ds = ImageTextDataset(bad_jsonl, bad_jsonl.parent, eval_transform(8))
    assert ds.texts == ["a red square", "ok two", "last one"]
    where = {s.source.rsplit(":", 1)[1]: s.reason for s in ds.skipped}
    assert where == {"2": BAD_RECORD, "3": BAD_RECORD, "4": BAD_RECORD, "5": BAD_RECORD, "6": BAD_RECORD,
                     "7": NO_CAPTION, "8": BAD_RECORD, "9": BAD_RECORD}
    assert all(s.source.startswith(str(bad_jsonl)) for s in ds.skipped)
    # The log names the file and its line; a JSON error is not "line 1" of the line's string.
    log = caplog.text
    assert f"{bad_jsonl}:6: not JSON: Expecting value (column 31)" in log and "line 1 column" not in log
    assert f"{bad_jsonl}:2" in log and "caption is a int, not a string" in log
    # Counted by the collate like bad images, also from DataLoader workers.
    kept, counts = count_through_loader(ds, workers=2)
    assert kept == ["a red square", "last one", "ok two"]
    assert counts == {"samples_seen": 3 + 8, "samples_skipped": 8, "skipped_bad_record": 7, "skipped_no_caption": 1}
    assert len(read_annotations(bad_jsonl)) == 3  # the usable records, as written


def test_json_list_records_are_located_by_line_and_decode_errors_name_file_and_line(tmp_path):
    save_png(tmp_path / "a.png", (255, 0, 0))
    path = tmp_path / "ann.json"
    path.write_text('[\n{"image": "a.png", "caption": "one"},\n{"image": "a.png",\n "caption": ["", "two"]},\n'
                    '\n  {"image": "a.png", "caption": {"not": "text"}}\n]\n')
    items = list(iter_annotations(path))
    assert [a.texts for a in items if not isinstance(a, Skipped)] == [("one",), ("two",)]
    assert [a.where for a in items if not isinstance(a, Skipped)] == [f"{path}:2", f"{path}:3"]
    assert [(s.reason, s.source) for s in items if isinstance(s, Skipped)] == [
        (NO_CAPTION, f"{path}:3"), (BAD_RECORD, f"{path}:6")]
    ds = ImageTextDataset(path, tmp_path, eval_transform(8))
    assert len(ds) == 2 + 2 and isinstance(ds[3], Skipped)
    # A .json that is not valid JSON cannot be trusted at all: an error naming file, line, column.
    broken = tmp_path / "broken.json"
    broken.write_text('[\n {"image": "a.png",\n  "caption": "ok"},\n {"image": "a.png", "caption": }\n]')
    with pytest.raises(ValueError, match=rf"{broken.name}: not valid JSON at line 4 column 32"):
        ImageTextDataset(broken, tmp_path)
    (tmp_path / "dict.json").write_text('{"image": "a.png", "caption": "not in a list"}')
    with pytest.raises(ValueError, match="dict.json: expected a JSON list of annotations, got dict"):
        list(iter_annotations(tmp_path / "dict.json"))


def test_images_mode_ignores_an_image_whose_captions_are_all_bad(tmp_path):
    save_png(tmp_path / "a.png", (255, 0, 0))
    path = tmp_path / "ann.jsonl"
    path.write_text('{"image": "a.png", "caption": ["!!", 3], "image_id": 1}\n'
                    '{"image": "a.png", "caption": "red", "image_id": 2}\n')
    ds = ImageTextDataset(path, tmp_path, eval_transform(8), mode="images")
    assert ds.image_paths == ["a.png"] and ds.img2txt == [[0]]
    assert ds[0]["caption"] == "red" and [s.reason for s in (ds[1], ds[2])] == [NO_CAPTION, BAD_RECORD]


# --- item 11: image paths may not leave image_root ---------------------------------------------

@pytest.fixture
def escaping_paths(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    save_png(root / "a.png", (255, 0, 0))
    save_png(tmp_path / "secret.png", (0, 0, 255))
    os.symlink(tmp_path / "secret.png", root / "link_out.png")
    os.symlink(root / "a.png", root / "link_in.png")
    names = {"plain": "a.png", "dotdot": "../secret.png", "absolute": str(tmp_path / "secret.png"),
             "symlink_out": "link_out.png", "symlink_in": "link_in.png", "absolute_in": str(root / "a.png")}
    ann = tmp_path / "ann.jsonl"
    ann.write_text("".join(json.dumps({"image": v, "caption": k.replace("_", " ")}) + "\n" for k, v in names.items()))
    return ann, root


def test_image_paths_outside_image_root_are_refused_and_counted(escaping_paths):
    ann, root = escaping_paths
    ds = ImageTextDataset(ann, root, eval_transform(8))
    refused = {ds.texts[i]: ds[i].reason for i in range(len(ds)) if isinstance(ds[i], Skipped)}
    assert refused == {"dotdot": OUTSIDE_ROOT, "absolute": OUTSIDE_ROOT, "symlink out": OUTSIDE_ROOT}
    kept, counts = count_through_loader(ds)
    assert kept == ["absolute in", "plain", "symlink in"]
    assert counts == {"samples_seen": 6, "samples_skipped": 3, "skipped_outside_root": 3}
    opted_in = ImageTextDataset(ann, root, eval_transform(8), allow_outside_root=True)
    assert count_through_loader(opted_in)[1] == {"samples_seen": 6, "samples_skipped": 0}


# --- item 12: decoded pixels are capped, checked on the header --------------------------------

def png_header(width, height):
    """A PNG that declares width x height but holds almost no pixel data (a few hundred bytes)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def test_huge_images_are_refused_from_the_header_before_decoding(tmp_path, monkeypatch):
    assert MAX_PIXELS == 50_000_000  # the documented default
    # 64 M pixels: under PIL's own limits (it would decode ~190 MB); refused by the default cap.
    (tmp_path / "big.png").write_bytes(png_header(8000, 8000))
    skip = load_image(tmp_path / "big.png")
    assert isinstance(skip, Skipped) and skip.reason == TOO_LARGE and "8000x8000" in skip.detail
    assert decode_image(png_header(8000, 8000), "key").reason == TOO_LARGE
    # Above PIL's hard limit (DecompressionBombError) it is the same reason, not "corrupt".
    assert decode_image(png_header(20000, 20000), "key").reason == TOO_LARGE
    # The cap is configurable and decides before any decoding.
    save_png(tmp_path / "small.png", (1, 2, 3), size=16)
    loads = []
    real_load = ImageFile.ImageFile.load
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: loads.append(1) or real_load(self))
    assert load_image(tmp_path / "small.png", max_pixels=255).reason == TOO_LARGE and loads == []
    assert load_image(tmp_path / "small.png", max_pixels=256).size == (16, 16) and loads
    assert load_image(tmp_path / "small.png", max_pixels=None).size == (16, 16)


def test_oversized_images_are_counted_through_the_collate(tmp_path):
    save_png(tmp_path / "small.png", (1, 2, 3), size=8)
    Image.new("RGB", (40, 40)).save(tmp_path / "large.png")
    ann = tmp_path / "ann.jsonl"
    ann.write_text('{"image": "small.png", "caption": "small"}\n{"image": "large.png", "caption": "large"}\n')
    ds = ImageTextDataset(ann, tmp_path, eval_transform(8), max_pixels=1000)
    assert count_through_loader(ds) == (["small"], {"samples_seen": 2, "samples_skipped": 1, "skipped_too_large": 1})
