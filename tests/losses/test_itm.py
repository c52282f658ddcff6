"""ITM: equality with the official loss on fixed negatives, id-aware sampling, dropped rows."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from blipx.losses import (
    ITMNegatives,
    all_gather_with_grad,
    build_itm_inputs,
    diagonal_positive_mask,
    itm_loss,
    positive_mask_from_ids,
    sample_itm_negatives,
)
from tests.losses import official

B, LI, LT, D = 6, 5, 4, 8


class ToyFusion(torch.nn.Module):
    """Stands in for the fusion encoder: a deterministic, differentiable [CLS] of (text, image)."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.w = torch.nn.Parameter(torch.randn(D, D, generator=g) / D**0.5)

    def forward(self, text_embeds, text_atts, image_embeds, image_atts=None):
        t = (text_embeds * text_atts[..., None]).sum(1) / text_atts.sum(1, keepdim=True)
        return torch.tanh(t @ self.w + image_embeds.mean(1))


def inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    image = torch.randn(B, LI, D, generator=g, requires_grad=True)
    text = torch.randn(B, LT, D, generator=g, requires_grad=True)
    atts = torch.ones(B, LT, dtype=torch.long)
    atts[1, 3:] = 0
    atts[4, 2:] = 0
    return image, text, atts


def test_itm_loss_matches_official_on_fixed_negatives_and_gradients():
    fusion, head = ToyFusion(), torch.nn.Linear(D, 2)
    neg_img = torch.tensor([3, 0, 5, 1, 2, 4])
    neg_txt = torch.tensor([2, 4, 0, 5, 1, 3])
    image, text, atts = inputs()
    ref, ref_logits = official.albef_itm(fusion, head, image, torch.ones(B, LI), text, atts, neg_img, neg_txt)
    ref_grads = torch.autograd.grad(ref, [image, text, fusion.w])

    negs = ITMNegatives(image_for_text=neg_img, text_for_image=neg_txt)
    batch = build_itm_inputs(image, text, atts, negs)
    pos = fusion(text, atts, image)
    neg = fusion(batch["text_embeds"], batch["text_atts"], batch["image_embeds"])
    logits = head(torch.cat([pos, neg]))
    ours = itm_loss(logits, batch["valid"])
    torch.testing.assert_close(logits, ref_logits)
    torch.testing.assert_close(ours, ref)
    for a, b in zip(torch.autograd.grad(ours, [image, text, fusion.w]), ref_grads):
        torch.testing.assert_close(a, b)  # negatives' gradients reach the rows they were drawn from


def test_invalid_negatives_are_dropped_not_crashing():
    logits = torch.randn(3 * B, 2)
    valid = torch.tensor([True, False, True, True, True, True, False, True, True, False, True, True])
    keep = torch.cat([torch.ones(B, dtype=torch.bool), valid])
    labels = torch.cat([torch.ones(B, dtype=torch.long), torch.zeros(2 * B, dtype=torch.long)])
    torch.testing.assert_close(itm_loss(logits, valid), F.cross_entropy(logits[keep], labels[keep]))
    torch.testing.assert_close(itm_loss(logits), F.cross_entropy(logits, labels))


def test_sampling_excludes_same_image_and_marks_impossible_rows():
    g = torch.Generator().manual_seed(0)
    idx = torch.tensor([7, 7, 7, 7, 2, 2])  # rows 0-3: four captions of image 7
    sim = torch.randn(B, B, generator=g) * 3
    for _ in range(30):
        negs = sample_itm_negatives(sim, sim.t(), idx=idx, generator=g)
        for chosen in (negs.image_for_text, negs.text_for_image):
            assert bool((idx[chosen] != idx).all())
    one_image = torch.zeros(B, dtype=torch.long)  # every caption of the same image: no negative at all
    negs = sample_itm_negatives(sim, sim.t(), idx=one_image, generator=g)
    assert negs.image_for_text.tolist() == [-1] * B and not bool(negs.valid.any())
    solo = sample_itm_negatives(torch.randn(1, 1), torch.randn(1, 1))  # batch of one
    assert solo.valid.tolist() == [False, False]


def test_global_candidates_rectangular():
    # This rank holds rows 4..7 of a gathered batch of 12 (3 ranks x 4).
    g = torch.Generator().manual_seed(1)
    sim_i2t, sim_t2i = torch.randn(4, 12, generator=g), torch.randn(4, 12, generator=g)
    mask = diagonal_positive_mask(4, 12, offset=4)
    assert mask.nonzero().tolist() == [[0, 4], [1, 5], [2, 6], [3, 7]]
    for _ in range(20):
        negs = sample_itm_negatives(sim_i2t, sim_t2i, positive_mask=mask, generator=g)
        assert bool((negs.text_for_image != torch.arange(4, 8)).all()) and bool((negs.text_for_image >= 0).all())
    ids_all = torch.tensor([0, 1, 2, 3, 9, 9, 4, 5, 6, 7, 9, 8])
    assert torch.equal(positive_mask_from_ids(torch.tensor([9, 9, 4, 5]), ids_all)[0], ids_all == 9)
    # Single process: the differentiable gather is the identity and keeps the graph.
    x = torch.randn(4, 3, requires_grad=True)
    assert all_gather_with_grad(x) is x


def test_sampling_follows_the_softmax_and_carries_no_graph():
    # Image 0's candidates: logits [-, 2, 0, 0, 0, 0] -> P(text 1) = e^2 / (e^2 + 4) = 0.649.
    sim = torch.zeros(B, B, requires_grad=True)
    with torch.no_grad():
        sim[0, 1] = 2.0
    g = torch.Generator().manual_seed(3)
    negs = sample_itm_negatives(sim, sim.t(), generator=g)
    assert not negs.text_for_image.requires_grad and negs.text_for_image.dtype == torch.long
    hits = sum(int(sample_itm_negatives(sim, sim.t(), generator=g).text_for_image[0] == 1) for _ in range(4000))
    p = torch.e**2 / (torch.e**2 + 4)
    assert abs(hits / 4000 - p) < 4 * (p * (1 - p) / 4000) ** 0.5


def test_hardness_scales_the_logits():
    """hardness h draws from softmax(h * sim): 0 is uniform over the non-positives, 0.5 halves
    the logit gap (the curriculum of ``itm_hardness_warmup_steps``)."""
    sim = torch.zeros(B, B)
    sim[0, 1] = 2.0
    g = torch.Generator().manual_seed(5)
    n = 4000
    for h, p in ((0.0, 1 / (B - 1)), (0.5, torch.e / (torch.e + B - 2))):
        hits = sum(int(sample_itm_negatives(sim, sim.t(), generator=g, hardness=h).text_for_image[0] == 1)
                   for _ in range(n))
        assert abs(hits / n - p) < 4 * (p * (1 - p) / n) ** 0.5, (h, hits / n, p)
