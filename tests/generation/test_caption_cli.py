"""`blipx caption`: files and folders in, JSONL out, unreadable images skipped and reported."""

import json

from blipx.cli import main
from blipx.data import ShapesDataset
from blipx.models import create_model


def test_caption_cli(tmp_path, capsys):
    model_dir = tmp_path / "model"
    create_model("blip_tiny", "captioner").save_pretrained(model_dir)
    ShapesDataset("train", num_samples=3, image_size=32).export(tmp_path / "data")
    (tmp_path / "data" / "images" / "train" / "broken.png").write_bytes(b"not an image")
    single = tmp_path / "single.png"
    ShapesDataset("val", num_samples=1, image_size=32).raw(0)["image"].save(single)
    out = tmp_path / "captions.jsonl"
    assert main(["caption", str(tmp_path / "data" / "images"), str(single), "--model", str(model_dir),
                 "--batch-size", "2", "--beams", "2", "--out", str(out), "--no-progress"]) == 0
    rows = [json.loads(l) for l in out.read_text().splitlines()]
    ok = [r for r in rows if "caption" in r]
    assert len(rows) == 5 and len(ok) == 4 and all(isinstance(r["caption"], str) for r in ok)
    assert [r for r in rows if "error" in r] == [{"image": str(tmp_path / "data" / "images" / "train" / "broken.png"),
                                                  "error": "corrupt"}]  # reported per file, the run goes on
    assert "1 unreadable" in capsys.readouterr().err
    assert main(["caption", str(single), "--model", str(model_dir), "--top-p", "0.9", "--no-progress"]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[0])["image"] == str(single)
