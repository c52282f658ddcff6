"""Zero-shot video-text retrieval, BLIP's protocol (``salesforce/BLIP eval_retrieval_video.py``).

1. Every sampled frame goes through the ViT on its own. A video's ITC feature is the mean over
   its frames of the projected [CLS] features, then L2-normalised
   (``vision_proj(feat[:, 0]).view(B, N, -1).mean(1)``, normalised after the mean); its ITM
   keys are the frames' token embeddings concatenated, [F * L, C] per video.
2. Texts are encoded as for image retrieval; the two-stage ranking is
   :func:`blipx.evaluation.retrieval.rerank_with_itm` unchanged: ITC top-``k_test``, then the
   ITM head over the concatenated frames (all-ones mask), BLIP score = ITM logit + ITC similarity
   (ALBEF models, which have no official video protocol, run the same path with their own
   ITM-only score).
3. Metrics with the official names: ``txt_r1/5/10`` (video -> text), ``vid_r1/5/10`` (text ->
   video), ``vid_mdR`` (median rank of text -> video, ``np.median(ranks + 1)``), the means, plus
   ``txt_mdR`` and the mean ranks ``txt_mnR`` / ``vid_mnR``; ``itc_*`` for the first stage alone.

Frame embeddings of a whole test set can be large (1k MSRVTT videos x 8 frames x 577 tokens x
768 at fp32: 14 GB): ``offload=True`` keeps them in host memory, as the official code does, and
moves each ITM batch's videos to the device.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F

from blipx.evaluation.ranking import chance_recall, rank_statistics, recall_summary, retrieval_ranks
from blipx.evaluation.retrieval import encode_texts, rerank_with_itm


class EncodedVideos(NamedTuple):
    """What :func:`encode_videos` returns; :func:`eval_video_retrieval` accepts it in place of pixels."""

    frame_embeds: torch.Tensor  # [N, F*L, C]: every frame's tokens, frames concatenated
    video_feat: torch.Tensor  # [N, D]: normalised mean of the projected frame [CLS] features
    index: list[int] | None = None  # the dataset index of each row, when batches carry "index"


@contextmanager
def _eval_mode(model):
    was_training = model.training
    model.eval()  # dropout off, as the official evaluation
    try:
        yield
    finally:
        model.train(was_training)


@torch.no_grad()
def encode_videos(model, videos: torch.Tensor | Iterable, batch_size: int = 16, offload: bool = False) -> EncodedVideos:
    """Per-frame ViT over videos [N, F, 3, S, S] (or an iterable of batches: tensors, or collated
    dicts with "video" and optionally "index", see :func:`blipx.data.video.collate_videos`)."""
    param = next(model.parameters())
    embeds, feats, index = [], [], []
    batches = videos.split(batch_size) if isinstance(videos, torch.Tensor) else videos
    with _eval_mode(model):
        for b in batches:
            video = b["video"] if isinstance(b, dict) else b
            if isinstance(b, dict) and "index" in b:
                index += b["index"].tolist()  # host-side ids of a data loader's batch, no device sync
            if video.numel() == 0:  # every video of the batch was unreadable
                continue
            if video.dim() != 5:
                raise ValueError(f"videos must be [B, F, 3, S, S], got shape {tuple(video.shape)}")
            n_vid, n_frm = video.shape[:2]
            frame_feat = model.visual_encoder(video.flatten(0, 1).to(device=param.device, dtype=param.dtype))
            video_embed = model.vision_proj(frame_feat[:, 0, :]).view(n_vid, n_frm, -1).mean(dim=1)
            feats.append(F.normalize(video_embed, dim=-1))
            frame_feat = frame_feat.view(n_vid, -1, frame_feat.shape[-1])  # frames concatenated: [B, F*L, C]
            embeds.append(frame_feat.cpu() if offload else frame_feat)
    if not feats:
        raise ValueError("no videos given (or none could be read)")
    return EncodedVideos(torch.cat(embeds), torch.cat(feats), index or None)


def video_retrieval_metrics(score_v2t: torch.Tensor, score_t2v: torch.Tensor, txt2video: Sequence[int] | torch.Tensor,
                            positives: torch.Tensor | None = None) -> dict[str, float]:  # fmt: skip
    """The official keys (``txt_r*`` video -> text, ``vid_r*`` text -> video, ``vid_mdR``,
    ``r_mean``) plus ``txt_mdR``, ``txt_mnR``, ``vid_mnR``, from [N_vid, N_txt] / [N_txt, N_vid]
    scores. ``positives`` (bool [N_vid, N_txt]) replaces the id ground truth."""
    tr, vr = retrieval_ranks(score_v2t, score_t2v, torch.as_tensor(txt2video, dtype=torch.long), positives)
    out = {k.replace("img_", "vid_"): v for k, v in recall_summary(tr, vr).items()}
    for name, ranks in (("txt", tr), ("vid", vr)):
        out.update({f"{name}_{k}": v for k, v in rank_statistics(ranks).items()})
    return out


@torch.no_grad()
def video_retrieval_scores(
    model, videos: torch.Tensor | Iterable | EncodedVideos, texts: Sequence[str], tokenizer=None,
    k_test: int = 128, itm_batch_size: int = 128, scoring: str | None = None, max_length: int | None = None,
    video_batch_size: int = 16, offload: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # fmt: skip
    """``(score_v2t [N_vid, N_txt], score_t2v [N_txt, N_vid], itc_sims [N_vid, N_txt])`` on CPU:
    ITC on the frame-averaged features, the top-``k_test`` re-scored by ITM over the concatenated
    frames (-100 elsewhere), by :func:`blipx.evaluation.retrieval.rerank_with_itm`."""
    if not isinstance(videos, EncodedVideos):
        videos = encode_videos(model, videos, video_batch_size, offload)
    with _eval_mode(model):
        enc = encode_texts(model, texts, tokenizer, max_length)
        enc["image_embeds"], enc["image_feat"] = videos.frame_embeds, videos.video_feat.to(enc["text_feat"].device)
        return rerank_with_itm(model, enc, k_test, itm_batch_size, scoring)


def eval_video_retrieval(
    model, videos: torch.Tensor | Iterable | EncodedVideos, texts: Sequence[str],
    txt2video: Sequence[int] | torch.Tensor, tokenizer=None, k_test: int = 128, itm_batch_size: int = 128,
    scoring: str | None = None, positives: torch.Tensor | None = None, max_length: int | None = None,
    video_batch_size: int = 16, offload: bool = False,
) -> dict[str, float]:  # fmt: skip
    """The full protocol (module doc) -> metrics. ``videos``: [N_vid, F, 3, S, S], an iterable of
    batches in video order (see :func:`encode_videos`), or :class:`EncodedVideos`;
    ``txt2video[j]``: the video (row) of text j, or ``positives`` (bool [N_vid, N_txt]). The
    official ITM batch is one query's ``k_test`` candidates: ``itm_batch_size`` defaults to that."""
    txt2video = torch.as_tensor(txt2video, dtype=torch.long)
    if len(texts) == 0 or txt2video.numel() != len(texts):
        raise ValueError(f"txt2video must give the video of each of the {len(texts)} texts, got {txt2video.numel()}")
    score_v2t, score_t2v, sims = video_retrieval_scores(model, videos, texts, tokenizer, k_test, itm_batch_size,
                                                        scoring, max_length, video_batch_size, offload)  # fmt: skip
    n_vid = score_v2t.shape[0]
    if (positives is None and int(txt2video.max()) >= n_vid) or (positives is not None and positives.shape[0] != n_vid):
        raise ValueError(f"got {n_vid} videos, but the ground truth refers to more; were videos skipped?")
    metrics = video_retrieval_metrics(score_v2t, score_t2v, txt2video, positives)
    itc = video_retrieval_metrics(sims, sims.t(), txt2video, positives)
    metrics.update({f"itc_{k}": v for k, v in itc.items()})
    return metrics


def video_chance(txt2video: torch.Tensor, positives: torch.Tensor | None = None) -> dict[str, float]:
    """R@K (keys as :func:`video_retrieval_metrics`) of a uniformly random ranking."""
    return {k.replace("img_", "vid_"): v for k, v in chance_recall(txt2video, positives).items()}


def shapes_video_pairs(image_size: int, num_frames: int = 8, split: str = "test", num_samples: int = 200,
                       num_video_frames: int = 16):  # fmt: skip
    """``(videos [N, F, 3, S, S], texts, positives)`` of the synthetic moving shapes (a caption is
    a hit for every video it describes), frames sampled by the official rule."""
    from blipx.data import eval_transform
    from blipx.data.shapes_video import ShapesVideoDataset, video_caption_match_matrix
    from blipx.data.video import stack_frames, uniform_frame_indices

    transform = eval_transform(image_size)
    ds = ShapesVideoDataset(split, num_samples=num_samples, image_size=image_size, num_video_frames=num_video_frames)
    idx = uniform_frame_indices(ds.num_video_frames, num_frames)
    samples = [ds.raw(i) for i in range(len(ds))]
    videos = torch.stack([stack_frames([s["video"][t] for t in idx], transform) for s in samples])
    texts = [s["caption"] for s in samples]
    return videos, texts, video_caption_match_matrix(texts, samples)


def run_video_retrieval(model_path: str, data: str = "shapes_video", video_root: str | None = None,
                        num_frames: int = 8, k_test: int = 128, device: str = "cpu", split: str = "test",
                        num_samples: int | None = None, batch_size: int = 16, image_size: int | None = None,
                        offload: bool = False, num_workers: int = 0) -> dict[str, Any]:  # fmt: skip
    """What ``blipx eval video-retrieval`` runs: load a retrieval model (any family; a pretraining
    folder loads as one) and evaluate it on ``"shapes_video"`` or an annotation file (videos
    under ``video_root``, default: the file's folder). Unreadable videos are left out with their
    captions and counted. Returns the metrics, their chance levels and the counts."""
    from blipx.models import from_pretrained

    overrides = {"image_size": image_size} if image_size else {}
    model = from_pretrained(model_path, task="retriever", **overrides).to(device)
    size = model.config.vision.image_size
    skipped: Counter[str] = Counter()
    if data == "shapes_video":
        videos, texts, positives = shapes_video_pairs(size, num_frames, split, num_samples or 200)
        txt2video = list(range(len(texts)))
    else:
        from torch.utils.data import DataLoader, Subset

        from blipx.data import eval_transform
        from blipx.data.video import VideoTextDataset, collate_videos

        ds = VideoTextDataset(data, video_root or str(Path(data).parent), num_frames, eval_transform(size))
        skipped.update(s.reason for s in ds.skipped)
        n = len(ds.video_paths) if num_samples is None else min(len(ds.video_paths), num_samples)
        loader = DataLoader(Subset(ds, range(n)), batch_size=batch_size, num_workers=num_workers,
                            collate_fn=collate_videos, pin_memory=device.startswith("cuda"))  # fmt: skip

        def batches():
            for b in loader:
                skipped.update(b["skipped"])
                yield b

        videos = encode_videos(model, batches(), batch_size, offload)
        if not videos.index:
            raise ValueError(f"{data}: no readable video ({sum(skipped.values())} skipped)")
        texts, txt2video = [], []
        for row, i in enumerate(videos.index):  # the captions of the videos that were read
            texts += [ds.texts[j] for j in ds.video2txt[i]]
            txt2video += [row] * len(ds.video2txt[i])
        positives = None
    metrics = eval_video_retrieval(model, videos, texts, txt2video, k_test=k_test, positives=positives,
                                   video_batch_size=batch_size, offload=offload)  # fmt: skip
    n_vid = len(videos.index) if isinstance(videos, EncodedVideos) else len(videos)
    return {"metrics": metrics, "chance": video_chance(torch.as_tensor(txt2video), positives), "videos": n_vid,
            "texts": len(texts), "num_frames": num_frames, "skipped": dict(skipped)}  # fmt: skip
