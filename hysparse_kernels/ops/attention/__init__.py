"""Attention op family: full causal, sliding-window with sink, HySparse block scores and sparse attention."""

from .api import (
    attention,
    attention_decode,
    attention_with_block_scores,
    sparse_attention,
    sparse_attention_decode,
    topk_blocks,
)

__all__ = [
    "attention",
    "attention_decode",
    "attention_with_block_scores",
    "sparse_attention",
    "sparse_attention_decode",
    "topk_blocks",
]
