"""Train and eval image transforms of ALBEF/BLIP on torchvision.transforms.v2.

Official train pipeline (``salesforce/BLIP data/__init__.py``, ``salesforce/ALBEF dataset/__init__.py``):
RandomResizedCrop(S, scale, bicubic) -> RandomHorizontalFlip -> RandomAugment(N=2, M, 10 ops)
-> ToTensor -> Normalize(CLIP). Crop scale is (0.2, 1.0) for pretraining and (0.5, 1.0) for
fine-tuning in both repositories; M is 5 (BLIP) or 7 (ALBEF). Eval: Resize((S, S), bicubic), in
``blipx.data.processing``.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

import torch
from torch.utils.data import Dataset
from torchvision.transforms import InterpolationMode
from torchvision.transforms import v2

from blipx.data.processing import CLIP_MEAN, CLIP_STD

CROP_SCALE = {"pretrain": (0.2, 1.0), "finetune": (0.5, 1.0)}
RANDAUG_MAGNITUDE = {"blip": 5, "albef": 7}
_MAX_LEVEL = 10  # the official RandomAugment scales every op by level / 10
_TRANSLATE_PIXELS = 10.0  # official translate_const: absolute pixels, whatever the image size
_FILL = 128  # official replace_value (128, 128, 128)


class OfficialRandAugment(v2.RandAugment):
    """torchvision's RandAugment reparametrised as the official ``RandomAugment(2, M, isPIL=True)``.

    Differences from stock RandAugment that the official code has, and this keeps: only the 10
    ops below (no colour/contrast/posterize/solarize); each drawn op is applied with
    probability 0.5; translation is at most 10 px (not a fraction of the size); Brightness and
    Sharpness use the factor ``0.1 + 1.8 * M / 10`` with no random sign (so M=5 makes them
    identities, as in BLIP); the fill is grey 128. Ops are still drawn with replacement.
    """

    _AUGMENTATION_SPACE = {
        "Identity": (lambda bins, h, w: None, False),
        "AutoContrast": (lambda bins, h, w: None, False),
        "Equalize": (lambda bins, h, w: None, False),
        # torchvision applies ``1 + magnitude``; the official factor is 0.1 + 1.8 * level / 10.
        "Brightness": (lambda bins, h, w: torch.linspace(0.1, 1.9, bins) - 1.0, False),
        "Sharpness": (lambda bins, h, w: torch.linspace(0.1, 1.9, bins) - 1.0, False),
        "ShearX": (lambda bins, h, w: torch.linspace(0.0, 0.3, bins), True),
        "ShearY": (lambda bins, h, w: torch.linspace(0.0, 0.3, bins), True),
        "TranslateX": (lambda bins, h, w: torch.linspace(0.0, _TRANSLATE_PIXELS, bins), True),
        "TranslateY": (lambda bins, h, w: torch.linspace(0.0, _TRANSLATE_PIXELS, bins), True),
        "Rotate": (lambda bins, h, w: torch.linspace(0.0, 30.0, bins), True),
    }

    def __init__(self, num_ops: int = 2, magnitude: int = 5, prob: float = 0.5) -> None:
        if not 0 <= magnitude <= _MAX_LEVEL:
            raise ValueError(f"magnitude must be in [0, {_MAX_LEVEL}], got {magnitude}")
        super().__init__(num_ops, magnitude, num_magnitude_bins=_MAX_LEVEL + 1,
                         interpolation=InterpolationMode.BILINEAR, fill=_FILL)  # torchvision 0.26 takes no string
        self.prob = prob

    def forward(self, *inputs: Any) -> Any:
        flat, image = self._flatten_and_extract_image_or_video(inputs)
        height, width = v2.functional.get_size(image)
        for _ in range(self.num_ops):
            name, (magnitudes_fn, signed) = self._get_random_item(self._AUGMENTATION_SPACE)
            if torch.rand(()) >= self.prob:  # official: each drawn op is skipped with prob 1 - 0.5
                continue
            magnitudes = magnitudes_fn(self.num_magnitude_bins, height, width)
            magnitude = 0.0 if magnitudes is None else float(magnitudes[self.magnitude])
            if signed and torch.rand(()) <= 0.5:
                magnitude = -magnitude
            image = self._apply_image_or_video_transform(image, name, magnitude, self.interpolation, self._fill)
        return self._unflatten_and_insert_image_or_video(flat, image)


_LEFT_RIGHT = re.compile(r"\b(left|right)\b")


def swap_left_right(caption: str) -> str:
    """'left' <-> 'right' (whole words), the text side of a horizontal flip."""
    return _LEFT_RIGHT.sub(lambda m: "right" if m.group(1) == "left" else "left", caption)


def _to_normalized_tensor() -> list:
    return [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(CLIP_MEAN, CLIP_STD)]


class TrainTransform:
    """Official train augmentation; call ``t(image)`` or ``t.apply_pair(image, caption)``.

    ``flip``: "random" = the official caption-agnostic RandomHorizontalFlip(0.5); "swap" = flip
    with probability 0.5 and swap 'left'/'right' in the caption, so captions that name positions
    (the shapes dataset) stay true; "none" = never flip.
    """

    def __init__(
        self,
        image_size: int,
        family: str = "blip",
        stage: str = "finetune",
        scale: tuple[float, float] | None = None,
        flip: str = "random",
        randaugment: bool = True,
    ) -> None:
        if flip not in ("random", "swap", "none"):
            raise ValueError(f"flip must be 'random', 'swap' or 'none', got {flip!r}")
        self.flip = flip
        self.crop = v2.RandomResizedCrop(
            image_size, scale=scale or CROP_SCALE[stage], interpolation=InterpolationMode.BICUBIC, antialias=True
        )
        self.augment = OfficialRandAugment(2, RANDAUG_MAGNITUDE[family]) if randaugment else None
        self.to_tensor = v2.Compose(_to_normalized_tensor())

    def apply_pair(self, image, caption: str) -> tuple[torch.Tensor, str]:
        image = self.crop(image)
        if self.flip != "none" and torch.rand(()) < 0.5:
            image = v2.functional.horizontal_flip(image)
            if self.flip == "swap":
                caption = swap_left_right(caption)
        if self.augment is not None:
            image = self.augment(image)
        return self.to_tensor(image), caption

    def __call__(self, image) -> torch.Tensor:
        return self.apply_pair(image, "")[0]


def apply_transform(transform, image, caption: str) -> tuple[Any, str]:
    """Run a joint image-text transform (``.apply_pair``) or a plain image transform."""
    if transform is None:
        return image, caption
    if hasattr(transform, "apply_pair"):  # not "apply": nn.Module has one
        return transform.apply_pair(image, caption)
    return transform(image), caption


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A 63-bit seed that depends only on ``(seed, epoch, index)`` (a hash, so nearby triples
    such as (0, 1, 2) and (0, 2, 1) get unrelated streams)."""
    digest = hashlib.blake2b(f"{seed}/{epoch}/{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


class SeededSamples(Dataset):
    """``dataset[index]`` computed with torch's CPU generator seeded by ``(seed, epoch, index)``
    (:func:`sample_seed`), and the generator's state restored afterwards.

    The train transforms (crop, flip, RandAugment) draw from torch's global generator, which in
    a DataLoader worker is seeded per worker: what a sample became depended on which worker made
    it and what that worker drew before, so a resumed run (new workers, a shorter epoch) saw other
    augmentations than an uninterrupted one. Seeded per sample, a sample's augmentation is a
    function of (seed, epoch, index) alone, the same with any ``num_workers``, order or split.
    """

    def __init__(self, dataset: Dataset, seed: int, epoch: int) -> None:
        self.dataset, self.seed, self.epoch = dataset, seed, epoch

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Any:
        with torch.random.fork_rng(devices=[]):  # CPU only: transforms run on CPU tensors / PIL
            torch.manual_seed(sample_seed(self.seed, self.epoch, index))
            return self.dataset[index]
