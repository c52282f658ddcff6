"""blipx.tokenizer (BERT uncased + [DEC]/[ENC]) and blipx.data.processing (bicubic resize + CLIP norm)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("torchvision")
Image = pytest.importorskip("PIL.Image")

from blipx.data import CLIP_MEAN, CLIP_STD, image_processor  # noqa: E402
from blipx.tokenizer import bert_tokenizer, blip_tokenizer  # noqa: E402


def test_bert_tokenizer_is_full_uncased_vocab():
    tok = bert_tokenizer()
    assert len(tok) == 30522
    assert tok("A picture of a Dog.").input_ids == [101, 1037, 3861, 1997, 1037, 3899, 1012, 102]
    assert (tok.pad_token_id, tok.mask_token_id) == (0, 103)


def test_blip_tokenizer_adds_dec_and_enc():
    tok = blip_tokenizer()
    assert len(tok) == 30524
    assert tok.bos_token_id == 30522 and tok.convert_tokens_to_ids("[ENC]") == 30523
    assert tok("[ENC] a dog").input_ids == [101, 30523, 1037, 3899, 102]
    assert tok.decode([30522, 1037, 3899, 102], skip_special_tokens=True) == "a dog"
    batch = tok(["a dog", "two cats on a sofa"], padding="longest", return_tensors="pt")
    assert batch.input_ids.shape == (2, 7) and batch.attention_mask[0].tolist() == [1, 1, 1, 1, 0, 0, 0]


def _image(h=50, w=70, seed=0):
    return np.random.RandomState(seed).randint(0, 256, (h, w, 3), dtype=np.uint8)


def test_pil_path_is_pil_bicubic_plus_clip_norm():
    a = _image()
    x = image_processor("blip", 32)(Image.fromarray(a))
    ref = np.asarray(Image.fromarray(a).resize((32, 32), Image.BICUBIC), dtype=np.float32) / 255.0
    ref = (torch.from_numpy(ref).permute(2, 0, 1) - torch.tensor(CLIP_MEAN)[:, None, None]) / torch.tensor(CLIP_STD)[
        :, None, None
    ]
    assert x.shape == (1, 3, 32, 32) and x.dtype == torch.float32
    torch.testing.assert_close(x[0], ref, atol=1e-6, rtol=0)


def test_uint8_tensors_match_pil_within_two_levels():
    a = _image()
    proc = image_processor("albef", 24)
    x_pil = proc([Image.fromarray(a), Image.fromarray(_image(seed=1))])
    t = torch.stack([torch.from_numpy(a), torch.from_numpy(_image(seed=1))]).permute(0, 3, 1, 2)
    x_t = proc(t)
    assert x_t.shape == (2, 3, 24, 24)
    assert ((x_t - x_pil) * torch.tensor(CLIP_STD)[:, None, None] * 255).abs().max() <= 2.01


def test_grayscale_and_bad_inputs():
    g = Image.fromarray(_image()[..., 0])
    assert image_processor("blip", 16)(g).shape == (1, 3, 16, 16)
    with pytest.raises(TypeError, match="uint8"):
        image_processor("blip", 16)(torch.rand(3, 20, 20))


def test_close_to_hf_blip_image_processor():
    from transformers import BlipImageProcessor

    im = Image.fromarray(_image(seed=3))
    ref = BlipImageProcessor(size={"height": 32, "width": 32})(im, return_tensors="pt").pixel_values
    ours = image_processor("blip", 32)(im)
    assert ((ours - ref) * torch.tensor(CLIP_STD)[:, None, None] * 255).abs().max() <= 2.01


def test_albef_tokenizer_writes_cls_tokens_without_sep():
    # Official rule (salesforce/ALBEF models/tokenization_bert.py, build_inputs_with_special_tokens):
    # [cls] + token_ids_0, no [SEP]. Ids below are bert-base-uncased's, written by hand.
    from blipx.tokenizer import albef_tokenizer, tokenizer_for

    tok = albef_tokenizer()
    assert tok("A picture of a Dog.").input_ids == [101, 1037, 3861, 1997, 1037, 3899, 1012]
    batch = tok(["a dog", "two cats on a sofa"], padding="longest", truncation=True, max_length=4,
                return_tensors="pt")
    assert batch.input_ids.tolist() == [[101, 1037, 3899, 0], [101, 2048, 8870, 2006]]
    assert batch.attention_mask.tolist() == [[1, 1, 1, 0], [1, 1, 1, 1]]
    assert tokenizer_for("albef")("a dog").input_ids == [101, 1037, 3899]
    assert tokenizer_for("blip")("a dog").input_ids == [101, 1037, 3899, 102]  # BLIP keeps its [SEP]


def test_albef_paths_tokenize_as_albef():
    from blipx.evaluation.retrieval import encode_for_retrieval
    from blipx.models import create_model

    model = create_model("albef_tiny", "retriever").eval()
    enc = encode_for_retrieval(model, torch.randn(1, 3, 32, 32), ["a dog"])
    ids = enc["input_ids"].tolist()[0]
    assert ids[:3] == [101, 1037, 3899] and set(ids[3:]) == {0}  # [CLS] a dog, then padding: no [SEP]


def test_decode_ids_of_no_rows_is_an_empty_list():
    """transformers 5.17's ``batch_decode([])`` returns ``['']`` (an empty list read as one empty
    sequence); decode_ids must give [] for zero rows whatever the tokenizer does with them."""
    from blipx.tokenizer import blip_tokenizer, decode_ids

    class Old:  # the 5.17 behaviour, on any installed transformers
        def batch_decode(self, rows, skip_special_tokens=False):
            return [""] if rows == [] else blip_tokenizer().batch_decode(rows, skip_special_tokens=True)

    assert decode_ids(Old(), torch.zeros(0, 4, dtype=torch.long)) == []
    assert decode_ids(Old(), []) == []
    tok = blip_tokenizer()
    ids = torch.tensor(tok(["a red circle", "two squares"], padding=True).input_ids)
    assert decode_ids(Old(), ids) == decode_ids(tok, ids) == ["a red circle", "two squares"]
