"""One-call inference: ``blipx.load(path)`` -> a :class:`Pipeline` that captions, answers,
matches, embeds, classifies and explains images with a trained model.

::

    import blipx
    p = blipx.load("runs/blip_pretrain/model", dtype="bf16")   # CUDA when available
    p.caption(["a.jpg", "b.png"], num_captions=3, return_scores=True)
    p.match(images, ["a dog", "a cat"], grid=True)            # {"itm": [N, 2], "itc": [N, 2]}
    p.classify(images, ["dog", "cat", "bird"])                # [N, 3] probabilities

The pipeline holds the checkpoint path and loads, on first use, the model each method needs
through :func:`blipx.models.from_pretrained` (``caption`` -> the captioner, ``answer`` -> the
VQA model, ``match`` / ``features`` / ``classify`` / ``gradcam`` -> the retriever: ITC + ITM).
A pretraining folder is a superset of the captioner and the retriever, so one ``load`` serves
both; a checkpoint that cannot serve a method raises :class:`CheckpointError` naming the method
and what the checkpoint holds. Models are cached, in eval mode, on the requested device and
dtype, without momentum copies (training state).

Images may be PIL images, file paths, numpy arrays (HxW or HxWxC, uint8 or float in [0, 1]) or
tensors ([C, H, W] / [B, C, H, W], uint8 or float in [0, 1]); every one goes through
:func:`blipx.data.image_processor`, the one test-time preprocessing path (float images are
quantised to 8 bits first: the processor's input is an 8-bit image, as a file gives it). Texts
are cleaned as the family's evaluation data is (``pre_caption`` / ``pre_question``) and
tokenized by :func:`blipx.tokenizer.tokenizer_for`. Every method batches internally
(``batch_size``), shows a tqdm bar past a few batches, and returns float32 CPU tensors and
Python lists; device results are copied to the host once, after the batch loop.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

import torch

from blipx.inputs import (
    as_images,
    as_texts,
    check_dtype_on_device,
    check_positive_int,
    image_for_processor,
    resolve_device,
    resolve_dtype,
)
from blipx.tokenizer import decode_ids
from blipx.weights.io import CheckpointError

TASKS = ("captioner", "retriever", "vqa")
# Official decoding settings: BLIP captioning (beam 3, min 5; max 30 as `blipx caption` has
# always used) and VQA generation (salesforce/BLIP configs/vqa.yaml: beam 3, max 10, min 1).
CAPTION_DEFAULTS = {"num_beams": 3, "max_length": 30, "min_length": 5}
ANSWER_DEFAULTS = {"num_beams": 3, "max_length": 10, "min_length": 1}
QUESTION_MAX_LEN = {"blip": 35, "albef": None}  # blipx.data.vqa.VqaCollator: BLIP truncates at 35
TEXT_MAX_WORDS = 30  # pre_caption of retrieval texts (the official retrieval datasets' max_words)
PROGRESS_AFTER = 3  # batches: a bar appears for longer runs only
ITM_ROWS = 256  # (image, text) pairs per ITM forward in grids and re-ranking

# What each model needs from a checkpoint, for the error of one that cannot serve a method.
_NEEDS = {
    "captioner": "a BLIP image-grounded text decoder (a BLIP captioner or pretraining checkpoint)",
    "retriever": "the ITC projections and the ITM head (a retrieval or pretraining checkpoint)",
    "vqa": "a VQA model (a VQA checkpoint, or a pretraining one through the official conversion)",
}
_METHOD_TASK = {"caption": "captioner", "answer": "vqa", "match": "retriever", "features": "retriever",
                "classify": "retriever", "gradcam": "retriever"}
# Source architectures whose weights the loader would accept by name for a task although they
# mean something else: a VQA answer decoder cross-attends to question states, not to the image.
_WRONG_SOURCE = {"captioner": {"BlipVqa", "AlbefVqa"}}
_VQA_SOURCES = {"BlipVqa", "AlbefVqa", "BlipForQuestionAnswering"}


# -- the pipeline -----------------------------------------------------------------------------------


def load(path: str | os.PathLike, task: str | None = None, device: str | torch.device | None = None,
         dtype: str | torch.dtype | None = None, batch_size: int = 16) -> Pipeline:
    """A :class:`Pipeline` over the checkpoint at ``path`` (a blipx folder, an HF BLIP folder,
    an official ``.pth``, or an ``org/name`` hub id, fetched now). ``device``: default CUDA when
    available, else CPU; ``dtype``: "fp32" (default), "bf16", "fp16" or a torch dtype.
    ``task`` ("captioner", "retriever" or "vqa") loads that model now, so a checkpoint that
    cannot serve it fails here; otherwise each model loads on first use."""
    return Pipeline(path, task=task, device=device, dtype=dtype, batch_size=batch_size)


class Pipeline:
    """Inference over one checkpoint; see the module docstring. Methods:
    :meth:`caption`, :meth:`answer`, :meth:`match`, :meth:`features`, :meth:`classify`,
    :meth:`gradcam`; :meth:`model` gives the underlying model of a task."""

    def __init__(self, path: str | os.PathLike, task: str | None = None, device=None, dtype=None,
                 batch_size: int = 16) -> None:
        from blipx.models.base import _resolve

        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype)
        check_dtype_on_device(self.dtype, self.device)
        self.batch_size = check_positive_int("batch_size", batch_size)
        if task is not None and task not in TASKS:
            raise ValueError(f"task must be one of {TASKS} or None, got {task!r}")
        # A missing local path fails here; a hub id is fetched once (every model loads from here).
        self.path = _resolve(path)
        self._models: dict[str, Any] = {}
        self._tokenizers: dict[str, Any] = {}
        self._text_cache: tuple[Any, dict[str, Any]] | None = None
        if task is not None:
            self.model(task)

    def __repr__(self) -> str:
        return (f"Pipeline({str(self.path)!r}, device={str(self.device)!r}, dtype={self.dtype}, "
                f"loaded={sorted(self._models)})")

    # -- models ----------------------------------------------------------------------------------

    @property
    def holds(self) -> str:
        """What the checkpoint holds, in words (for messages)."""
        import json

        p = self.path
        if not p.is_dir():
            return f"an official checkpoint file ({p.name})"
        try:
            meta = json.loads((p / "config.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return "a folder without a readable config.json"
        if meta.get("format") == "blipx":
            fam = (meta.get("config") or {}).get("family", "?")
            return f"a blipx {meta.get('architecture')} ({fam})"
        return f"an HF {(meta.get('architectures') or ['?'])[0]}"

    def _architecture(self) -> str | None:
        """The class (blipx) or HF architecture the folder was saved as; None for files."""
        import json

        try:
            meta = json.loads((self.path / "config.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return meta.get("architecture") if meta.get("format") == "blipx" else (meta.get("architectures") or [None])[0]

    def model(self, task: str, method: str | None = None):
        """The cached model of ``task`` ("captioner", "retriever", "vqa"), loaded on first use
        through :func:`blipx.models.from_pretrained` (eval mode, this pipeline's device and
        dtype). ``method`` names the calling method in errors."""
        if task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {task!r}")
        if task in self._models:
            return self._models[task]
        from blipx.models import from_pretrained

        users = ", ".join(f"{m}()" for m, t in _METHOD_TASK.items() if t == task)
        who = f"Pipeline.{method}()" if method else f"task {task!r} (for {users})"
        arch = self._architecture()
        if arch in _WRONG_SOURCE.get(task, ()):
            raise CheckpointError(f"{who} needs {_NEEDS[task]}; {self.path} holds {self.holds}, which cannot serve it")
        try:
            # momentum=False: the EMA copies are training state; inference never reads them.
            m = from_pretrained(str(self.path), task=task, momentum=False)
        except (CheckpointError, ValueError) as e:
            first = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise CheckpointError(f"{who} needs {_NEEDS[task]}; {self.path} holds {self.holds}, which cannot "
                                  f"serve it ({first})") from e
        fresh = m.load_report.kept_init if m.load_report is not None else []
        if task == "vqa" and ((arch is not None and arch not in _VQA_SOURCES) or fresh):
            warnings.warn(f"{who}: {self.path} holds {self.holds}, not a fine-tuned VQA model; the answer decoder "
                          "is the official pretraining->VQA initialisation"
                          + (f" ({len(fresh)} tensors freshly drawn at random: answers differ between loads)"
                             if fresh else ""), stacklevel=3)
        m = m.to(device=self.device, dtype=self.dtype).eval()
        self._models[task] = m
        return m

    def supports(self, method: str) -> bool:
        """Whether this checkpoint can serve ``method`` ("caption", "answer", ...); loads (and
        caches) the model it needs."""
        if method not in _METHOD_TASK:
            raise ValueError(f"method must be one of {sorted(_METHOD_TASK)}, got {method!r}")
        try:
            self.model(_METHOD_TASK[method], method)
        except CheckpointError:
            return False
        return True

    def _tokenizer(self, family: str):
        if family not in self._tokenizers:
            from blipx.tokenizer import tokenizer_for

            self._tokenizers[family] = tokenizer_for(family)
        return self._tokenizers[family]

    # -- batching --------------------------------------------------------------------------------

    def _starts(self, n: int, batch_size: int | None, desc: str, progress: bool | None) -> Iterator[tuple[int, int]]:
        """(start, stop) of each batch of ``n`` items, with a tqdm bar past PROGRESS_AFTER batches
        (``progress`` True/False forces it on/off)."""
        bs = self.batch_size if batch_size is None else check_positive_int("batch_size", batch_size)
        spans = [(s, min(n, s + bs)) for s in range(0, n, bs)]
        bar = None
        if progress or progress is None and len(spans) > PROGRESS_AFTER:
            try:
                from tqdm.auto import tqdm

                bar = tqdm(total=n, desc=desc, unit="item")
            except ImportError:  # tqdm is the [data] extra: no bar without it
                bar = None
        try:
            for span in spans:
                yield span
                if bar is not None:
                    bar.update(span[1] - span[0])
        finally:
            if bar is not None:
                bar.close()

    def _pixels(self, model, items: Sequence[Any], start: int, stop: int) -> torch.Tensor:
        """Normalised pixel values [stop - start, 3, S, S] of ``items[start:stop]`` for ``model``,
        through :func:`blipx.data.image_processor`, on the model's device and dtype."""
        from blipx.data.processing import image_processor

        cfg = model.config
        proc = image_processor(cfg.family, cfg.vision.image_size)
        batch = [image_for_processor(items[i], f"images[{i}]") for i in range(start, stop)]
        return proc(batch).to(device=self.device, dtype=self.dtype, non_blocking=True)

    def _pairs(self, images: Any, texts: Any, method: str, text_name: str = "texts") -> tuple[list, list[str]]:
        """Paired images and texts; one of either is repeated to the other's length."""
        items, txts = as_images(images), as_texts(texts, text_name)
        if len(items) == 1 and len(txts) != 1:
            one = items[0]
            if isinstance(one, (str, os.PathLike)) and txts:  # read once, not once per text
                one = image_for_processor(one, "images[0]")
            items = [one] * len(txts)
        elif len(txts) == 1:
            txts = txts * len(items)
        if len(items) != len(txts):
            raise ValueError(f"{method}(): {len(items)} images and {len(txts)} {text_name}; give one per image "
                             "(or a single one of either)" + (", or grid=True" if method == "match" else ""))
        return items, txts

    # -- text ------------------------------------------------------------------------------------

    def _encode_texts(self, model, texts: list[str]) -> dict[str, Any]:
        """The unimodal text pass of :func:`blipx.evaluation.retrieval.encode_texts` (ids, masks,
        normalised ITC features, ALBEF's text states) over ``pre_caption``-cleaned texts, as
        retrieval evaluation cleans its captions. The last text set is cached: a CLI run calls
        ``classify`` / ``match`` once per chunk of images with the same labels."""
        from blipx.data.text import pre_caption
        from blipx.evaluation.retrieval import encode_texts

        fam = model.config.family
        key = (id(model), tuple(texts))
        if self._text_cache is not None and self._text_cache[0] == key:
            return self._text_cache[1]
        clean = [pre_caption(t, TEXT_MAX_WORDS, fam) for t in texts]
        enc = encode_texts(model, clean, self._tokenizer(fam))
        self._text_cache = (key, enc)
        return enc

    @staticmethod
    def _itm_logits(model, enc: dict[str, Any], image_embeds: torch.Tensor, text_idx: torch.Tensor) -> torch.Tensor:
        """ITM logits [B*G, 2] of text rows ``text_idx`` (G per image) against ``image_embeds``
        [B, ...]: BLIP's image-grounded encoder reads [ENC] first, ALBEF's fusion layers continue
        from the text states (as blipx.evaluation.retrieval._itm_match)."""
        from blipx.models.blip import with_first_token

        mask = enc["attention_mask"][text_idx]
        if enc["family"] == "albef":
            return model.itm_logits(image_embeds, enc["text_states"][text_idx], mask)
        ids = with_first_token(enc["input_ids"][text_idx], model.config.text.enc_token_id)
        return model.itm_logits(image_embeds, ids, mask)

    # -- captions --------------------------------------------------------------------------------

    @torch.no_grad()
    def caption(self, images: Any, num_captions: int = 1, return_scores: bool = False, *, prompt: str | None = None,
                batch_size: int | None = None, progress: bool | None = None, **generate_kwargs):
        """Captions of ``images`` (BLIP; ALBEF has no captioner): a list of N strings, or of N
        lists of ``num_captions`` strings when ``num_captions`` > 1.

        ``generate_kwargs``: :meth:`blipx.models.BlipCaptioner.generate`'s (``num_beams``,
        ``do_sample``, ``top_p``, ``top_k``, ``temperature``, ``repetition_penalty``,
        ``no_repeat_ngram_size``, ...), defaults :data:`CAPTION_DEFAULTS` (beam 3, max length 30,
        min length 5; with ``do_sample=True`` one beam). ``prompt``: e.g. "a picture of " for
        the COCO-fine-tuned captioners (stripped from the output).

        ``return_scores=True`` also returns float32 scores [N] (or [N, num_captions]): for beam
        search ``generate(return_dict=True).sequences_scores`` (HF's length-penalised sum of
        log-probs); for greedy and sampling, the same quantity -- ``sum of the model's log-probs
        of the generated tokens (EOS included) / generated_len ** length_penalty`` -- from one
        teacher-forced decoder pass over the caption (the model's probabilities: before
        temperature / top-k / top-p, which shape the draw but not how likely the caption is).
        """
        model = self.model("captioner", "caption")
        n = check_positive_int("num_captions", num_captions)
        for bad in ("num_return_sequences", "return_dict", "output_scores"):
            if bad in generate_kwargs:
                raise TypeError(f"caption(): {bad} is set by caption() itself (use num_captions= / return_scores=)")
        kw = {**CAPTION_DEFAULTS, **generate_kwargs}
        if "num_beams" not in generate_kwargs:
            kw["num_beams"] = 1 if kw.get("do_sample") else max(CAPTION_DEFAULTS["num_beams"], n)
        from blipx.models.blip import decoder_prompt

        t = model.config.text
        p = decoder_prompt(prompt, 1, t.bos_token_id, torch.device("cpu")).shape[1]
        items = as_images(images)
        seqs, scores = [], []
        for start, stop in self._starts(len(items), batch_size, "caption", progress):
            pv = self._pixels(model, items, start, stop)
            # return_dict only for scores: beam search then also tracks beam indices.
            out = model.generate(pv, prompt, num_return_sequences=n, return_dict=return_scores, **kw)
            seqs.append((out.sequences if return_scores else out)[:, p:])
            if return_scores:
                if out.sequences_scores is not None:
                    scores.append(out.sequences_scores)
                else:
                    states = model.visual_encoder(pv)
                    scores.append(sequence_scores(model.text_decoder, states, None, out.sequences, p,
                                                  kw.get("length_penalty", 1.0), t.sep_token_id))
        # Host copies, once, after the loop (the tokenizer needs Python ints).
        tok = self._tokenizer("blip")
        texts = [c for s in seqs for c in decode_ids(tok, s)]
        caps: list = texts if n == 1 else [texts[i:i + n] for i in range(0, len(texts), n)]
        if not return_scores:
            return caps
        sc = torch.cat(scores).float().cpu() if scores else torch.zeros(0)
        return caps, (sc if n == 1 else sc.view(-1, n))

    # -- VQA -------------------------------------------------------------------------------------

    @torch.no_grad()
    def answer(self, images: Any, questions: Any, answers: Sequence[str] | None = None, *,
               return_scores: bool = False, k_test: int = 128, batch_size: int | None = None,
               progress: bool | None = None, **generate_kwargs):
        """Answers (list of N strings) to ``questions`` about ``images`` (one question per image,
        or one of either repeated), with a VQA model (a VQA checkpoint, or a pretraining one
        through the official conversion, with a warning).

        ``answers=None``: generated (:data:`ANSWER_DEFAULTS`: beam 3, max 10, min 1; BLIP's
        question padding masked, as in blipx.evaluation.vqa.predict_answers); scores as
        :meth:`caption`'s. ``answers=[...]``: the best of that list by the family's official
        two-stage ranking (``rank_answers``: ``k_test`` first-token candidates, re-ranked by
        sequence log-likelihood, label-smoothed for BLIP); the score is that log-likelihood.
        ``return_scores=True`` returns ``(answers, scores [N])``.
        """
        from blipx.data.vqa import pre_question, tokenize_answers
        from blipx.models.blip import with_first_token

        model = self.model("vqa", "answer")
        fam, t = model.config.family, model.config.text
        items, qs = self._pairs(images, questions, "answer", "questions")
        qs = [pre_question(q, fam) for q in qs]
        tok = self._tokenizer(fam)
        rank = answers is not None
        if rank:
            answers = as_texts(answers, "answers")
            if not answers:
                raise ValueError("answer(): answers must be a non-empty list of candidate answers (or None)")
            if generate_kwargs:
                raise TypeError(f"answer(): decoding settings {sorted(generate_kwargs)} do not apply when "
                                "ranking answers=")
            check_positive_int("k_test", k_test)
            cand_ids, cand_mask = (x.to(self.device) for x in tokenize_answers(tok, answers, fam))
        for bad in ("num_return_sequences", "return_dict", "output_scores"):
            if bad in generate_kwargs:
                raise TypeError(f"answer(): {bad} is set by answer() itself")
        kw = {**ANSWER_DEFAULTS, **generate_kwargs}
        if "num_beams" not in generate_kwargs and kw.get("do_sample"):
            kw["num_beams"] = 1
        trunc = {"truncation": True, "max_length": QUESTION_MAX_LEN[fam]} if QUESTION_MAX_LEN[fam] else {}
        picks, seqs, scores = [], [], []
        for start, stop in self._starts(len(items), batch_size, "answer", progress):
            pv = self._pixels(model, items, start, stop)
            q = tok(qs[start:stop], padding="longest", return_tensors="pt", **trunc)
            ids, mask = q["input_ids"].to(self.device), q["attention_mask"].to(self.device)
            if rank:
                out = model.rank_answers(pv, ids, mask, cand_ids, cand_mask, k_test)
                picks.append(out.best)
                scores.append(out.scores[:, 0])
                continue
            if fam == "blip":  # the official forward writes [ENC]; padding masked as in training
                ids = with_first_token(ids, t.enc_token_id)
                out = model.generate(pv, ids, mask, mask_question_padding=True, return_dict=return_scores, **kw)
            else:
                out = model.generate(pv, ids, mask, return_dict=return_scores, **kw)
            seqs.append(out.sequences if return_scores else out)
            if return_scores:
                if out.sequences_scores is not None:
                    scores.append(out.sequences_scores)
                else:
                    states = (model.encode_question(model.visual_encoder(pv), ids, mask) if fam == "blip"
                              else model.encode_question(pv, ids, mask).question_embeds)
                    scores.append(sequence_scores(model.text_decoder, states, mask, out.sequences, 1,
                                                  kw.get("length_penalty", 1.0), t.sep_token_id))
        # Host copies, once, after the loop.
        if rank:
            out_answers = [answers[i] for p in picks for i in p.tolist()]
        else:
            out_answers = [a.strip() for s in seqs for a in decode_ids(tok, s)]
        if not return_scores:
            return out_answers
        return out_answers, (torch.cat(scores).float().cpu() if scores else torch.zeros(0))

    # -- matching and features -------------------------------------------------------------------

    @torch.no_grad()
    def match(self, images: Any, texts: Any, grid: bool = False, *, batch_size: int | None = None,
              progress: bool | None = None) -> dict[str, torch.Tensor]:
        """ITM match probability and ITC similarity of image-text pairs: ``{"itm": P(match),
        "itc": cosine of the normalised ITC features}``, each [N] for pairs (image i with text i;
        one of either repeated) or [N_images, N_texts] with ``grid=True`` (every image with every
        text: N * M ITM forwards). BLIP's ITM reads [ENC] first; ALBEF's runs its fusion layers."""
        model = self.model("retriever", "match")
        if grid:
            items, txts = as_images(images), as_texts(texts)
        else:
            items, txts = self._pairs(images, texts, "match")
        m = len(txts)
        enc = self._encode_texts(model, txts) if m else None
        itm, itc = [], []
        for start, stop in self._starts(len(items) if m else 0, batch_size, "match", progress):
            pv = self._pixels(model, items, start, stop)
            emb = model.visual_encoder(pv)
            feat = model.image_features(emb)
            b = stop - start
            if not grid:
                idx = torch.arange(start, stop, device=self.device)
                itc.append((feat * enc["text_feat"][idx]).sum(-1))
                itm.append(self._itm_logits(model, enc, emb, idx).float().softmax(-1)[:, 1])
                continue
            itc.append(feat @ enc["text_feat"].t())
            per = max(1, ITM_ROWS // b)  # texts per forward: b * per (image, text) rows
            row = []
            for c0 in range(0, m, per):
                c = min(m, c0 + per) - c0
                idx = torch.arange(c0, c0 + c, device=self.device).repeat(b)  # image-major, G = c
                row.append(self._itm_logits(model, enc, emb, idx).float().softmax(-1)[:, 1].view(b, c))
            itm.append(torch.cat(row, dim=1))
        shape = (len(items), m) if grid else (len(items),)
        if not itm:
            return {"itm": torch.zeros(shape), "itc": torch.zeros(shape)}
        return {"itm": torch.cat(itm).float().cpu(), "itc": torch.cat(itc).float().cpu()}

    @torch.no_grad()
    def features(self, images: Any = None, texts: Any = None, kind: str = "unimodal", *,
                 batch_size: int | None = None, progress: bool | None = None) -> dict[str, torch.Tensor]:
        """Features, LAVIS ``extract_features`` semantics (salesforce/LAVIS
        ``blip_feature_extractor.py`` / ``albef_feature_extractor.py``):

        - ``kind="unimodal"``: ``{"image": [N, D], "text": [M, D]}`` (the keys of what was given),
          the normalised ITC features of the [CLS] tokens (``image_features`` / ``text_features``);
        - ``kind="multimodal"``: ``{"multimodal": [N, H]}``, the fused [CLS] state of each
          (image, text) pair (one text per image, or one of either repeated): BLIP's
          image-grounded text encoder on [ENC]-first ids, ALBEF's fusion layers on the text
          states -- the state the ITM head reads. Not normalised.
        """
        if kind not in ("unimodal", "multimodal"):
            raise ValueError(f"kind must be 'unimodal' or 'multimodal', got {kind!r}")
        if images is None and texts is None:
            raise ValueError("features() needs images=, texts= or both")
        model = self.model("retriever", "features")
        if kind == "multimodal":
            if images is None or texts is None:
                raise ValueError("features(kind='multimodal') needs both images= and texts=")
            items, txts = self._pairs(images, texts, "features")
            enc = self._encode_texts(model, txts) if txts else None
            fused = []
            for start, stop in self._starts(len(items), batch_size, "features", progress):
                emb = model.visual_encoder(self._pixels(model, items, start, stop))
                fused.append(self._fused_cls(model, enc, emb, torch.arange(start, stop, device=self.device)))
            h = model.config.text.hidden_size
            return {"multimodal": torch.cat(fused).float().cpu() if fused else torch.zeros(0, h)}
        out: dict[str, torch.Tensor] = {}
        d = model.config.embed_dim
        if texts is not None:
            txts = as_texts(texts)
            out["text"] = self._encode_texts(model, txts)["text_feat"].float().cpu() if txts else torch.zeros(0, d)
        if images is not None:
            items = as_images(images)
            feats = [model.image_features(model.visual_encoder(self._pixels(model, items, s, e)))
                     for s, e in self._starts(len(items), batch_size, "features", progress)]
            out["image"] = torch.cat(feats).float().cpu() if feats else torch.zeros(0, d)
        return out

    @staticmethod
    def _fused_cls(model, enc: dict[str, Any], image_embeds: torch.Tensor, text_idx: torch.Tensor) -> torch.Tensor:
        """The fused [CLS] states [B*G, H] the ITM head reads (see :meth:`_itm_logits`)."""
        from blipx.models.blip import with_first_token

        mask = enc["attention_mask"][text_idx]
        if enc["family"] == "albef":
            return model.fuse(enc["text_states"][text_idx], mask, image_embeds)[:, 0]
        ids = with_first_token(enc["input_ids"][text_idx], model.config.text.enc_token_id)
        return model.text_encoder(ids, mask, encoder_hidden_states=image_embeds).last_hidden_state[:, 0]

    # -- zero-shot classification ----------------------------------------------------------------

    @torch.no_grad()
    def classify(self, images: Any, labels: Sequence[str], template: str = "a picture of a {}.", rerank: bool = False,
                 *, rerank_k: int = 16, batch_size: int | None = None, progress: bool | None = None) -> torch.Tensor:
        """Zero-shot class probabilities [N, C] over ``labels``: each label becomes a prompt
        (``template.format(label)``), and ``softmax(image_feat @ text_feat.T / temp)`` over the
        prompts' ITC features (``temp``: the model's learnt temperature).

        ``rerank=True`` re-scores each image's ``rerank_k`` most similar classes with the ITM
        head, as retrieval evaluation re-ranks its top k (BLIP: ITM match logit + ITC similarity;
        ALBEF: ITM match logit); the probabilities are the softmax of those scores over the k
        classes, and 0 for the others."""
        labels = as_texts(labels, "labels")
        if not labels:
            raise ValueError("classify(): labels must be a non-empty list of class names")
        if not isinstance(template, str) or "{}" not in template:
            raise ValueError(f"classify(): template must be a string with a '{{}}' for the label, got {template!r}")
        check_positive_int("rerank_k", rerank_k)
        model = self.model("retriever", "classify")
        enc = self._encode_texts(model, [template.format(label) for label in labels])
        c = len(labels)
        k = min(rerank_k, c)
        temp = model.temp.detach().float()
        items = as_images(images)
        probs = []
        for start, stop in self._starts(len(items), batch_size, "classify", progress):
            emb = model.visual_encoder(self._pixels(model, items, start, stop))
            sims = (model.image_features(emb) @ enc["text_feat"].t()).float()
            if not rerank:
                probs.append((sims / temp).softmax(dim=-1))
                continue
            top_sim, top_idx = sims.topk(k, dim=1)
            itm = self._itm_logits(model, enc, emb, top_idx.flatten())[:, 1].float().view(-1, k)
            score = itm + top_sim if enc["family"] == "blip" else itm
            probs.append(torch.zeros_like(sims).scatter_(1, top_idx, score.softmax(dim=-1)))
        return torch.cat(probs).cpu() if probs else torch.zeros(0, c)

    # -- Grad-CAM --------------------------------------------------------------------------------

    def gradcam(self, image: Any, text: str, layer: int | None = None) -> torch.Tensor:
        """Grad-CAM heat map [grid, grid] (float32, >= 0; grid = image_size / patch_size) of the
        ITM match score of ``text`` over ``image``'s patches: :func:`blipx.models.gradcam.gradcam`
        (ALBEF's / LAVIS's recipe) at text-encoder ``layer`` (default: the family's)."""
        from blipx.models.gradcam import gradcam

        if not isinstance(text, str):
            raise TypeError(f"gradcam(): text must be a string, got {type(text).__name__}")
        items = as_images(image)
        if len(items) != 1:
            raise ValueError(f"gradcam(): one image at a time, got {len(items)}")
        model = self.model("retriever", "gradcam")
        with torch.no_grad():
            enc = self._encode_texts(model, [text])
            pv = self._pixels(model, items, 0, 1)
        return gradcam(model, pv, enc["input_ids"], enc["attention_mask"], layer=layer)[0].float().cpu()


def sequence_scores(decoder, encoder_states: torch.Tensor, encoder_mask: torch.Tensor | None,
                    sequences: torch.Tensor, prompt_len: int, length_penalty: float, eos_token_id: int) -> torch.Tensor:
    """[R] ``sum of log p(token) over the generated tokens / generated_len ** length_penalty`` of
    ``sequences`` [R, P + new] (R = G rows per encoder row), by one teacher-forced pass of the
    decoder: HF's beam-hypothesis score (generated length excludes the prompt and counts EOS;
    tokens after the first EOS are padding), for sequences from greedy search or sampling.
    Causal attention: the padding after EOS cannot change the earlier positions' log-probs."""
    logits, _ = decoder(sequences, None, encoder_hidden_states=encoder_states, encoder_attention_mask=encoder_mask,
                        is_decoder=True)
    gen = sequences[:, prompt_len:]
    logp = logits[:, prompt_len - 1:-1].float().log_softmax(-1).gather(-1, gen[..., None]).squeeze(-1)
    eos = (gen == eos_token_id).int()
    valid = (eos.cumsum(dim=1) - eos) == 0  # up to and including the first EOS
    length = valid.sum(dim=1).clamp(min=1).float()
    return (logp * valid).sum(dim=1) / length.pow(float(length_penalty))


__all__ = ["ANSWER_DEFAULTS", "CAPTION_DEFAULTS", "Pipeline", "load", "sequence_scores"]
