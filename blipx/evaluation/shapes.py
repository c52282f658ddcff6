"""Held-out evaluation on the synthetic captioned shapes, where a hit is semantic: a retrieved
caption counts when it describes the query scene (any of the many scenes with the same caption),
and a generated caption is right when it names exactly the scene's shapes and colours. Used by
``blipx demo``, the CapFilt miniature and the CLI tests."""

from __future__ import annotations

from pathlib import Path

import torch

from blipx.models import BlipCaptioner, BlipRetriever

# The decodings the demo reports: the official beam search and nucleus sampling.
DEMO_DECODING = {"beam3": dict(num_beams=3), "nucleus0.9": dict(do_sample=True, top_p=0.9, top_k=0)}


def _heldout(n: int, image_size: int, max_objects: int) -> list[dict]:
    from blipx.data import ShapesDataset, eval_transform

    ds = ShapesDataset("test", num_samples=n, image_size=image_size, transform=eval_transform(image_size),
                       max_objects=max_objects)
    return [ds[i] for i in range(n)]


def shapes_retrieval(model_dir: str | Path, n: int, device: str, max_objects: int = 3) -> tuple[dict, dict]:
    """Held-out retrieval metrics and their chance levels (hit = the caption describes the image)."""
    from blipx.data import caption_match_matrix
    from blipx.evaluation.ranking import chance_recall
    from blipx.evaluation.retrieval import evaluate_retrieval

    model = BlipRetriever.from_pretrained(str(model_dir)).to(device)
    samples = _heldout(n, model.config.vision.image_size, max_objects)
    captions = [s["caption"] for s in samples]
    positives = caption_match_matrix(captions, [s["objects"] for s in samples])
    images = torch.stack([s["image"] for s in samples]).to(device)
    metrics = evaluate_retrieval(model, images, captions, list(range(n)), k_test=16, positives=positives)
    return metrics, chance_recall(torch.arange(n), positives)


def shapes_caption_accuracy(model_dir: str | Path, n: int, device: str, decoding: dict[str, dict] = DEMO_DECODING,
                            max_objects: int = 3) -> dict:
    """Per decoding mode: the fraction of held-out captions naming exactly the scene's shapes and
    colours, and three examples."""
    from blipx.data import caption_matches

    model = BlipCaptioner.from_pretrained(str(model_dir)).to(device)
    samples = _heldout(n, model.config.vision.image_size, max_objects)
    out = {}
    gen = torch.Generator(device=device).manual_seed(0)
    for name, kw in decoding.items():
        kw = {**kw, "generator": gen} if kw.get("do_sample") else kw
        texts = []
        for start in range(0, n, 64):
            px = torch.stack([s["image"] for s in samples[start:start + 64]]).to(device)
            texts += model.caption(px, None, max_length=30, min_length=5, **kw)
        acc = sum(caption_matches(t, s["objects"]) for t, s in zip(texts, samples)) / n
        out[name] = {"accuracy": acc, "examples": [{"truth": s["caption"], "caption": t} for s, t in zip(samples[:3], texts[:3])]}
    return out
