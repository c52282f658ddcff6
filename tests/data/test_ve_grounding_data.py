"""SNLI-VE / RefCOCO+ data in the official formats, and the synthetic shapes-VE / shapes-grounding sets."""

from __future__ import annotations

import json
import pickle
from collections import Counter

import pytest
import torch
from PIL import Image

from blipx.data.grounding import GroundingDataset, Refer, load_detections, load_refs_pickle
from blipx.data.shapes import COLORS, SHAPES, ShapesDataset
from blipx.data.shapes_grounding import ShapesGroundingDataset, referring_expressions
from blipx.data.shapes_ve import COVER, ShapesVeDataset
from blipx.data.ve import LABELS, VeCollator, VeDataset
from blipx.tokenizer import tokenizer_for

# ------------------------------------------------------------------ SNLI-VE files


@pytest.fixture
def ve_files(tmp_path):
    root = tmp_path / "flickr"
    root.mkdir()
    for name, color in (("100", (255, 0, 0)), ("200", (0, 255, 0))):
        Image.new("RGB", (20, 20), color).save(root / f"{name}.jpg")
    anns = [
        {"image": "100", "sentence": "Two dogs, running!", "label": "entailment"},
        {"image": "100", "sentence": "A cat sleeps.", "label": "contradiction"},
        {"image": "200", "sentence": "The man is tall", "label": "neutral"},
        {"image": "300", "sentence": "missing image", "label": "neutral"},
        {"image": "200", "sentence": "bad label", "label": "maybe"},
        {"image": "200", "sentence": "...", "label": "neutral"},
        {"image": "../flickr/100", "sentence": "climbs out of the root", "label": "neutral"},
        ["not", "an", "object"],
    ]
    (tmp_path / "ve_test.json").write_text(json.dumps(anns))
    return tmp_path / "ve_test.json", tmp_path / "flickr"


def test_ve_dataset_reads_official_records(ve_files):
    ann, root = ve_files
    ds = VeDataset(ann, root)
    good = [ds[i] for i in range(len(ds)) if isinstance(ds[i], dict)]
    assert [(s["caption"], s["label"]) for s in good] == [
        ("two dogs running", LABELS["entailment"]), ("a cat sleeps", LABELS["contradiction"]),
        ("the man is tall", LABELS["neutral"]),  # ALBEF pre_caption; official ids 2 / 0 / 1
        ("climbs out of the root", LABELS["neutral"])]  # ../flickr/100 resolves back inside the root
    assert LABELS == {"contradiction": 0, "neutral": 1, "entailment": 2}
    assert good[0]["image_id"] == good[1]["image_id"] != good[2]["image_id"]
    reasons = Counter(s.reason for s in (ds[i] for i in range(len(ds))) if not isinstance(s, dict))
    # missing 300.jpg; a bad label and a record that is not an object; a sentence with no word
    assert reasons["missing"] == 1 and reasons["bad_record"] == 2 and reasons["no_caption"] == 1
    assert len(ds) == 8


def test_ve_dataset_refuses_paths_outside_root(ve_files, tmp_path):
    ann, root = ve_files
    Image.new("RGB", (20, 20)).save(tmp_path / "secret.jpg")
    (tmp_path / "out.json").write_text(json.dumps([{"image": "../secret", "sentence": "x y", "label": "neutral"}]))
    ds = VeDataset(tmp_path / "out.json", root)
    assert ds[0].reason == "outside_root"
    assert isinstance(VeDataset(tmp_path / "out.json", root, allow_outside_root=True)[0], dict)


def test_ve_collator_adds_labels_and_drops_skips(ve_files):
    from blipx.data import eval_transform

    ann, root = ve_files
    ds = VeDataset(ann, root, transform=eval_transform(16))
    batch = VeCollator(tokenizer_for("albef"))([ds[i] for i in range(len(ds))])
    assert batch["pixel_values"].shape == (4, 3, 16, 16)
    assert batch["labels"].tolist() == [2, 0, 1, 1]
    assert batch["num_skipped"] == 4 and batch["input_ids"].shape[0] == 4
    empty = VeCollator(tokenizer_for("albef"))([ds[3]])
    assert empty["batch_size"] == 0 and empty["labels"].shape == (0,)


# ------------------------------------------------------------------ shapes-VE


def _cell_pixels(img, cell, size):
    r, c = cell
    s = size // 3
    return img.crop((c * s + 2, r * s + 2, (c + 1) * s - 2, (r + 1) * s - 2)).getcolors(10000)


def test_shapes_ve_is_balanced_deterministic_and_true_to_its_labels():
    ds = ShapesVeDataset("train", 300, image_size=48)
    labels = Counter(ds[i]["label"] for i in range(len(ds)))
    assert labels == {0: 100, 1: 100, 2: 100}
    a, b = ds[7], ShapesVeDataset("train", 300, image_size=48)[7]
    assert a["caption"] == b["caption"] and list(a["image"].getdata()) == list(b["image"].getdata())
    kinds = Counter()
    for i in range(len(ds)):
        s = ds[i]
        words = s["caption"].split(" ")
        assert words[0] == "the" and words[1] in COLORS and words[2] in SHAPES and words[3] == "is"
        pair, size = (words[1], words[2]), words[4]
        # the cover: exactly its cell is black, in every image
        assert _cell_pixels(s["image"], s["cover"], 48) == [(12 * 12, COVER)]
        visible = [o for o in s["objects"] if (o["row"], o["col"]) != s["cover"]]
        named = [o for o in visible if (o["color"], o["shape"]) == pair]
        kinds[s["kind"]] += 1
        if s["label"] == LABELS["neutral"]:
            assert named == []  # what it names is not to be seen
            hidden = [o for o in s["objects"] if (o["color"], o["shape"]) == pair]
            assert (s["kind"] == "neutral_hidden") == bool(hidden)
            if hidden:  # under the cover, of a size the image cannot tell
                assert (hidden[0]["row"], hidden[0]["col"]) == s["cover"] and s["truth"] == (hidden[0]["size"] == size)
        else:
            # one visible shape of that colour and shape, and no other in the scene
            assert len(named) == 1 and sum((o["color"], o["shape"]) == pair for o in s["objects"]) == 1
            assert (named[0]["size"] == size) == (s["label"] == LABELS["entailment"]) == s["truth"]
    assert kinds["neutral_hidden"] > 30 and kinds["neutral_absent"] > 30


def test_shapes_ve_wording_does_not_give_the_label_away():
    """Every class draws colours, shapes and size words from the same sets, and every image has
    one cover: text alone, or the cover alone, has nothing to go on beyond chance."""
    ds = ShapesVeDataset("train", 1800, image_size=48)
    per = {c: (Counter(), Counter(), Counter()) for c in range(3)}
    for i in range(len(ds)):
        s = ds[i]
        words = s["caption"].split(" ")
        per[s["label"]][0][words[1]] += 1
        per[s["label"]][1][words[2]] += 1
        per[s["label"]][2][words[4]] += 1
    for colors, shapes, sizes in per.values():
        assert len(colors) == 6 and min(colors.values()) > 600 / 6 * 0.7
        assert len(shapes) == 4 and min(shapes.values()) > 600 / 4 * 0.8
        assert min(sizes.values()) > 600 / 2 * 0.85


# ------------------------------------------------------------------ shapes-grounding


def test_shapes_grounding_expressions_name_one_shape():
    ds = ShapesGroundingDataset("test", 200, image_size=48)
    counts = Counter()
    for i in range(len(ds)):
        s = ds[i]
        assert 2 <= s["num_objects"] == len(s["objects"]) <= 3
        _, color, shape = s["caption"].split(" ")
        match = [o for o in s["objects"] if (o["color"], o["shape"]) == (color, shape)]
        assert len(match) == 1 and (match[0]["row"], match[0]["col"]) == s["cell"]
        assert s["objects"][s["target"]] is match[0]
        counts[s["num_objects"]] += 1
    assert set(counts) == {2, 3}
    again = ShapesGroundingDataset("test", 200, image_size=48)[11]
    assert again["caption"] == ds[11]["caption"] and again["cell"] == ds[11]["cell"]


def test_referring_expression_forms():
    objs = [{"color": "red", "shape": "circle", "row": 0, "col": 0},
            {"color": "red", "shape": "square", "row": 1, "col": 1},
            {"color": "blue", "shape": "square", "row": 2, "col": 2}]
    assert referring_expressions(objs, 0) == ["the red circle", "the circle"]
    assert referring_expressions(objs, 1) == ["the red square"]
    assert referring_expressions(objs, 2, forms=("color",)) == ["the blue shape"]
    ds = ShapesGroundingDataset("train", 50, forms=("color_shape", "color", "shape"))
    assert any(ds[i]["caption"].endswith(" shape") for i in range(50))
    with pytest.raises(ValueError, match="forms"):
        ShapesGroundingDataset("train", 5, forms=("size",))
    with pytest.raises(ValueError, match="min_objects"):
        ShapesGroundingDataset("train", 5, min_objects=1)


# ------------------------------------------------------------------ RefCOCO+ files


@pytest.fixture
def refcoco(tmp_path):
    images = tmp_path / "coco"
    (images / "train2014").mkdir(parents=True)
    for n in (1, 2):
        Image.new("RGB", (40, 30), (n * 50, 0, 0)).save(images / "train2014" / f"COCO_{n}.jpg")
    train = [{"image": "train2014/COCO_1.jpg", "text": "Left man!", "ref_id": 10},
             {"image": "train2014/COCO_1.jpg", "text": "man on the right", "ref_id": 11},
             {"image": "train2014/COCO_2.jpg", "text": "the dog", "ref_id": 12},
             {"image": "train2014/COCO_2.jpg", "text": 5, "ref_id": 13}]
    (tmp_path / "refcoco+_train.json").write_text(json.dumps(train))
    data = tmp_path / "data" / "refcoco+"
    data.mkdir(parents=True)
    refs = [{"ref_id": 10, "ann_id": 100, "image_id": 1, "split": "val", "category_id": 1, "sentences": []},
            {"ref_id": 12, "ann_id": 102, "image_id": 2, "split": "testA", "category_id": 1, "sentences": []}]
    (data / "refs(unc).p").write_bytes(pickle.dumps(refs, protocol=2))
    instances = {"images": [{"id": 1, "height": 30, "width": 40}, {"id": 2, "height": 30, "width": 40}],
                 "annotations": [{"id": 100, "bbox": [0, 0, 10, 10]}, {"id": 102, "bbox": [5, 5, 10, 10]}],
                 "categories": []}
    (data / "instances.json").write_text(json.dumps(instances))
    (tmp_path / "dets.json").write_text(json.dumps({"1": [[0, 0, 10, 10, 0.9]], "2": []}))
    return tmp_path


def test_grounding_dataset_train_and_test_modes(refcoco):
    ds = GroundingDataset(refcoco / "refcoco+_train.json", refcoco / "coco", mode="train")
    samples = [ds[i] for i in range(len(ds))]
    good = [s for s in samples if isinstance(s, dict)]
    assert [s["caption"] for s in good] == ["left man", "man on the right", "the dog"]
    assert [s["image_id"] for s in good] == [0, 0, 1]  # numbered by image file name
    assert sum(not isinstance(s, dict) for s in samples) == 1  # the non-string text
    test = GroundingDataset(refcoco / "refcoco+_train.json", refcoco / "coco", mode="test")
    assert [test[i]["ref_id"] for i in range(3)] == [10, 11, 12]


def test_refer_loads_the_pickle_without_running_code(refcoco, tmp_path):
    refer = Refer.load(refcoco / "data", "refcoco+", "unc")
    assert refer.refs[12]["split"] == "testA" and refer.boxes[12] == [5, 5, 10, 10]
    assert refer.images[1]["height"] == 30
    assert load_detections(refcoco / "dets.json")["1"][0][:4] == [0, 0, 10, 10]

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    (tmp_path / "evil.p").write_bytes(pickle.dumps([{"ref_id": 1, "x": Evil()}]))
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        load_refs_pickle(tmp_path / "evil.p")
    (tmp_path / "t.p").write_bytes(pickle.dumps([{"ref_id": 1, "box": torch.zeros(1)}]))
    with pytest.raises(pickle.UnpicklingError):
        load_refs_pickle(tmp_path / "t.p")


def test_shapes_scenes_stay_the_shapes_scenes():
    """shapes-VE draws ShapesDataset scene i (plus its cover), unless no shape of it can be named
    alone (then a scene redrawn from the sample's stream)."""
    ve = ShapesVeDataset("val", 60, image_size=48)
    scenes = ShapesDataset("val", 60, image_size=48)
    same = 0
    for i in range(60):
        objs = scenes.raw(i)["objects"]
        unique = [o for o in objs if sum((x["color"], x["shape"]) == (o["color"], o["shape"]) for x in objs) == 1]
        assert (ve[i]["objects"] == objs) == bool(unique)
        same += bool(unique)
    assert same >= 55
