"""The zoo's tiny twins on the CPU: forward/backward, prefill vs token-by-token decode, the
sparse layer against full attention, KV bytes against the IR's plan, generation, compile."""

import pytest
import torch

import hysparse_kernels as hk
from hysparse_kernels import ir
from hysparse_kernels.models import HybridLM, KVCache, build_model, generate
from hysparse_kernels.models.layers import Shared, SparseAttention, Step
from hysparse_kernels.models.mtp import mtp_logits

pytestmark = pytest.mark.filterwarnings("ignore::hysparse_kernels.BackendFallbackWarning")

TINY = [n for n in ir.list_graphs() if n.startswith("tiny-")]


def test_every_tiny_twin_is_listed():
    assert set(TINY) == {"tiny-hysparse-7b", "tiny-hysparse-80b-a3b", "tiny-mimo-v2-flash", "tiny-mimo-7b"}


@pytest.mark.parametrize("name", TINY)
def test_forward_backward_finite(name):
    model = build_model(name)
    ids = torch.randint(0, model.graph.vocab, (2, 37))
    hidden = model.hidden_states(ids)
    logits = model.logits(hidden)
    assert logits.shape == (2, 37, model.graph.vocab) and torch.isfinite(logits).all()
    loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), ids.flatten())
    if model.graph.mtp is not None:  # the MTP blocks learn from their own losses
        for k, lk in enumerate(mtp_logits(model, hidden, ids), start=1):
            loss = loss + torch.nn.functional.cross_entropy(lk[:, :-1].flatten(0, 1), ids[:, k + 1:].flatten())
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert sum(float(g.abs().sum()) > 0 for g in grads) == len(grads), "every parameter should get a gradient"


@pytest.mark.parametrize("name", TINY)
def test_prefill_equals_token_by_token_decode(name):
    """Sequences longer than the window and several selection blocks: the cache path (ring
    buffers, shared KV, per-step top-k) reproduces the full forward."""
    model = build_model(name).double().eval()
    ids = torch.randint(0, model.graph.vocab, (2, 70))
    with torch.no_grad():
        full = model(ids)
        cache = KVCache(model.graph, 2, 80, dtype=torch.float64)
        steps = [model(ids[:, :33], cache=cache)] + [model(ids[:, t:t + 1], cache=cache) for t in range(33, 70)]
    torch.testing.assert_close(torch.cat(steps, 1), full, rtol=1e-9, atol=1e-9)


def test_multi_token_steps_match_prefill():
    """Steps of several tokens (speculative verification) through the ring buffers."""
    model = build_model("tiny-mimo-v2-flash").double().eval()
    ids = torch.randint(0, model.graph.vocab, (1, 60))
    with torch.no_grad():
        full = model(ids)
        cache = KVCache(model.graph, 1, 64, dtype=torch.float64)
        steps = [model(ids[:, a:b], cache=cache) for a, b in ((0, 20), (20, 24), (24, 41), (41, 60))]
    torch.testing.assert_close(torch.cat(steps, 1), full, rtol=1e-9, atol=1e-9)


def test_sparse_layer_with_every_block_equals_full_attention():
    spec = ir.get_graph("tiny-hysparse-7b").layers[1]
    assert isinstance(spec.pattern, ir.OracleSparse)
    layer = SparseAttention(spec, 64).double()
    B, S = 1, 50
    x = torch.randn(B, S, 64, dtype=torch.float64)
    k = torch.randn(B, spec.kv_heads, S, spec.qk_dim, dtype=torch.float64)
    v = torch.randn(B, spec.kv_heads, S, spec.v_dim, dtype=torch.float64)
    nb = -(-S // spec.pattern.block_size)
    idx = torch.arange(nb, dtype=torch.int32).expand(B, spec.kv_heads, S, nb).contiguous()
    step = Step(positions=torch.arange(S)[None], shared=Shared(k, v, None, {spec.pattern.topk: idx}))
    got = layer(x, step)
    # the same computation with dense attention over the shared K/V for the sparse branch
    q, k_swa, v_swa = layer.qkv(x, step, prefix="swa_")
    o_full = hk.attention(q, k, v, sink=layer.sparse_sink_bias)
    o_swa = hk.attention(q, k_swa, v_swa, window=spec.pattern.window, sink=layer.swa_sink_bias)
    ga = torch.sigmoid(layer.gate_sparse_proj(x)).transpose(1, 2)[..., None]
    gb = torch.sigmoid(layer.gate_swa_proj(x)).transpose(1, 2)[..., None]
    torch.testing.assert_close(got, layer.out(ga * o_full + gb * o_swa), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", TINY)
def test_cache_bytes_equal_the_kv_plan(name):
    graph = ir.get_graph(name)
    cache = KVCache(graph, 1, 4096, dtype=torch.bfloat16)
    assert cache.nbytes == ir.kv_plan(graph, batch=1, seq_len=4096, dtype="bfloat16").total_bytes


def test_hysparse_cache_is_smaller_than_its_full_attention_twin():
    plan = ir.kv_plan(ir.get_graph("tiny-hysparse-80b-a3b"), batch=1, seq_len=4096, dtype="bfloat16")
    assert plan.total_bytes * 4 < plan.twin_total_bytes


def test_greedy_generation_matches_argmax_of_the_full_forward():
    model = build_model("tiny-hysparse-7b").eval()
    prompts = [[5, 6, 7, 8, 9, 10, 11], [3, 1, 4]]
    out = generate(model, prompts, max_new_tokens=12)
    assert [len(o) for o in out] == [12, 12]
    with torch.no_grad():
        for prompt, new in zip(prompts, out):
            seq = torch.tensor([prompt + new])
            logits = model(seq)[0, len(prompt) - 1:-1]
            assert logits.argmax(-1).tolist() == new


def test_generation_stops_at_eos_and_samples_reproducibly():
    model = build_model("tiny-mimo-7b").eval()
    g1, g2 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    a = generate(model, [[1, 2, 3]], max_new_tokens=10, temperature=1.0, top_p=0.9, generator=g1)
    b = generate(model, [[1, 2, 3]], max_new_tokens=10, temperature=1.0, top_p=0.9, generator=g2)
    assert a == b
    eos = a[0][2]
    c = generate(model, [[1, 2, 3]], max_new_tokens=10, temperature=1.0, top_p=0.9, eos=eos,
                 generator=torch.Generator().manual_seed(1))
    assert c[0] == a[0][:a[0].index(eos) + 1]


def test_generate_rejects_bad_arguments():
    model = build_model("tiny-mimo-7b")
    with pytest.raises(ValueError, match="prompts: expected a non-empty list"):
        generate(model, [[]], max_new_tokens=2)
    with pytest.raises(ValueError, match="temperature/top_p"):
        generate(model, [[1]], max_new_tokens=2, temperature=-1.0)


def test_moe_bias_update_hook_moves_toward_balance():
    model = build_model("tiny-mimo-v2-flash")
    moe = next(m for m in model.modules() if type(m).__name__ == "MoEBlock")
    ids = torch.randint(0, model.graph.vocab, (4, 32))
    model(ids)
    load = moe.last_load.clone()
    assert int(load.sum()) == 4 * 32 * moe.spec.top_k
    if moe.gate.e_score_correction_bias is not None:
        moe.update_bias(0.01)
        over = load > load.float().mean()
        assert (moe.gate.e_score_correction_bias[over] < 0).all()


def test_compile_tiny_model_forward():
    torch._dynamo.reset()
    model = build_model("tiny-hysparse-7b").eval()
    ids = torch.randint(0, model.graph.vocab, (1, 40))
    with torch.no_grad():
        eager = model(ids)
        compiled = torch.compile(model, fullgraph=True, backend="aot_eager")(ids)
    torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-5)


def test_float64_model_computes_norm_rope_and_router_in_float64(monkeypatch):
    """A float64 model stays float64 in the parts that run in at least float32 for low precision."""
    from hysparse_kernels.models.layers import RMSNorm, rope_tables

    x = torch.randn(2, 5, 64, dtype=torch.float64)
    norm = RMSNorm(64).double()
    expect = x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + norm.eps)
    torch.testing.assert_close(norm(x), expect, rtol=1e-15, atol=1e-15)
    cos, sin = rope_tables(torch.arange(7)[None], 16, 10000.0, torch.float64)
    assert cos.dtype == sin.dtype == torch.float64
    assert rope_tables(torch.arange(7)[None], 16, 10000.0, torch.bfloat16)[0].dtype == torch.float32

    model = build_model("tiny-mimo-v2-flash").double()
    moe = next(m for m in model.modules() if type(m).__name__ == "MoEBlock")
    seen, real = [], hk.route
    monkeypatch.setattr(hk, "route", lambda logits, **kw: seen.append(logits.dtype) or real(logits, **kw))
    moe(torch.randn(1, 3, model.graph.hidden, dtype=torch.float64))
    assert seen == [torch.float64]


def test_generate_names_token_ids_outside_the_vocabulary():
    from hysparse_kernels.models.speculative import speculative_generate

    model = build_model("tiny-mimo-v2-flash")
    vocab = model.graph.vocab
    with pytest.raises(ValueError, match=rf"prompts\[1\]: expected token ids in \[0, {vocab}\) .*got \[{vocab}\]"):
        generate(model, [[1, 2], [3, vocab]], max_new_tokens=2)
    with pytest.raises(ValueError, match=r"prompts\[0\]: expected token ids .*got \[-1\]"):
        generate(model, [[-1]], max_new_tokens=2)
    with pytest.raises(ValueError, match="max_new_tokens: expected an int >= 0, got -1"):
        generate(model, [[1]], max_new_tokens=-1)
    with pytest.raises(ValueError, match=rf"prompt: expected token ids in \[0, {vocab}\)"):
        speculative_generate(model, [5, 10 ** 6], max_new_tokens=2)


def test_sparse_layers_of_one_full_layer_may_differ_in_top_k():
    """The model reads the IR's selection plan: a full layer scores its blocks once and selects
    the top-k of each sparse layer that reads it (here top-2 and top-3), prefill and decode alike."""
    import dataclasses

    g = ir.get_graph("tiny-hysparse-7b")
    three = dataclasses.replace(g.layers[2].pattern, topk=3)
    g = dataclasses.replace(g, layers=tuple(dataclasses.replace(layer, pattern=three) if layer.index == 2 else layer
                                            for layer in g.layers), mtp=None)
    assert [(s.full_layer, s.topk, s.sparse_layers) for s in ir.selection_plan(g)][:2] == [(0, 2, (1, 3)), (0, 3, (2,))]
    model = HybridLM(g).double().eval()
    assert [s.topk for s in model.model.layers[0].self_attn.selects] == [2, 3]
    ids = torch.randint(0, g.vocab, (2, 40))
    with torch.no_grad():
        full = model(ids)
        cache = KVCache(g, 2, 48, dtype=torch.float64)
        steps = [model(ids[:, :20], cache=cache)] + [model(ids[:, t:t + 1], cache=cache) for t in range(20, 40)]
    torch.testing.assert_close(torch.cat(steps, 1), full, rtol=1e-9, atol=1e-9)
