"""MoE op family: routing (softmax, sigmoid with selection bias, group-limited), token
permutation, grouped expert GEMM and the fused expert MLP, with load statistics for balancing."""

from .api import expert_load, grouped_gemm, moe, moe_permute, moe_unpermute, route, update_routing_bias

__all__ = ["route", "moe_permute", "grouped_gemm", "moe_unpermute", "moe", "expert_load", "update_routing_bias"]
