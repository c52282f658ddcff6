"""Fixtures of the ``blipx serve`` tests: a tiny saved BLIP, a folder of images to pick from, and a
real CapFilt output folder (the pipeline run with that model over a few shapes scenes and one
magenta square), with files outside the served folders for the traversal tests."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from PIL import Image

pytest.importorskip("fastapi")

MAGENTA = (255, 0, 255)  # a colour no page element and no shapes scene has


@pytest.fixture(scope="session")
def serve_tree(tmp_path_factory) -> dict[str, Path]:
    from blipx.capfilt import CapFilt, CapFiltSettings, merge_and_report
    from blipx.data import ShapesDataset
    from blipx.models import create_model, from_pretrained

    base = tmp_path_factory.mktemp("serve")
    torch.manual_seed(0)
    model_dir = base / "model"
    create_model("blip_tiny", "pretrain").save_pretrained(model_dir)

    secret = base / "secret.png"  # outside every served folder
    Image.new("RGB", (8, 8), (1, 2, 3)).save(secret)

    pick = base / "pick"
    (pick / "sub").mkdir(parents=True)
    Image.new("RGB", (48, 48), MAGENTA).save(pick / "magenta.png")
    Image.new("RGB", (32, 32), (200, 30, 30)).save(pick / "sub" / "red.png")
    (pick / "notes.txt").write_text("not an image")
    os.symlink(secret, pick / "escape.png")  # a symlink out of the folder

    data = base / "data"
    ann = ShapesDataset("train", num_samples=4, image_size=32, noise=0.5, seed=1).export(data)
    Image.new("RGB", (32, 32), MAGENTA).save(data / "images" / "magenta.png")
    with open(ann, "a", encoding="utf-8") as f:
        f.write(json.dumps({"image": "images/magenta.png", "caption": "a magenta square", "image_id": 100}) + "\n")
    os.symlink(secret, data / "escape.png")

    captioner = from_pretrained(str(model_dir), task="captioner")
    retriever = from_pretrained(str(model_dir), task="retriever")

    def capfilt(out: Path, threshold: float) -> list[dict]:
        CapFilt(captioner, retriever, CapFiltSettings(num_captions=2, chunk_size=3, batch_size=4,
                                                      threshold=threshold)).run(ann, data, out, progress=False)
        merge_and_report(out, threshold)
        return [json.loads(line) for p in sorted((out / "chunks").iterdir()) for line in open(p, encoding="utf-8")]

    # An untrained filter scores everything near 0.5: a first pass finds the median score, so that
    # the folder under review has kept and dropped captions of both sources.
    scores = sorted(r["itm_score"] for r in capfilt(base / "probe", 0.5))
    out = base / "capfilt"
    rows = capfilt(out, scores[len(scores) // 2])
    assert {(r["source"], r["kept"]) for r in rows} >= {("web", True), ("synthetic", True), ("synthetic", False)}
    return {"base": base, "model": model_dir, "pick": pick, "data": data, "capfilt": out, "secret": secret}
