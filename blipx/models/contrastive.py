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


class MomentumTowers:
    """Momentum (EMA) copies ``<name>_m`` of the modules ``_momentum_names()`` lists (the
    official ``model_pairs`` of ALBEF/BLIP models that distil), built by ``_build_momentum``."""

    _momentum: tuple[str, ...] = ()

    def _momentum_names(self) -> tuple[str, ...]:
        return self._momentum

    def _build_momentum(self) -> None:
        for name in self._momentum_names():
            setattr(self, f"{name}_m", momentum_copy(getattr(self, name)))

    def momentum_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        """``(online, momentum)`` module pairs for :class:`blipx.MomentumEMA`."""
        return [(getattr(self, n), getattr(self, f"{n}_m")) for n in self._momentum_names()]

    def copy_momentum_from_online(self) -> None:
        """Set every ``*_m`` module to a copy of its online module."""
        with torch.no_grad():
            for src, dst in self.momentum_pairs():
                for p, q in zip(src.parameters(), dst.parameters(), strict=True):
                    q.copy_(p)


_MOMENTUM_PAIRS = ("visual_encoder", "vision_proj", "text_encoder", "text_proj")
ITC_POOLINGS = ("cls", "hf_blip_model")


class TanhPooler(nn.Module):
    """``tanh(dense(x))`` on the text [CLS] state: the pooler of transformers' ``BlipTextModel``
    (``BlipTextPooler``), which HF ``BlipModel.get_text_features`` projects."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.dense = nn.Linear(hidden, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.dense(x))


class ContrastiveHeadsMixin(MomentumTowers):
    """ITC/ITM heads shared by the BLIP and ALBEF retrieval/pretraining models.

    ``config.itc_pooling`` says what the projections read (see :class:`ModelConfig`);
    ``config.itm_head=False`` builds no ITM head, and :meth:`require_itm` refuses ITM calls."""

    def _build_heads(self, config: ModelConfig) -> None:
        if config.itc_pooling not in ITC_POOLINGS:
            raise ValueError(f"itc_pooling must be one of {ITC_POOLINGS}, got {config.itc_pooling!r}")
        hf_pool = config.itc_pooling == "hf_blip_model"
        if hf_pool and config.family != "blip":
            raise ValueError("itc_pooling='hf_blip_model' (HF BlipModel) is a BLIP layout; ALBEF uses 'cls'")
        self.vision_proj = nn.Linear(config.vision.width, config.embed_dim, bias=not hf_pool)
        self.text_proj = nn.Linear(config.text.hidden_size, config.embed_dim, bias=not hf_pool)
        if hf_pool:
            self.text_pooler = TanhPooler(config.text.hidden_size)
        if config.itm_head:
            self.itm_head = nn.Linear(config.text.hidden_size, 2)
        # Learnable ITC temperature (0.07; the trainer clamps it to [0.001, 0.5]).
        self.temp = nn.Parameter(torch.tensor(0.07))

    def require_itm(self) -> None:
        """Raise unless the model has an ITM head (called first by every ``itm_logits``)."""
        if not self.config.itm_head:
            raise RuntimeError(
                f"{type(self).__name__} has no ITM head (config.itm_head=False, e.g. loaded from an HF BlipModel "
                "folder, which is ITC only): use ITC (image_features / text_features, forward(use_itm_head=False)) "
                "or load a checkpoint with an ITM head")

    def _momentum_names(self) -> tuple[str, ...]:
        return _MOMENTUM_PAIRS + (("text_pooler",) if hasattr(self, "text_pooler") else ())

    def image_features(self, image_embeds: torch.Tensor, momentum: bool = False) -> torch.Tensor:
        proj = self.vision_proj_m if momentum else self.vision_proj
        cls = image_embeds[:, 0]
        if self.config.itc_pooling == "hf_blip_model":
            # HF BlipVisionModel's pooler_output: post_layernorm(last_hidden_state[:, 0]), i.e. the
            # final LayerNorm a second time (transformers models/blip/modeling_blip.py).
            cls = (self.visual_encoder_m if momentum else self.visual_encoder).norm(cls)
        return F.normalize(proj(cls), dim=-1)

    def text_features(self, text_embeds: torch.Tensor, momentum: bool = False) -> torch.Tensor:
        proj = self.text_proj_m if momentum else self.text_proj
        cls = text_embeds[:, 0]
        if self.config.itc_pooling == "hf_blip_model":
            cls = (self.text_pooler_m if momentum else self.text_pooler)(cls)
        return F.normalize(proj(cls), dim=-1)

    @torch.no_grad()
    def momentum_features(self, pixel_values: torch.Tensor, input_ids: torch.Tensor, attention_mask=None):
        """Momentum-encoder features (run after the EMA update, as the official code does); the
        model's ``encode_text(..., momentum=True)`` runs its momentum text tower."""
        image_embeds = self.visual_encoder_m(pixel_values)
        text_embeds = self.encode_text(input_ids, attention_mask, momentum=True)
        return MomentumOutput(
            image_embeds, self.image_features(image_embeds, True), text_embeds, self.text_features(text_embeds, True)
        )
