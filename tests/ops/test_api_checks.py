"""Every tensor argument of every public op is checked the same way: a tensor on another device,
of the wrong dtype kind or of the wrong rank is a named error (``<argument>: expected ...``),
before any backend runs."""

from __future__ import annotations

import pytest
import torch

import hysparse_kernels as hk

pytestmark = pytest.mark.filterwarnings("ignore::hysparse_kernels.BackendFallbackWarning")


def _ops():
    """op -> (function, valid keyword arguments, the first tensor argument others are compared with)."""
    q, k, v = torch.randn(1, 4, 8, 8), torch.randn(1, 2, 8, 8), torch.randn(1, 2, 8, 8)
    sink, lens = torch.zeros(4), torch.tensor([8], dtype=torch.int32)
    idx = torch.zeros(1, 2, 8, 2, dtype=torch.int32)
    x, ids = torch.randn(5, 8), torch.randint(0, 4, (5, 2), dtype=torch.int32)
    w, wgu, wd = torch.rand(5, 2), torch.randn(4, 6, 8), torch.randn(4, 8, 3)
    xs, off, inv = hk.moe_permute(x, ids, 4)
    return {
        "attention": (hk.attention, dict(q=q, k=k, v=v, sink=sink), "q"),
        "attention_with_block_scores": (hk.attention_with_block_scores, dict(q=q, k=k, v=v, block_size=4), "q"),
        "topk_blocks": (hk.topk_blocks, dict(block_scores=torch.rand(1, 2, 8, 2), k=1, block_size=4, seqlen_k=8), None),
        "sparse_attention": (hk.sparse_attention, dict(q=q, k=k, v=v, indices=idx, block_size=4, sink=sink), "q"),
        "attention_decode": (hk.attention_decode, dict(q=q[:, :, :1], k_cache=k, v_cache=v, cache_seqlens=lens,
                                                       sink=sink), "q"),
        "sparse_attention_decode": (hk.sparse_attention_decode, dict(q=q[:, :, :1], k_cache=k, v_cache=v,
                                                                     cache_seqlens=lens, indices=idx[:, :, :1],
                                                                     block_size=4, sink=sink), "q"),
        "route": (hk.route, dict(router_logits=torch.randn(5, 4), top_k=2, bias=torch.zeros(4)), "router_logits"),
        "moe": (hk.moe, dict(x=x, w_gate_up=wgu, w_down=wd, weights=w, expert_ids=ids), "x"),
        "moe_permute": (hk.moe_permute, dict(x=x, expert_ids=ids, num_experts=4), "x"),
        "moe_unpermute": (hk.moe_unpermute, dict(y_sorted=xs, inverse=inv, weights=w), "y_sorted"),
        "grouped_gemm": (hk.grouped_gemm, dict(x_sorted=xs, w=torch.randn(4, 3, 8), expert_offsets=off), "x_sorted"),
        "expert_load": (hk.expert_load, dict(expert_ids=ids, num_experts=4), None),
        "update_routing_bias": (hk.update_routing_bias, dict(bias=torch.zeros(4), counts=torch.ones(4), rate=0.1),
                                "bias"),
    }


def _cases(kind):
    out = []
    for op, (_, kw, first) in _ops().items():
        for arg, val in kw.items():
            if not torch.is_tensor(val) or (kind == "device" and arg == first) or (kind == "device" and first is None):
                continue
            out.append(pytest.param(op, arg, id=f"{op}-{arg}"))
    return out


def test_valid_arguments_run():
    for op, (fn, kw, _) in _ops().items():
        fn(**kw)


@pytest.mark.parametrize("op,arg", _cases("device"))
def test_other_device_is_named(op, arg):
    fn, kw, _ = _ops()[op]
    with pytest.raises(ValueError, match=rf"^{arg}: expected a tensor on cpu .*got meta"):
        fn(**{**kw, arg: kw[arg].to("meta")})


@pytest.mark.parametrize("op,arg", _cases("dtype"))
def test_wrong_dtype_kind_is_named(op, arg):
    fn, kw, _ = _ops()[op]
    t = kw[arg]
    bad = t.to(torch.complex64) if t.is_floating_point() else t.float()
    if arg == "counts":  # counts may be integer or floating
        bad = t.bool()
    with pytest.raises(TypeError, match=rf"^{arg}: expected"):
        fn(**{**kw, arg: bad})


@pytest.mark.parametrize("op,arg", [c for c in _cases("rank") if c.id != "expert_load-expert_ids"])  # any shape
def test_wrong_rank_is_named(op, arg):
    fn, kw, _ = _ops()[op]
    with pytest.raises(ValueError, match=rf"^{arg}: expected"):
        fn(**{**kw, arg: kw[arg][None]})
