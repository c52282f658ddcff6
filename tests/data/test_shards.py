import io
import tarfile
from collections import Counter

import pytest
from PIL import Image
from torch.utils.data import DataLoader

from blipx.data import ImageTextCollator, eval_transform, get_dataset, webdataset_pairs, write_shards
from blipx.data.shards import key_to_image_id
from blipx.tokenizer import blip_tokenizer

N_SHARDS, PER_SHARD = 8, 5


def _samples(n):
    for i in range(n):
        image = Image.new("RGB", (12, 12), (i % 256, 0, 0))
        yield {"key": f"s{i:04d}", "image": image, "caption": f"Sample number {i}."}


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    d = tmp_path_factory.mktemp("shards")
    paths = write_shards(_samples(N_SHARDS * PER_SHARD), d / "part-%04d.tar", maxcount=PER_SHARD)
    assert len(paths) == N_SHARDS
    return sorted(paths)


def _keys(urls, rank, world, workers):
    ds = webdataset_pairs(urls, transform=eval_transform(8), rank=rank, world_size=world)
    collate = ImageTextCollator(blip_tokenizer(), max_length=8)
    loader = DataLoader(ds, batch_size=3, num_workers=workers, collate_fn=collate)
    keys = []
    for batch in loader:
        assert batch["pixel_values"].shape[1:] == (3, 8, 8)
        keys += batch["captions"]
    return keys


def test_every_sample_once_across_2_ranks_x_2_workers(shards):
    per_rank = [_keys(shards, rank, 2, workers=2) for rank in range(2)]
    everything = Counter(per_rank[0] + per_rank[1])
    assert set(everything) == {f"sample number {i}" for i in range(N_SHARDS * PER_SHARD)}
    assert set(everything.values()) == {1}
    assert set(per_rank[0]).isdisjoint(per_rank[1]) and len(per_rank[0]) == len(per_rank[1]) == 20


def test_fewer_shards_than_consumers_still_reads_each_sample_once(shards):
    # 3 shards over 2 ranks x 2 workers: one worker has nothing (no error), nothing is duplicated.
    keys = _keys(shards[:3], 0, 2, workers=2) + _keys(shards[:3], 1, 2, workers=2)
    assert sorted(keys) == sorted(f"sample number {i}" for i in range(3 * PER_SHARD))


def test_single_process_reads_all_and_parses_metadata(shards):
    samples = list(webdataset_pairs(shards[:1], rank=0, world_size=1))
    assert [s["key"] for s in samples] == [f"s{i:04d}" for i in range(PER_SHARD)]
    assert samples[0]["caption"] == "sample number 0" and samples[0]["image"].size == (12, 12)
    assert samples[0]["image_id"] == key_to_image_id("s0000")
    by_name = list(get_dataset("webdataset", urls=shards[:2], rank=1, world_size=2, caption_style="albef"))
    assert [s["key"] for s in by_name] == [f"s{i:04d}" for i in range(PER_SHARD, 2 * PER_SHARD)]


def test_corrupt_and_missing_images_in_a_shard_are_counted(tmp_path):
    path = tmp_path / "bad.tar"
    good = io.BytesIO()
    Image.effect_noise((64, 64), 50).convert("RGB").save(good, format="PNG")  # noise: a long pixel stream
    members = {
        "ok.png": good.getvalue(), "ok.json": b'{"caption": "fine", "image_id": 7, "is_noisy": true}',
        "junk.jpg": b"not a jpeg", "junk.txt": b"broken image",
        "cut.png": good.getvalue()[: len(good.getvalue()) // 2], "cut.txt": b"truncated image",
        "textonly.txt": b"no image member",
    }  # fmt: skip
    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    collate = ImageTextCollator(blip_tokenizer(), max_length=8)
    batches = list(DataLoader(webdataset_pairs(str(path), eval_transform(8)), batch_size=8, collate_fn=collate))
    assert len(batches) == 1
    b = batches[0]
    assert b["captions"] == ["fine"] and b["image_ids"].tolist() == [7] and b["is_noisy"].tolist() == [True]
    assert b["skipped"] == {"corrupt": 1, "truncated": 1, "missing": 1}


def _tar(path, members):
    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def _collated(urls):
    collate = ImageTextCollator(blip_tokenizer(), max_length=8)
    batches = list(DataLoader(webdataset_pairs(urls, eval_transform(8), rank=0, world_size=1), batch_size=64,
                              collate_fn=collate))
    captions = [c for b in batches for c in b["captions"]]
    skipped = Counter()
    for b in batches:
        skipped.update(b["skipped"])
    return captions, dict(skipped)


def test_missing_and_truncated_shards_are_counted(shards, tmp_path):
    """A shard that is missing or cut off is one counted skip (webdataset alone only warns, and
    reports a truncated shard twice); the samples before the damage are kept."""
    data = open(shards[1], "rb").read()
    cut = tmp_path / "cut.tar"
    with tarfile.open(shards[1]) as tar:
        inside = tar.getmember(f"s{PER_SHARD + 2:04d}.png").offset_data + 10
    cut.write_bytes(data[:inside])  # cut inside the 3rd sample's image: 2 samples survive
    captions, skipped = _collated([shards[0], str(tmp_path / "gone.tar"), str(cut)])
    first = {f"sample number {i}" for i in range(PER_SHARD)}
    second = {f"sample number {i}" for i in range(PER_SHARD, 2 * PER_SHARD)}
    assert first <= set(captions) and len(set(captions) & second) == 2
    assert skipped == {"missing_shard": 1, "bad_shard": 1}


def test_bad_captions_in_a_shard_are_skipped_and_counted(tmp_path):
    """A caption that is not a string, not UTF-8 or only punctuation, and json that is not an
    object, skip their sample (bad_record / no_caption) instead of stopping the stream."""
    png = io.BytesIO()
    Image.new("RGB", (8, 8)).save(png, format="PNG")
    img = png.getvalue()
    _tar(tmp_path / "captions.tar", {
        "good.png": img, "good.txt": b"a good caption",
        "number.png": img, "number.json": b'{"caption": 5}',
        "latin1.png": img, "latin1.txt": "caf\xe9".encode("latin-1"),
        "dots.png": img, "dots.txt": b"...",
        "listjson.png": img, "listjson.json": b'["a", "b"]',
        "nothing.png": img, "nothing.json": b'{"image_id": 3}',
    })  # fmt: skip
    captions, skipped = _collated(str(tmp_path / "captions.tar"))
    assert captions == ["a good caption"]
    assert skipped == {"bad_record": 3, "no_caption": 2}
