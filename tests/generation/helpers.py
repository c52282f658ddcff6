"""Constants, weight randomisation and the HF comparison of generate outputs shared by the
generation tests."""

from __future__ import annotations

import torch

from blipx.generation import GenerateOutput

SEP, PAD, BOS = 102, 0, 30522
PROMPT = "a picture of"
PROMPT_IDS = [101, 1037, 3861, 1997, 102]  # the HF processor's tokenization of PROMPT


@torch.no_grad()
def randomize(model: torch.nn.Module, seed: int, std: float) -> torch.nn.Module:
    """N(0, std) everywhere, LayerNorm weights around 1 (tests/models/hf_tiny.py's recipe with a
    wider spread: N(0, 0.2) makes the tiny decoder repeat one token forever). Tied parameters
    are visited once, so ties survive."""
    g = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        is_ln = ("LayerNorm" in name or "layer_norm" in name or "layernorm" in name) and name.endswith("weight")
        p.copy_(torch.randn(p.shape, generator=g) * std + (1.0 if is_ln else 0.0))
    return model.eval()


def hf_prompt(batch: int) -> dict:
    """PROMPT as HF callers pass it: processor ids and an all-ones mask."""
    ids = torch.tensor([PROMPT_IDS] * batch)
    return dict(input_ids=ids, attention_mask=torch.ones_like(ids))


# Logits are O(10) here; the two implementations differ by fp32 summation order (~1e-4 seen).
ATOL, RTOL = 5e-4, 1e-5


def _assert_scores_close(ref: tuple, out: tuple) -> None:
    """Same number of steps, same shapes, the same -inf entries, finite values close."""
    assert len(out) == len(ref), (len(out), len(ref))
    for t, (a, b) in enumerate(zip(ref, out)):
        assert b.dtype == torch.float32 and b.shape == a.shape, (t, b.shape, a.shape)
        assert torch.equal(torch.isinf(a), torch.isinf(b)), f"step {t}: banned tokens differ"
        fin = torch.isfinite(a)
        torch.testing.assert_close(b[fin], a[fin], atol=ATOL, rtol=RTOL, msg=f"step {t}")


def check_against_hf(ref, out: GenerateOutput, beam: bool) -> None:
    """``out`` (blipx, return_dict + output_scores) equals HF's ``ref`` on ids and scores."""
    assert isinstance(out, GenerateOutput)
    assert torch.equal(out.sequences, ref.sequences), f"\nHF: {ref.sequences.tolist()}\nblipx: {out.sequences.tolist()}"
    _assert_scores_close(ref.scores, out.scores)
    if beam:
        torch.testing.assert_close(out.sequences_scores, ref.sequences_scores, atol=1e-5, rtol=1e-5)
        assert out.beam_indices.dtype == ref.beam_indices.dtype
        assert torch.equal(out.beam_indices, ref.beam_indices)
