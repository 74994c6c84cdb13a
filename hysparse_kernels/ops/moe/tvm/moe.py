"""TVM backend of the MoE family on the CPU (``llvm``): grouped GEMM and the fused expert MLP.

``moe`` runs three TVM kernels over the expert-sorted (token, slot) pairs:

1. gate/up GEMM with the permutation fused into its loads (row r reads token ``order[r] // k``
   of x, so no ``x_sorted`` copy is written) and ``SiLU(gate) * up`` in its epilogue -> h ``[T*k, I]``;
2. down GEMM with the routing weight of each row in its epilogue -> y ``[T*k, D]`` (float32);
3. the combine: ``out[t] = sum_j y[inverse[t, j]]``.

The kernel is chosen by the rows per expert (the mean over the experts that got any):

* few rows (decode, small batches): the dot-product tiles above, reading x rows in place;
* at least ``OP_ROWS`` (16) rows, not float64: the outer-product kernels (``outer.py``: x packed
  in blocks of 16 or 32 rows per expert, each weight element broadcast into such a vector of
  rows, SiLU-and-mul on vectors, the next weight rows prefetched);
* float64 with at least ``BLAS_ROWS`` rows: one BLAS GEMM per expert.

The sort of the ``T*k`` expert ids (a few microseconds) stays in torch. Kernels are built once
per (shape, dtype, thread count) and cached for the process (a build takes about a second).

Threading: ``hysparse_kernels.backends.tvm.threads`` sizes TVM's pool (the usable cores, or
``TVM_NUM_THREADS``), keeps it from spinning against torch's threads, and picks each launch's
thread count (``torch.get_num_threads()``; small launches on the calling thread).
"""

from __future__ import annotations

import threading

import torch
from torch import Tensor

import tvm

from . import kernels as K
from . import outer as O
from .... import tuned
from ....backends.tvm import threads
from ....backends.tvm.target import wide_registers
from ....backends.tvm.workspace import fresh, workspace

threads.prepare()  # size TVM's pool before anything here can start it

_DTYPES = {torch.float32: "float32", torch.float64: "float64", torch.bfloat16: "bfloat16", torch.float16: "float16"}
_lock = threading.Lock()
_cache: dict[tuple, object] = {}

# Register tiles (rows of X x rows of W) per kernel, with 16 AVX2 registers: gate/up 1 x 4 x 2
# accumulators (each x load feeds 8 FMAs), down 2 x 4, plain 4 x 2. Measured in CPU time on one
# core of the 2-core development machine (E=64, top-8, D=1024, I=512): 1 x 4 / 2 x 4 beat the
# earlier 2 x 2 / 4 x 2 by 5-9% at T = 16, 64 and 512. MT = rows kept in L2 while the thread walks
# its column blocks (MT * K * 4 bytes = 512 KiB at K = 1024).
_TILES = {"gate_up": (1, 4), "down": (2, 4), "plain": (4, 2)}
# Decode-like calls (about one row per active expert): a one-row tile wastes no FMAs on clamped
# rows, and the wider column tile reuses each x load across more weight rows.
_TILES_ONE_ROW = {"gate_up": (1, 4), "down": (1, 4), "plain": (1, 4)}
_MT = 128
# float64 experts with this many rows on average run through BLAS (torch.mm per expert segment,
# one expert at a time: MKL packs the weights and beats the float64 dot-product tiles on large
# segments). Single and half precision take the outer-product kernels below instead.
BLAS_ROWS = 256
# float32 / bfloat16 / float16 experts with at least this many rows on average run the
# outer-product kernels (outer.py: a weight element broadcast into a vector of 16 or 32 rows; the
# activations packed in blocks of rows per expert); fewer rows leave the row vectors mostly
# empty. Register tiles (weight rows): gate/up 3 (x2 gate and up: 12 accumulators of two ymm),
# down 6 on AVX2; 4 and 8 (16 accumulators of two zmm) with AVX-512's 32 registers.
OP_ROWS = 16
# The same knobs as a launch config (what the autotune cache stores for moe_fwd).
HEURISTIC = {"gate_up_mr": _TILES["gate_up"][0], "gate_up_nr": _TILES["gate_up"][1], "down_mr": _TILES["down"][0],
             "down_nr": _TILES["down"][1], "mt": _MT}


def num_threads() -> int:
    """Threads of TVM's pool (the kernels split their columns into this many slices)."""
    return threads.policy().pool


def _split(N: int, nr: int, threads: int) -> tuple[int, int]:
    """(NR, P): the widest register tile <= nr and the most thread slices that divide N."""
    for p in (threads, 1):
        for r in range(nr, 0, -1):
            if N % (r * p) == 0:
                return r, p
    return 1, 1


def _build(key: tuple, make):
    tgt = K.target(num_threads())
    key = (*key, str(tgt))  # what was built for: the toolkit's CPU target and thread count
    with _lock:
        lib = _cache.get(key)
        if lib is None:
            lib = tvm.tirx.build(make(), target=tgt)
            _cache[key] = lib
    return lib


def _gemm_lib(E: int, N: int, Kdim: int, mode: str, dtype: str, rows_per_expert: float = 64.0, tile=None, mt: int = _MT):
    mr, nr = tile or (_TILES_ONE_ROW if rows_per_expert < 2 else _TILES)[mode]
    nr, p = _split(N, nr, num_threads())
    key = ("gemm", E, N, Kdim, mode, dtype, mr, nr, p, mt)
    return _build(key, lambda: K.grouped_gemm_func(E, N, Kdim, mode=mode, MR=mr, NR=nr, MT=mt, P=p, dtype=dtype))


def op_rows_per_vector() -> int:
    """Rows per vector of the outer-product kernels: 32 (two zmm) where the target has AVX-512's
    32 registers, 16 (two ymm) on AVX2. Measured on an AVX-512 host (E=64, top-8, D=1024, I=512,
    default threads), with the earlier transposed layout: T=4096 447 -> 403 ms, T=64 and 512
    unchanged."""
    return 2 * O.OP_MV if wide_registers() else O.OP_MV


def _op_nr(wide: bool) -> dict[str, int]:
    """Weight rows per outer-product register tile (see OP_ROWS): AVX-512 tiles for 32-row vectors."""
    return {"gate_up": 4, "down": 8} if wide else {"gate_up": 3, "down": 6}


def _op_libs(E: int, D: int, inter: int, dtype: str, mv: int):
    """(pack, gate/up, down) outer-product kernels for these sizes and ``mv`` rows per vector
    (see outer.py)."""
    p = num_threads()
    nr = _op_nr(mv > O.OP_MV)
    slices = {m: (p if n // nr[m] >= p else 1) for m, n in (("gate_up", inter), ("down", D))}
    pack = _build(("op_pack", D, dtype, mv), lambda: O.pack_blocks_func(D, dtype, MV=mv))
    gate_up = _build(("op_gate_up", E, inter, D, dtype, slices["gate_up"], mv, nr["gate_up"]),
                     lambda: O.gate_up_blocks_func(E, inter, D, NR=nr["gate_up"], P=slices["gate_up"], dtype=dtype, MV=mv))
    down = _build(("op_down", E, D, inter, dtype, slices["down"], mv, nr["down"]),
                  lambda: O.down_blocks_func(E, D, inter, NR=nr["down"], P=slices["down"], dtype=dtype, MV=mv))
    return pack, gate_up, down


def _combine_lib(D: int, k: int, dtype: str, ys: int | None = None):
    ys = D if ys is None else ys
    return _build(("combine", D, k, dtype, ys), lambda: K.combine_func(D, k, num_threads(), dtype=dtype, YS=ys))


def _dtype(t: Tensor) -> str:
    if t.dtype not in _DTYPES:
        raise TypeError(f"tvm backend: unsupported dtype {t.dtype}")
    return _DTYPES[t.dtype]


def _pad_k(t: Tensor, lanes: int) -> Tensor:
    """Zero-pad the last dim to a multiple of the vector width (the kernels walk K by registers)."""
    extra = (-t.shape[-1]) % lanes
    return torch.nn.functional.pad(t, (0, extra)).contiguous() if extra else t.contiguous()


def _rows_per_expert(offsets: Tensor) -> float:
    """Mean rows of the experts that have any (picks the register tile)."""
    counts = offsets[1:] - offsets[:-1]
    active = int((counts > 0).sum())
    return float(offsets[-1]) / max(active, 1)


def _sort_pairs(expert_ids: Tensor, num_experts: int):
    """Expert-sorted order of the (token, slot) pairs, segment offsets and the inverse map."""
    flat = expert_ids.reshape(-1).long()
    order = torch.sort(flat, stable=True).indices
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(order.numel())
    offsets = torch.zeros(num_experts + 1, dtype=torch.int64)
    torch.cumsum(torch.bincount(flat, minlength=num_experts), 0, out=offsets[1:])
    return order, offsets, inverse


def grouped_gemm(x_sorted: Tensor, w: Tensor, expert_offsets: Tensor) -> Tensor:
    """y[r] = x_sorted[r] @ w[e].T per expert segment: ``[M, N]`` (see ``api.grouped_gemm``)."""
    dtype = _dtype(x_sorted)
    lanes = K.lanes(dtype)
    x = _pad_k(x_sorted, lanes)
    wp = _pad_k(w, lanes)
    E, N, Kp = wp.shape
    M = x.shape[0]
    y = fresh((M, N), x_sorted.dtype)
    if M == 0:
        return y
    dummy_rows = torch.empty(M, dtype=torch.int64)
    dummy_scale = torch.empty(M, dtype=torch.float64 if dtype == "float64" else torch.float32)
    threads.before_launch(2.0 * M * N * Kp)
    _gemm_lib(E, N, Kp, "plain", dtype, _rows_per_expert(expert_offsets))["main"](x, dummy_rows, wp, expert_offsets.contiguous(), dummy_scale, y)
    return y


def moe(x: Tensor, w_gate_up: Tensor, w_down: Tensor, weights: Tensor, expert_ids: Tensor) -> Tensor:
    """The routed expert MLP (see ``api.moe``): three TVM kernels over the sorted pairs, with the
    register tiles of the autotune cache for this shape (``HEURISTIC`` when it has none)."""
    shape = {"tokens": x.shape[0], "hidden": x.shape[1], "experts": w_gate_up.shape[0], "top_k": expert_ids.shape[1],
             "intermediate": w_gate_up.shape[1] // 2, "dtype": _DTYPES.get(x.dtype)}
    return tuned.launch("moe_fwd", backend="tvm", device="cpu", shape=shape, heuristic=HEURISTIC,
                        run=lambda c: _moe(x, w_gate_up, w_down, weights, expert_ids, c))


def _moe(x: Tensor, w_gate_up: Tensor, w_down: Tensor, weights: Tensor, expert_ids: Tensor, cfg: dict) -> Tensor:
    dtype = _dtype(x)
    acc = torch.float64 if dtype == "float64" else torch.float32
    lanes = K.lanes(dtype)
    T, D = x.shape
    E, two_i, _ = w_gate_up.shape
    inter = two_i // 2
    k = expert_ids.shape[1]
    if T == 0:
        return torch.zeros_like(x)
    order, offsets, inverse = _sort_pairs(expert_ids, E)
    rowtok = order // k
    scale = weights.reshape(-1)[order].to(acc).contiguous()
    M = order.numel()
    rpe = _rows_per_expert(offsets)
    if dtype != "float64" and rpe >= OP_ROWS and cfg == HEURISTIC:
        return _moe_op(x, w_gate_up, w_down, rowtok, offsets, inverse, scale)
    if dtype == "float64" and rpe >= BLAS_ROWS:
        return _moe_blas(x, w_gate_up, w_down, rowtok, offsets, inverse, scale)
    xp, wgu = _pad_k(x, lanes), _pad_k(w_gate_up, lanes)
    # intermediates live only during this call: kept per thread (a fresh allocation faults in page by page)
    h = workspace("moe.h", M * inter, x.dtype).view(M, inter)
    # Without a tuned entry, decode-like calls (about one row per active expert) take the one-row tiles.
    one_row = rpe < 2 and cfg == HEURISTIC
    threads.before_launch(2.0 * M * 3 * inter * D)  # the three kernels below: gate/up, down, combine
    gu_tile = _TILES_ONE_ROW["gate_up"] if one_row else (cfg["gate_up_mr"], cfg["gate_up_nr"])
    down_tile = _TILES_ONE_ROW["down"] if one_row else (cfg["down_mr"], cfg["down_nr"])
    _gemm_lib(E, inter, wgu.shape[2], "gate_up", dtype, rpe, gu_tile, cfg["mt"])["main"](xp, rowtok, wgu, offsets, scale, h)
    y = workspace("moe.y", M * D, acc).view(M, D)
    wd = _pad_k(w_down, lanes)
    _gemm_lib(E, D, wd.shape[2], "down", dtype, rpe, down_tile, cfg["mt"])["main"](_pad_k(h, lanes), rowtok, wd, offsets, scale, y)
    if D % lanes:
        return y[inverse.view(T, k)].sum(1).to(x.dtype)
    out = fresh((T, D), x.dtype)
    _combine_lib(D, k, dtype)["main"](y, inverse.view(T, k), out)
    return out


def _moe_blas(x: Tensor, w_gate_up: Tensor, w_down: Tensor, rowtok: Tensor, offsets: Tensor, inverse: Tensor,
              scale: Tensor) -> Tensor:
    """The expert MLP with BLAS GEMMs per expert segment (large float64 segments).

    x ``[T, D]``; rows sorted by expert: ``rowtok [M]`` (token of each row), ``offsets [E+1]``,
    ``inverse [T*k]`` (row of each (token, slot)), ``scale [M]`` (routing weight of each row).
    One expert at a time from gather to down projection, so its ``[n, 2I]`` and ``[n, I]``
    intermediates stay in cache (a pass over all rows' intermediates costs memory traffic the
    GEMMs do not hide); the routing weight scales h (half the size of y) before the down GEMM.
    """
    T, D = x.shape
    E, two_i, _ = w_gate_up.shape
    inter = two_i // 2
    M = rowtok.numel()
    y = workspace("moe.y", M * D, x.dtype).view(M, D)
    bounds = offsets.tolist()
    widest = max(hi - lo for lo, hi in zip(bounds[:-1], bounds[1:]))
    gu_buf = workspace("moe.gu", widest * two_i, x.dtype).view(widest, two_i)
    h_buf = workspace("moe.h", widest * inter, x.dtype).view(widest, inter)
    for e in range(E):
        lo, hi = bounds[e], bounds[e + 1]
        if hi == lo:
            continue
        n = hi - lo
        gu, h = gu_buf[:n], h_buf[:n]
        torch.mm(x.index_select(0, rowtok[lo:hi]), w_gate_up[e].T, out=gu)  # [n, D] @ [D, 2I]
        torch.ops.aten.silu.out(gu[:, :inter], out=h)
        h.mul_(gu[:, inter:]).mul_(scale[lo:hi, None].to(h.dtype))
        torch.mm(h, w_down[e].T, out=y[lo:hi])  # [n, I] @ [I, D]
    k = inverse.numel() // T
    if D % K.lanes(_dtype(x)):
        return y[inverse.view(T, k)].sum(1)
    out = fresh((T, D), x.dtype)
    threads.before_launch(float(M * D))
    _combine_lib(D, k, _dtype(x))["main"](y, inverse.view(T, k), out)
    return out


def _blocks(offsets: Tensor, rowtok: Tensor, mv: int) -> tuple[Tensor, Tensor]:
    """Per-expert blocks of ``mv`` rows: ``(boff [E+1], prow [NB * mv])``, expert ``e`` owning
    blocks ``[boff[e], boff[e+1])`` and ``prow`` the token of each block row (-1 past a count)."""
    counts = offsets[1:] - offsets[:-1]
    nblk = (counts + mv - 1) // mv
    boff = torch.zeros_like(offsets)
    torch.cumsum(nblk, 0, out=boff[1:])
    M = rowtok.numel()
    expert = torch.repeat_interleave(torch.arange(counts.numel()), counts, output_size=M)
    pos = boff[expert] * mv + torch.arange(M) - offsets[expert]
    prow = torch.full((int(boff[-1]) * mv,), -1, dtype=torch.int64)
    prow[pos] = rowtok
    return boff, prow


def _moe_op(x: Tensor, w_gate_up: Tensor, w_down: Tensor, rowtok: Tensor, offsets: Tensor, inverse: Tensor,
            scale: Tensor) -> Tensor:
    """The expert MLP with the outer-product kernels (segments of many rows; not float64).

    x ``[T, D]``; rows sorted by expert: ``rowtok [M]`` (token of each row), ``offsets [E+1]``,
    ``inverse [T*k]``, ``scale [M]`` float32 (routing weight of each row). Packs x's rows in
    blocks of ``mv`` rows per expert (``xb [NB, D, mv]``), computes ``hb = SiLU(gate) * up`` in
    the same blocks (``[NB, I, mv]``), then ``y = scale * h @ w_down^T`` (``[M, D]`` float32, row
    stride ``outer.y_stride(D)``) and the combine.
    """
    T, D = x.shape
    E, two_i, _ = w_gate_up.shape
    inter = two_i // 2
    M = rowtok.numel()
    k = inverse.numel() // T
    dtype = _dtype(x)
    mv = op_rows_per_vector()
    boff, prow = _blocks(offsets, rowtok, mv)
    nb = prow.numel() // mv
    ys = O.y_stride(D)
    pack, gate_up, down = _op_libs(E, D, inter, dtype, mv)
    xb = workspace("moe.xb", nb * D * mv).view(nb, D, mv)  # intermediates: kept per thread
    hb = workspace("moe.hb", nb * inter * mv).view(nb, inter, mv)
    y = workspace("moe.y", M * ys, torch.float32).view(M, ys)
    threads.before_launch(2.0 * M * 3 * inter * D)
    pack["main"](x.contiguous(), prow, xb)
    gate_up["main"](xb, w_gate_up.contiguous(), boff, hb)
    down["main"](hb, w_down.contiguous(), offsets, boff, scale.float().contiguous(), y)
    if D % K.lanes(dtype):
        return y[:, :D][inverse.view(T, k)].sum(1).to(x.dtype)
    out = fresh((T, D), x.dtype)
    _combine_lib(D, k, dtype, ys)["main"](y, inverse.view(T, k), out)
    return out


# ---------------------------------------------------------------- the autotuner's entry points

TUNABLE = ("moe_fwd",)


def register_tiles(gate_up: bool, registers: int) -> list[tuple[int, int]]:
    """(MR, NR) register tiles whose accumulators (x2 for gate/up) plus W and X vectors fit in
    ``registers`` vector registers."""
    out = []
    for mr in (1, 2, 4):
        for nr in (1, 2, 4):
            need = mr * nr * (2 if gate_up else 1) + nr * (2 if gate_up else 1) + mr
            if need <= registers:
                out.append((mr, nr))
    return out


def search_space(op: str, shape: dict, dtype: str, device) -> list[list[dict]]:
    """Three groups walked in order: the gate/up register tile, the down register tile (both
    fitting ``device.vector_registers``, 16 when unknown), then the L2 row tile ``mt``."""
    if op not in TUNABLE:
        raise KeyError(f"op: no tvm tuning entry for {op!r}")
    regs = getattr(device, "vector_registers", None) or 16
    return [[{"gate_up_mr": m, "gate_up_nr": n} for m, n in register_tiles(True, regs)],
            [{"down_mr": m, "down_nr": n} for m, n in register_tiles(False, regs)],
            [{"mt": t} for t in (32, 64, 128, 256)]]



def heuristic_config(op: str, shape: dict) -> dict:
    """The config ``moe_fwd`` runs without a tuned entry (the tuner's baseline)."""
    if op != "moe_fwd":
        raise KeyError(f"op: no tvm tuning entry for {op!r}")
    return dict(HEURISTIC)


def run_with_config(op: str, config: dict, x: Tensor, w_gate_up: Tensor, w_down: Tensor, weights: Tensor,
                    expert_ids: Tensor) -> Tensor:
    """``moe`` on exactly ``config`` (register tiles and L2 row tile), bypassing the tuned-config
    cache: the autotuner times candidates this way."""
    if op != "moe_fwd":
        raise KeyError(f"op: no tvm tuning entry for {op!r}")
    return _moe(x, w_gate_up, w_down, weights, expert_ids, config)
