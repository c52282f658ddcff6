"""generate() gives the same token ids as HF BlipForConditionalGeneration.generate (same
weights, fp32 CPU): greedy and beam search, with and without a prompt, min/max length,
repetition and length penalties, n-best lists, early stopping modes."""

from __future__ import annotations

import pytest
import torch

from .helpers import BOS, PAD, PROMPT, SEP, hf_prompt

CASES = {
    "greedy": dict(max_length=12),
    "greedy-default-length": dict(),
    "greedy-min-rep": dict(max_length=12, min_length=5, repetition_penalty=1.1),
    "beam3": dict(num_beams=3, max_length=12),
    "beam3-min-rep": dict(num_beams=3, max_length=12, min_length=5, repetition_penalty=1.1),
    "beam3-lp-nrs2": dict(num_beams=3, max_length=12, length_penalty=0.5, num_return_sequences=2),
    "beam3-new-tokens-nrs3": dict(num_beams=3, max_new_tokens=9, length_penalty=2.0, num_return_sequences=3),
    "beam5-early": dict(num_beams=5, max_length=10, early_stopping=True),
    "beam3-never": dict(num_beams=3, max_length=10, early_stopping="never", length_penalty=1.5),
}
PROMPT_CASES = {
    "greedy": dict(max_length=12),
    "greedy-new-tokens-rep": dict(max_new_tokens=6, repetition_penalty=1.1),
    "beam3": dict(num_beams=3, max_length=12, min_length=7),
    "beam3-lp-nrs2": dict(num_beams=3, max_new_tokens=8, length_penalty=0.5, num_return_sequences=2),
}


def _check(ref: torch.Tensor, out: torch.Tensor) -> None:
    assert out.dtype == torch.long
    assert out.shape == ref.shape, (out.shape, ref.shape)
    assert torch.equal(out, ref), f"\nHF:    {ref.tolist()}\nblipx: {out.tolist()}"


# compact: 0 = finished images keep running, 0.5 = the default, 1 = dropped as soon as one is done.
@pytest.mark.parametrize("compact", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("name", list(CASES))
def test_ids_match_hf(captioners, px, name, compact):
    hf, ours = captioners
    kw = CASES[name]
    ref = hf.generate(pixel_values=px, **kw)
    out = ours.generate(px, compact=compact, **kw)
    _check(ref, out)
    assert (out[:, 0] == BOS).all()


@pytest.mark.parametrize("compact", [0.0, 1.0])
@pytest.mark.parametrize("name", list(PROMPT_CASES))
def test_ids_match_hf_with_prompt(captioners, px, name, compact):
    hf, ours = captioners
    kw = PROMPT_CASES[name]
    ref = hf.generate(pixel_values=px, **hf_prompt(px.shape[0]), **kw)
    out = ours.generate(px, PROMPT, compact=compact, **kw)
    _check(ref, out)
    assert out[:, :4].tolist() == [[BOS, 1037, 3861, 1997]] * out.shape[0]
    # Prompt given as ids (the tokenized form) is the same request.
    assert torch.equal(ours.generate(px, hf_prompt(px.shape[0])["input_ids"], compact=compact, **kw), out)


@pytest.mark.parametrize("kw", [dict(max_length=12), dict(num_beams=3, max_length=12),
                                dict(do_sample=True, top_p=0.9, num_return_sequences=2, max_length=12)])
def test_finished_images_stop_costing_compute(captioners, px, monkeypatch, kw):
    """With compact=1 the decoder runs fewer rows once images finish (the fixture's rows stop at
    mixed steps), and the ids are those of the uncompacted run."""
    from blipx.generation import CachedDecoder

    _, ours = captioners
    rows_per_step = []
    step = CachedDecoder.step
    monkeypatch.setattr(CachedDecoder, "step", lambda self, t: rows_per_step.append(self.rows) or step(self, t))
    gen = lambda: torch.Generator().manual_seed(3)
    extra = dict(generator=gen()) if kw.get("do_sample") else {}
    full = ours.generate(px, compact=0.0, **kw, **extra)
    assert len(set(rows_per_step)) == 1
    rows_per_step.clear()
    extra = dict(generator=gen()) if kw.get("do_sample") else {}
    compacted = ours.generate(px, compact=1.0, **kw, **extra)
    assert rows_per_step == sorted(rows_per_step, reverse=True) and rows_per_step[-1] < rows_per_step[0]
    if not kw.get("do_sample"):  # sampling draws per running row: same law, other draws
        assert torch.equal(full, compacted)


def test_fixture_exercises_padding(captioners, px):
    """The parity cases mean something only if some rows stop early and others run to the end:
    greedy pads finished rows with 0, beam search with 102 (HF's ``pad or eos``)."""
    _, ours = captioners
    greedy = ours.generate(px, max_length=12)
    beam = ours.generate(px, num_beams=3, max_length=12)
    for out, fill in ((greedy, PAD), (beam, SEP)):
        ended = (out == SEP).any(dim=1)
        assert ended.any() and not ended.all()
        row = int(ended.nonzero()[0])
        first = int((out[row] == SEP).nonzero()[0])
        assert first < out.shape[1] - 1 and (out[row, first + 1 :] == fill).all()


def test_beam_differs_from_greedy(captioners, px):
    """Beam search must not silently fall back to greedy: on these weights they disagree."""
    _, ours = captioners
    assert not torch.equal(ours.generate(px, max_length=12), ours.generate(px, num_beams=3, max_length=12))


def test_invalid_arguments(captioners, px):
    _, ours = captioners
    with pytest.raises(ValueError, match="num_return_sequences"):
        ours.generate(px, num_beams=2, num_return_sequences=3)
    with pytest.raises(ValueError, match="greedy"):
        ours.generate(px, num_return_sequences=2)
    with pytest.raises(ValueError, match="max_position_embeddings"):
        ours.generate(px, max_length=65)
    with pytest.raises(ValueError, match="beam sampling"):
        ours.generate(px, num_beams=2, do_sample=True)


@pytest.mark.cuda
def test_ids_match_hf_on_cuda(captioners, px):
    """Same check on the GPU (fp32, TF32 off): the CUDA ops and the static cache on device."""
    import copy

    hf, ours = (copy.deepcopy(m).cuda() for m in captioners)
    tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        for kw in (CASES["greedy-min-rep"], CASES["beam3-min-rep"], CASES["beam3-lp-nrs2"]):
            ref = hf.generate(pixel_values=px.cuda(), **kw)
            out = ours.generate(px.cuda(), **kw)
            _check(ref.cpu(), out.cpu())
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32
