"""How fast does a ViT shape learn the captioned-shapes scenes? A vision-only probe.

Trains a fresh ViT (blip_mini's width/depth, init as ``create_model`` does) plus one linear head
on the one-shape scenes with supervised shape / position / colour labels, then reports held-out
accuracy. It isolates the vision side of the demo in ~30 s per variant; the README's numbers for
64 px / patch 16 vs 48 px / patch 16 came from it:

    python scripts/shapes_vit_probe.py                                    # blip_mini's ViT
    python scripts/shapes_vit_probe.py --vision '{"image_size": 64}'      # overrides (JSON)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import time

import torch
import torch.nn.functional as F
from torch import nn

from blipx.data import ShapesDataset, eval_transform
from blipx.data.shapes import COLORS, POSITIONS, SHAPES
from blipx.layers.vit import VisionTransformer
from blipx.models import get_config
from blipx.models.init import init_weights_

POSITION_NAMES = list(POSITIONS.values())
HEADS = {"shape": len(SHAPES), "position": len(POSITIONS), "color": len(COLORS)}


def labelled(split: str, n: int, size: int):
    ds = ShapesDataset(split, num_samples=n, image_size=size, transform=eval_transform(size), max_objects=1)
    samples = [ds[i] for i in range(n)]
    objs = [s["objects"][0] for s in samples]
    y = torch.tensor([[SHAPES.index(o["shape"]), POSITION_NAMES.index(o["position"]), list(COLORS).index(o["color"])]
                      for o in objs])
    return torch.stack([s["image"] for s in samples]), y, torch.tensor([o["size"] == "small" for o in objs])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vision", default="{}", help="JSON overrides of blip_mini's vision config")
    ap.add_argument("--steps", type=int, default=800)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--batch-size", type=int, default=32)
    args = ap.parse_args()

    model_cfg = get_config("blip_mini")
    vcfg = dataclasses.replace(model_cfg.vision, **json.loads(args.vision))
    torch.manual_seed(0)
    vit = init_weights_(VisionTransformer(vcfg), model_cfg.initializer_range)
    head = nn.Linear(vcfg.width, sum(HEADS.values()))
    params = [*vit.parameters(), *head.parameters()]
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.05)
    warm = 40  # linear warm-up, then cosine to 1 % (the demo's schedule shape)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * s / args.steps))))
    x_tr, y_tr, _ = labelled("train", 10000, vcfg.image_size)
    x_te, y_te, small = labelled("test", 600, vcfg.image_size)

    def logits(x):
        return head(vit(x)[:, 0]).split(list(HEADS.values()), dim=1)

    t0 = time.perf_counter()
    for step in range(args.steps):
        idx = torch.randint(0, len(x_tr), (args.batch_size,))
        loss = sum(F.cross_entropy(z, y_tr[idx, i]) for i, z in enumerate(logits(x_tr[idx])))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    vit.eval()
    with torch.no_grad():
        hits = [z.argmax(1) == y_te[:, i] for i, z in enumerate(logits(x_te))]
    print(f"vision {json.loads(args.vision) or 'blip_mini'}: {args.steps} steps in {time.perf_counter() - t0:.0f} s")
    for (name, _), hit in zip(HEADS.items(), hits):
        print(f"  {name:<9} held-out acc {hit.float().mean():.3f} "
              f"(small shapes {hit[small].float().mean():.3f}, large {hit[~small].float().mean():.3f})")


if __name__ == "__main__":
    main()
