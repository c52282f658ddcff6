"""MLM masking/loss (ALBEF) and LM loss (BLIP) against the official code."""

from __future__ import annotations

import pytest
import torch

from blipx.losses import lm_inputs_and_targets, lm_loss, mask_tokens, mlm_loss
from tests.losses import official

V = 50


def captions(b=4, length=12, vocab=30522, seed=0, cls=101, sep=102):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(max(cls, sep) + 1, vocab, (b, length), generator=g)
    ids[:, 0] = cls
    lengths = torch.randint(4, length + 1, (b,), generator=g)
    for i, n in enumerate(lengths.tolist()):
        ids[i, n - 1] = sep
        ids[i, n:] = 0
    return ids


def test_mask_tokens_equals_official_with_same_generator():
    ids = captions(b=16, length=30)
    ours_ids, ours_labels = mask_tokens(ids, 30522, generator=torch.Generator().manual_seed(7))
    ref_ids, ref_labels = official.albef_mask(ids.clone(), 30522, ids.clone(), torch.Generator().manual_seed(7))
    assert torch.equal(ours_ids, ref_ids) and torch.equal(ours_labels, ref_labels)
    assert not torch.equal(ours_ids, ids)  # something was masked (the test is not vacuous)


def test_mask_tokens_rates_and_exclusions():
    ids = captions(b=2048, length=30, seed=1)
    masked, labels = mask_tokens(ids, 30522, generator=torch.Generator().manual_seed(0))
    sel = labels != -100
    eligible = (ids != 0) & (ids != 101)
    assert not bool(sel[~eligible].any())  # [PAD], [CLS] never
    assert bool(sel[ids == 102].any())  # [SEP] can be masked
    assert torch.equal(labels[sel], ids[sel]) and torch.equal(masked[~sel], ids[~sel])
    rate = sel.sum() / eligible.sum()
    assert abs(rate.item() - 0.15) < 0.005
    n = sel.sum().item()
    to_mask = (masked[sel] == 103).sum().item() / n
    kept = (masked[sel] == ids[sel]).sum().item() / n  # includes random ids that hit the original (~0)
    assert abs(to_mask - 0.8) < 0.01 and abs(kept - 0.1) < 0.01 and abs(1 - to_mask - kept - 0.1) < 0.01


@pytest.mark.parametrize("alpha", [0.0, 0.4])
def test_mlm_loss_equals_official(alpha):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 7, V, generator=g, requires_grad=True)
    logits_m = torch.randn(3, 7, V, generator=g, requires_grad=True)
    labels = torch.full((3, 7), -100)
    labels[0, 2], labels[1, 5], labels[2, 1], labels[2, 6] = 4, 9, 0, 33
    ours = mlm_loss(logits, labels, logits_m, alpha)
    ref = official.albef_mlm_loss(logits, labels, torch.softmax(logits_m.detach(), -1) if alpha else None, alpha)
    torch.testing.assert_close(ours, ref)
    ours.backward()
    assert logits.grad is not None and logits.grad[labels != -100].abs().sum() > 0
    assert logits.grad[labels == -100].abs().sum() == 0  # unselected positions do not train
    assert logits_m.grad is None  # the momentum model only provides targets


def test_mlm_loss_nothing_masked_is_zero_not_nan():
    out = mlm_loss(torch.randn(2, 3, V), torch.full((2, 3), -100), torch.randn(2, 3, V), 0.4)
    assert out.item() == 0.0


def test_lm_targets_match_official_caption_and_pretrain():
    ids = captions(b=5, length=14)
    for prompt_length in (0, 4):
        ours = lm_inputs_and_targets(ids, prompt_length=prompt_length)
        ref = official.blip_caption_targets(ids, prompt_length)
        assert torch.equal(ours[0], ref[0]) and torch.equal(ours[1], ref[1])
    dec, tgt = lm_inputs_and_targets(ids, prompt_length=4)
    assert bool((dec[:, 0] == 30522).all()) and bool((tgt[:, :4] == -100).all()) and bool((tgt[ids == 0] == -100).all())


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_lm_loss_equals_official(reduction):
    ids = captions(b=4, length=10, vocab=V, cls=1, sep=2)
    _, targets = lm_inputs_and_targets(ids, bos_token_id=2, prompt_length=3)
    logits = torch.randn(4, 10, V, generator=torch.Generator().manual_seed(1), requires_grad=True)
    ours = lm_loss(logits, targets, reduction=reduction)
    ref = official.blip_lm_loss(logits, targets, reduction)
    torch.testing.assert_close(ours, ref)
    ours.sum().backward()
    # Positions whose next token is ignored (prompt, padding, the last position) get no gradient.
    ignored_next = torch.cat([targets[:, 1:] == -100, torch.ones(4, 1, dtype=torch.bool)], dim=1)
    assert logits.grad[ignored_next].abs().sum() == 0 and logits.grad[~ignored_next].abs().sum() > 0
