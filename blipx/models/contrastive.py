"""ITC projections, ITM head, temperature and momentum copies shared by the BLIP and ALBEF
retrieval/pretraining models (official names: ``vision_proj``, ``text_proj``, ``itm_head``,
``temp``, ``*_m``)."""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from blipx.models.config import ModelConfig
from blipx.models.outputs import MomentumOutput


def momentum_copy(module: nn.Module) -> nn.Module:
    """A frozen deep copy of ``module`` to serve as its momentum (EMA) encoder. The copy is part of
    the model (checkpoint keys ``*_m``); the EMA that moves it is training state
    (``blipx.train.momentum.MomentumEMA``)."""
    m = copy.deepcopy(module)
    for p in m.parameters():
        p.requires_grad_(False)
    return m


_MOMENTUM_PAIRS = ("visual_encoder", "vision_proj", "text_encoder", "text_proj")


class ContrastiveHeadsMixin:
    """ITC/ITM heads shared by the BLIP and ALBEF retrieval/pretraining models."""

    def _build_heads(self, config: ModelConfig) -> None:
        self.vision_proj = nn.Linear(config.vision.width, config.embed_dim)
        self.text_proj = nn.Linear(config.text.hidden_size, config.embed_dim)
        self.itm_head = nn.Linear(config.text.hidden_size, 2)
        # Learnable ITC temperature (0.07; the trainer clamps it to [0.001, 0.5]).
        self.temp = nn.Parameter(torch.tensor(0.07))

    def _build_momentum(self) -> None:
        for name in _MOMENTUM_PAIRS:
            setattr(self, f"{name}_m", momentum_copy(getattr(self, name)))

    def momentum_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        """``(online, momentum)`` module pairs for :class:`blipx.MomentumEMA`."""
        return [(getattr(self, n), getattr(self, f"{n}_m")) for n in _MOMENTUM_PAIRS]

    def image_features(self, image_embeds: torch.Tensor, momentum: bool = False) -> torch.Tensor:
        proj = self.vision_proj_m if momentum else self.vision_proj
        return F.normalize(proj(image_embeds[:, 0]), dim=-1)

    def text_features(self, text_embeds: torch.Tensor, momentum: bool = False) -> torch.Tensor:
        proj = self.text_proj_m if momentum else self.text_proj
        return F.normalize(proj(text_embeds[:, 0]), dim=-1)

    @torch.no_grad()
    def momentum_features(self, pixel_values: torch.Tensor, input_ids: torch.Tensor, attention_mask=None):
        """Momentum-encoder features (run after the EMA update, as the official code does); the
        model's ``encode_text(..., momentum=True)`` runs its momentum text tower."""
        image_embeds = self.visual_encoder_m(pixel_values)
        text_embeds = self.encode_text(input_ids, attention_mask, momentum=True)
        return MomentumOutput(
            image_embeds, self.image_features(image_embeds, True), text_embeds, self.text_features(text_embeds, True)
        )

    def copy_momentum_from_online(self) -> None:
        """Set every ``*_m`` module to a copy of its online module."""
        with torch.no_grad():
            for src, dst in self.momentum_pairs():
                for p, q in zip(src.parameters(), dst.parameters(), strict=True):
                    q.copy_(p)
