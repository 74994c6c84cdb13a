"""GPU MoE benchmark (needs CUDA): the Triton fused MoE (``hk.moe(backend="triton")``) against the
per-expert torch loop and, where installed, vLLM's ``fused_moe``; MiMo-V2-Flash shapes by default
(256 experts, top-8), T from 1 to 4096. Reports TFLOP/s and effective GB/s against the card's
measured peaks (a large bf16 matmul and a large copy, measured first in the same run).

    python bench/ops/gpu/moe.py --experts 256 --top-k 8 --hidden 4096 --inter 2048 --tokens 1 16 64 512 4096

Record the table in bench/RESULTS.md with the card, date and versions.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

import hysparse_kernels as hk
from hysparse_kernels.testing import cuda_median_ms


def bench(fn, warmup=3, iters=10) -> float:
    """Median milliseconds of ``fn`` (CUDA events)."""
    return cuda_median_ms(fn, warmup, iters)


def peaks(dtype) -> tuple[float, float]:
    a = torch.randn(8192, 8192, device="cuda", dtype=dtype)
    ms = bench(lambda: a @ a)
    tflops = 2 * 8192**3 / ms / 1e9
    big = torch.empty(2**28, device="cuda", dtype=torch.uint8)
    dst = torch.empty_like(big)
    ms = bench(lambda: dst.copy_(big))
    return tflops, 2 * big.numel() / ms / 1e6


def torch_loop(x, wgu, wd, w, ids):
    inter = wd.shape[2]
    out = torch.zeros(x.shape, dtype=torch.float32, device=x.device)
    for e in range(wgu.shape[0]):
        tok, slot = (ids == e).nonzero(as_tuple=True)
        if tok.numel() == 0:
            continue
        gu = x[tok] @ wgu[e].T
        h = F.silu(gu[:, :inter]) * gu[:, inter:]
        out.index_add_(0, tok, w[tok, slot, None] * (h @ wd[e].T).float())
    return out.to(x.dtype)


def vllm_fused_moe():
    try:
        from vllm.model_executor.layers.fused_moe import fused_experts
    except Exception:  # not installed, or an incompatible build
        return None
    return lambda x, wgu, wd, w, ids: fused_experts(x, wgu, wd, w, ids.to(torch.int32))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--experts", type=int, default=256)
    p.add_argument("--top-k", type=int, default=8)
    p.add_argument("--hidden", type=int, default=4096)
    p.add_argument("--inter", type=int, default=2048)
    p.add_argument("--tokens", type=int, nargs="+", default=[1, 16, 64, 512, 4096])
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16"])
    args = p.parse_args(argv)
    dtype = getattr(torch, args.dtype)
    E, k, D, inter = args.experts, args.top_k, args.hidden, args.inter
    peak_tf, peak_gbs = peaks(dtype)
    print(f"# {torch.cuda.get_device_name()}, torch {torch.__version__}, {time.strftime('%Y-%m-%d')}; "
          f"measured peaks: {peak_tf:.0f} TFLOP/s ({args.dtype} matmul), {peak_gbs:.0f} GB/s (copy)")
    wgu = torch.randn(E, 2 * inter, D, device="cuda", dtype=dtype) / D**0.5
    wd = torch.randn(E, D, inter, device="cuda", dtype=dtype) / inter**0.5
    impls = {"loop": torch_loop, "triton": lambda *a: hk.moe(*a, backend="triton")}
    if (vllm := vllm_fused_moe()) is not None:
        impls["vllm"] = vllm
    print("| T | impl | ms | TFLOP/s | % peak | GB/s | % peak | vs loop |")
    print("|---|---|---|---|---|---|---|---|")
    for T in args.tokens:
        x = torch.randn(T, D, device="cuda", dtype=dtype)
        w, ids = hk.route(torch.randn(T, E, device="cuda"), top_k=k, scoring="sigmoid")
        active = int(torch.unique(ids).numel())
        flops = 2.0 * T * k * 3 * inter * D
        nbytes = x.element_size() * (active * 3 * inter * D + 2 * T * D)
        base = None
        for name, fn in impls.items():
            ms = bench(lambda: fn(x, wgu, wd, w, ids), iters=3 if name == "loop" else 20)
            base = base or ms
            tf, gbs = flops / ms / 1e9, nbytes / ms / 1e6
            print(f"| {T} | {name} | {ms:.3f} | {tf:.1f} | {100 * tf / peak_tf:.0f}% | {gbs:.0f} | "
                  f"{100 * gbs / peak_gbs:.0f}% | {base / ms:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
