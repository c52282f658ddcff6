import pytest
import torch

from blipx.evaluation import best_positive_rank, chance_recall, recall_at_k


def _scores_with_ranks(ranks, n_cand, gt):
    """Rows whose ground-truth column ``gt[r]`` sits at 0-based rank ``ranks[r]``."""
    s = torch.zeros(len(ranks), n_cand)
    for r, (rank, g) in enumerate(zip(ranks, gt)):
        others = [c for c in range(n_cand) if c != g]
        order = others[:rank] + [g] + others[rank:]
        s[r, order] = torch.linspace(1.0, 0.0, n_cand)
    return s


def test_known_ranks_give_known_recalls():
    n = 20
    txt2img = torch.arange(n)
    ranks_t = [0, 0, 3, 4, 5, 9, 10, 15, 0, 1] + [19] * 10  # per image: rank of its caption
    ranks_i = [0] * 10 + [2] * 5 + [12] * 5  # per text: rank of its image
    m = recall_at_k(_scores_with_ranks(ranks_t, n, range(n)), _scores_with_ranks(ranks_i, n, range(n)), txt2img)
    assert m["txt_r1"] == pytest.approx(100 * 3 / 20)
    assert m["txt_r5"] == pytest.approx(100 * 6 / 20)
    assert m["txt_r10"] == pytest.approx(100 * 8 / 20)
    assert (m["img_r1"], m["img_r5"], m["img_r10"]) == pytest.approx((50.0, 75.0, 75.0))
    assert m["txt_r_mean"] == pytest.approx((15 + 30 + 40) / 3)
    assert m["r_mean"] == pytest.approx(((15 + 30 + 40) / 3 + (50 + 75 + 75) / 3) / 2)


def test_text_recall_uses_the_best_of_several_captions():
    # 2 images x 2 captions each (texts 0,1 -> image 0; 2,3 -> image 1).
    txt2img = torch.tensor([0, 0, 1, 1])
    i2t = torch.tensor([[0.1, 0.5, 0.9, 0.2],  # best own caption (0.5) is 2nd -> rank 1
                        [0.0, 0.1, 0.3, 0.2]])  # own caption 2 first -> rank 0  # fmt: skip
    t2i = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.1, 0.7], [0.6, 0.4]])
    pos = torch.arange(2).unsqueeze(1) == txt2img
    assert best_positive_rank(i2t, pos).tolist() == [1, 0]
    assert best_positive_rank(t2i, pos.t()).tolist() == [0, 1, 0, 1]
    m = recall_at_k(i2t, t2i, txt2img)
    assert (m["txt_r1"], m["img_r1"], m["img_r5"]) == (50.0, 50.0, 100.0)


def test_ties_count_against_the_model():
    flat = torch.zeros(5, 5)
    assert best_positive_rank(flat, torch.eye(5, dtype=torch.bool)).tolist() == [4] * 5
    assert recall_at_k(flat, flat, torch.arange(5))["txt_r1"] == 0.0


def test_custom_positive_mask_overrides_ids():
    s = torch.tensor([[0.2, 0.9], [0.9, 0.2]])
    ids = recall_at_k(s, s.t(), torch.tensor([0, 1]))
    both = recall_at_k(s, s.t(), torch.tensor([0, 1]), positives=torch.ones(2, 2, dtype=torch.bool))
    assert ids["txt_r1"] == 0.0 and both["txt_r1"] == 100.0


def test_chance_recall():
    c = chance_recall(torch.arange(100))
    assert (c["txt_r1"], c["txt_r5"], c["img_r10"]) == pytest.approx((1.0, 5.0, 10.0))
    # 2 captions per image among 10 texts: P(hit in top 5) = 1 - C(8,5)/C(10,5) = 1 - 56/252.
    c2 = chance_recall(torch.arange(5).repeat_interleave(2))
    assert c2["txt_r5"] == pytest.approx(100 * (1 - 56 / 252)) and c2["img_r1"] == pytest.approx(20.0)
    # A random scoring matrix lands near chance.
    torch.manual_seed(0)
    n = 400
    m = recall_at_k(torch.rand(n, n), torch.rand(n, n), torch.arange(n))
    assert abs(m["txt_r10"] - chance_recall(torch.arange(n))["txt_r10"]) < 3.0
