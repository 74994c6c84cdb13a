"""GPU benchmark of the Triton attention kernels against torch SDPA, FlexAttention and flash-attn.

Measures, in one run on one card (ratios are against baselines measured in the same run):

* full causal attention, forward and forward+backward, TFLOP/s at S = 4K / 16K / 32K, D = 128, bf16:
  ours (``backend="triton"``) vs ``torch.nn.functional.scaled_dot_product_attention`` (causal),
  FlexAttention (compiled, causal block mask) and ``flash_attn_func`` when flash-attn is installed;
* sliding-window attention (``--window``, default 4096) with a sink: ours vs FlexAttention with a
  sliding-window mask and flash-attn's ``window_size`` (neither has a sink; the sink costs one
  extra logit per row);
* HySparse sparse attention at top-``k`` of ``block``-token blocks (default top-16 of 64) vs our
  own full attention at the longest length: the speed-up of the sparse layer;
* decode latency (``Sq = 1``) over a ``--decode-context`` cache: ours (split-KV) vs SDPA.

Causal FLOPs count the visible half: ``2 * 2 * B * Hq * S^2 / 2 * D`` for the forward, 2.5x that
for the backward; windowed and sparse FLOPs count the keys actually visible.

Usage (GPU only; prints a table and writes JSON)::

    python bench/ops/gpu/attention.py --seqlens 4096 16384 32768 --json bench/ops/gpu/attention.json
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seqlens", type=int, nargs="+", default=[4096, 16384, 32768], help="sequence lengths")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--heads", type=int, default=32, help="query heads Hq")
    p.add_argument("--kv-heads", type=int, default=8, help="KV heads Hkv (GQA); SDPA/Flex get them repeated")
    p.add_argument("--dim", type=int, default=128, help="head dim (Dqk = Dv)")
    p.add_argument("--dtype", default="bf16", choices=("bf16", "fp16"))
    p.add_argument("--window", type=int, default=4096, help="sliding window of the SWA rows")
    p.add_argument("--topk", type=int, default=16, help="selected blocks per query (sparse)")
    p.add_argument("--block-size", type=int, default=64, help="HySparse block size")
    p.add_argument("--selection", default="oracle", choices=("oracle", "local", "random"),
                   help="sparse block lists: top-k of our block scores on the inputs (oracle), the query's "
                        "own and preceding blocks plus block 0 (local), or top-k of random scores (random: "
                        "least overlap between neighbouring queries, the worst case for shared unions)")
    p.add_argument("--decode-context", type=int, default=32768, help="cache length of the decode rows")
    p.add_argument("--decode-batch", type=int, default=8)
    p.add_argument("--no-backward", action="store_true", help="forward only")
    p.add_argument("--providers", nargs="+", default=["triton", "sdpa", "flex", "flash-attn"],
                   help="which implementations to time")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--json", default="bench/ops/gpu/attention.json", help="where to write the results")
    return p.parse_args(argv)


def bench_ms(fn, warmup, iters):
    """Median wall time of ``fn`` in milliseconds (CUDA events, after ``warmup`` calls)."""
    from hysparse_kernels.testing import cuda_median_ms

    return cuda_median_ms(fn, warmup, iters)


def calibrate(dtype):
    """The card's reach: a large matmul (TFLOP/s) and a large copy (GB/s)."""
    import torch

    a = torch.randn(8192, 8192, device="cuda", dtype=dtype)
    ms = bench_ms(lambda: a @ a, 3, 10)
    x = torch.empty(1 << 28, device="cuda", dtype=torch.uint8)
    y = torch.empty_like(x)
    ms_copy = bench_ms(lambda: y.copy_(x), 3, 10)
    return {"matmul_tflops": 2 * 8192**3 / ms / 1e9, "copy_gbps": 2 * x.numel() / ms_copy / 1e6}


def attention_flops(B, H, Sq, visible_keys, D, backward):
    fwd = 4.0 * B * H * Sq * visible_keys * D
    return fwd * (3.5 if backward else 1.0)  # fwd + bwd (2.5x fwd)


def make_runners(args, S, window, sink_on):
    """name -> (forward thunk, forward+backward thunk or None) for one configuration."""
    import torch
    import torch.nn.functional as F

    import hysparse_kernels as hk

    dt = torch.bfloat16 if args.dtype == "bf16" else torch.float16
    B, Hq, Hkv, D = args.batch, args.heads, args.kv_heads, args.dim
    q = torch.randn(B, Hq, S, D, device="cuda", dtype=dt, requires_grad=True)
    k = torch.randn(B, Hkv, S, D, device="cuda", dtype=dt, requires_grad=True)
    v = torch.randn(B, Hkv, S, D, device="cuda", dtype=dt, requires_grad=True)
    sink = torch.zeros(Hq, device="cuda", requires_grad=True) if sink_on else None
    do = torch.randn(B, Hq, S, D, device="cuda", dtype=dt)
    kr, vr = k.repeat_interleave(Hq // Hkv, 1), v.repeat_interleave(Hq // Hkv, 1)
    runners = {}

    def with_bwd(f):
        return lambda: f().backward(do)

    if "triton" in args.providers:
        f = lambda: hk.attention(q, k, v, window=window, sink=sink, backend="triton")  # noqa: E731
        runners["triton"] = (f, with_bwd(f))
    if "sdpa" in args.providers and window is None:
        f = lambda: F.scaled_dot_product_attention(q, kr, vr, is_causal=True)  # noqa: E731
        runners["sdpa"] = (f, with_bwd(f))
    if "flex" in args.providers:
        try:
            from torch.nn.attention.flex_attention import create_block_mask, flex_attention

            W = window

            def mask_mod(b, h, qi, ki):
                return (qi >= ki) & (qi - ki < W) if W is not None else qi >= ki

            bm = create_block_mask(mask_mod, None, None, S, S, device="cuda")
            flex = torch.compile(flex_attention)
            f = lambda: flex(q, k, v, block_mask=bm, enable_gqa=True)  # noqa: E731
            runners["flex"] = (f, with_bwd(f))
        except Exception as exc:  # FlexAttention missing or failing to compile: say so, go on
            print(f"  flex skipped: {type(exc).__name__}: {exc}", file=sys.stderr)
    if "flash-attn" in args.providers:
        try:
            from flash_attn import flash_attn_func

            qt, kt, vt = (t.detach().transpose(1, 2).contiguous().requires_grad_() for t in (q, k, v))
            dot = do.transpose(1, 2).contiguous()
            ws = (window - 1, 0) if window is not None else (-1, -1)
            f = lambda: flash_attn_func(qt, kt, vt, causal=True, window_size=ws)  # noqa: E731
            runners["flash-attn"] = (f, lambda: f().backward(dot))
        except ImportError:
            pass
    return runners


def run_dense(args, rows):
    for S in args.seqlens:
        for label, window, sink_on in (("causal", None, False), (f"swa{args.window}+sink", args.window, True)):
            if window is not None and window >= S:
                continue
            vis = S / 2 if window is None else window - (window - 1) * window / (2 * S)
            runners = make_runners(args, S, window, sink_on)
            base = {}
            for name, (fwd, fwdbwd) in runners.items():
                for pas, fn in (("fwd", fwd), ("fwd+bwd", None if args.no_backward else fwdbwd)):
                    if fn is None:
                        continue
                    ms = bench_ms(fn, args.warmup, args.iters)
                    tf = attention_flops(args.batch, args.heads, S, vis, args.dim, pas != "fwd") / ms / 1e9
                    rows.append({"pattern": label, "S": S, "pass": pas, "impl": name, "ms": ms, "tflops": tf})
                    base.setdefault(pas, {})[name] = ms
            for r in rows:
                if r["pattern"] == label and r["S"] == S and "triton" in base.get(r["pass"], {}):
                    r["triton_speedup"] = r["ms"] / base[r["pass"]]["triton"]


def run_sparse(args, rows):
    import torch

    import hysparse_kernels as hk

    S = max(args.seqlens)
    dt = torch.bfloat16 if args.dtype == "bf16" else torch.float16
    B, Hq, Hkv, D, bs = args.batch, args.heads, args.kv_heads, args.dim, args.block_size
    q = torch.randn(B, Hq, S, D, device="cuda", dtype=dt)
    k = torch.randn(B, Hkv, S, D, device="cuda", dtype=dt)
    v = torch.randn(B, Hkv, S, D, device="cuda", dtype=dt)
    n_blocks = -(-S // bs)
    if args.selection == "oracle":
        _, _, scores = hk.attention_with_block_scores(q, k, v, block_size=bs, backend="triton")
    elif args.selection == "random":
        scores = torch.rand(B, Hkv, S, n_blocks, device="cuda")
    else:  # local: own block highest, then the preceding ones, block 0 (attention sink) next
        own = (torch.arange(S, device="cuda") // bs)[:, None]
        blk = torch.arange(n_blocks, device="cuda")[None, :]
        scores = torch.where(blk <= own, 1.0 / (1.0 + own - blk).float(), 0.0)
        scores[:, 0] = 0.75
        scores = scores.expand(B, Hkv, S, n_blocks).contiguous()
    idx = hk.topk_blocks(scores, args.topk, block_size=bs, seqlen_k=S, backend="triton")
    ms_full = bench_ms(lambda: hk.attention(q, k, v, backend="triton"), args.warmup, args.iters)
    ms_sparse = bench_ms(lambda: hk.sparse_attention(q, k, v, idx, block_size=bs, backend="triton"), args.warmup, args.iters)
    ms_topk = bench_ms(lambda: hk.topk_blocks(scores, args.topk, block_size=bs, seqlen_k=S, backend="triton"),
                       args.warmup, args.iters)
    ms_scores = bench_ms(lambda: hk.attention_with_block_scores(q, k, v, block_size=bs, backend="triton"),
                         args.warmup, args.iters)
    vis = min(args.topk * bs, S / 2)
    for impl, ms, keys in (("triton full", ms_full, S / 2), (f"triton sparse top-{args.topk}x{bs} {args.selection}", ms_sparse, vis),
                           ("triton full + block scores", ms_scores, S / 2), ("triton topk_blocks", ms_topk, 0)):
        rows.append({"pattern": "hysparse", "S": S, "pass": "fwd", "impl": impl, "ms": ms,
                     "tflops": attention_flops(B, Hq, S, keys, D, False) / ms / 1e9 if keys else 0.0,
                     "triton_speedup": ms_full / ms})


def run_decode(args, rows):
    import torch
    import torch.nn.functional as F

    import hysparse_kernels as hk

    dt = torch.bfloat16 if args.dtype == "bf16" else torch.float16
    B, Hq, Hkv, D, L = args.decode_batch, args.heads, args.kv_heads, args.dim, args.decode_context
    q = torch.randn(B, Hq, 1, D, device="cuda", dtype=dt)
    kc = torch.randn(B, Hkv, L, D, device="cuda", dtype=dt)
    vc = torch.randn(B, Hkv, L, D, device="cuda", dtype=dt)
    lens = torch.full((B,), L, device="cuda", dtype=torch.int32)
    kr, vr = kc.repeat_interleave(Hq // Hkv, 1), vc.repeat_interleave(Hq // Hkv, 1)
    ours = bench_ms(lambda: hk.attention_decode(q, kc, vc, lens, backend="triton"), args.warmup, args.iters)
    sdpa = bench_ms(lambda: F.scaled_dot_product_attention(q, kr, vr), args.warmup, args.iters)
    gbytes = 2 * kc.numel() * kc.element_size() / 1e9
    for impl, ms in (("triton split-KV", ours), ("sdpa (repeated KV)", sdpa)):
        rows.append({"pattern": f"decode B{B} L{L}", "S": L, "pass": "fwd", "impl": impl, "ms": ms,
                     "gbps_kv": gbytes / ms * 1e3, "triton_speedup": ms / ours})


def print_table(rows):
    head = f"{'pattern':<18} {'S':>6} {'pass':<8} {'impl':<36} {'ms':>9} {'TFLOP/s':>8} {'ms/triton':>9}"
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r['pattern']:<18} {r['S']:>6} {r['pass']:<8} {r['impl']:<36} {r['ms']:>9.3f} "
              f"{r.get('tflops', float('nan')):>8.1f} {r.get('triton_speedup', float('nan')):>9.2f}")


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        print("bench/ops/gpu/attention.py needs a CUDA device (the Triton kernels run compiled); none found.", file=sys.stderr)
        return 2
    import triton

    dt = torch.bfloat16 if args.dtype == "bf16" else torch.float16
    meta = {"device": torch.cuda.get_device_name(), "capability": torch.cuda.get_device_capability(),
            "torch": torch.__version__, "triton": triton.__version__, "python": platform.python_version(),
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "args": vars(args)}
    try:
        import flash_attn

        meta["flash_attn"] = flash_attn.__version__
    except ImportError:
        meta["flash_attn"] = None
    meta["calibration"] = calibrate(dt)
    print(json.dumps({k: meta[k] for k in ("device", "torch", "triton", "flash_attn", "calibration")}))
    rows: list[dict] = []
    run_dense(args, rows)
    run_sparse(args, rows)
    run_decode(args, rows)
    print_table(rows)
    with open(args.json, "w") as fh:
        json.dump({"meta": meta, "rows": rows}, fh, indent=1, default=str)
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
