import torch
from torch.utils.data import DataLoader

from blipx.data import ImageTextCollator, ImageTextDataset, SkipCounter, eval_transform, get_dataset, read_annotations
from blipx.data.images import CORRUPT, MISSING, TRUNCATED, Skipped, load_image
from blipx.tokenizer import blip_tokenizer


def test_json_and_jsonl_read_the_same(image_folder):
    a = read_annotations(image_folder / "ann.json")
    b = read_annotations(image_folder / "ann.jsonl")
    assert a == b and len(a) == 6


def test_pairs_expand_caption_lists_with_contiguous_image_ids(image_folder):
    ds = ImageTextDataset(image_folder / "ann.jsonl", image_folder / "imgs", eval_transform(8))
    assert len(ds) == 7  # b has two captions
    assert ds.texts[:4] == ["a red square", "a green square", "green block", "blue square"]
    assert ds.txt2img == [0, 1, 1, 2, 3, 4, 5]
    assert ds.img2txt[1] == [1, 2]
    by_name = get_dataset("json", ann_files=image_folder / "ann.json", image_root=image_folder / "imgs", max_words=2)
    assert by_name.texts[0] == "a red" and by_name.txt2img == ds.txt2img
    s = ds[2]
    assert s["image_id"] == 1 and s["caption"] == "green block"
    assert s["image"].shape == (3, 8, 8) and s["image"].dtype == torch.float32
    assert "is_noisy" not in s and ds[3]["is_noisy"] is True


def test_images_mode_and_several_files(image_folder):
    ds = ImageTextDataset(
        [image_folder / "ann.json", image_folder / "ann.jsonl"], image_folder / "imgs", eval_transform(8), mode="images"
    )
    # The same image_id in both files is one image with all its captions.
    assert len(ds) == 6 and len(ds.texts) == 14 and ds.img2txt[0] == [0, 7]
    assert ds[0]["caption"] == "a red square"


def test_load_image_reports_reason(image_folder):
    root = image_folder / "imgs"
    assert load_image(root / "missing.png").reason == MISSING
    assert load_image(root / "corrupt.jpg").reason == CORRUPT
    assert load_image(root / "truncated.jpg").reason == TRUNCATED
    assert load_image(root / "a.png").size == (16, 16)


def test_bad_images_are_skipped_and_counted_through_a_dataloader(image_folder):
    ds = ImageTextDataset(image_folder / "ann.json", image_folder / "imgs", eval_transform(8))
    collate = ImageTextCollator(blip_tokenizer(), max_length=12)
    counter = SkipCounter()
    kept = []
    # 2 workers: the counts must survive the trip from the worker processes.
    for batch in DataLoader(ds, batch_size=3, num_workers=2, collate_fn=collate):
        counter.update(batch)
        kept += batch["captions"]
        n = batch["batch_size"]
        assert batch["pixel_values"].shape[0] == n == batch["input_ids"].shape[0] == batch["image_ids"].shape[0]
    assert sorted(kept) == sorted(["a red square", "a green square", "green block", "blue square"])
    assert counter.as_dict() == {
        "samples_seen": 7, "samples_skipped": 3, "skipped_missing": 1, "skipped_corrupt": 1, "skipped_truncated": 1
    }  # fmt: skip


def test_collate_tokenizes_and_handles_an_all_skipped_batch():
    collate = ImageTextCollator(blip_tokenizer(), max_length=10)
    img = torch.zeros(3, 4, 4)
    batch = collate(
        [{"image": img, "caption": "a red circle", "image_id": 5, "is_noisy": False}, None, Skipped(MISSING, "x")]
    )
    assert batch["batch_size"] == 1 and batch["num_skipped"] == 2
    assert batch["skipped"] == {"unknown": 1, "missing": 1}
    assert batch["input_ids"].shape == (1, 10) and batch["input_ids"][0, 0] == 101  # [CLS], padded to 10
    assert batch["attention_mask"][0].tolist() == [1] * 5 + [0] * 5
    assert batch["image_ids"].tolist() == [5] and batch["is_noisy"].tolist() == [False]
    with_prompt = ImageTextCollator(blip_tokenizer(), max_length=10, prompt="a picture of ")
    prompted = with_prompt([{"image": img, "caption": "a red circle", "image_id": 5}])
    assert prompted["captions"] == ["a red circle"]  # [CLS] a picture of a red circle [SEP]
    assert prompted["input_ids"][0, :8].tolist() == [101, 1037, 3861, 1997, 1037, 2417, 4418, 102]
    empty = collate([None, Skipped(CORRUPT, "y")])
    assert empty["batch_size"] == 0 and empty["pixel_values"].numel() == 0 and empty["num_skipped"] == 2
