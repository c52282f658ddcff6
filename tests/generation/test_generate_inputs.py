"""Hostile inputs to generate(): an empty batch returns an empty result;
non-finite images, uint8 images and images of the wrong size are refused with a message saying
what was wrong; every decoding setting that would crash deep inside or silently mean something
else is refused up front, naming the setting."""

from __future__ import annotations

import pytest
import torch

from blipx.generation import GenerateOutput, resolve

from .helpers import PROMPT


@pytest.mark.parametrize("kw", [dict(), dict(num_beams=3), dict(do_sample=True, num_return_sequences=2)])
def test_empty_batch_returns_empty_result(captioners, px, kw):
    _, ours = captioners
    empty = px[:0]
    out = ours.generate(empty, max_length=8, **kw)
    assert out.shape == (0, 1) and out.dtype == torch.long  # [DEC] only: nothing generated
    assert ours.generate(empty, PROMPT, max_length=8, **kw).shape == (0, 4)  # [DEC] + 3 prompt tokens
    d = ours.generate(empty, max_length=8, return_dict=True, output_scores=True, **kw)
    assert isinstance(d, GenerateOutput) and d.sequences.shape == (0, 1) and d.scores == ()
    if kw.get("num_beams"):
        assert d.sequences_scores.shape == (0,) and d.beam_indices.shape == (0, 0)
    assert ours.caption(empty, max_length=8, **kw) == []


@pytest.mark.parametrize("kw", [dict(), dict(do_sample=True), dict(num_beams=3)])
def test_non_finite_image_is_refused_in_every_mode(captioners, px, kw):
    """Greedy used to return padding and sampling an IndexError for the same NaN image."""
    _, ours = captioners
    bad = px.clone()
    bad[1, 0, 3, 3] = float("nan")  # one pixel of image 1 is enough
    bad[2, 2, 0, 0] = float("inf")
    with pytest.raises(ValueError, match=r"batch rows \[1, 2\] are not finite"):
        ours.generate(bad, max_length=8, **kw)
    ours.generate(px, max_length=8, **kw)  # the finite batch still decodes


def test_uint8_pixels_are_refused(captioners, px):
    _, ours = captioners
    images = (px.clamp(-1, 1) * 127 + 128).to(torch.uint8)
    with pytest.raises(TypeError, match=r"float pixel values.*torch\.uint8.*caption\(\).*image_processor"):
        ours.generate(images, max_length=8)
    assert len(ours.caption(images, max_length=8)) == px.shape[0]  # caption() takes them


@pytest.mark.parametrize("size", [(4, 4), (36, 36), (32, 40)])
def test_image_of_wrong_size_is_refused(captioners, size):
    """Smaller than one patch (8 px), not a whole number of patches (the grid was cropped to
    4x4 silently), or not square."""
    _, ours = captioners
    with pytest.raises(ValueError, match=rf"must be \[B, 3, 32, 32\].*got {size[0]}x{size[1]}"):
        ours.generate(torch.randn(2, 3, *size), max_length=8)


def test_other_whole_patch_sizes_still_interpolate(captioners):
    _, ours = captioners
    assert ours.visual_encoder(torch.randn(1, 3, 48, 48)).shape[1] == 1 + 6 * 6


BAD_SETTINGS = [
    (dict(repetition_penalty=float("nan")), "repetition_penalty"),
    (dict(repetition_penalty=0.0), "repetition_penalty"),
    (dict(repetition_penalty=-1.2), "repetition_penalty"),
    (dict(max_length=8, min_length=9), r"min_length \(9\) must be <= max_length \(8\)"),
    (dict(max_new_tokens=4, min_new_tokens=5),
     r"min_new_tokens \(5\) \+ prompt length \(1\) = 6 must be <= max_new_tokens \(4\) \+ prompt length \(1\) = 5"),
    (dict(max_new_tokens=0), "max_new_tokens"),
    (dict(max_length=8.5), "max_length"),
    (dict(min_length=-1), "min_length"),
    (dict(do_sample=True, temperature=0.0), "temperature"),
    (dict(temperature=float("nan")), "temperature"),
    (dict(temperature=-1.0), "temperature"),
    (dict(do_sample=True, top_p=1.5), "top_p"),
    (dict(top_p=float("nan")), "top_p"),
    (dict(top_p=-0.1), "top_p"),
    (dict(top_k=-1), "top_k"),
    (dict(top_k=2.5), "top_k"),
    (dict(num_beams=0), "num_beams"),
    (dict(num_beams=2.0), "num_beams"),
    (dict(num_beams=True), "num_beams"),
    (dict(num_return_sequences=0), "num_return_sequences"),
    (dict(num_beams=3, length_penalty=float("nan")), "length_penalty"),
    (dict(num_beams=3, length_penalty=float("inf")), "length_penalty"),
    (dict(num_beams=3, early_stopping="yes"), "early_stopping"),
    (dict(no_repeat_ngram_size=-1), "no_repeat_ngram_size"),
    (dict(bad_words_ids=[]), "bad_words_ids"),
    (dict(bad_words_ids=[[]]), "bad_words_ids"),
    (dict(bad_words_ids=[[-3]]), "bad_words_ids"),
    (dict(bad_words_ids=[[30524]]), r"bad_words_ids: token 30524 is outside the vocabulary \(size 30524\)"),
    (dict(bad_words_ids=[7]), "bad_words_ids"),
    (dict(do_sample="yes"), "do_sample"),
    (dict(compact=float("nan")), "compact"),
]


@pytest.mark.parametrize("kw, message", BAD_SETTINGS, ids=[f"{k}" for k, _ in BAD_SETTINGS])
def test_bad_settings_are_refused_naming_the_setting(captioners, px, kw, message):
    _, ours = captioners
    with pytest.raises(ValueError, match=message):
        ours.generate(px, **kw)


def test_good_edge_settings_are_accepted():
    """The checks refuse only what is wrong: HF's edge values still resolve."""
    common = dict(eos_token_id=102, pad_token_id=0, vocab_size=30524)
    s = resolve(1, 64, **common, max_length=8, min_length=8, top_k=None, top_p=None, temperature=0.0,
                length_penalty=-2.0, no_repeat_ngram_size=None, bad_words_ids=None, early_stopping="never")
    assert (s.min_length, s.top_k, s.top_p, s.bad_words_ids) == (8, 0, 1.0, ())
    s = resolve(1, 64, **common, do_sample=True, top_p=0.0, top_k=0, temperature=1e-3)
    assert s.top_p == 0.0 and s.temperature == 1e-3
    assert resolve(1, 64, **common, return_dict=True, output_scores=True).compact == 0.0  # every row kept
