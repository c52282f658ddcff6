import numpy as np
import pytest
import torch
from PIL import Image

from blipx.data import OfficialRandAugment, TrainTransform, eval_transform, swap_left_right
from blipx.data import image_processor

OFFICIAL_OPS = {"Identity", "AutoContrast", "Equalize", "Brightness", "Sharpness",
                "ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate"}  # fmt: skip


def _magnitude(op, m):
    fn, signed = OfficialRandAugment._AUGMENTATION_SPACE[op]
    return float(fn(11, 224, 224)[m]), signed


def test_randaugment_uses_the_official_ops_and_magnitudes():
    assert set(OfficialRandAugment._AUGMENTATION_SPACE) == OFFICIAL_OPS
    # BLIP M=5: enhance factor 0.1 + 1.8 * 0.5 = 1.0 (identity), ALBEF M=7: 1.36; never signed.
    assert _magnitude("Brightness", 5) == (pytest.approx(0.0, abs=1e-6), False)
    assert _magnitude("Sharpness", 7) == (pytest.approx(0.36, abs=1e-6), False)
    assert _magnitude("TranslateX", 5) == (pytest.approx(5.0), True)  # pixels, not a fraction
    assert _magnitude("Rotate", 5) == (pytest.approx(15.0), True)
    assert _magnitude("ShearY", 7) == (pytest.approx(0.21), True)


def test_randaugment_probability_zero_is_identity_and_one_changes_images():
    img = Image.effect_noise((32, 32), 60).convert("RGB")
    assert np.array_equal(np.asarray(OfficialRandAugment(2, 10, prob=0.0)(img)), np.asarray(img))
    torch.manual_seed(0)
    always = OfficialRandAugment(2, 10, prob=1.0)
    changed = sum(not np.array_equal(np.asarray(always(img)), np.asarray(img)) for _ in range(20))
    assert changed >= 15  # only Identity/Identity draws (and AutoContrast no-ops) leave it unchanged


@pytest.mark.parametrize(
    "family, stage, scale, m", [("blip", "pretrain", (0.2, 1.0), 5), ("albef", "finetune", (0.5, 1.0), 7)]
)
def test_train_transform_follows_the_official_settings(family, stage, scale, m):
    t = TrainTransform(48, family, stage)
    assert t.crop.scale == scale and t.augment.magnitude == m and t.augment.num_ops == 2
    out = t(Image.effect_noise((80, 60), 40).convert("RGB"))
    assert out.shape == (3, 48, 48) and out.dtype == torch.float32


def test_eval_transform_matches_the_image_processor():
    img = Image.effect_noise((50, 70), 40).convert("RGB")
    assert torch.equal(eval_transform(32)(img), image_processor("blip", 32)(img)[0])  # one path, bit for bit


def test_swap_flip_keeps_positional_captions_true():
    img = Image.new("RGB", (32, 32), (128, 128, 128))
    img.paste((255, 0, 0), (0, 0, 16, 32))  # red on the left half
    t = TrainTransform(32, scale=(1.0, 1.0), flip="swap", randaugment=False)
    seen = set()
    for seed in range(12):
        torch.manual_seed(seed)
        out, caption = t.apply_pair(img, "a red block on the left and gray at right")
        red_left = out[0, :, :16].mean() > out[0, :, 16:].mean()
        flipped = "a red block on the right and gray at left"
        assert caption == ("a red block on the left and gray at right" if red_left else flipped)
        seen.add(bool(red_left))
    assert seen == {True, False}
    assert swap_left_right("leftover right, left.") == "leftover left, right."
