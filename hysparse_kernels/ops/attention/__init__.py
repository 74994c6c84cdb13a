"""Attention op family: full causal, sliding-window with sink, HySparse block scores and sparse attention."""

from .api import attention, attention_with_block_scores, sparse_attention, topk_blocks

__all__ = ["attention", "attention_with_block_scores", "sparse_attention", "topk_blocks"]
