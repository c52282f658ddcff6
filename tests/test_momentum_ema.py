"""MomentumEMA: pairs modules once, then one op call per step."""

import pytest
import torch
from torch import nn

from blipx.models.contrastive import momentum_copy
from blipx.train.momentum import MomentumEMA


def tower():
    return nn.Sequential(nn.Linear(5, 7), nn.LayerNorm(7), nn.Linear(7, 3))


def test_copies_then_tracks_ema():
    a, b = tower(), nn.Linear(3, 2)
    a_m, b_m = momentum_copy(a), momentum_copy(b)
    with torch.no_grad():
        for p in list(a_m.parameters()) + list(b_m.parameters()):
            p.add_(1.0)  # make the copies differ so copy_weights is observable
    ema = MomentumEMA([(a, a_m), (b, b_m)], momentum=0.9)
    for p, q in zip(a.parameters(), a_m.parameters()):
        assert torch.equal(p, q) and not q.requires_grad
    expected = [q.detach().clone() for q in a_m.parameters()]
    with torch.no_grad():
        for p in a.parameters():
            p.mul_(2.0)
    ema.update()
    for e, p, q in zip(expected, a.parameters(), a_m.parameters()):
        torch.testing.assert_close(q, 0.9 * e + 0.1 * p)
    ema.update(momentum=0.0)
    for p, q in zip(b.parameters(), b_m.parameters()):
        assert torch.equal(p, q)


def test_update_is_outside_autograd():
    a = tower()
    a_m = momentum_copy(a)
    ema = MomentumEMA((a, a_m))
    loss = a(torch.randn(2, 5)).sum()
    ema.update()
    loss.backward()  # the EMA step must not have touched the graph
    assert all(p.grad is not None for p in a.parameters())


def test_mismatched_pairs_rejected():
    with pytest.raises(ValueError, match="different parameter names"):
        MomentumEMA((tower(), nn.Linear(5, 7)))
    with pytest.raises(ValueError, match="momentum must be in"):
        MomentumEMA((tower(), tower()), momentum=1.5)
    bad = tower()
    bad[0] = nn.Linear(5, 8)
    with pytest.raises(ValueError, match="'0.weight'"):
        MomentumEMA((tower(), bad))
