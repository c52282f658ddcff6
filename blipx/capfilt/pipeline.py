"""The CapFilt pass over a dataset: caption every image K times with nucleus sampling, score the
web and the synthetic captions with the filter's ITM head, keep those with match probability
>= threshold.

Streaming and resumable: the source is read entry by entry and cut into chunks of
``chunk_size`` images; chunk c belongs to rank ``c % world`` and is written once, atomically,
to ``<out>/chunks/chunk-<c>.jsonl`` (every caption with its score and verdict). A restarted run
skips the chunks on disk, and chunk c's sampling generator is seeded by (seed, c), so an
interrupted-and-resumed run writes exactly what an uninterrupted one does. Memory holds one
chunk. ``merge_and_report`` turns the chunks into the bootstrapped annotation file.

A resume is refused unless it is the same run: ``<out>/settings.json`` records the settings, a
sha256 of each model's weights and of the input file's content, and the error names what changed.
Bad records (not JSON, not UTF-8, no caption, ...) and images that cannot be used (unreadable,
larger than ``max_pixels``, outside ``image_root``) never stop the pass: each is a ``"skipped"``
row of its chunk (reason, and ``file:line`` for records) and is counted in the report.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from blipx.data.annotations import Annotation, iter_annotations
from blipx.data.images import MAX_PIXELS, Skipped


@dataclass
class CapFiltSettings:
    num_captions: int = 1  # synthetic captions per image (the paper: 1)
    top_p: float = 0.9  # nucleus sampling, as BLIP's captioner
    top_k: int = 0  # 0 = pure nucleus (HF would add top_k=50 unless told otherwise)
    threshold: float = 0.5  # keep a caption when P(match) >= threshold (author, BLIP#46/#54)
    prompt: str = "a picture of "
    max_length: int = 30  # total decoder length incl. the prompt (BLIP's generate default)
    min_length: int = 5
    max_words: int = 30  # pre_caption of web captions before scoring
    text_len: int = 35  # ITM tokenisation length (blip_itm.py)
    chunk_size: int = 256  # images per chunk: the unit of resumption
    batch_size: int = 64  # images per captioner/filter batch
    seed: int = 0
    allow_outside_root: bool = False  # read image paths that resolve outside image_root
    max_pixels: int | None = MAX_PIXELS  # larger images are skipped (too_large), None: no cap


def _chunks(entries: Iterable[Annotation | Skipped], size: int) -> Iterator[tuple[int, list]]:
    """``size`` annotations per chunk; skipped records ride along with the chunk they fall in."""
    buf: list = []
    n, c = 0, 0
    for e in entries:
        buf.append(e)
        n += isinstance(e, Annotation)
        if n == size:
            yield c, buf
            buf, n, c = [], 0, c + 1
    if buf:
        yield c, buf


def _write_atomic(path: Path, rows: list[dict]) -> None:
    from blipx.weights.io import atomic_write

    atomic_write(path, lambda tmp: Path(tmp).write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8"))


class CapFilt:
    """Captioner (``BlipCaptioner``) + filter (``BlipRetriever`` with its ITM head)."""

    def __init__(self, captioner, filter_model, settings: CapFiltSettings | None = None, tokenizer=None) -> None:
        from blipx.data import eval_transform
        from blipx.tokenizer import blip_tokenizer

        self.captioner, self.filter = captioner.eval(), filter_model.eval()
        self.s = settings or CapFiltSettings()
        self.tokenizer = tokenizer or blip_tokenizer()
        self.cap_transform = eval_transform(captioner.config.vision.image_size)
        self.filter_transform = eval_transform(filter_model.config.vision.image_size)
        self.device = next(captioner.parameters()).device

    @torch.no_grad()
    def score(self, pixel_values: torch.Tensor, captions: list[str], image_index: torch.Tensor) -> torch.Tensor:
        """P(match) [N] of caption n with image ``image_index[n]`` (the ITM head, [ENC] first)."""
        from blipx.models import with_first_token

        f = self.filter
        image_embeds = f.visual_encoder(pixel_values)  # once per image, shared by its captions
        tok = self.tokenizer(captions, padding="max_length", truncation=True, max_length=self.s.text_len,
                             return_tensors="pt").to(pixel_values.device)
        ids = with_first_token(tok["input_ids"], f.config.text.enc_token_id)
        logits = f.itm_logits(image_embeds.index_select(0, image_index), ids, tok["attention_mask"])
        return logits.float().softmax(dim=-1)[:, 1]

    @torch.no_grad()
    def caption(self, pixel_values: torch.Tensor, generator: torch.Generator) -> list[str]:
        """``num_captions`` nucleus-sampled captions per image (prompt stripped), image-major."""
        s = self.s
        return self.captioner.caption(pixel_values, s.prompt, do_sample=True, top_p=s.top_p, top_k=s.top_k,
                                      num_return_sequences=s.num_captions, max_length=s.max_length,
                                      min_length=s.min_length, generator=generator)

    def process_chunk(self, entries: list[Annotation | Skipped], image_root: Path, chunk_index: int) -> list[dict]:
        """Rows for every (image, caption) of the chunk, plus one ``"skipped"`` row per refused
        record or unusable image."""
        from blipx.data.images import read_image

        s = self.s
        rows: list[dict] = []
        readable: list[tuple[Annotation, Any]] = []
        real_root = os.path.realpath(image_root)
        for e in entries:
            if isinstance(e, Skipped):  # refused while reading: e.source is "file:line"
                rows.append({"source": "skipped", "reason": e.reason, "where": e.source, "detail": e.detail})
                continue
            img = read_image(image_root, e.image, s.allow_outside_root, real_root, s.max_pixels)
            if isinstance(img, Skipped):
                rows.append({"image": e.image, "image_id": e.image_id, "source": "skipped", "reason": img.reason,
                             "where": e.where, "detail": img.detail})
                continue
            readable.append((e, img))
        gen = torch.Generator(device=self.device).manual_seed(s.seed * 1_000_003 + chunk_index)
        for start in range(0, len(readable), s.batch_size):
            part = readable[start:start + s.batch_size]
            cap_px = torch.stack([self.cap_transform(img) for _, img in part]).to(self.device)
            synthetic = self.caption(cap_px, gen)
            filt_px = cap_px if self.filter_transform is self.cap_transform else \
                torch.stack([self.filter_transform(img) for _, img in part]).to(self.device)
            texts, owners, meta = [], [], []
            for i, (e, _) in enumerate(part):
                for c, text in zip(e.captions, e.texts):  # pre_caption'ed with s.max_words when read
                    texts.append(text)
                    owners.append(i)
                    meta.append((e, "web", c))
                for c in synthetic[i * s.num_captions:(i + 1) * s.num_captions]:
                    texts.append(c)
                    owners.append(i)
                    meta.append((e, "synthetic", c))
            # Host sync, once per batch of scores (not per caption): they go to the JSON rows.
            probs = self.score(filt_px, texts, torch.tensor(owners, device=self.device)).cpu().tolist()
            for (e, source, text), p in zip(meta, probs):
                row = {"image": e.image, "image_id": e.image_id, "caption": text,
                       "source": source, "itm_score": p, "kept": p >= s.threshold}
                for extra in ("is_noisy", "objects"):  # ground truth of synthetic benchmarks (shapes)
                    if extra in e.record:
                        row[extra] = e.record[extra] if source == "web" or extra == "objects" else False
                rows.append(row)
        return rows

    def _claim(self, out: Path, annotations, image_root) -> None:
        """Record this run in ``settings.json`` (settings, a sha256 of each model and of the
        input's content, the image folder the rows' paths are relative to, for ``blipx serve``);
        a folder holding another run's chunks is refused, naming what changed, since resuming
        would silently mix the two runs' outputs. Moving the input file or the images, or loading
        the same weights from another path or format, is the same run."""
        from blipx.capfilt.fingerprint import file_fingerprint, model_fingerprint
        from blipx.weights.io import write_json

        run = {"settings": vars(self.s), "captioner": model_fingerprint(self.captioner),
               "filter": model_fingerprint(self.filter),
               "input": {"path": os.path.abspath(annotations), **file_fingerprint(annotations),
                         "image_root": os.path.abspath(image_root)}}
        path = out / "settings.json"
        if not path.is_file():
            write_json(path, run)
            return
        before = json.loads(path.read_text(encoding="utf-8"))
        changed = [f"the {name}'s weights or config" for name in ("captioner", "filter")
                   if before.get(name) != run[name]]
        old_input = before.get("input") if isinstance(before.get("input"), dict) else {}
        if old_input.get("sha256") != run["input"]["sha256"]:
            changed.append(f"the input's content ({old_input.get('path')}: {old_input.get('bytes')} bytes, sha256 "
                           f"{str(old_input.get('sha256'))[:12]}; now {run['input']['path']}: "
                           f"{run['input']['bytes']} bytes, sha256 {run['input']['sha256'][:12]})")
        old_settings = before.get("settings") if isinstance(before.get("settings"), dict) else {}
        diff = sorted(k for k in set(old_settings) | set(run["settings"])
                      if old_settings.get(k) != run["settings"].get(k))
        if diff:
            changed.append("the settings " + ", ".join(f"{k}: {old_settings.get(k)!r} -> {run['settings'].get(k)!r}"
                                                       for k in diff))
        if changed:
            raise ValueError(f"CapFilt out_dir {str(out)!r} holds another run's chunks; changed: "
                             + "; ".join(changed) + ". Use a new out_dir, or delete it to start over")

    def run(self, annotations: str | os.PathLike, image_root: str | os.PathLike, out_dir: str | os.PathLike,
            rank: int = 0, world: int = 1, progress: bool = True) -> int:
        """Process this rank's chunks that are not on disk yet; returns how many were written."""
        out = Path(out_dir)
        (out / "chunks").mkdir(parents=True, exist_ok=True)
        self._claim(out, annotations, image_root)
        bar = None
        if progress and rank == 0:
            from tqdm import tqdm

            bar = tqdm(desc="capfilt chunks", unit="chunk")
        written = 0
        for c, entries in _chunks(iter_annotations(annotations, self.s.max_words), self.s.chunk_size):
            target = out / "chunks" / f"chunk-{c:06d}.jsonl"
            if c % world != rank or target.exists():
                continue  # another rank's, or finished before an interruption
            _write_atomic(target, self.process_chunk(entries, Path(image_root), c))
            written += 1
            if bar is not None:
                bar.update(1)
        if bar is not None:
            bar.close()
        return written
