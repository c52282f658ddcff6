"""Evaluation: image-text retrieval (ITC top-k + ITM re-rank, R@K) and captioning (BLEU, CIDEr)."""

from blipx.evaluation.captioning import caption_metrics, ptb_tokenize
from blipx.evaluation.ranking import best_positive_rank, chance_recall, positives_from_ids, recall_at_k
from blipx.evaluation.retrieval import encode_for_retrieval, evaluate_retrieval, rerank_with_itm

__all__ = [
    "best_positive_rank",
    "caption_metrics",
    "chance_recall",
    "encode_for_retrieval",
    "evaluate_retrieval",
    "positives_from_ids",
    "ptb_tokenize",
    "recall_at_k",
    "rerank_with_itm",
]
