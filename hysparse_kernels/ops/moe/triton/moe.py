"""Triton fused MoE: grouped GEMMs over the expert-sorted (token, slot) pairs.

Work is cut into *blocks* of at most ``BLOCK_M`` consecutive sorted rows that all belong to one
expert (block-aligned expert segments: a segment of n rows gives ceil(n / BLOCK_M) blocks, the
last one masked). Each program computes one (block, BLOCK_N columns) tile, so a tile loads one
expert's weights and never mixes experts.

``moe`` runs two kernels:

1. ``_moe_gate_up_kernel``: rows gather their token of x directly (the permutation is fused in the
   loads), two accumulators (gate rows ``n`` and up rows ``I + n`` of the split ``w_gate_up``),
   ``SiLU(gate) * up`` in the epilogue -> h ``[T*k, I]`` in x's dtype (sorted order).
2. ``_moe_down_kernel``: ``h @ w_down[e].T`` with the routing weight of each row in the epilogue,
   stored at the row's *pair* index (token * k + slot): that store is the un-permute, and the
   combine is then a contiguous ``[T, k, D] -> [T, D]`` sum.

``grouped_gemm`` is the plain kernel (``_grouped_gemm_kernel``) on the same block list.

Under ``TRITON_INTERPRET=1`` (CPU), bf16 ``tl.dot`` multiplies raw bits, so the tiles are cast to
float32 before the dot there (constexpr ``DOT_F32``); compiled GPU code keeps bf16 tensor-core dots.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from .... import tuned
from ....backends import triton_interpreted


def _dot_f32(dtype: torch.dtype) -> bool:
    return dtype == torch.bfloat16 and triton_interpreted()


def _acc(dtype: torch.dtype):
    """Accumulator dtype: float32, float64 for float64 inputs (the float64 checks)."""
    return tl.float64 if dtype == torch.float64 else tl.float32


def _block_size_m(rows_per_expert: float) -> int:
    # Small segments (decode) waste less of a 16-row block; 16 is tl.dot's minimum.
    return 16 if rows_per_expert <= 16 else (32 if rows_per_expert <= 64 else 64)


def expert_blocks(offsets: Tensor, block_m: int) -> tuple[Tensor, Tensor, Tensor]:
    """Block list of the sorted rows: (expert, first row, end row) int32 ``[num_blocks]`` each."""
    counts = offsets[1:] - offsets[:-1]
    nblk = (counts + block_m - 1) // block_m
    E = counts.numel()
    expert = torch.repeat_interleave(torch.arange(E, device=offsets.device), nblk)
    first_block = torch.cumsum(nblk, 0) - nblk
    within = torch.arange(expert.numel(), device=offsets.device) - first_block[expert]
    start = offsets[:-1][expert] + within * block_m
    end = offsets[1:][expert]
    return expert.to(torch.int32), start.to(torch.int32), end.to(torch.int32)


@triton.jit
def _grouped_gemm_kernel(
    p_x, p_rowsrc, p_w, p_y, p_scale, p_rowdst, p_blk_e, p_blk_start, p_blk_end,
    N, K, stride_x, stride_we, stride_wn, stride_y,
    GATHER: tl.constexpr, SCALE: tl.constexpr, SCATTER: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, DOT_F32: tl.constexpr, ACC: tl.constexpr,
):
    # y[rows, n] = x[rows] @ w[e, n, :]^T for one (block, BLOCK_N) tile; options:
    # GATHER (row r reads x[p_rowsrc[r]]), SCALE (times p_scale[r]), SCATTER (stores at p_rowdst[r]).
    pid_b = tl.program_id(0)
    pid_n = tl.program_id(1)
    e = tl.load(p_blk_e + pid_b)
    start = tl.load(p_blk_start + pid_b)
    end = tl.load(p_blk_end + pid_b)
    o_m = start + tl.arange(0, BLOCK_M)
    m_m = o_m < end
    o_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    m_n = o_n < N
    src = tl.load(p_rowsrc + o_m, mask=m_m, other=0) if GATHER else o_m
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC)
    for k0 in range(0, K, BLOCK_K):
        o_k = k0 + tl.arange(0, BLOCK_K)
        m_k = o_k < K
        b_x = tl.load(p_x + src[:, None].to(tl.int64) * stride_x + o_k[None, :], mask=m_m[:, None] & m_k[None, :], other=0.0)
        b_w = tl.load(p_w + e.to(tl.int64) * stride_we + o_n[None, :] * stride_wn + o_k[:, None],
                      mask=m_n[None, :] & m_k[:, None], other=0.0)  # [BLOCK_K, BLOCK_N] = w[e, n, k]^T
        if DOT_F32:
            b_x = b_x.to(tl.float32)
            b_w = b_w.to(tl.float32)
        acc += tl.dot(b_x, b_w)  # [BLOCK_M, BLOCK_K] @ [BLOCK_K, BLOCK_N]
    if SCALE:
        acc = acc * tl.load(p_scale + o_m, mask=m_m, other=0.0)[:, None]
    dst = tl.load(p_rowdst + o_m, mask=m_m, other=0) if SCATTER else o_m
    tl.store(p_y + dst[:, None].to(tl.int64) * stride_y + o_n[None, :], acc.to(p_y.dtype.element_ty),
             mask=m_m[:, None] & m_n[None, :])


@triton.jit
def _moe_gate_up_kernel(
    p_x, p_rowtok, p_w, p_h, p_blk_e, p_blk_start, p_blk_end,
    INTER, K, stride_x, stride_we, stride_wn, stride_h,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, DOT_F32: tl.constexpr, ACC: tl.constexpr,
):
    # h[rows, n] = SiLU(x[tok] @ w[e, n]^T) * (x[tok] @ w[e, INTER + n]^T), split gate/up layout.
    pid_b = tl.program_id(0)
    pid_n = tl.program_id(1)
    e = tl.load(p_blk_e + pid_b)
    start = tl.load(p_blk_start + pid_b)
    end = tl.load(p_blk_end + pid_b)
    o_m = start + tl.arange(0, BLOCK_M)
    m_m = o_m < end
    tok = tl.load(p_rowtok + o_m, mask=m_m, other=0)
    o_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    m_n = o_n < INTER
    p_wg = p_w + e.to(tl.int64) * stride_we + o_n[None, :] * stride_wn
    p_wu = p_wg + INTER * stride_wn
    acc_g = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC)
    acc_u = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC)
    for k0 in range(0, K, BLOCK_K):
        o_k = k0 + tl.arange(0, BLOCK_K)
        m_k = o_k < K
        b_x = tl.load(p_x + tok[:, None].to(tl.int64) * stride_x + o_k[None, :], mask=m_m[:, None] & m_k[None, :], other=0.0)
        m_w = m_n[None, :] & m_k[:, None]
        b_wg = tl.load(p_wg + o_k[:, None], mask=m_w, other=0.0)  # [BLOCK_K, BLOCK_N]
        b_wu = tl.load(p_wu + o_k[:, None], mask=m_w, other=0.0)
        if DOT_F32:
            b_x = b_x.to(tl.float32)
            b_wg = b_wg.to(tl.float32)
            b_wu = b_wu.to(tl.float32)
        acc_g += tl.dot(b_x, b_wg)
        acc_u += tl.dot(b_x, b_wu)
    # Epilogue: SiLU-and-mul in the accumulator dtype, rounded once to the output dtype.
    b_h = acc_g / (1.0 + tl.exp(-acc_g)) * acc_u
    tl.store(p_h + o_m[:, None].to(tl.int64) * stride_h + o_n[None, :], b_h.to(p_h.dtype.element_ty),
             mask=m_m[:, None] & m_n[None, :])


def _blocks_for(offsets: Tensor, rows: int, E: int):
    bm = _block_size_m(rows / max(1, E))
    return bm, expert_blocks(offsets, bm)


def _sort_pairs(expert_ids: Tensor, num_experts: int):
    flat = expert_ids.reshape(-1).long()
    order = torch.sort(flat, stable=True).indices
    offsets = torch.zeros(num_experts + 1, dtype=torch.int64, device=flat.device)
    torch.cumsum(torch.bincount(flat, minlength=num_experts), 0, out=offsets[1:])
    return order, offsets


def _block_n(n: int) -> int:
    return max(16, min(64, triton.next_power_of_2(n)))


def _block_k(k: int) -> int:
    return max(16, min(64, triton.next_power_of_2(k)))


def grouped_gemm(x_sorted: Tensor, w: Tensor, expert_offsets: Tensor) -> Tensor:
    """y[r] = x_sorted[r] @ w[e].T per expert segment: ``[M, N]`` (see ``api.grouped_gemm``)."""
    M, K = x_sorted.shape
    E, N, _ = w.shape
    y = torch.empty(M, N, dtype=x_sorted.dtype, device=x_sorted.device)
    if M == 0:
        return y
    bm, (blk_e, blk_s, blk_t) = _blocks_for(expert_offsets, M, E)
    bn, bk = _block_n(N), _block_k(K)
    grid = (blk_e.numel(), triton.cdiv(N, bn))
    _grouped_gemm_kernel[grid](
        x_sorted, x_sorted, w, y, x_sorted, x_sorted, blk_e, blk_s, blk_t,
        N, K, x_sorted.stride(0), w.stride(0), w.stride(1), y.stride(0),
        GATHER=False, SCALE=False, SCATTER=False,
        BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, DOT_F32=_dot_f32(x_sorted.dtype), ACC=_acc(x_sorted.dtype),
    )
    return y


def heuristic_config(op: str, shape: dict) -> dict:
    """The tiles ``moe`` runs without a tuned entry, from the cache-named ``shape`` (``tokens``,
    ``hidden``, ``experts``, ``top_k``, ``intermediate``): rows per block from the mean rows per
    expert, then the N / K tiles of the gate/up and down GEMMs."""
    if op != "moe_fwd":
        raise KeyError(f"op: no triton tuning entry for {op!r}")
    D, inter = int(shape["hidden"]), int(shape["intermediate"])
    rows = int(shape["tokens"]) * int(shape["top_k"])
    return {"block_m": _block_size_m(rows / max(1, int(shape["experts"]))),
            "gate_up_block_n": _block_n(inter), "gate_up_block_k": _block_k(D),
            "down_block_n": _block_n(D), "down_block_k": _block_k(inter)}


TUNABLE = ("moe_fwd",)
_STAGES = 3  # Triton's default software pipelining depth on sm_80+: the kernels launch with it


def search_space(op: str, shape: dict, dtype: str, device) -> list[list[dict]]:
    """Three groups walked in order: ``block_m`` (rows per block), the gate/up GEMM's N / K tiles,
    the down GEMM's N / K tiles. Tiles are powers of two from 16 up to the dimension they cover
    (at most 128); a (block_m, N, K) triple whose ``_STAGES`` buffered operand tiles exceed
    ``device.smem_per_block`` (when the device states it) is dropped."""
    if op not in TUNABLE:
        raise KeyError(f"op: no triton tuning entry for {op!r}")
    D, inter = int(shape["hidden"]), int(shape["intermediate"])
    elem = 4 if str(shape.get("dtype", dtype)).endswith("32") else 2
    smem = getattr(device, "smem_per_block", 0) or None  # 0: not stated
    tiles = lambda n: [t for t in (16, 32, 64, 128) if t <= max(16, triton.next_power_of_2(n))]  # noqa: E731
    bm = int(heuristic_config(op, shape)["block_m"])
    fit = lambda m, n, k: smem is None or _STAGES * elem * (m * k + k * n) <= smem  # noqa: E731
    return [[{"block_m": m} for m in (16, 32, 64, 128)],
            [{"gate_up_block_n": n, "gate_up_block_k": k} for n in tiles(inter) for k in tiles(D) if fit(bm, n, k)],
            [{"down_block_n": n, "down_block_k": k} for n in tiles(D) for k in tiles(inter) if fit(bm, n, k)]]


def moe(x: Tensor, w_gate_up: Tensor, w_down: Tensor, weights: Tensor, expert_ids: Tensor) -> Tensor:
    """The routed expert MLP (see ``api.moe``): gate/up kernel with fused gather and SiLU-and-mul,
    down kernel with the weighted un-permute in its epilogue, then a [T, k, D] sum. Tiles: the
    tuned config of this shape on the GPU (``tuned.launch``: fallback and blacklist as for the
    other kernels), else ``heuristic_config``; under the interpreter the heuristic."""
    shape = {"tokens": x.shape[0], "hidden": x.shape[1], "experts": w_gate_up.shape[0], "top_k": expert_ids.shape[1],
             "intermediate": w_gate_up.shape[1] // 2, "dtype": str(x.dtype).removeprefix("torch.")}
    heuristic = heuristic_config("moe_fwd", shape)
    if triton_interpreted():
        return run_with_config("moe_fwd", heuristic, x, w_gate_up, w_down, weights, expert_ids)
    return tuned.launch("moe_fwd", backend="triton", device="cuda", shape=shape, heuristic=heuristic,
                        run=lambda c: run_with_config("moe_fwd", c, x, w_gate_up, w_down, weights, expert_ids))


def run_with_config(op: str, cfg: dict, x: Tensor, w_gate_up: Tensor, w_down: Tensor, weights: Tensor,
                    expert_ids: Tensor) -> Tensor:
    """``moe`` on exactly the tiles of ``cfg`` (no lookup, no fallback): the tuner's timing path."""
    if op != "moe_fwd":
        raise KeyError(f"op: no triton tuning entry for {op!r}")
    T, D = x.shape
    E, two_i, _ = w_gate_up.shape
    inter = two_i // 2
    k = expert_ids.shape[1]
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    if T == 0:
        return torch.zeros_like(x)
    order, offsets = _sort_pairs(expert_ids, E)
    M = order.numel()
    rowtok = (order // k).to(torch.int32)
    bm = int(cfg["block_m"])
    blk_e, blk_s, blk_t = expert_blocks(offsets, bm)
    h = torch.empty(M, inter, dtype=x.dtype, device=x.device)
    bn, bk = int(cfg["gate_up_block_n"]), int(cfg["gate_up_block_k"])
    _moe_gate_up_kernel[(blk_e.numel(), triton.cdiv(inter, bn))](
        x, rowtok, w_gate_up, h, blk_e, blk_s, blk_t,
        inter, D, x.stride(0), w_gate_up.stride(0), w_gate_up.stride(1), h.stride(0),
        BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, DOT_F32=_dot_f32(x.dtype), ACC=_acc(x.dtype),
    )
    y = torch.empty(M, D, dtype=acc, device=x.device)  # pair order: row token * k + slot
    scale = weights.reshape(-1)[order].to(acc).contiguous()
    bn, bk = int(cfg["down_block_n"]), int(cfg["down_block_k"])
    _grouped_gemm_kernel[(blk_e.numel(), triton.cdiv(D, bn))](
        h, h, w_down, y, scale, order.to(torch.int32), blk_e, blk_s, blk_t,
        D, inter, h.stride(0), w_down.stride(0), w_down.stride(1), y.stride(0),
        GATHER=False, SCALE=True, SCATTER=True,
        BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, DOT_F32=_dot_f32(x.dtype), ACC=_acc(x.dtype),
    )
    return y.view(T, k, D).sum(1).to(x.dtype)
