"""Property-based tests (hypothesis): every public op with an optimised backend against the
reference, on random small shapes, dtypes, windows, sinks (``-inf`` entries included), GQA ratios,
scales and index sets (pads, repeats and future blocks included).

TVM runs more examples; the Triton interpreter fewer and smaller ones. The hypothesis profile
(tests/conftest.py) is derandomized with no database and no deadline: the same examples on every
run and machine, nothing timed. Tolerances are the suites' own (hysparse_kernels.testing rule):
fp32 within atol of the float64 reference, bf16/fp16 within twice the error of the reference
computed in that dtype plus atol.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import hysparse_kernels as hk
from backend_params import installed
from hysparse_kernels.ops.attention import reference as R
from hysparse_kernels.ops.moe import reference as MR
from hysparse_kernels.testing import assert_close_to_reference

pytestmark = pytest.mark.filterwarnings(
    "ignore::hysparse_kernels.BackendFallbackWarning", "ignore::hysparse_kernels.tuned.TunedConfigWarning"
)

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# atol per backend and dtype, as in tvm_helpers.py / triton_helpers.py
ATOL = {"tvm": {"fp32": 2e-5, "bf16": 1e-2, "fp16": 2e-3}, "triton": {"fp32": 2e-5, "bf16": 2e-3, "fp16": 2e-3}}
MOE_ATOL = {"fp32": 1e-5, "bf16": 1e-2}  # the TVM and Triton sections of test_moe.py
# (backend, examples per attention test): the interpreter is slow, so Triton gets fewer
BACKENDS = [pytest.param(b, n, id=b, marks=pytest.mark.skipif(not installed(b), reason=f"{b} is not installed"))
            for b, n in (("tvm", 24), ("triton", 10))]


def _examples(n):
    return settings(max_examples=n)


@st.composite
def _geometry(draw, small):
    """Shapes, dtype and options of one attention call (``small``: the interpreter's sizes)."""
    sk = draw(st.integers(1, 40 if small else 80))
    return dict(
        B=draw(st.integers(1, 2)), hkv=draw(st.sampled_from([1, 2])), group=draw(st.sampled_from([1, 2, 4])),
        sk=sk, sq=draw(st.integers(1, sk + 3)),  # a few rows past the keys see nothing
        dqk=draw(st.sampled_from([16] if small else [16, 32])), dv=draw(st.sampled_from([16] if small else [8, 16, 32])),
        dtype=draw(st.sampled_from(list(DTYPES))), causal=draw(st.booleans()), window=draw(st.none() | st.integers(1, 24)),
        sink=draw(st.sampled_from(["none", "finite", "some -inf"])),
        scale=draw(st.none() | st.floats(0.05, 1.0)), seed=draw(st.integers(0, 2**20)),
    )


def _tensors(c, sq=None, sk=None):
    g = torch.Generator().manual_seed(c["seed"])
    dt = DTYPES[c["dtype"]]
    hq = c["hkv"] * c["group"]
    sq, sk = sq or c["sq"], sk or c["sk"]
    q = torch.randn(c["B"], hq, sq, c["dqk"], generator=g).to(dt)
    k = torch.randn(c["B"], c["hkv"], sk, c["dqk"], generator=g).to(dt)
    v = torch.randn(c["B"], c["hkv"], sk, c["dv"], generator=g).to(dt)
    sink = None
    if c["sink"] != "none":
        sink = torch.randn(hq, generator=g)
        if c["sink"] == "some -inf":
            sink[::2] = float("-inf")
    return q, k, v, sink, g


def _scale(c):
    return c["scale"] if c["scale"] is not None else c["dqk"] ** -0.5


def _compare(backend, c, got, ref_fn, args, kwargs=None):
    """Every output of ``got`` against ``ref_fn(*args)`` in float64 (and in the low precision)."""
    kwargs = kwargs or {}
    f64 = [a.double() if torch.is_tensor(a) and a.is_floating_point() else a for a in args]
    want = ref_fn(*f64, **kwargs)
    low = None if c["dtype"] == "fp32" else ref_fn(*args, **kwargs, compute_dtype=DTYPES[c["dtype"]])
    for i, (g_, w_) in enumerate(zip(got, want)):
        assert_close_to_reference(g_, w_, None if low is None else low[i], atol=ATOL[backend][c["dtype"]],
                                  name=f"output {i} of {c}")


@pytest.mark.parametrize("backend,n", BACKENDS)
def test_attention(backend, n):
    @_examples(n)
    @given(_geometry(small=backend == "triton"))
    def run(c):
        window = c["window"] if c["causal"] else None
        q, k, v, sink, _ = _tensors(c)
        got = hk.attention(q, k, v, causal=c["causal"], window=window, sink=sink, scale=c["scale"], return_lse=True,
                           backend=backend)
        _compare(backend, c, got, R.attention_fwd, (q, k, v, sink, c["causal"], window, _scale(c)))

    run()


@pytest.mark.parametrize("backend,n", BACKENDS)
def test_attention_with_block_scores(backend, n):
    @_examples(max(4, n // 2))
    @given(_geometry(small=backend == "triton"), st.sampled_from([4, 8, 16, 32]))
    def run(c, block_size):
        q, k, v, _, _ = _tensors(c)
        got = hk.attention_with_block_scores(q, k, v, block_size=block_size, causal=c["causal"], scale=c["scale"],
                                             backend=backend)
        _compare(backend, c, got, R.attention_with_block_scores, (q, k, v, block_size, c["causal"], _scale(c)))

    run()


def _random_indices(g, B, hkv, sq, nblocks, width):
    """Block ids in [-1, nblocks): pads, repeats and blocks after the query all occur."""
    return torch.randint(-1, max(nblocks, 1), (B, hkv, sq, width), generator=g, dtype=torch.int32)


@pytest.mark.parametrize("backend,n", BACKENDS)
def test_sparse_attention(backend, n):
    @_examples(n)
    @given(_geometry(small=backend == "triton"), st.sampled_from([4, 8, 16, 32]), st.integers(1, 6))
    def run(c, block_size, width):
        q, k, v, sink, g = _tensors(c)
        idx = _random_indices(g, c["B"], c["hkv"], c["sq"], -(-c["sk"] // block_size), width)
        got = hk.sparse_attention(q, k, v, idx, block_size=block_size, sink=sink, scale=c["scale"], return_lse=True,
                                  backend=backend)
        _compare(backend, c, got, R.sparse_attention_fwd, (q, k, v, idx, block_size, sink, _scale(c)))

    run()


@st.composite
def _decode_case(draw, small):
    c = draw(_geometry(small))
    c["sq"] = draw(st.integers(1, min(4, c["sk"])))  # 1 + draft tokens
    c["lens"] = [draw(st.integers(c["sq"], c["sk"])) for _ in range(c["B"])]
    return c


@pytest.mark.parametrize("backend,n", BACKENDS)
def test_attention_decode(backend, n):
    @_examples(n)
    @given(_decode_case(small=backend == "triton"))
    def run(c):
        q, k, v, sink, _ = _tensors(c)
        lens = torch.tensor(c["lens"], dtype=torch.int32)
        got = hk.attention_decode(q, k, v, lens, window=c["window"], sink=sink, scale=c["scale"], return_lse=True,
                                  backend=backend)
        _compare(backend, c, got, R.attention_decode, (q, k, v, lens, sink, c["window"], _scale(c)))

    run()


@pytest.mark.parametrize("backend,n", BACKENDS)
def test_sparse_attention_decode(backend, n):
    @_examples(n)
    @given(_decode_case(small=backend == "triton"), st.sampled_from([4, 8, 16, 32]), st.integers(1, 6))
    def run(c, block_size, width):
        q, k, v, sink, g = _tensors(c)
        lens = torch.tensor(c["lens"], dtype=torch.int32)
        idx = _random_indices(g, c["B"], c["hkv"], c["sq"], -(-c["sk"] // block_size), width)
        got = hk.sparse_attention_decode(q, k, v, lens, idx, block_size=block_size, sink=sink, scale=c["scale"],
                                         return_lse=True, backend=backend)
        _compare(backend, c, got, R.sparse_attention_decode, (q, k, v, lens, idx, block_size, sink, _scale(c)))

    run()


@pytest.mark.skipif(not installed("triton"), reason="triton is not installed")
@_examples(5)
@given(_geometry(small=True))
def test_attention_backward_triton(c):
    c = {**c, "dtype": "fp32"}
    window = c["window"] if c["causal"] else None
    q, k, v, sink, g = _tensors(c)
    leaves = [t for t in (q, k, v, sink) if t is not None]
    cot = (torch.randn(c["B"], q.shape[1], c["sq"], c["dv"], generator=g), torch.randn(c["B"], q.shape[1], c["sq"], generator=g))
    grads = []
    for backend, cast in (("triton", lambda t: t), ("reference", lambda t: t.double())):
        xs = [cast(t).detach().requires_grad_() for t in leaves]
        s = xs[3] if sink is not None else None
        out, lse = hk.attention(*xs[:3], causal=c["causal"], window=window, sink=s, scale=c["scale"], return_lse=True,
                                backend=backend)
        torch.autograd.backward((out, lse), (cast(cot[0]), cast(cot[1])))
        grads.append([x.grad for x in xs])
    for name, got, want in zip("q k v sink".split(), *grads):
        # dsink sums over every query of a head: atol x B * Sq (as the Triton section of test_attention.py)
        assert_close_to_reference(got, want, atol=2e-5 * (c["B"] * c["sq"] if name == "sink" else 1), name=f"d{name}")


@pytest.mark.skipif(not installed("triton"), reason="triton is not installed")
@_examples(15)
@given(st.integers(1, 2), st.integers(1, 2), st.integers(1, 40), st.integers(1, 80), st.sampled_from([4, 8, 16, 64]),
       st.integers(1, 12), st.integers(0, 2**20))
def test_topk_blocks_triton(B, hkv, sq, sk, block_size, k, seed):
    g = torch.Generator().manual_seed(seed)
    # scores on a coarse grid: ties (broken toward the lower block id) are common
    scores = torch.randint(0, 4, (B, hkv, sq, -(-sk // block_size)), generator=g).float() / 4
    got = hk.topk_blocks(scores, k, block_size=block_size, seqlen_k=sk, backend="triton")
    assert torch.equal(got, R.topk_blocks(scores, k, block_size, sk))


@pytest.mark.skipif(not installed("triton"), reason="triton is not installed")
@_examples(15)
@given(st.integers(1, 20), st.sampled_from([8, 16, 32]), st.data())
def test_route_triton(T, E, data):
    n_group = data.draw(st.sampled_from([g for g in (1, 2, 4) if E // g >= 2]))
    topk_group = data.draw(st.integers(1, n_group))
    top_k = data.draw(st.integers(1, min(8, topk_group * (E // n_group))))
    kw = dict(top_k=top_k, scoring=data.draw(st.sampled_from(["softmax", "sigmoid"])), n_group=n_group,
              topk_group=topk_group, renormalize=data.draw(st.booleans()), scaling=data.draw(st.floats(0.5, 3.0)))
    g = torch.Generator().manual_seed(data.draw(st.integers(0, 2**20)))
    logits = torch.randn(T, E, generator=g)
    bias = torch.randn(E, generator=g) * 0.3 if data.draw(st.booleans()) else None
    w, ids = hk.route(logits, bias=bias, backend="triton", **kw)
    w_ref, ids_ref = hk.route(logits, bias=bias, backend="reference", **kw)
    assert torch.equal(ids, ids_ref)
    torch.testing.assert_close(w, w_ref, rtol=1e-6, atol=1e-6)


MOE_BACKENDS = [pytest.param(b, id=b, marks=pytest.mark.skipif(not installed(b), reason=f"{b} is not installed"))
                for b in ("tvm", "triton")]


@st.composite
def _moe_case(draw):
    E = draw(st.integers(1, 6))
    return dict(T=draw(st.integers(1, 24)), E=E, k=draw(st.integers(1, min(E, 3))), D=draw(st.sampled_from([16, 24])),
                I=draw(st.sampled_from([8, 12])), dtype=draw(st.sampled_from(["fp32", "bf16"])),
                seed=draw(st.integers(0, 2**20)))


@pytest.mark.parametrize("backend", MOE_BACKENDS)
def test_moe_and_grouped_gemm(backend):
    @_examples(6)
    @given(_moe_case())
    def run(c):
        g = torch.Generator().manual_seed(c["seed"])
        T, E, k, D, I, dt = c["T"], c["E"], c["k"], c["D"], c["I"], DTYPES[c["dtype"]]
        x = torch.randn(T, D, generator=g, dtype=torch.float64)
        wgu = torch.randn(E, 2 * I, D, generator=g, dtype=torch.float64) / math.sqrt(D)
        wd = torch.randn(E, D, I, generator=g, dtype=torch.float64) / math.sqrt(I)
        ids = torch.stack([torch.randperm(E, generator=g)[:k] for _ in range(T)]).to(torch.int32)
        w = torch.rand(T, k, generator=g)
        lp = lambda t: t.to(dt)  # noqa: E731
        out = hk.moe(lp(x), lp(wgu), lp(wd), w, ids, backend=backend)
        assert_close_to_reference(out, MR.moe(x, wgu, wd, w.double(), ids), MR.moe(lp(x), lp(wgu), lp(wd), w, ids),
                                  atol=MOE_ATOL[c["dtype"]], name=f"moe {c}")
        xs, off, _ = hk.moe_permute(x, ids, E)
        y = hk.grouped_gemm(lp(xs), lp(wgu), off, backend=backend)
        assert_close_to_reference(y, MR.grouped_gemm(xs, wgu, off), MR.grouped_gemm(lp(xs), lp(wgu), off),
                                  atol=MOE_ATOL[c["dtype"]], name=f"grouped_gemm {c}")

    run()


@_examples(20)
@given(_moe_case())
def test_permute_unpermute_round_trip(c):
    """The permutation ops have one (reference) implementation: checked against their definition."""
    g = torch.Generator().manual_seed(c["seed"])
    T, E, k = c["T"], c["E"], c["k"]
    x = torch.randn(T, 5, generator=g, dtype=torch.float64)
    ids = torch.stack([torch.randperm(E, generator=g)[:k] for _ in range(T)]).to(torch.int32)
    w = torch.rand(T, k, generator=g, dtype=torch.float64)
    xs, off, inv = hk.moe_permute(x, ids, E)
    assert torch.equal(off[1:] - off[:-1], hk.expert_load(ids, E))
    assert torch.equal(xs[inv], x[:, None].expand(T, k, 5))
    sorted_ids = ids.reshape(-1).long()[torch.argsort(inv.reshape(-1))]
    assert bool((sorted_ids[1:] >= sorted_ids[:-1]).all())  # rows grouped by expert
    torch.testing.assert_close(hk.moe_unpermute(xs, inv, w), (w[:, :, None] * x[:, None]).sum(1), rtol=0, atol=1e-12)
