"""CapFilt: bootstrap a noisy image-text dataset with a captioner and a filter (the BLIP paper, section 3.3)."""

from blipx.capfilt.pipeline import CapFilt, CapFiltSettings, iter_annotations
from blipx.capfilt.report import merge_and_report

__all__ = ["CapFilt", "CapFiltSettings", "iter_annotations", "merge_and_report"]
