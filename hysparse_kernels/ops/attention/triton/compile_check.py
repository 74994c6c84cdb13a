"""Compile every Triton attention kernel for a GPU architecture without a GPU.

The interpreter runs the kernels' arithmetic but cannot see layouts, shared-memory budgets or
register pressure; ``triton.compile`` on a ``GPUTarget`` runs the whole lowering (TTIR -> TTGIR
-> LLVM -> PTX -> cubin with the bundled ptxas) for the configs the launchers ship with.

Must run with ``TRITON_INTERPRET`` unset or 0 (with it, ``@triton.jit`` builds interpreter
functions that cannot be compiled): ``python -m hysparse_kernels.ops.attention.triton.compile_check 90``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass

from .config import default_config, dot_precision, head_block

_PTR = {"bf16": "*bf16", "fp16": "*fp16", "fp32": "*fp32", "i32": "*i32"}


@dataclass
class KernelSpec:
    name: str  # readable id: kernel + config
    kernel: object  # the @triton.jit function (heuristics wrappers unwrapped)
    pointers: dict  # arg name -> element type key of _PTR
    constexprs: dict  # every tl.constexpr argument with its value
    floats: tuple = ()  # scalar fp32 args; every other argument is an i32 scalar


def _unwrap(kernel):
    while not hasattr(kernel, "arg_names") or type(kernel).__name__ in ("Heuristics", "Autotuner"):
        kernel = kernel.fn
    return kernel


def _signature(spec: KernelSpec) -> tuple[dict, dict]:
    fn = _unwrap(spec.kernel)
    sig = {}
    for name in fn.arg_names:
        if name in spec.constexprs:
            sig[name] = "constexpr"
        elif name in spec.pointers:
            sig[name] = _PTR[spec.pointers[name]]
        elif name in spec.floats:
            sig[name] = "fp32"
        else:
            sig[name] = "i32"
    return sig, dict(spec.constexprs)


def shipped_specs(dtype: str = "bf16", full: bool = True) -> list[KernelSpec]:
    """The kernel configurations the launchers use on a GPU (heuristic defaults, not interpreted)."""
    import torch

    from . import attention as fwd
    from . import attention_bwd as bwd
    from . import attention_decode as decode
    from . import sparse_attention as sparse
    from . import sparse_attention_bwd as sparse_bwd
    from . import topk_blocks as topk

    tdt = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[dtype]
    prec = dot_precision(tdt)
    specs = []
    # (dqk, dv, causal, window, sink, block-score block size, per-sequence lengths)
    if full:
        fwd_cases = [(128, 128, True, None, False, None, False), (128, 128, True, 1024, True, None, False),
                     (192, 128, True, None, False, None, False), (128, 128, True, None, False, 64, False),
                     (128, 128, True, None, False, 64, True),
                     (64, 64, False, None, False, None, False), (64, 64, True, None, True, None, False)]
    else:  # one compile that switches every code path on: window, sink, block scores, lengths
        fwd_cases = [(128, 128, True, 1024, True, 64, True)]
    for dqk, dv, causal, window, sink, bs, ragged in fwd_cases:
        op = "attention_fwd" if bs is None else "attention_with_block_scores"
        cfg = default_config(op, {"dqk": dqk, "dv": dv, "sk": 16384})
        specs.append(KernelSpec(
            f"attn_fwd-d{dqk}v{dv}-{'causal' if causal else 'full'}{'-w' if window else ''}{'-sink' if sink else ''}"
            f"{'-scores' if bs else ''}{'-ragged' if ragged else ''}-{cfg.block_m}x{bs or cfg.block_n}",
            fwd._attn_fwd_kernel,
            dict(Q=dtype, K=dtype, V=dtype, SINK="fp32", OUT=dtype, LSE="fp32", TMAX="fp32", SCORES_OUT="i32",
                 LENS="i32"),
            dict(DQK=dqk, DV=dv, CAUSAL=causal, HAS_WINDOW=window is not None, HAS_SINK=sink, SCORES=bs is not None,
                 RAGGED=ragged, BLOCK_M=cfg.block_m, BLOCK_N=bs or cfg.block_n, BLOCK_DQK=head_block(dqk), BLOCK_DV=head_block(dv),
                 PREC=prec, DOT_F32=False, num_warps=cfg.num_warps, num_stages=cfg.num_stages),
            floats=("qk_scale",)))
    for dqk, dv, window in ([(128, 128, None), (192, 128, 1024)] if full else [(128, 128, None)]):
        cfg = default_config("attention_bwd", {"dqk": dqk, "dv": dv})
        common = dict(DQK=dqk, DV=dv, CAUSAL=True, HAS_WINDOW=window is not None, BLOCK_M=cfg.block_m,
                      BLOCK_N=cfg.block_n, BLOCK_DQK=head_block(dqk), BLOCK_DV=head_block(dv), PREC=prec,
                      DOT_F32=False, num_warps=cfg.num_warps, num_stages=cfg.num_stages)
        ptrs = dict(Q=dtype, K=dtype, V=dtype, DO=dtype, LSE="fp32", DELTA="fp32")
        specs.append(KernelSpec(f"attn_bwd_dq-d{dqk}v{dv}", bwd._attn_bwd_dq_kernel, {**ptrs, "DQ": dtype}, common,
                                floats=("qk_scale", "scale")))
        specs.append(KernelSpec(f"attn_bwd_dkdv-d{dqk}v{dv}", bwd._attn_bwd_dkdv_kernel,
                                {**ptrs, "DK": dtype, "DV_OUT": dtype}, common, floats=("qk_scale", "scale")))
    cfg = default_config("sparse_attention", {})
    cfg_b = default_config("sparse_attention_bwd", {})
    for dqk, dv, group, decode_mode in ([(128, 128, 4, False), (192, 128, 16, True)] if full else [(128, 128, 4, False)]):
        block_q = 1 if decode_mode else max(1, cfg.block_m // group)
        c = dict(DQK=dqk, DV=dv, BLOCK_SIZE=64, BLOCK_K=16, BLOCK_DQK=head_block(dqk), BLOCK_DV=head_block(dv),
                 PREC=prec, DOT_F32=False)
        specs.append(KernelSpec(
            f"sparse_fwd-d{dqk}v{dv}-g{group}xq{block_q}{'-decode' if decode_mode else ''}", sparse._sparse_fwd_kernel,
            dict(Q=dtype, K=dtype, V=dtype, IDX="i32", SEQLENS="i32", SINK="fp32", OUT=dtype, LSE="fp32"),
            {**c, "HAS_SINK": True, "DECODE": decode_mode, "BLOCK_Q": block_q, "BLOCK_M": max(16, block_q * group),
             "BLOCK_L": max(16, block_q * 16), "num_warps": cfg.num_warps, "num_stages": cfg.num_stages},
            floats=("qk_scale",)))
        block_q = max(1, cfg_b.block_m // group)
        c = {**c, "BLOCK_Q": block_q, "BLOCK_M": max(16, block_q * group), "BLOCK_L": max(16, block_q * 16),
             "num_warps": cfg_b.num_warps, "num_stages": cfg_b.num_stages}
        specs.append(KernelSpec(
            f"sparse_bwd-d{dqk}v{dv}-g{group}xq{block_q}", sparse_bwd._sparse_bwd_kernel,
            dict(Q=dtype, K=dtype, V=dtype, DO=dtype, LSE="fp32", DELTA="fp32", IDX="i32", DQ=dtype, DK32="fp32",
                 DV32="fp32"), c, floats=("qk_scale", "scale")))
    cfg = default_config("decode", {})
    specs.append(KernelSpec(
        "decode_split-d128-g8xSq2-window", decode._decode_split_kernel,
        dict(Q=dtype, K=dtype, V=dtype, SEQLENS="i32", O_PART="fp32", LSE_PART="fp32"),
        dict(DQK=128, DV=128, HAS_WINDOW=True, BLOCK_M=16, BLOCK_N=cfg.block_n, BLOCK_DQK=128, BLOCK_DV=128,
             PREC=prec, DOT_F32=False, num_warps=cfg.num_warps, num_stages=cfg.num_stages), floats=("qk_scale",)))
    specs.append(KernelSpec(
        "decode_combine-d128-sink", decode._decode_combine_kernel,
        dict(O_PART="fp32", LSE_PART="fp32", SINK="fp32", OUT=dtype, LSE="fp32"),
        dict(DV=128, HAS_SINK=True, BLOCK_S=32, BLOCK_DV=128, num_warps=4)))
    cfg = default_config("topk_blocks", {})
    for ragged in (False, True):
        specs.append(KernelSpec(
            f"topk_blocks-512{'-ragged' if ragged else ''}", topk._topk_blocks_kernel,
            dict(SCORES="fp32", IDX="i32", LENS="i32"),
            dict(BLOCK_R=cfg.block_m, BLOCK_B=512, RAGGED=ragged, num_warps=cfg.num_warps)))
    return specs


def compile_spec(spec: KernelSpec, arch: int):
    """Compile ``spec`` for ``sm_{arch}``; returns the CompiledKernel (``.asm['ptx']``, ``['cubin']``)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    constexprs = dict(spec.constexprs)
    options = {k: constexprs.pop(k) for k in ("num_warps", "num_stages") if k in constexprs}
    spec_no_opts = KernelSpec(spec.name, spec.kernel, spec.pointers, constexprs, spec.floats)
    sig, consts = _signature(spec_no_opts)
    src = ASTSource(_unwrap(spec.kernel), sig, consts)
    return triton.compile(src, target=GPUTarget("cuda", arch, 32), options=options)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Compile every Triton attention kernel for sm_XX without a GPU.")
    parser.add_argument("arch", type=int, nargs="+", help="compute capabilities, e.g. 80 90")
    parser.add_argument("--dtype", default="bf16", choices=("bf16", "fp16", "fp32"))
    parser.add_argument("--quick", action="store_true", help="one config per kernel")
    parser.add_argument("--only", default="", help="compile only kernels whose id starts with this prefix")
    parser.add_argument("--json", action="store_true", help="print one JSON object per kernel")
    args = parser.parse_args(argv)
    failed = 0
    for arch in args.arch:
        for spec in shipped_specs(args.dtype, full=not args.quick):
            if not spec.name.startswith(args.only):
                continue
            t0 = time.perf_counter()
            try:
                ck = compile_spec(spec, arch)
                ptx = ck.asm["ptx"]
                rec = {"arch": arch, "kernel": spec.name, "ok": True, "seconds": round(time.perf_counter() - t0, 2),
                       "wgmma": "wgmma" in ptx, "mma": "mma.sync" in ptx, "shared": ck.metadata.shared,
                       "cubin_bytes": len(ck.asm["cubin"])}
            except Exception as exc:  # report every failure, then exit non-zero
                failed += 1
                rec = {"arch": arch, "kernel": spec.name, "ok": False, "error": f"{type(exc).__name__}: {exc}"[:2000]}
            print(json.dumps(rec) if args.json else "  ".join(f"{k}={v}" for k, v in rec.items()), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
