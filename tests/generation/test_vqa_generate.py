"""BlipVqa.generate gives HF BlipForQuestionAnswering.generate's answer ids (greedy, beam), and
its scores with return_dict / output_scores (the captioner's decoding code)."""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")

from blipx.models import BlipVqa  # noqa: E402
from blipx.tokenizer import blip_tokenizer  # noqa: E402
from tests.models.hf_tiny import CAPTIONS, pixels, tiny_blip_config  # noqa: E402

from .helpers import check_against_hf, randomize  # noqa: E402


@pytest.fixture(scope="module")
def vqa_pair(tmp_path_factory):
    torch.manual_seed(0)
    hf = randomize(transformers.BlipForQuestionAnswering(tiny_blip_config()), seed=2, std=0.5)
    d = tmp_path_factory.mktemp("hf_vqa")
    hf.save_pretrained(d)
    return hf, BlipVqa.from_pretrained(d).eval()


@pytest.mark.parametrize("kw", [dict(max_length=8), dict(num_beams=3, max_length=8, num_return_sequences=2)])
def test_vqa_ids_match_hf(vqa_pair, kw):
    hf, ours = vqa_pair
    enc = blip_tokenizer()(CAPTIONS, padding="longest", return_tensors="pt")  # padded questions
    px = pixels(len(CAPTIONS))
    ref = hf.generate(input_ids=enc.input_ids, pixel_values=px, attention_mask=enc.attention_mask, **kw)
    out = ours.generate(px, enc.input_ids, enc.attention_mask, **kw)
    assert torch.equal(out, ref), f"\nHF:    {ref.tolist()}\nblipx: {out.tolist()}"
    assert len({tuple(r) for r in out.tolist()}) > 1  # answers depend on image and question


def test_vqa_scores_match_hf(vqa_pair):
    hf, ours = vqa_pair
    enc = blip_tokenizer()(CAPTIONS, padding="longest", return_tensors="pt")
    px = pixels(len(CAPTIONS))
    kw = dict(num_beams=3, max_length=8, num_return_sequences=2, no_repeat_ngram_size=2)
    ref = hf.generate(input_ids=enc.input_ids, pixel_values=px, attention_mask=enc.attention_mask,
                      return_dict_in_generate=True, output_scores=True, **kw)
    out = ours.generate(px, enc.input_ids, enc.attention_mask, return_dict=True, output_scores=True, **kw)
    check_against_hf(ref, out, beam=True)
