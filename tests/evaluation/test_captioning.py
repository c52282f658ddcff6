import pytest

from blipx.evaluation import caption_metrics, ptb_tokenize


@pytest.mark.parametrize(
    "raw, tokens",
    [
        ("A man riding a horse.", "a man riding a horse"),
        ("The dog's ball, isn't it?", "the dog 's ball is n't it"),
        ('A "black-and-white" photo (of 2.5 cats)...', "a black-and-white photo of 2.5 cats"),
        ("Two  people;\nwalking: outside!", "two people walking outside"),
    ],
)
def test_ptb_tokenize(raw, tokens):
    assert ptb_tokenize(raw) == tokens


def test_dropped_tokens_are_pycocoevalcaps_list():
    from pycocoevalcap.tokenizer.ptbtokenizer import PUNCTUATIONS

    from blipx.evaluation.captioning import _PUNCTUATIONS

    assert tuple(PUNCTUATIONS) == _PUNCTUATIONS


def test_bleu_known_value():
    # One hypothesis, 6 tokens, all n-grams present in the 7-token reference: every precision is 1,
    # so BLEU-4 = brevity penalty exp(1 - 7/6).
    m = caption_metrics({1: "the cat sat on the mat"}, {1: ["The cat sat on the mat today."]})
    bp = 0.8464817248906141
    assert m["Bleu_1"] == pytest.approx(bp, abs=1e-6) and m["Bleu_4"] == pytest.approx(bp, abs=1e-6)


def test_bleu_partial_matches():
    # "a red circle at the top" vs reference "a red square at the top": 5/6 unigrams, 3/5 bigrams,
    # 1/4 trigrams, 0/3 4-grams (pycocoevalcap smooths the zero with 1e-15), equal lengths.
    m = caption_metrics([{"image_id": "x", "caption": "a red circle at the top"}], {"x": ["a red square at the top"]})
    assert m["Bleu_1"] == pytest.approx(5 / 6, abs=1e-6)
    assert m["Bleu_2"] == pytest.approx((5 / 6 * 3 / 5) ** 0.5, abs=1e-6)
    assert m["Bleu_3"] == pytest.approx((5 / 6 * 3 / 5 * 1 / 4) ** (1 / 3), abs=1e-6)
    assert m["Bleu_4"] < 1e-3


def test_cider_perfect_and_degraded():
    # Every caption has 4-grams (a caption without any scores 0 on CIDEr's n=4 term).
    refs = {1: ["a small red circle at the top"], 2: ["a large blue square on the left"], 3: ["a green triangle in it"]}
    perfect = caption_metrics({k: v[0] for k, v in refs.items()}, refs)
    assert perfect["CIDEr"] == pytest.approx(10.0, abs=1e-6) and perfect["Bleu_4"] == pytest.approx(1.0, abs=1e-6)
    swapped = caption_metrics({1: refs[2][0], 2: refs[1][0], 3: refs[3][0]}, refs)
    assert swapped["CIDEr"] < perfect["CIDEr"] / 2


def test_duplicate_predictions_keep_the_first_and_missing_references_raise():
    refs = {1: ["a dog"], 2: ["a cat"]}
    m = caption_metrics([{"image_id": 1, "caption": "a dog"}, {"image_id": 1, "caption": "zzz"},
                         {"image_id": 2, "caption": "a cat"}], refs)  # fmt: skip
    assert m["Bleu_1"] == pytest.approx(1.0, abs=1e-6)
    with pytest.raises(KeyError):
        caption_metrics({3: "a bird"}, refs)
