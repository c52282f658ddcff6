import json

import pytest
from PIL import Image


def save_png(path, color, size=16):
    Image.new("RGB", (size, size), color).save(path)


@pytest.fixture
def image_folder(tmp_path):
    """Three good images, one corrupt, one truncated, and annotations naming one missing file."""
    root = tmp_path / "imgs"
    root.mkdir()
    save_png(root / "a.png", (255, 0, 0))
    save_png(root / "b.png", (0, 255, 0))
    Image.new("RGB", (64, 64), (0, 0, 255)).save(root / "c.jpg", quality=95)
    (root / "corrupt.jpg").write_bytes(b"this is not an image at all")
    full = (root / "c.jpg").read_bytes()
    (root / "truncated.jpg").write_bytes(full[: len(full) // 2])
    anns = [
        {"image": "a.png", "caption": "A red square.", "image_id": "img_a"},
        {"image": "b.png", "caption": ["A green square!", "green block"], "image_id": "img_b"},
        {"image": "c.jpg", "caption": "Blue (square)", "image_id": "img_c", "is_noisy": True},
        {"image": "missing.png", "caption": "nothing here", "image_id": "img_m"},
        {"image": "corrupt.jpg", "caption": "garbage", "image_id": "img_x"},
        {"image": "truncated.jpg", "caption": "half a file", "image_id": "img_t"},
    ]
    (tmp_path / "ann.json").write_text(json.dumps(anns))
    (tmp_path / "ann.jsonl").write_text("\n".join(json.dumps(a) for a in anns) + "\n")
    return tmp_path
