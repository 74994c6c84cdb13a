"""Non-finite inputs on every attention backend (reference, TVM, Triton).

* Keys a query cannot see never affect it, whatever they hold: NaN / +-inf written into masked
  or padded K and V (future keys, keys before the window, cache slots past ``cache_seqlens``,
  blocks a query did not select) leave its out and lse bit-for-bit as with clean inputs.
* What a query can see propagates as the reference says (README, "Non-finite inputs"): NaN in
  its q row or its head's sink makes its whole row NaN, NaN/inf in a visible key reaches
  exactly the queries that see it (compared with the float64 reference: NaN positions and
  infinite entries must agree, finite entries to fp32 accuracy).
* ``sink = +inf`` is rejected; ``Sk = 0`` gives out 0 and lse -inf (the sink with a sink).
"""

from __future__ import annotations

import pytest
import torch

import hysparse_kernels as hk
from backend_params import ATTENTION

# (backend, device): the CPU backends, and Triton compiled on a GPU (`make test-gpu`)
ON = [pytest.param(p.values[0], "cpu", id=p.id, marks=p.marks) for p in ATTENTION] + [
    pytest.param("triton", "cuda", id="triton-cuda", marks=pytest.mark.gpu)]
from hysparse_kernels.ops.attention import reference as R
from hysparse_kernels.testing import assert_close_to_reference

pytestmark = pytest.mark.filterwarnings(
    "ignore::hysparse_kernels.BackendFallbackWarning", "ignore::hysparse_kernels.tuned.TunedConfigWarning",
    "ignore::RuntimeWarning",  # numpy (the Triton interpreter) on NaN / inf: intended here
)

POISONS = {"nan": float("nan"), "+inf": float("inf"), "-inf": float("-inf")}
B, HQ, HKV, S, DQK, DV, BS, W = 2, 4, 2, 40, 16, 8, 16, 8
LENS = [23, 37]  # decode: valid keys per sequence (cache of S slots)
ATOL = 2e-5  # fp32 against the float64 reference (hysparse_kernels.testing rule, fp32 kernels)


def _inputs(dtype=torch.float32, sq=S):
    g = torch.Generator().manual_seed(0)
    q = torch.randn(B, HQ, sq, DQK, generator=g).to(dtype)
    k = torch.randn(B, HKV, S, DQK, generator=g).to(dtype)
    v = torch.randn(B, HKV, S, DV, generator=g).to(dtype)
    return q, k, v, torch.randn(HQ, generator=g)


def _indices(sq):
    """Each query picks block 0, its own block and a -1 pad: blocks in between are never read."""
    pos = torch.arange(S - sq, S) if sq == S else None
    idx = torch.full((B, HKV, sq, 3), -1, dtype=torch.int32)
    idx[..., 0] = 0
    if pos is not None:
        idx[..., 1] = (pos // BS).to(torch.int32)
    else:  # decode: the block of each sequence's last key
        for b, n in enumerate(LENS):
            idx[b, :, :, 1] = (n - 1) // BS
    return idx


def _lens(device="cpu"):
    return torch.tensor(LENS, dtype=torch.int32, device=device)


# op -> (queries, run(backend, q, k, v, sink) -> outputs, visibility [B, Hkv, Sq, Sk] bool, takes a sink)
def _op(name):
    if name == "attention":
        return S, lambda be, q, k, v, s: hk.attention(q, k, v, sink=s, return_lse=True, backend=be), \
            R.visible_mask(S, S, causal=True, window=None).expand(B, HKV, S, S), True
    if name == "attention_window":
        return S, lambda be, q, k, v, s: hk.attention(q, k, v, window=W, sink=s, return_lse=True, backend=be), \
            R.visible_mask(S, S, causal=True, window=W).expand(B, HKV, S, S), True
    if name == "block_scores":
        return S, lambda be, q, k, v, s: hk.attention_with_block_scores(q, k, v, block_size=BS, backend=be), \
            R.visible_mask(S, S, causal=True, window=None).expand(B, HKV, S, S), False
    if name == "sparse_attention":
        idx = _indices(S)
        return S, lambda be, q, k, v, s: hk.sparse_attention(q, k, v, idx.to(q.device), block_size=BS, sink=s,
                                                              return_lse=True, backend=be), R.sparse_mask(idx, S, S, BS), True
    pos = R.decode_positions(_lens(), 3)[:, None, :, None]
    j = torch.arange(S)
    if name == "attention_decode":
        return 3, lambda be, q, k, v, s: hk.attention_decode(q, k, v, _lens(q.device), window=W, sink=s,
                                                              return_lse=True, backend=be), \
            ((j <= pos) & (j > pos - W)).expand(B, HKV, 3, S), True
    if name == "sparse_attention_decode":
        idx = _indices(3)
        return 3, lambda be, q, k, v, s: hk.sparse_attention_decode(q, k, v, _lens(q.device), idx.to(q.device),
                                                                     block_size=BS, sink=s, return_lse=True,
                                                                     backend=be), \
            R.sparse_mask(idx, 3, S, BS, positions=R.decode_positions(_lens(), 3)), True
    raise KeyError(name)


OPS = ["attention", "attention_window", "block_scores", "sparse_attention", "attention_decode", "sparse_attention_decode"]


def _run(op, backend, q, k, v, sink, device="cpu"):
    """The op's outputs (on the CPU) for inputs moved to ``device``."""
    sq, fn, _, has_sink = _op(op)
    d = lambda t: None if t is None else t.to(device)  # noqa: E731
    out = fn(backend, d(q[:, :, :sq].contiguous()), d(k), d(v), d(sink) if has_sink else None)
    return tuple(t.cpu() for t in out)


def _reference64(op, q, k, v, sink):
    return _run(op, "reference", q.double(), k.double(), v.double(), None if sink is None else sink.double())


def _blind(vis, poisoned):
    """[B, Hq, Sq] rows that see none of the ``poisoned [B, Sk]`` keys."""
    seen = (vis & poisoned[:, None, None, :]).any(-1)
    return (~seen).repeat_interleave(HQ // HKV, dim=1)


def _poisoned_keys(op):
    """Keys some query of ``op`` cannot see: future keys, keys before the window, cache slots
    past the lengths, blocks no query selected (``[B, Sk]`` bool)."""
    p = torch.zeros(B, S, dtype=torch.bool)
    if op in ("attention", "block_scores"):
        p[:, [21, 33]] = True
    elif op == "attention_window":
        p[:, [3, 33]] = True
    elif op == "sparse_attention":
        p[:, BS:2 * BS] = True  # block 1: only its own queries select it
        p[:, 2 * BS + 5] = True  # a future key inside block 2
    else:
        for b, n in enumerate(LENS):
            p[b, n - 1:] = True  # past the length, and the newest draft token
        if op == "attention_decode":
            for b, n in enumerate(LENS):
                p[b, : n - 3 - W + 1] = True  # before the window of the first new token
        else:
            p[1, BS:2 * BS] = True  # sequence 1 selects blocks 0 and 2 only
    return p


def _check_like_reference(got, want):
    for i, (g, w) in enumerate(zip(got, want)):
        assert_close_to_reference(g, w, atol=ATOL, name=f"output {i}")


@pytest.mark.parametrize("poison", list(POISONS))
@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("backend,device", ON)
def test_keys_a_query_cannot_see_never_affect_it(backend, device, op, poison):
    q, k, v, sink = _inputs()
    clean = _run(op, backend, q, k, v, sink, device)
    keys = _poisoned_keys(op)
    k2, v2 = k.clone(), v.clone()
    k2[keys[:, None, :, None].expand_as(k2)] = POISONS[poison]
    v2[keys[:, None, :, None].expand_as(v2)] = POISONS[poison]
    got = _run(op, backend, q, k2, v2, sink, device)
    blind = _blind(_op(op)[2], keys)
    assert blind.any() and not blind.all()
    out, lse = got[0], got[1]
    assert torch.equal(out[blind], clean[0][blind]), "a masked key changed a query that cannot see it"
    assert torch.equal(lse[blind], clean[1][blind])
    if op == "block_scores":  # scores are per KV group: rows whose group heads are all blind
        group_blind = blind.view(B, HKV, HQ // HKV, -1).all(2)
        assert torch.equal(got[2][group_blind], clean[2][group_blind])
    # the queries that do see a poisoned key: as the float64 reference says
    _check_like_reference(got, _reference64(op, q, k2, v2, sink))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("backend", ATTENTION)
def test_masked_keys_do_not_leak_in_low_precision(backend, dtype):
    q, k, v, sink = _inputs(dtype)
    clean = hk.attention(q, k, v, window=W, sink=sink, return_lse=True, backend=backend)
    v2, k2 = v.clone(), k.clone()
    v2[:, :, 31] = float("nan")  # seen by queries 31-38: a future key of 0-30, before the window of 39
    k2[:, :, 2] = float("inf")  # seen by queries 2-9: before the window of 10-39
    v2[:, :, 2] = float("-inf")
    out, lse = hk.attention(q, k2, v2, window=W, sink=sink, return_lse=True, backend=backend)
    blind = torch.zeros(S, dtype=torch.bool)
    blind[:2] = blind[10:31] = blind[39] = True
    assert torch.equal(out[:, :, blind], clean[0][:, :, blind]) and torch.equal(lse[:, :, blind], clean[1][:, :, blind])
    assert torch.isnan(out[:, :, 31:39]).all() and torch.isnan(out[:, :, 2:10]).all()


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("backend,device", ON)
def test_nan_in_a_query_row_gives_nan_in_that_row_only(backend, device, op):
    q, k, v, sink = _inputs()
    sq = _op(op)[0]
    clean = _run(op, backend, q, k, v, sink, device)
    q2 = q.clone()
    i = sq - 2
    q2[1, 2, i, 3] = float("nan")
    got = _run(op, backend, q2, k, v, sink, device)
    row = torch.zeros(B, HQ, sq, dtype=torch.bool)
    row[1, 2, i] = True
    assert torch.isnan(got[0][row]).all() and torch.isnan(got[1][row]).all()
    assert torch.equal(got[0][~row], clean[0][~row]) and torch.equal(got[1][~row], clean[1][~row])
    if op == "block_scores":  # group 1's row i: NaN for the blocks query i sees, as the reference
        _check_like_reference(got, _reference64(op, q2, k, v, sink))


@pytest.mark.parametrize("op", [o for o in OPS if o != "block_scores"])
@pytest.mark.parametrize("backend,device", ON)
def test_sink_values(backend, device, op):
    q, k, v, sink = _inputs()
    clean = _run(op, backend, q, k, v, sink, device)
    nan_sink = sink.clone()
    nan_sink[2] = float("nan")
    out, lse = _run(op, backend, q, k, v, nan_sink, device)
    assert torch.isnan(out[:, 2]).all() and torch.isnan(lse[:, 2]).all()
    others = torch.tensor([0, 1, 3])
    assert torch.equal(out[:, others], clean[0][:, others]) and torch.equal(lse[:, others], clean[1][:, others])
    no_sink = sink.clone()
    no_sink[1] = float("-inf")  # the same as no sink for that head
    _check_like_reference(_run(op, backend, q, k, v, no_sink, device), _reference64(op, q, k, v, no_sink))
    inf_sink = sink.clone()
    inf_sink[3] = float("inf")
    with pytest.raises(ValueError, match=r"sink: expected values below \+inf .* got \+inf at heads \[3\]"):
        _run(op, backend, q, k, v, inf_sink, device)


@pytest.mark.parametrize("where", ["k:+inf", "k:-inf", "k:nan", "v:+inf", "v:-inf", "v:nan"])
@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("backend,device", ON)
def test_non_finite_visible_key_reaches_exactly_the_queries_that_see_it(backend, device, op, where):
    q, k, v, sink = _inputs()
    value = POISONS[where[2:]]
    t = (k if where[0] == "k" else v).clone()
    t[0, 1, 7, 0] = value  # key 7 of sequence 0: seen by later queries (and, sparse, block 0 is picked)
    k2, v2 = (t, v) if where[0] == "k" else (k, t)
    got = _run(op, backend, q, k2, v2, sink, device)
    want = _reference64(op, q, k2, v2, sink)
    if op not in ("attention_decode",):  # decode's window does not reach key 7
        assert not torch.isfinite(want[0]).all(), "the case must poison some query"
    _check_like_reference(got, want)


@pytest.mark.parametrize("backend", ATTENTION)
def test_no_keys_gives_zeros_and_the_sink(backend):
    """Sk = 0: every query sees nothing: out 0, lse -inf, or the sink; gradients as the reference."""
    q, _, _, sink = _inputs()
    k, v = torch.randn(B, HKV, 0, DQK), torch.randn(B, HKV, 0, DV)
    out, lse = hk.attention(q, k, v, return_lse=True, backend=backend)
    assert out.shape == (B, HQ, S, DV) and torch.equal(out, torch.zeros_like(out))
    assert torch.equal(lse, torch.full_like(lse, float("-inf")))
    out, lse, scores = hk.attention_with_block_scores(q, k, v, block_size=BS, backend=backend)
    assert torch.equal(out, torch.zeros_like(out)) and scores.shape == (B, HKV, S, 0)
    idx = torch.full((B, HKV, S, 2), -1, dtype=torch.int32)
    for fn in (lambda s: hk.attention(q, k, v, causal=False, sink=s, return_lse=True, backend=backend),
               lambda s: hk.sparse_attention(q, k, v, idx, block_size=BS, sink=s, return_lse=True, backend=backend)):
        leaf = sink.clone().requires_grad_()
        out, lse = fn(leaf)
        assert torch.equal(out, torch.zeros_like(out))
        assert torch.equal(lse, sink.view(1, HQ, 1).expand_as(lse))
        (out.sum() + lse.sum()).backward()
        # d lse / d sink = 1 for each of the B * S rows
        assert torch.equal(leaf.grad, torch.full_like(sink, float(B * S)))
