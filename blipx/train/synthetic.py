"""A fixed random image-token dataset for trainer tests and smoke runs (no files, no tokenizer)."""

from __future__ import annotations

import torch
from torch.utils.data import Dataset


class RandomPairs(Dataset):
    """``n`` fixed (image, token ids) pairs drawn from ``seed``; ``image_id = i // captions_per_image``."""

    def __init__(self, n: int, image_size: int, text_len: int = 12, vocab: tuple[int, int] = (1000, 5000),
                 captions_per_image: int = 1, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.images = torch.randn(n, 3, image_size, image_size, generator=g)
        self.ids = torch.randint(vocab[0], vocab[1], (n, text_len), generator=g)
        self.ids[:, 0] = 101  # [CLS]
        lengths = torch.randint(text_len // 2, text_len + 1, (n,), generator=g)
        self.mask = (torch.arange(text_len)[None] < lengths[:, None]).long()
        self.ids[:, 1:][self.mask[:, 1:] == 0] = 0
        self.image_ids = torch.arange(n) // captions_per_image

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict:
        return {"pixel_values": self.images[i], "input_ids": self.ids[i], "attention_mask": self.mask[i],
                "image_ids": self.image_ids[i]}


def stack_collate(items: list[dict]) -> dict:
    return {k: torch.stack([it[k] for it in items]) for k in items[0]}
