"""ALBEF/BLIP pretraining objectives on feature tensors (not on models), host-sync-free.

ITC (+ momentum distillation, queues, image-id positives), ITM with hard negatives drawn by
``blipx.ops.sample_hard_negatives``, ALBEF's MLM masking + distilled MLM loss, BLIP's LM loss,
the alpha warm-up, and the cross-rank gathers. Formulas: the official model files,
transcribed in ``tests/losses/official.py``.
"""

from blipx.losses.distributed import all_gather_with_grad, concat_all_gather, world_info
from blipx.losses.itc import (
    FeatureQueue,
    ITCOutput,
    clamp_temperature_,
    itc_hard_targets,
    itc_loss,
    soft_cross_entropy,
)
from blipx.losses.itm import (
    ITMNegatives,
    build_itm_inputs,
    diagonal_positive_mask,
    itm_labels,
    itm_loss,
    positive_mask_from_ids,
    sample_itm_negatives,
    select_negatives,
)
from blipx.losses.lm import lm_inputs_and_targets, lm_loss
from blipx.losses.mlm import mask_tokens, mlm_loss
from blipx.losses.schedules import albef_alpha, alpha_warmup, blip_alpha

__all__ = [
    "FeatureQueue",
    "ITCOutput",
    "ITMNegatives",
    "albef_alpha",
    "all_gather_with_grad",
    "alpha_warmup",
    "blip_alpha",
    "build_itm_inputs",
    "clamp_temperature_",
    "concat_all_gather",
    "diagonal_positive_mask",
    "itc_hard_targets",
    "itc_loss",
    "itm_labels",
    "itm_loss",
    "lm_inputs_and_targets",
    "lm_loss",
    "mask_tokens",
    "mlm_loss",
    "positive_mask_from_ids",
    "sample_itm_negatives",
    "select_negatives",
    "soft_cross_entropy",
    "world_info",
]
