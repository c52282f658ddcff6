import pytest
import torch
from torch.utils.data import DataLoader

from blipx.data import ImageTextCollator, ShapesDataset, eval_transform
from blipx.evaluation import encode_for_retrieval, evaluate_retrieval, rerank_with_itm
from blipx.evaluation.retrieval import NEG_INF_SCORE
from blipx.models import create_model, with_first_token
from blipx.tokenizer import bert_tokenizer, blip_tokenizer

TEXTS = [
    "a red circle", "a small red circle at the top", "a blue square", "a large blue square", "green triangle",
    "a green triangle on the left", "two shapes", "an orange diamond", "a purple thing", "nothing at all",
]  # fmt: skip


@pytest.fixture(scope="module", params=["blip_tiny", "albef_tiny"])
def setup(request):
    torch.manual_seed(0)
    model = create_model(request.param, "retriever").eval()
    tok = blip_tokenizer() if request.param.startswith("blip") else bert_tokenizer()
    pixel_values = torch.randn(5, 3, 32, 32)
    return model, tok, pixel_values, encode_for_retrieval(model, pixel_values, TEXTS, tok, image_batch_size=2)


def _pair_itm(model, enc, i, j):
    """ITM match logit of image i and text j, one pair at a time (the reference)."""
    img, mask = enc["image_embeds"][i : i + 1], enc["attention_mask"][j : j + 1]
    if enc["family"] == "albef":
        return model.itm_logits(img, enc["text_states"][j : j + 1], mask)[0, 1]
    ids = with_first_token(enc["input_ids"][j : j + 1], model.config.text.enc_token_id)
    return model.itm_logits(img, ids, mask)[0, 1]


def test_itc_similarities_match_the_model_forward(setup):
    model, tok, pixel_values, enc = setup
    t = tok(TEXTS, padding="max_length", truncation=True, max_length=enc["input_ids"].shape[1], return_tensors="pt")
    with torch.no_grad():
        out = model(pixel_values, t["input_ids"], t["attention_mask"], use_itm_head=False)
    torch.testing.assert_close(enc["image_feat"] @ enc["text_feat"].t(), out.itc_similarity, atol=1e-5, rtol=1e-5)


def test_topk_itm_rerank_matches_a_per_pair_reference(setup):
    model, _, _, enc = setup
    k = 3
    i2t, t2i, sims = rerank_with_itm(model, enc, k_test=k, itm_batch_size=4)  # one query per ITM batch
    # All queries in one ITM batch give the same matrices.
    big_i2t, big_t2i, _ = rerank_with_itm(model, enc, k_test=k, itm_batch_size=1000)
    torch.testing.assert_close(big_i2t, i2t, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(big_t2i, t2i, atol=1e-5, rtol=1e-5)
    add_sim = enc["family"] == "blip"  # BLIP: ITM + ITC; ALBEF: ITM only
    with torch.no_grad():
        for scores, s, image_rows in ((i2t, sims, True), (t2i, sims.t(), False)):
            for r in range(s.shape[0]):
                top = set(s[r].topk(k).indices.tolist())
                for c in range(s.shape[1]):
                    if c not in top:
                        assert scores[r, c] == NEG_INF_SCORE
                        continue
                    i, j = (r, c) if image_rows else (c, r)
                    expected = _pair_itm(model, enc, i, j) + (s[r, c] if add_sim else 0.0)
                    torch.testing.assert_close(scores[r, c], expected, atol=1e-4, rtol=1e-4)


def test_scoring_rules_differ_by_the_itc_similarity(setup):
    model, _, _, enc = setup
    blip_i2t, blip_t2i, sims = rerank_with_itm(model, enc, k_test=4, scoring="blip")
    albef_i2t, _, _ = rerank_with_itm(model, enc, k_test=4, scoring="albef")
    kept = blip_i2t != NEG_INF_SCORE
    assert int(kept.sum()) == 5 * 4 and int((blip_t2i != NEG_INF_SCORE).sum()) == 10 * 4
    torch.testing.assert_close(blip_i2t[kept] - albef_i2t[kept], sims[kept], atol=1e-5, rtol=0)
    with pytest.raises(ValueError):
        rerank_with_itm(model, enc, scoring="clip")


def test_evaluate_retrieval_end_to_end_from_a_dataloader():
    torch.manual_seed(0)
    model = create_model("blip_tiny", "retriever").train()
    ds = ShapesDataset("test", num_samples=12, image_size=32, transform=eval_transform(32))
    loader = DataLoader(ds, batch_size=5, collate_fn=ImageTextCollator(blip_tokenizer(), 35))
    texts = [ds.raw(i)["caption"] for i in range(12)]
    m = evaluate_retrieval(model, loader, texts, torch.arange(12), k_test=8)
    assert model.training  # mode restored
    keys = [f"{d}_r{k}" for d in ("txt", "img") for k in (1, 5, 10)]
    assert all(0.0 <= m[k] <= 100.0 and 0.0 <= m[f"itc_{k}"] <= 100.0 for k in keys)
    assert m["txt_r1"] <= m["txt_r5"] <= m["txt_r10"] and m["img_r1"] <= m["img_r5"] <= m["img_r10"]
    assert m["r_mean"] == pytest.approx((m["txt_r_mean"] + m["img_r_mean"]) / 2)


def test_missing_images_are_refused_rather_than_misaligned():
    model = create_model("blip_tiny", "retriever")
    with pytest.raises(ValueError, match="skipped"):
        evaluate_retrieval(model, torch.randn(2, 3, 32, 32), ["a", "b", "c"], [0, 1, 2], k_test=2)
