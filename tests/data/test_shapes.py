import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from blipx.data import ImageTextCollator, ImageTextDataset, ShapesDataset, TrainTransform, get_dataset, webdataset_pairs
from blipx.data.shapes import BACKGROUND, COLORS, POSITIONS, caption_match_matrix, caption_matches, parse_caption
from blipx.tokenizer import blip_tokenizer


def _same(a, b):
    return a["caption"] == b["caption"] and np.array_equal(np.asarray(a["image"]), np.asarray(b["image"]))


def test_deterministic_per_index_in_any_order_and_instance():
    a = ShapesDataset("train", num_samples=50, image_size=64, noise=0.3, seed=3)
    b = ShapesDataset("train", num_samples=50, image_size=64, noise=0.3, seed=3)
    forward = [a.raw(i) for i in range(50)]
    backward = [b.raw(i) for i in reversed(range(50))][::-1]
    assert all(_same(x, y) and x["is_noisy"] == y["is_noisy"] for x, y in zip(forward, backward))
    # Another seed or another split gives other scenes.
    other_seed = ShapesDataset("train", num_samples=50, seed=4)
    held_out = ShapesDataset("test", num_samples=50, seed=3)
    assert sum(_same(a.raw(i), other_seed.raw(i)) for i in range(50)) < 5
    assert sum(a.raw(i)["clean_caption"] == held_out.raw(i)["clean_caption"] for i in range(50)) < 5


@pytest.mark.parametrize("image_size", [64, 224])
def test_caption_describes_the_image(image_size):
    ds = ShapesDataset("val", num_samples=40, image_size=image_size)
    cell = image_size / 3
    for i in range(40):
        s = ds.raw(i)
        pix = np.asarray(s["image"])
        mentioned = parse_caption(s["caption"])
        assert len(mentioned) == len(s["objects"]) and caption_matches(s["caption"], s["objects"])
        for o in s["objects"]:
            cx, cy = o["center"]
            assert tuple(pix[cy, cx]) == COLORS[o["color"]]
            # The named cell is dominated (among non-background pixels) by the named colour.
            r0, c0 = int(o["row"] * cell), int(o["col"] * cell)
            block = pix[r0 : int(r0 + cell), c0 : int(c0 + cell)].reshape(-1, 3)
            block = block[(block != BACKGROUND).any(axis=1)]
            values, counts = np.unique(block, axis=0, return_counts=True)
            assert tuple(values[counts.argmax()]) == COLORS[o["color"]]
            assert POSITIONS[(o["row"], o["col"])] == o["position"]
            assert {"size": o["size"], "color": o["color"], "shape": o["shape"], "position": o["position"]} in mentioned


@pytest.mark.parametrize("noise, max_objects", [(0.0, 3), (0.3, 3), (1.0, 3), (0.5, 1)])
def test_noise_fraction_is_exact_and_noisy_captions_are_wrong(noise, max_objects):
    ds = ShapesDataset("train", num_samples=200, noise=noise, seed=1, max_objects=max_objects)
    samples = [ds.raw(i) for i in range(200)]
    flags = [s["is_noisy"] for s in samples]
    assert sum(flags) == round(noise * 200)
    for s in samples:
        assert 1 <= len(s["objects"]) <= max_objects
        assert caption_matches(s["clean_caption"], s["objects"])
        assert caption_matches(s["caption"], s["objects"]) == (not s["is_noisy"])
        assert (s["caption"] == s["clean_caption"]) == (not s["is_noisy"])


def test_get_dataset_by_name_with_transform_and_collate():
    train = TrainTransform(32, flip="swap")
    ds = get_dataset("shapes", split="train", size=64, noise=0.5, num_samples=8, transform=train)
    batch = next(iter(DataLoader(ds, batch_size=8, collate_fn=ImageTextCollator(blip_tokenizer(), 30))))
    assert batch["pixel_values"].shape == (8, 3, 32, 32) and batch["is_noisy"].sum() == 4
    assert batch["image_ids"].tolist() == list(range(8))
    with pytest.raises(ValueError):
        get_dataset("nope")


def test_export_jsonl_round_trip(tmp_path):
    ds = ShapesDataset("train", num_samples=12, image_size=32, noise=0.25, seed=2)
    path = ds.export(tmp_path)
    back = ImageTextDataset(path, tmp_path, transform=lambda im: torch.from_numpy(np.asarray(im).copy()))
    assert len(back) == 12
    for i in range(12):
        orig, got = ds.raw(i), back[i]
        assert got["caption"] == orig["caption"] and got["is_noisy"] == orig["is_noisy"] and got["image_id"] == i
        assert np.array_equal(got["image"].numpy(), np.asarray(orig["image"]))


def test_export_shards_round_trip(tmp_path):
    ds = ShapesDataset("val", num_samples=10, image_size=32, noise=0.3)
    shards = ds.export_shards(tmp_path / "shapes-%03d.tar", maxcount=4)
    assert len(shards) == 3
    got = sorted(webdataset_pairs(shards, rank=0, world_size=1), key=lambda s: s["image_id"])
    assert [s["caption"] for s in got] == [ds.raw(i)["caption"] for i in range(10)]
    assert [s["is_noisy"] for s in got] == [ds.raw(i)["is_noisy"] for i in range(10)]
    assert np.array_equal(np.asarray(got[3]["image"]), np.asarray(ds.raw(3)["image"]))


def test_caption_match_matrix_is_the_retrieval_ground_truth():
    ds = ShapesDataset("test", num_samples=30, seed=5)
    samples = [ds.raw(i) for i in range(30)]
    m = caption_match_matrix([s["caption"] for s in samples], [s["objects"] for s in samples])
    assert m.shape == (30, 30) and bool(m.diagonal().all())
    full = ("size", "color", "shape", "position")
    expected = [[caption_matches(t["caption"], s["objects"], full) for t in samples] for s in samples]
    assert m.tolist() == expected
    # Colour + shape alone is looser: at least as many hits.
    loose = caption_match_matrix([s["caption"] for s in samples], [s["objects"] for s in samples], ("color", "shape"))
    assert bool((loose | ~m).all()) and int(loose.sum()) >= int(m.sum())
