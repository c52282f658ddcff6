"""What ``blipx eval`` runs: retrieval (ITC top-k + ITM re-rank, R@1/5/10) and captioning (BLEU-4, CIDEr)
of a trained model on a held-out split of the synthetic shapes data or an annotation file."""

from __future__ import annotations

from pathlib import Path

import torch

from blipx.models import BlipCaptioner, from_pretrained


def load_eval_pairs(data: str, image_size: int, split: str = "test", num_samples: int | None = None,
                    image_root: str | None = None, max_objects: int | None = None):
    """(pixel_values [N_img, 3, S, S], texts, txt2img, references {image index: [captions]}).

    ``max_objects``: shapes per scene of the "shapes" data (its default when None)."""
    from blipx.data import eval_transform, get_dataset

    transform = eval_transform(image_size)
    if data == "shapes":
        opts = {k: v for k, v in (("num_samples", num_samples), ("max_objects", max_objects)) if v}
        ds = get_dataset("shapes", split=split, image_size=image_size, transform=transform, **opts)
    else:
        ds = get_dataset("json", ann_files=data, image_root=image_root or str(Path(data).parent), transform=transform)
    images, texts, txt2img, refs, slot = [], [], [], {}, {}
    n = len(ds) if num_samples is None else min(len(ds), num_samples)
    for i in range(n):
        s = ds[i]
        if not isinstance(s, dict):
            continue  # unreadable image: skipped (the dataset counts it)
        key = s["image_id"]
        if key not in slot:
            slot[key] = len(images)
            images.append(s["image"])
        texts.append(s["caption"])
        txt2img.append(slot[key])
        refs.setdefault(slot[key], []).append(s.get("clean_caption", s["caption"]))
    return torch.stack(images), texts, txt2img, refs


def eval_retrieval(model_path: str, data: str = "shapes", split: str = "test", num_samples: int | None = None,
                   k_test: int = 16, device: str = "cpu", image_root: str | None = None,
                   max_objects: int | None = None) -> dict[str, float]:
    from blipx.evaluation.retrieval import evaluate_retrieval

    model = from_pretrained(model_path, task="retriever").to(device)  # the checkpoint's family
    images, texts, txt2img, _ = load_eval_pairs(data, model.config.vision.image_size, split, num_samples, image_root,
                                                max_objects)
    return evaluate_retrieval(model, images.to(device), texts, txt2img, k_test=k_test)


def eval_captioning(model_path: str, data: str = "shapes", split: str = "test", num_samples: int | None = None,
                    device: str = "cpu", image_root: str | None = None, max_objects: int | None = None,
                    **generate_kwargs) -> dict[str, float]:
    from blipx.evaluation.captioning import caption_metrics

    model = BlipCaptioner.from_pretrained(model_path).to(device)
    images, _, _, refs = load_eval_pairs(data, model.config.vision.image_size, split, num_samples, image_root,
                                         max_objects)
    kwargs = {"num_beams": 3, "max_length": 20, "min_length": 5, **generate_kwargs}  # the official COCO eval settings
    preds = {}
    for start in range(0, len(images), 32):
        captions = model.caption(images[start:start + 32].to(device), **kwargs)
        preds.update({start + i: c for i, c in enumerate(captions)})
    metrics = caption_metrics(preds, refs)
    metrics["examples"] = [preds[i] for i in range(min(3, len(preds)))]
    return metrics
