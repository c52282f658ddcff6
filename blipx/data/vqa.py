"""VQA data in the official JSON format, with the official answer sampling.

An annotation file is a JSON list of ``{"question_id", "question", "answer": [...], "image",
"dataset": "vqa" | "vg"}`` (salesforce/BLIP ``data/vqa_dataset.py``, salesforce/ALBEF
``dataset/vqa_dataset.py``; ``answer`` is the 10 human answers for VQA v2, one string for VG).
Training samples carry every distinct answer of a question with its weight (VQA: the fraction
of the human answers that gave it; VG: a fixed 0.2 in BLIP, 0.5 in ALBEF); test samples carry
the question id (and the human answers, when the file has them, for local scoring).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from blipx.data.collate import keep_samples
from blipx.data.images import Skipped, read_image
from blipx.data.text import _ALBEF_PUNCT, _BLIP_PUNCT

# Per family: (max question words, weight of a VG answer, text appended to each answer).
# ALBEF's tokenizer writes no [SEP], so its dataset appends eos='[SEP]' (configs/VQA.yaml).
_FAMILY = {"blip": (50, 0.2, ""), "albef": (30, 0.5, "[SEP]")}


def pre_question(question: str, style: str = "blip", max_words: int | None = None) -> str:
    """The official ``pre_question``: lower-case, delete punctuation (BLIP ``.!"()*#:;~``; ALBEF
    also ``,'?`` and maps ``-`` ``/`` to spaces), strip trailing spaces, keep ``max_words``
    words (BLIP 50, ALBEF 30)."""
    if style == "blip":
        q = _BLIP_PUNCT.sub("", question.lower())
    elif style == "albef":
        q = _ALBEF_PUNCT.sub("", question.lower()).replace("-", " ").replace("/", " ")
    else:
        raise ValueError(f"style must be 'blip' or 'albef', got {style!r}")
    q = q.rstrip(" ")
    words = q.split(" ")
    limit = _FAMILY[style][0] if max_words is None else max_words
    return " ".join(words[:limit]) if len(words) > limit else q


def answer_weights(answers: Sequence[str] | str, source: str = "vqa",
                   family: str = "blip") -> tuple[list[str], list[float]]:
    """(distinct answers, weights) of one question, as the official datasets build them: each
    VQA answer weighs 1/len(answers) per occurrence; a VG answer gets the family's fixed weight.
    ALBEF's answers get its eos text appended."""
    _, vg_weight, eos = _FAMILY[family]
    if source == "vg":
        answers, weights = [answers if isinstance(answers, str) else answers[0]], [vg_weight]
    else:
        acc: dict[str, float] = {}
        for a in answers:
            acc[a] = acc.get(a, 0.0) + 1 / len(answers)
        answers, weights = list(acc), list(acc.values())
    return [a + eos for a in answers], weights


def read_answer_list(path: str | os.PathLike) -> list[str]:
    """The candidate answers of ranking (official ``answer_list.json``: a JSON list of strings)."""
    answers = json.loads(Path(path).read_text(encoding="utf-8"))
    if not isinstance(answers, list) or not all(isinstance(a, str) for a in answers):
        raise ValueError(f"{path}: an answer list must be a JSON list of strings")
    return answers


def tokenize_answers(tokenizer, answers: Sequence[str], family: str = "blip") -> tuple[torch.Tensor, torch.Tensor]:
    """Answer-list ids / mask [A, Ta] for ranking ([CLS] first; the model writes its bos):
    padded to the longest (official); ALBEF's answers get ``[SEP]`` appended as there."""
    eos = _FAMILY[family][2]
    tok = tokenizer([a + eos for a in answers], padding="longest", return_tensors="pt")
    return tok["input_ids"], tok["attention_mask"]


class VqaDataset(Dataset):
    """Official VQA v2 (+ VG) annotations. ``ann_files``: one or more JSON files (the official
    training set is ``vqa_train`` + ``vqa_val`` + ``vg_qa``); ``vqa_root`` / ``vg_root``: where
    the images of each source live; ``split``: "train" (answers + weights) or "test".

    A sample: ``image`` (the ``transform`` output), ``question`` (cleaned as ``family``'s
    ``pre_question``), and ``answers`` / ``weights`` (train) or ``question_id`` and, if present,
    ``gt_answers`` (test). An unreadable image, or a path that resolves outside its root (unless
    ``allow_outside_root``), gives a :class:`Skipped` (the collate drops it).
    """

    def __init__(self, ann_files: str | os.PathLike | Sequence[str | os.PathLike], vqa_root: str | os.PathLike,
                 vg_root: str | os.PathLike | None = None, transform=None, split: str = "train",
                 family: str = "blip", allow_outside_root: bool = False) -> None:
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        if family not in _FAMILY:
            raise ValueError(f"family must be 'blip' or 'albef', got {family!r}")
        files = [ann_files] if isinstance(ann_files, (str, os.PathLike)) else list(ann_files)
        self.annotation: list[dict[str, Any]] = []
        for f in files:
            self.annotation += json.loads(Path(f).read_text(encoding="utf-8"))
        self.roots = {"vqa": vqa_root, "vg": vg_root if vg_root is not None else vqa_root}
        self._real_roots = {k: os.path.realpath(v) for k, v in self.roots.items()}
        self.allow_outside_root = allow_outside_root
        self.transform, self.split, self.family = transform, split, family

    def __len__(self) -> int:
        return len(self.annotation)

    def __getitem__(self, index: int) -> dict[str, Any] | Skipped:
        ann = self.annotation[index]
        source = ann.get("dataset", "vqa")
        image = read_image(self.roots[source], ann["image"], self.allow_outside_root, self._real_roots[source])
        if isinstance(image, Skipped):
            return image
        sample: dict[str, Any] = {"image": self.transform(image) if self.transform else image,
                                  "question": pre_question(ann["question"], self.family)}
        if self.split == "train":
            sample["answers"], sample["weights"] = answer_weights(ann["answer"], source, self.family)
        else:
            sample["question_id"] = ann["question_id"]
            if "answer" in ann:
                sample["gt_answers"] = ann["answer"]
        return sample


class VqaCollator:
    """VQA samples -> a batch (official ``vqa_collate_fn`` + the tokenization of the training
    loops): ``pixel_values``; question ``input_ids`` / ``attention_mask`` (padded to the
    longest; BLIP truncates at 35 tokens, ALBEF does not: ``max_question_len=None``); for
    samples with ``answers`` (training) every question's answers flattened into ``answer_ids``
    / ``answer_mask`` (longest), ``answer_weights`` [N] and ``answer_counts`` [B]; for samples
    with a ``question_id`` (test) ``question_ids`` and ``gt_answers`` (lists). Skipped samples
    are dropped and counted."""

    def __init__(self, tokenizer, max_question_len: int | None = 35) -> None:
        self.tokenizer, self.max_question_len = tokenizer, max_question_len

    def __call__(self, samples: Sequence[Any]) -> dict[str, Any]:
        kept, batch = keep_samples(samples)
        if not kept:
            return batch
        batch["pixel_values"] = torch.stack([s["image"] for s in kept])
        trunc = dict(truncation=True, max_length=self.max_question_len) if self.max_question_len else {}
        q = self.tokenizer([s["question"] for s in kept], padding="longest", return_tensors="pt", **trunc)
        batch["input_ids"], batch["attention_mask"] = q["input_ids"], q["attention_mask"]
        batch["questions"] = [s["question"] for s in kept]
        if "answers" in kept[0]:
            a = self.tokenizer([x for s in kept for x in s["answers"]], padding="longest", return_tensors="pt")
            batch["answer_ids"], batch["answer_mask"] = a["input_ids"], a["attention_mask"]
            batch["answer_weights"] = torch.tensor([w for s in kept for w in s["weights"]], dtype=torch.float)
            batch["answer_counts"] = torch.tensor([len(s["answers"]) for s in kept], dtype=torch.long)
        if "question_id" in kept[0]:
            batch["question_ids"] = [s["question_id"] for s in kept]
            batch["gt_answers"] = [s.get("gt_answers") for s in kept]
        return batch


__all__ = ["VqaCollator", "VqaDataset", "answer_weights", "pre_question", "read_answer_list", "tokenize_answers"]
