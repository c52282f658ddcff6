"""One preprocessing path: a PNG captioned through the Python API and through `blipx caption`
gives the same pixels and the same text; evaluation/CapFilt datasets use the same transform."""

import json

import torch
from PIL import Image

from blipx.cli import main
from blipx.data import ShapesDataset, eval_transform, image_processor, load_image
from blipx.models import BlipCaptioner, create_model


def _trained_looking_captioner(tmp_path):
    torch.manual_seed(0)
    model = create_model("blip_tiny", "captioner")
    with torch.no_grad():  # sharper logits than the init: captions depend on the pixels
        for p in model.parameters():
            p.mul_(8.0)
    model.save_pretrained(tmp_path / "model")
    return BlipCaptioner.from_pretrained(tmp_path / "model")


def test_api_and_cli_caption_a_png_identically(tmp_path, capsys):
    model = _trained_looking_captioner(tmp_path)
    png = tmp_path / "scene.png"
    # An odd-sized RGBA image: resize and mode conversion both matter.
    ShapesDataset("val", num_samples=1, image_size=57).raw(0)["image"].convert("RGBA").save(png)
    size = model.config.vision.image_size

    api = model.caption([Image.open(png)], num_beams=2, max_length=12, min_length=3)
    assert main(["caption", str(png), "--model", str(tmp_path / "model"), "--beams", "2", "--max-length", "12",
                 "--min-length", "3", "--no-progress", "--device", "cpu"]) == 0
    row = json.loads(capsys.readouterr().out.splitlines()[0])
    assert row["caption"] == api[0]

    # The pixels behind both: the processor (API) and the per-image dataset transform (CLI
    # loader, evaluation, CapFilt) agree bit for bit on the decoded file.
    via_api = image_processor("blip", size)([Image.open(png)])[0]
    via_loader = eval_transform(size)(load_image(png))
    assert torch.equal(via_api, via_loader)
