"""VQA evaluation: the official accuracy, the server's results format, and a prediction loop.

Accuracy (salesforce/ALBEF ``vqaTools/vqaEval.py``, the VQA team's evaluation code): for an
answer and the 10 human answers of a question, each of the 10 leave-one-out subsets of 9 humans
scores ``min(1, #humans in the subset who gave the answer / 3)``; the question scores the mean
over the 10 subsets (``min(1, matches / 3)`` for short). Answers are normalised first:
punctuation (:func:`process_punctuation`), then number words to digits, articles dropped and
contractions restored (:func:`process_digit_article`), for the predicted and the human answers
alike. As in that code, the normalisation runs only when the human answers are not all
identical (so "Yes" scores 0 against ten "yes": released annotations are already normalised).
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch

from blipx.tokenizer import decode_ids

# Tables of salesforce/ALBEF vqaTools/vqaEval.py.
CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
    "couldn'tve": "couldn't've", "couldnt've": "couldn't've", "didnt": "didn't", "doesnt": "doesn't",
    "dont": "don't", "hadnt": "hadn't", "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't",
    "havent": "haven't", "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's",
    "howd": "how'd", "howll": "how'll", "hows": "how's", "Id've": "I'd've", "I'dve": "I'd've", "Im": "I'm",
    "Ive": "I've", "isnt": "isn't", "itd": "it'd", "itd've": "it'd've", "it'dve": "it'd've", "itll": "it'll",
    "let's": "let's", "maam": "ma'am", "mightnt": "mightn't", "mightnt've": "mightn't've",
    "mightn'tve": "mightn't've", "mightve": "might've", "mustnt": "mustn't", "mustve": "must've",
    "neednt": "needn't", "notve": "not've", "oclock": "o'clock", "oughtnt": "oughtn't",
    "ow's'at": "'ow's'at", "'ows'at": "'ow's'at", "'ow'sat": "'ow's'at", "shant": "shan't",
    "shed've": "she'd've", "she'dve": "she'd've", "she's": "she's", "shouldve": "should've",
    "shouldnt": "shouldn't", "shouldnt've": "shouldn't've", "shouldn'tve": "shouldn't've",
    "somebody'd": "somebodyd", "somebodyd've": "somebody'd've", "somebody'dve": "somebody'd've",
    "somebodyll": "somebody'll", "somebodys": "somebody's", "someoned": "someone'd",
    "someoned've": "someone'd've", "someone'dve": "someone'd've", "someonell": "someone'll",
    "someones": "someone's", "somethingd": "something'd", "somethingd've": "something'd've",
    "something'dve": "something'd've", "somethingll": "something'll", "thats": "that's",
    "thered": "there'd", "thered've": "there'd've", "there'dve": "there'd've", "therere": "there're",
    "theres": "there's", "theyd": "they'd", "theyd've": "they'd've", "they'dve": "they'd've",
    "theyll": "they'll", "theyre": "they're", "theyve": "they've", "twas": "'twas", "wasnt": "wasn't",
    "wed've": "we'd've", "we'dve": "we'd've", "weve": "we've", "werent": "weren't", "whatll": "what'll",
    "whatre": "what're", "whats": "what's", "whatve": "what've", "whens": "when's", "whered": "where'd",
    "wheres": "where's", "whereve": "where've", "whod": "who'd", "whod've": "who'd've", "who'dve": "who'd've",
    "wholl": "who'll", "whos": "who's", "whove": "who've", "whyll": "why'll", "whyre": "why're",
    "whys": "why's", "wont": "won't", "wouldve": "would've", "wouldnt": "wouldn't",
    "wouldnt've": "wouldn't've", "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll",
    "y'allll": "y'all'll", "yall'd've": "y'all'd've", "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've",
    "youd": "you'd", "youd've": "you'd've", "you'dve": "you'd've", "youll": "you'll", "youre": "you're",
    "youve": "you've",
}  # fmt: skip
NUMBERS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6",
           "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
ARTICLES = ("a", "an", "the")
PUNCT = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!")
# The official pattern, kept verbatim ("(?!<=\d)" is a typo for a look-behind, so it is a
# look-ahead that never matches '<=': a period is removed unless a digit follows it).
_PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")
_COMMA_STRIP = re.compile(r"(\d)(,)(\d)")


def process_punctuation(text: str) -> str:
    """Each punctuation mark is deleted where it touches a space (or the text has a digit,digit
    comma), else replaced by a space; periods not followed by a digit are deleted."""
    out = text
    for p in PUNCT:
        if (p + " " in text or " " + p in text) or _COMMA_STRIP.search(text) is not None:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    # The official passes re.UNICODE (32) as sub's *count*: at most 32 periods are stripped.
    return _PERIOD_STRIP.sub("", out, count=int(re.UNICODE))


def process_digit_article(text: str) -> str:
    """Lower-case words; number words -> digits; articles dropped; contractions restored."""
    words = [NUMBERS.get(w, w) for w in text.lower().split()]
    words = [w for w in words if w not in ARTICLES]
    return " ".join(CONTRACTIONS.get(w, w) for w in words)


def normalize_answer(text: str) -> str:
    """:func:`process_punctuation` then :func:`process_digit_article` ("Two dogs." -> "2 dogs")."""
    return process_digit_article(process_punctuation(text))


def vqa_accuracy(answer: str, human_answers: Sequence[str]) -> float:
    """Accuracy in [0, 1] of one predicted answer against a question's human answers (10 in
    VQA v2), exactly as ``vqaEval.py`` computes it."""
    if not human_answers:
        raise ValueError("vqa_accuracy needs at least one human answer")
    def clean(a: str) -> str:
        return a.replace("\n", " ").replace("\t", " ").strip()

    res, gts = clean(answer), [clean(a) for a in human_answers]
    if len(set(gts)) > 1:
        gts = [normalize_answer(a) for a in gts]
        res = normalize_answer(res)
    # Leave-one-out over the humans: the 9 others, min(1, matches / 3), averaged.
    scores = [min(1.0, sum(g == res for j, g in enumerate(gts) if j != i) / 3) for i in range(len(gts))]
    return sum(scores) / len(scores)


def evaluate_vqa(answers: Iterable[str], human_answers: Iterable[Sequence[str]]) -> dict[str, float]:
    """``{"accuracy": %, "exact_match": %, "questions": n}`` over paired predictions and human
    answer lists (exact match: the raw answer equals the most frequent human answer)."""
    accs, exact, n = 0.0, 0, 0
    for a, gts in zip(answers, human_answers, strict=True):
        accs += vqa_accuracy(a, gts)
        exact += int(a.strip() == Counter(gts).most_common(1)[0][0])
        n += 1
    if n == 0:
        raise ValueError("evaluate_vqa: no questions")
    return {"accuracy": 100.0 * accs / n, "exact_match": 100.0 * exact / n, "questions": n}


def write_results(path: str | os.PathLike, question_ids: Sequence[Any], answers: Sequence[str]) -> Path:
    """The official server's results file: a JSON list of ``{"question_id": int, "answer": str}``
    (salesforce/BLIP ``train_vqa.py`` / salesforce/ALBEF ``VQA.py`` ``save_result``)."""
    rows = [{"question_id": int(q), "answer": a} for q, a in zip(question_ids, answers, strict=True)]
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(rows), encoding="utf-8")
    return p


@torch.no_grad()
def predict_answers(model, loader: Iterable[dict[str, Any]], tokenizer, *, answer_list: Sequence[str] | None = None,
                    mode: str = "rank", k_test: int = 128, device: torch.device | str = "cpu",
                    num_beams: int = 3, max_length: int = 10, min_length: int = 1) -> dict[str, list]:
    """Answers of a :class:`~blipx.models.BlipVqa` / :class:`~blipx.models.AlbefVqa` for every
    batch of ``loader`` (a :class:`blipx.data.vqa.VqaCollator` batch): ``mode="rank"`` picks from
    ``answer_list`` (the model's two-stage ``rank_answers``, ``k_test`` 128); ``"generate"``
    decodes (official: beam 3, max 10, min 1, lengths counting the bos). Returns
    ``{"question_ids", "answers", "gt_answers", "questions"}`` (lists, in loader order)."""
    from blipx.data.vqa import tokenize_answers

    if mode not in ("rank", "generate"):
        raise ValueError(f"mode must be 'rank' or 'generate', got {mode!r}")
    if mode == "rank":
        if not answer_list:
            raise ValueError("mode='rank' needs an answer_list")
        cand_ids, cand_mask = (t.to(device) for t in tokenize_answers(tokenizer, answer_list, model.family))
    model.eval().to(device)
    t = model.config.text
    out: dict[str, list] = {"question_ids": [], "answers": [], "gt_answers": [], "questions": []}
    for batch in loader:
        if not batch.get("batch_size", 1):
            continue
        px, ids, mask = (batch[k].to(device) for k in ("pixel_values", "input_ids", "attention_mask"))
        if mode == "rank":
            best = model.rank_answers(px, ids, mask, cand_ids, cand_mask, k_test).best
            answers = [answer_list[i] for i in best.tolist()]  # host copy, once per batch
        else:
            if model.family == "blip":  # the official forward writes [ENC] before generating
                ids = ids.clone()
                ids[:, 0] = t.enc_token_id
            # BLIP's official generate ignores the question padding (HF too); here it is masked, as
            # in training and ranking, so an answer does not depend on its batch-mates' lengths.
            pad = {"mask_question_padding": True} if model.family == "blip" else {}
            gen = model.generate(px, ids, mask, num_beams=num_beams, max_length=max_length, min_length=min_length,
                                 **pad)
            answers = [a.strip() for a in decode_ids(tokenizer, gen)]
        out["answers"] += answers
        out["question_ids"] += list(batch.get("question_ids", [None] * len(answers)))
        out["gt_answers"] += list(batch.get("gt_answers", [None] * len(answers)))
        out["questions"] += batch["questions"]
    return out


def eval_vqa(model, data: str = "shapes_vqa", *, mode: str = "rank", answer_list: str | Sequence[str] | None = None,
             num_samples: int | None = None, max_objects: int | None = None, image_root: str | None = None,
             k_test: int = 128, batch_size: int = 32, device: str = "cpu", results: str | None = None):
    """What ``blipx eval vqa`` runs: ``(metrics, predictions)`` of a VQA model (a model or a
    checkpoint path, loaded as its family's VQA model) on the held-out shapes-VQA questions
    (``data="shapes_vqa"``; the 25 answers are the list) or an official test-format JSON file
    (images under ``image_root``; ``answer_list`` = the official ``answer_list.json`` for
    ``mode="rank"``). Metrics (VQA accuracy, exact match) need human answers in the file;
    ``results`` writes the server's results JSON."""
    from torch.utils.data import DataLoader, Subset

    from blipx.data import eval_transform
    from blipx.data.shapes_vqa import ANSWERS, ShapesVqaDataset
    from blipx.data.vqa import VqaCollator, VqaDataset, read_answer_list
    from blipx.models import from_pretrained
    from blipx.tokenizer import tokenizer_for

    if isinstance(model, (str, os.PathLike)):
        model = from_pretrained(str(model), task="vqa")
    family, size = model.config.family, model.config.vision.image_size
    if data == "shapes_vqa":
        opts = {k: v for k, v in (("num_samples", num_samples), ("max_objects", max_objects)) if v}
        ds = ShapesVqaDataset("test", image_size=size, transform=eval_transform(size), family=family, **opts)
        answer_list = list(ANSWERS) if answer_list is None else answer_list
    else:
        ds = VqaDataset(data, image_root or str(Path(data).parent), transform=eval_transform(size), split="test",
                        family=family)
        if num_samples:
            ds = Subset(ds, range(min(num_samples, len(ds))))
    if isinstance(answer_list, (str, os.PathLike)):
        answer_list = read_answer_list(answer_list)
    tok = tokenizer_for(family)
    loader = DataLoader(ds, batch_size=batch_size, collate_fn=VqaCollator(tok, 35 if family == "blip" else None))
    pred = predict_answers(model, loader, tok, answer_list=answer_list, mode=mode, k_test=k_test, device=device)
    metrics: dict[str, Any] = {"mode": mode, "questions": len(pred["answers"])}
    if pred["answers"] and all(g for g in pred["gt_answers"]):
        metrics.update(evaluate_vqa(pred["answers"], pred["gt_answers"]))
    if results:
        metrics["results"] = str(write_results(results, pred["question_ids"], pred["answers"]))
    return metrics, pred


__all__ = ["eval_vqa", "evaluate_vqa", "normalize_answer", "predict_answers", "process_digit_article",
           "process_punctuation", "vqa_accuracy",
           "write_results"]
