"""Speculative rollouts: the model's MTP blocks draft, the main model verifies, and rejection
sampling keeps every committed token distributed exactly as the sampling policy.

One round for each live row with committed context ``t[0..N-1]`` (the last token ``t[N-1]`` is
*pending*: sampled, not yet in the cache):

1. draft ``d1..dK`` with the K chained MTP blocks (``draft_batch``), each from the policy
   transform of its logits (same temperature / top-p), ``q_j``;
2. one forward of ``[t[N-1], d1..dK]`` through the main model with the cache: policy ``p_j`` at
   each of the K+1 positions;
3. ``accept``: keep ``d_j`` with probability ``min(1, p_j(d_j) / q_j(d_j))``; at the first
   rejection draw from ``normalise(max(0, p_j - q_j))`` and stop; if all K are kept, draw one
   more token from ``p_K``. Each output token is distributed as ``p`` (Leviathan et al. 2023,
   Thm. 1), and its log-prob is read from ``p``. Temperature 0: keep ``d_j`` iff it is the argmax.
4. commit the tokens one by one (a stop string, EOS or a limit may end the turn early), and roll
   the cache back to the positions that were both verified and committed.

The MTP blocks keep no cache: each round recomputes them over the last ``K * (window - 1) + 1``
processed positions of each row (the whole prefix for full-attention blocks), batched over rows
with right padding (causal attention never lets a real position see a pad).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .kvrows import take_rows
from .sampling import OUTSIDE_NUCLEUS, policy_logprobs, sample_from


@torch.no_grad()
def draft_batch(model, hidden: list[Tensor], contexts: list[list[int]], num_draft: int, temperature: float,
                top_p: float, generator=None) -> tuple[list[list[int]], list[Tensor | None]]:
    """Draft ``num_draft`` tokens after each context.

    ``hidden[b]`` ``[N_b - 1, D]``: the main model's last hidden states of context ``b``'s
    positions ``0..N_b-2`` (its last token is not processed yet). Returns the drafts per row and,
    per draft depth ``j``, the draft policy's log-probs ``[rows, V]`` (None at temperature 0).
    """
    stack = model.model.mtp
    span = stack.span
    device = hidden[0].device
    n = len(contexts)
    lens = [len(c) for c in contexts]
    lo = [0 if span is None else max(0, N - 2 - num_draft * (span - 1)) for N in lens]
    P = [N - 1 - a for N, a in zip(lens, lo)]
    Pm = max(P)
    D = hidden[0].shape[-1]
    h = torch.zeros(n, Pm, D, dtype=hidden[0].dtype, device=device)
    positions = torch.zeros(n, Pm, dtype=torch.long, device=device)
    for b in range(n):
        h[b, :P[b]] = hidden[b][lo[b]:lens[b] - 1]
        positions[b] = lo[b] + torch.arange(Pm, device=device)
    rows = torch.arange(n, device=device)
    last = torch.tensor([p - 1 for p in P], device=device)
    drafts: list[list[int]] = [[] for _ in range(n)]
    dists: list[Tensor | None] = []
    for k in range(1, num_draft + 1):
        stream = torch.zeros(n, Pm, dtype=torch.long, device=device)
        for b in range(n):
            ext = contexts[b] + drafts[b]
            stream[b, :P[b]] = torch.tensor(ext[lo[b] + k:lo[b] + k + P[b]], device=device)
        emb = model.model.embed_tokens(stream)
        h, normed = stack.layers[k - 1](h, emb, positions)
        lp = policy_logprobs(model.lm_head(normed[rows, last]), temperature, top_p)  # [n, V]
        tok = sample_from(lp, temperature, generator)
        for b, t in enumerate(tok.tolist()):
            drafts[b].append(t)
        dists.append(lp if temperature > 0 else None)
    return drafts, dists


def accept(target: Tensor, drafts: list[int], draft_lp: list[Tensor | None], temperature: float,
           generator=None) -> tuple[list[int], list[float], int]:
    """Rejection sampling for one row. ``target`` ``[K+1, V]``: policy log-probs at the verified
    positions; ``drafts`` the K drafts; ``draft_lp[j]`` ``[V]`` the draft policy of draft ``j``.
    Returns (tokens to commit, their target log-probs, number of drafts accepted)."""
    out: list[int] = []
    for j, d in enumerate(drafts):
        if temperature == 0:
            best = int(target[j].argmax())
            if best != d:
                return out + [best], _lps(target, out + [best]), j
            out.append(d)
            continue
        p, q = target[j].double().exp(), draft_lp[j].double().exp()
        p = p.masked_fill(target[j] <= OUTSIDE_NUCLEUS, 0.0)
        q = q.masked_fill(draft_lp[j] <= OUTSIDE_NUCLEUS, 0.0)
        u = float(torch.rand((), generator=generator, dtype=torch.float64))
        if u * float(q[d]) < float(p[d]):  # u < p/q without dividing (q[d] > 0: d was drawn from q)
            out.append(d)
            continue
        residual = torch.clamp(p - q, min=0)
        token = int(torch.multinomial(residual / residual.sum(), 1, generator=generator))
        return out + [token], _lps(target, out + [token]), j
    K = len(drafts)
    bonus = int(sample_from(target[K:K + 1], temperature, generator)[0])
    return out + [bonus], _lps(target, out + [bonus]), K


def _lps(target: Tensor, tokens: list[int]) -> list[float]:
    return [float(target[j, t]) for j, t in enumerate(tokens)]


def _settle(engine, row, slot: int, cache, first, env, generator, stats) -> None:
    """After ``row`` took an observation: append ``first`` (its unprocessed last token, if any)
    and the observation to its cache, then sample its next (pending) token; repeat while that
    token itself ends a turn with an observation."""
    from .rollout import _select

    model = engine.model
    device = engine._device()
    while row.pending_obs is not None and not row.done:
        ids = torch.tensor([first + row.pending_obs], device=device)
        row.pending_obs = None
        h = engine._forward(ids, _select(cache, slot), stats)[0]  # [s, D]
        row.hidden.append(h)
        lp = engine.policy(model.logits(h[-1:]))
        tok = sample_from(lp, engine.params.temperature, generator)
        engine.commit(row, int(tok[0]), float(lp[0, tok[0]]), env)
        first = [int(tok[0])]  # if this token took an observation too, it is unprocessed


def run_speculative(engine, rows, env, generator, stats) -> None:
    p = engine.params
    K, T = p.num_draft, p.temperature
    model = engine.model
    device = engine._device()
    cache = engine._new_cache(rows)
    h_last = engine._prefill(rows, cache, stats)
    lp = engine.policy(model.logits(h_last))
    tok = sample_from(lp, T, generator)
    for s, r in enumerate(rows):
        engine.commit(r, int(tok[s]), float(lp[s, tok[s]]), env)
        _settle(engine, r, s, cache, [int(tok[s])], env, generator, stats)
    live = list(rows)
    while True:
        keep = [s for s, r in enumerate(live) if not r.done]
        if not keep:
            break
        if len(keep) < len(live):
            cache = take_rows(cache, keep)
            live = [live[s] for s in keep]
        contexts = [r.context for r in live]
        hidden = [torch.cat(r.hidden) for r in live]
        drafts, dists = draft_batch(model, hidden, contexts, K, T, p.top_p, generator)
        ids = torch.tensor([[c[-1]] + d for c, d in zip(contexts, drafts)], device=device)
        h = engine._forward(ids, cache, stats)  # [n, K+1, D]
        target = engine.policy(model.logits(h))  # [n, K+1, V]
        stats.rounds += len(live)
        stats.verify_forwards += 1
        keep_len = next(iter(cache.lens.values())).clone()
        firsts = {}
        for s, r in enumerate(live):
            processed = len(contexts[s]) - 1
            new, lps, a = accept(target[s], drafts[s], [None if q is None else q[s] for q in dists], T, generator)
            stats.drafted += K
            stats.accepted += a
            c = 0
            for t, x in zip(new, lps):
                c += 1
                if engine.commit(r, t, x, env) is not None:
                    break
            verified = 1 + min(c, a)  # the pending token and the committed drafts are in the cache
            keep_len[s] = processed + verified
            r.hidden.append(h[s, :verified])
            firsts[s] = [new[c - 1]] if c == a + 1 else []
        cache.rollback(keep_len)
        for s, r in enumerate(live):
            if r.pending_obs is not None and not r.done:
                _settle(engine, r, s, cache, firsts[s], env, generator, stats)
