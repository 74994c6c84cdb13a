"""Rollout engine: log-probs equal a float64 full-forward recompute, multi-turn observations are
masked and appended without re-prefilling, finish reasons, and MTP speculative rollouts keep
the policy's distribution exactly (chi-square against the enumerated distribution)."""

import math
from collections import Counter

import pytest
import torch

from hysparse_kernels import ir
from hysparse_kernels.models import HybridLM, KVCache, build_model
from hysparse_kernels.training.rl.kvrows import put_rows, row_slice, take_rows
from hysparse_kernels.training.rl.policy import sequence_logprobs
from hysparse_kernels.training.rl.rollout import RolloutEngine, SamplingParams, collate
from hysparse_kernels.training.rl.sampling import OUTSIDE_NUCLEUS, policy_logprobs

pytestmark = [pytest.mark.filterwarnings("ignore::hysparse_kernels.BackendFallbackWarning"), pytest.mark.one_thread]

class Letters:
    """A toy tokenizer: id i is the character "abc\\n"[i % 4], so a random model ends turns often."""

    def decode(self, ids):
        return "".join("abc\n"[i % 4] for i in ids)

    def encode(self, text):
        return ["abc\n".index(ch) for ch in text]


class TwoTools:
    """Answers the first two turns of each row with an observation, then ends the rollout."""

    def __init__(self):
        self.calls = []

    def observe(self, row, turn_text):
        self.calls.append((row, turn_text))
        n = sum(r == row for r, _ in self.calls)
        return None if n > 2 else "ab" * (row % 3 + 1) + "\n"


def toy_model(vocab=8, mtp=0, seed=0, scale=0.0, kinds="FF", window=None):
    dims = ir.AttentionDims(q_heads=2, kv_heads=1, qk_dim=8)
    patterns = {"W": ir.SlidingWindow(window=window or 4, sink=True)}
    spec = ir.MTPSpec(mtp, ir.Full(), ir.Dense(24), dims) if mtp else None
    graph = ir.build_graph(kinds, hidden=16, vocab=vocab, attention=dims, ffn=ir.Dense(24), patterns=patterns, mtp=spec)
    torch.manual_seed(seed)
    model = HybridLM(graph).double()
    if scale:  # peaked, model-specific distributions (a random init is near uniform)
        with torch.no_grad():
            for p in model.parameters():
                if p.dim() > 1:
                    p.normal_(0, scale)
    return model.eval()


def recompute(model, rollouts, temperature=1.0, top_p=1.0):
    batch = collate(rollouts, pad_id=0)
    with torch.no_grad():
        lp, _ = sequence_logprobs(model, batch, temperature, top_p)
    return batch, lp


PROMPTS = [[3, 1, 2, 0, 1], [3, 1, 2, 0, 1], [3, 1, 2, 0, 1], [2, 2], [1, 0, 3, 2, 2, 1, 0, 0, 1]]


@pytest.mark.parametrize("name", ["tiny-mimo-7b", "tiny-mimo-v2-flash", "tiny-hysparse-7b"])
def test_logprobs_equal_a_float64_full_forward_multi_turn(name):
    model = build_model(name).double().eval()
    env = TwoTools()
    params = SamplingParams(temperature=0.9, max_new_tokens=24, max_total_tokens=60, stop=("\n",), max_turns=4)
    outs, _ = RolloutEngine(model, Letters(), params).generate(PROMPTS, env, torch.Generator().manual_seed(0))
    batch, lp = recompute(model, outs, 0.9)
    mask = batch["response_mask"].bool()
    assert mask.sum() > 20 and (~mask & batch["token_mask"].bool()).sum() > 0  # model tokens and observations
    # RMSNorm normalises in float32 even for float64 inputs, so the cached decode path and the full
    # forward differ by float32 rounding there (~1e-9 in log-prob); an off-by-one position differs by ~1.
    torch.testing.assert_close(lp[mask], batch["old_logprobs"][mask], rtol=0, atol=1e-6)


def test_observations_are_masked_appended_and_turns_recorded():
    model = toy_model()
    env = TwoTools()
    params = SamplingParams(temperature=1.0, max_new_tokens=40, max_total_tokens=120, stop=("\n",), max_turns=5)
    outs, _ = RolloutEngine(model, Letters(), params).generate(PROMPTS, env, torch.Generator().manual_seed(1))
    tok = Letters()
    for row, r in enumerate(outs):
        assert len(r.tokens) == len(r.logprobs) == len(r.mask) == len(r.turn)
        if r.finish != "stop":
            continue
        obs = "ab" * (row % 3 + 1) + "\n"
        assert r.observations == [obs, obs] and len(r.turn_texts) == 3
        assert all(t.endswith("\n") for t in r.turn_texts)
        # the response is turn, observation, turn, observation, turn; observation tokens have mask 0
        text = "".join(r.turn_texts[i] + (r.observations[i] if i < 2 else "") for i in range(3))
        assert tok.decode(r.tokens) == text
        want_mask = []
        for i in range(3):
            want_mask += [1] * len(r.turn_texts[i]) + ([0] * len(obs) if i < 2 else [])
        assert r.mask == want_mask
        assert all(x == 0.0 for x, m in zip(r.logprobs, r.mask) if m == 0)
        assert r.turn == [t for i in range(3) for t in [i] * (len(r.turn_texts[i]) + (len(obs) if i < 2 else 0))]
    assert sum(r.finish == "stop" for r in outs) >= 3


class Counting:
    def __init__(self, model):
        self.n = 0
        model.model.embed_tokens.register_forward_pre_hook(self)

    def __call__(self, module, args):
        self.n += args[0].numel()


def test_observations_are_not_prefilled_again():
    model = toy_model()
    counter = Counting(model)
    params = SamplingParams(temperature=1.0, max_new_tokens=40, max_total_tokens=120, stop=("\n",), max_turns=5)
    prompt = [3, 1, 2, 0, 1, 2]
    for seed in range(4):
        counter.n = 0
        (r,), stats = RolloutEngine(model, Letters(), params).generate([prompt], TwoTools(), torch.Generator().manual_seed(seed))
        # every context token passes through the model exactly once; the last sampled token never
        # does (nothing follows it). Re-prefilling at each turn would add the whole context again.
        assert counter.n == stats.forwarded_tokens == len(prompt) + len(r.tokens) - 1
        assert len(r.observations) >= 1 or r.finish != "stop"


def test_finish_reasons():
    model = toy_model()
    g = torch.Generator().manual_seed(0)
    outs, _ = RolloutEngine(model, Letters(), SamplingParams(max_new_tokens=5)).generate([[1, 2]] * 3, None, g)
    assert all(r.finish == "length" and len(r.tokens) == 5 for r in outs)
    outs, _ = RolloutEngine(model, Letters(), SamplingParams(max_new_tokens=50, stop=("\n",))).generate([[1, 2]] * 8, None, g)
    assert all(r.finish == "stop" and Letters().decode(r.tokens).endswith("\n") for r in outs)
    outs, _ = RolloutEngine(model, Letters(), SamplingParams(max_new_tokens=50, eos=5)).generate([[1, 2]] * 8, None, g)
    assert all(r.finish == "eos" and r.tokens[-1] == 5 and 5 not in r.tokens[:-1] for r in outs)

    class Always:
        def observe(self, row, text):
            return "a\n"

    outs, _ = RolloutEngine(model, Letters(), SamplingParams(max_new_tokens=80, max_total_tokens=300, stop=("\n",),
                                                               max_turns=2)).generate([[1, 2]] * 4, Always(), g)
    assert all(r.finish == "turns" and len(r.turn_texts) == 2 and len(r.observations) == 1 for r in outs)


def test_greedy_speculative_equals_greedy_plain():
    model = toy_model(vocab=8, mtp=2, scale=0.5)
    prompts = [[1, 2, 3], [4, 5], [1, 2, 3], [7, 0, 1, 1, 2]]
    env_a, env_b = TwoTools(), TwoTools()
    base = SamplingParams(temperature=0.0, max_new_tokens=30, max_total_tokens=90, stop=("\n",), max_turns=4)
    plain, _ = RolloutEngine(model, Letters(), base).generate(prompts, env_a)
    spec_params = SamplingParams(**{**base.__dict__, "num_draft": 2})
    spec, stats = RolloutEngine(model, Letters(), spec_params).generate(prompts, env_b)
    assert [r.tokens for r in spec] == [r.tokens for r in plain]
    assert [r.mask for r in spec] == [r.mask for r in plain]
    for a, b in zip(spec, plain):
        assert a.logprobs == pytest.approx(b.logprobs, abs=1e-6)
    assert stats.rounds > 0 and stats.drafted > 0


def _exact_distribution(model, prompt, n_tokens, temperature, top_p):
    """P(continuation) for every sequence of n_tokens, from full forwards in float64."""
    V = model.graph.vocab
    probs = {(): 1.0}
    for _ in range(n_tokens):
        nxt = {}
        seqs = list(probs)
        ids = torch.tensor([prompt + list(s) for s in seqs])
        with torch.no_grad():
            lp = policy_logprobs(model(ids)[:, -1], temperature, top_p).exp()
        for s, row in zip(seqs, lp):
            for t in range(V):
                if row[t] > 0 and float(row[t]) > math.exp(OUTSIDE_NUCLEUS):
                    nxt[s + (t,)] = probs[s] * float(row[t])
        probs = nxt
    return probs


def _chi_square_critical(df: int, z: float = 3.29) -> float:
    """Wilson-Hilferty upper quantile of chi-square(df) (z = 3.29: p = 0.0005)."""
    return df * (1 - 2 / (9 * df) + z * math.sqrt(2 / (9 * df))) ** 3


@pytest.mark.parametrize("num_draft,temperature,top_p", [(0, 1.0, 1.0), (2, 1.0, 1.0), (2, 0.8, 0.9)])
def test_sampling_is_exact_chi_square(num_draft, temperature, top_p):
    model = toy_model(vocab=5, mtp=2, scale=0.3, seed=3)
    prompt, n_tok, N = [1, 3, 2], 3, 3000
    exact = _exact_distribution(model, prompt, n_tok, temperature, top_p)
    if num_draft:  # the drafts must differ from the target, or any acceptance rule would pass
        with torch.no_grad():
            hidden = model.hidden_states(torch.tensor([prompt]))
            q = policy_logprobs(model.lm_head(model.model.mtp.layers[0](hidden, model.model.embed_tokens(
                torch.tensor([prompt[1:] + [0]])), torch.arange(3)[None])[1])[0, -2], temperature, top_p).exp()
            p = policy_logprobs(model(torch.tensor([prompt]))[0, -1], temperature, top_p).exp()
        assert 0.5 * float((p - q).abs().sum()) > 0.15
    params = SamplingParams(temperature=temperature, top_p=top_p, max_new_tokens=n_tok, num_draft=num_draft)
    outs, stats = RolloutEngine(model, Letters(), params).generate([prompt] * N, None, torch.Generator().manual_seed(7))
    counts = Counter(tuple(r.tokens) for r in outs)
    assert all(len(r.tokens) == n_tok for r in outs)
    assert set(counts) <= set(exact)
    # pool the cells expected below 5 times into one
    big = {s: p for s, p in exact.items() if p * N >= 5}
    small_p = 1 - sum(big.values())
    chi = sum((counts.get(s, 0) - N * p) ** 2 / (N * p) for s, p in big.items())
    df = len(big) - 1
    if small_p * N >= 5:
        small_n = N - sum(counts.get(s, 0) for s in big)
        chi += (small_n - N * small_p) ** 2 / (N * small_p)
        df += 1
    assert chi < _chi_square_critical(df), (chi, df)
    # and the reported log-probs are the policy's
    for r in outs[:50]:
        want = [math.log(exact_prefix(exact, r.tokens[:i + 1]) / exact_prefix(exact, r.tokens[:i])) for i in range(n_tok)]
        assert r.logprobs == pytest.approx(want, abs=1e-6)
    if num_draft:
        assert stats.accepted > 0 and stats.accepted < stats.drafted


def exact_prefix(exact, prefix):
    return sum(p for s, p in exact.items() if s[:len(prefix)] == tuple(prefix)) if prefix else 1.0


def test_kv_row_views_and_copies():
    model = toy_model(kinds="FW", window=4)
    cache = KVCache(model.graph, 4, 32, dtype=torch.float64)
    ids = torch.tensor([[1, 2, 3, 4, 5, 6]] * 2)
    with torch.no_grad():
        a = model(ids, cache=row_slice(cache, 1, 3))[:, -1]
        b = model(ids[:1])[:, -1]
    torch.testing.assert_close(a, b.expand(2, -1))
    assert next(iter(cache.lens.values())).tolist() == [0, 6, 6, 0]
    small = take_rows(cache, [2])
    with torch.no_grad():
        nxt = model(torch.tensor([[7]]), cache=small)[:, -1]
        full = model(torch.tensor([[1, 2, 3, 4, 5, 6, 7]]))[:, -1]
    torch.testing.assert_close(nxt, full)
    assert next(iter(cache.lens.values())).tolist() == [0, 6, 6, 0]  # the copy left the source alone
    part = take_rows(cache, [1, 2])
    with torch.no_grad():
        model(torch.tensor([[7], [7]]), cache=part)
    put_rows(cache, [1, 2], part)  # the advanced copy goes back
    assert next(iter(cache.lens.values())).tolist() == [0, 7, 7, 0]
    with pytest.raises(ValueError, match="src: expected a copy of 3 rows"):
        put_rows(cache, [0, 1, 2], part)
    with pytest.raises(ValueError, match="lo/hi: expected"):
        row_slice(cache, 3, 3)
    with pytest.raises(ValueError, match="rows: expected a non-empty list"):
        take_rows(cache, [4])


def test_sampling_params_and_engine_errors_are_named():
    with pytest.raises(ValueError, match="top_p: expected"):
        SamplingParams(top_p=0.0)
    with pytest.raises(ValueError, match="max_total_tokens: expected >= max_new_tokens"):
        SamplingParams(max_new_tokens=10, max_total_tokens=5)
    with pytest.raises(ValueError, match="stop: expected non-empty strings"):
        SamplingParams(stop=("",))
    with pytest.raises(ValueError, match="num_draft: the model has no MTP blocks"):
        RolloutEngine(toy_model(), Letters(), SamplingParams(num_draft=1))
    with pytest.raises(ValueError, match="prompts: expected a non-empty list"):
        RolloutEngine(toy_model(), Letters(), SamplingParams()).generate([[1], []])


def test_top_p_policy_by_hand():
    # probabilities 0.5, 0.3, 0.2 and top_p 0.7: keep the first two, renormalised to 0.625, 0.375
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.2]], dtype=torch.float64))
    lp = policy_logprobs(logits, 1.0, 0.7)
    assert lp[0, :2].exp().tolist() == pytest.approx([0.625, 0.375])
    assert float(lp[0, 2]) == OUTSIDE_NUCLEUS
    # temperature 0.5 squares and renormalises: 0.25, 0.09, 0.04 over 0.38
    assert policy_logprobs(logits, 0.5)[0].exp().tolist() == pytest.approx([0.25 / 0.38, 0.09 / 0.38, 0.04 / 0.38])


@pytest.mark.parametrize("kinds,mtp_window", [("FF", None), ("FW", 4)])
def test_incremental_drafter_equals_recomputed_drafts(kinds, mtp_window):
    """The drafter's cached MTP blocks give the drafts and draft distributions a full recompute gives."""
    from hysparse_kernels.training.rl.rollout_spec import Drafter, draft_batch

    model = toy_model(vocab=8, mtp=3, scale=0.4, kinds=kinds, window=mtp_window)
    if mtp_window:  # sliding-window MTP blocks
        from dataclasses import replace

        graph = replace(model.graph, mtp=replace(model.graph.mtp, pattern=ir.SlidingWindow(window=mtp_window, sink=True)))
        torch.manual_seed(0)
        model = HybridLM(graph).double().eval()
    gen = torch.Generator().manual_seed(3)
    contexts = [[1, 2, 3], [4, 5, 6, 7, 1, 2], [3, 3]]
    drafter = Drafter(model, len(contexts), 64, 3, torch.float64, "cpu")
    for rnd in range(6):
        with torch.no_grad():
            hidden = [model.hidden_states(torch.tensor([c[:-1]]))[0] for c in contexts]
        g1, g2 = torch.Generator().manual_seed(rnd), torch.Generator().manual_seed(rnd)
        d1, q1 = drafter.draft(hidden, contexts, 1.0, 1.0, g1)
        d2, q2 = draft_batch(model, hidden, contexts, 3, 1.0, 1.0, g2)
        assert d1 == d2
        for a, b in zip(q1, q2):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
        # commit 1..4 tokens per row (an observation-sized jump now and then)
        for c in contexts:
            c += torch.randint(0, 8, (int(torch.randint(1, 5, (1,), generator=gen)) + (5 if rnd == 2 else 0),),
                               generator=gen).tolist()
    drafter.take([2, 0])  # compaction keeps the remaining rows' caches
    contexts = [contexts[2], contexts[0]]
    with torch.no_grad():
        hidden = [model.hidden_states(torch.tensor([c[:-1]]))[0] for c in contexts]
    d1, _ = drafter.draft(hidden, contexts, 0.0, 1.0)
    d2, _ = draft_batch(model, hidden, contexts, 3, 0.0, 1.0)
    assert d1 == d2
