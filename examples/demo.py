"""End-to-end HySparse attention on random tensors, on whatever backend `auto` picks here.

A full-attention layer emits block scores, top-k picks 16 blocks per query and KV group, and a
sparse layer attends to those blocks of the full layer's KV cache next to its own SWA branch;
the two branches are mixed by sigmoid gates. Every result is checked against the reference.
"""

from __future__ import annotations

import time

import torch

import hysparse_kernels as hk
from hysparse_kernels import dispatch
from hysparse_kernels.testing import max_abs_err


def timed(fn, *args, **kwargs):
    fn(*args, **kwargs)  # warm-up: the first call imports the backend and builds (or loads) its kernel
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, (time.perf_counter() - start) * 1e3


def main() -> None:
    torch.manual_seed(0)
    B, Hq, Hkv, S, D, block, topk, window = 1, 8, 2, 1024, 64, 64, 4, 128
    x = lambda *shape: torch.randn(*shape)  # noqa: E731
    q_full, k_full, v_full = x(B, Hq, S, D), x(B, Hkv, S, D), x(B, Hkv, S, D)
    q_sparse, k_swa, v_swa = x(B, Hq, S, D), x(B, Hkv, S, D), x(B, Hkv, S, D)
    sink = torch.zeros(Hq)
    gate_a, gate_b = torch.rand(B, Hq, S, 1), torch.rand(B, Hq, S, 1)

    rows = []
    (out_full, _, scores), t = timed(hk.attention_with_block_scores, q_full, k_full, v_full, block_size=block)
    rows.append(("full + block scores", "attention_with_block_scores", t))
    idx, t = timed(hk.topk_blocks, scores, topk, block_size=block, seqlen_k=S)
    rows.append((f"top-{topk} blocks", "topk_blocks", t))
    o_sparse, t = timed(hk.sparse_attention, q_sparse, k_full, v_full, idx, block_size=block, sink=sink)
    rows.append(("sparse (shared KV)", "sparse_attention_fwd", t))
    o_swa, t = timed(hk.attention, q_sparse, k_swa, v_swa, window=window, sink=sink)
    rows.append((f"SWA {window} + sink", "attention_fwd", t))
    out_layer = torch.sigmoid(gate_a) * o_sparse + torch.sigmoid(gate_b) * o_swa

    with hk.use_backend("reference"):
        ref_full, _, ref_scores = hk.attention_with_block_scores(q_full, k_full, v_full, block_size=block)
        ref_sparse = hk.sparse_attention(q_sparse, k_full, v_full, idx, block_size=block, sink=sink)
        ref_swa = hk.attention(q_sparse, k_swa, v_swa, window=window, sink=sink)
    ref_layer = torch.sigmoid(gate_a) * ref_sparse + torch.sigmoid(gate_b) * ref_swa

    _, t_sdpa = timed(torch.nn.functional.scaled_dot_product_attention, q_full, k_full, v_full, is_causal=True, enable_gqa=True)

    print(f"\nHySparse attention, B={B} Hq={Hq} Hkv={Hkv} S={S} D={D}, block {block}, top-{topk}, window {window}")
    print(f"{'step':<22} {'backend':<10} {'ms':>8}")
    for label, op, ms in rows:
        print(f"{label:<22} {dispatch.resolve(op, 'cpu'):<10} {ms:>8.1f}")
    print(f"{'torch SDPA (causal)':<22} {'torch':<10} {t_sdpa:>8.1f}")
    print(f"\nmax |err| vs reference: full {max_abs_err(out_full, ref_full):.2e}, "
          f"scores {max_abs_err(scores, ref_scores):.2e}, sparse layer {max_abs_err(out_layer, ref_layer):.2e}")
    sel = idx[idx >= 0].numel() / idx.numel()
    print(f"selected {sel:.0%} of top-{topk} slots; the sparse branch reads {topk * block} of up to {S} keys per query")


if __name__ == "__main__":
    main()
