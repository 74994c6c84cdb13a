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

The MTP blocks keep their own KV cache (:class:`Drafter`): block ``k`` at position ``p`` reads
token ``t[p+k]``, so its keys are final once that token is committed; each round block ``k``
computes only the positions added since the last round plus the ``k - 1`` it computed from
drafts, and rolls its cache back to the final ones. Rows are batched with right padding (causal
attention never lets a real position see a pad; the padded keys are rolled back).
``draft_batch`` is the cache-free recomputation (the reference the drafter is tested against).
"""

from __future__ import annotations

import torch
from torch import Tensor

from hysparse_kernels.models import KVCache
from hysparse_kernels.models.mtp import mtp_layer_spec
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


class Drafter:
    """Incremental MTP drafting for a batch of rows, with one KV cache per MTP block.

    Buffers, per row and absolute position: ``buf[0]`` the main model's hidden states, ``buf[k]``
    block ``k``'s outputs, ``tok`` the context (and this round's drafts). Block ``k``'s cache
    length ``F_k`` counts its final positions (``p <= N-1-k``: token ``t[p+k]`` committed). Each
    round computes block ``k`` on positions ``F_k .. N-2`` only (``N`` = context length, the last
    token pending), gathering its inputs from ``buf[k-1]`` and ``tok``, drafts from position
    ``N-2``, and keeps ``N - k`` positions. Positions past a row's end (right padding) are
    computed and rolled back; they are never read.
    """

    def __init__(self, model, batch: int, capacity: int, num_draft: int, dtype, device):
        stack = model.model.mtp
        self.model, self.K, self.capacity = model, num_draft, capacity
        self.layer0 = model.graph.num_layers
        specs = [mtp_layer_spec(stack.spec, self.layer0 + k) for k in range(num_draft)]
        # the spare slots let a ring take a round's padded positions and roll them back
        self.cache = KVCache.for_layers(specs, batch, capacity, dtype=dtype, device=device, spare=capacity)
        D = model.graph.hidden
        self.buf = [torch.zeros(batch, capacity, D, dtype=dtype, device=device) for _ in range(num_draft + 1)]
        self.tok = torch.zeros(batch, capacity + num_draft + 1, dtype=torch.long, device=device)
        self.filled = [0] * batch  # positions of buf[0] written
        self.written = [0] * batch  # context tokens written into tok

    def take(self, keep: list[int]) -> None:
        """Keep rows ``keep`` (in that order), as the main cache's compaction does."""
        self.cache = take_rows(self.cache, keep)
        index = torch.as_tensor(keep, dtype=torch.long, device=self.tok.device)
        self.buf = [b.index_select(0, index) for b in self.buf]
        self.tok = self.tok.index_select(0, index)
        self.filled = [self.filled[s] for s in keep]
        self.written = [self.written[s] for s in keep]

    def _block(self, k: int, h: Tensor, tokens: Tensor, positions: Tensor) -> tuple[Tensor, Tensor]:
        """MTP block ``k`` over new positions with its cache (``MTPBlock.forward`` plus a cache)."""
        blk = self.model.model.mtp.layers[k - 1]
        emb = self.model.model.embed_tokens(tokens)
        return blk(h, emb, positions, cache=self.cache)

    @torch.no_grad()
    def draft(self, hidden: list[Tensor], contexts: list[list[int]], temperature: float, top_p: float,
              generator=None) -> tuple[list[list[int]], list[Tensor | None]]:
        """Same contract as :func:`draft_batch`; ``hidden[b]`` are the main model's hidden states
        of all processed positions of row ``b`` (``[N_b - 1, D]``)."""
        n = len(contexts)
        device = self.tok.device
        N_list = [len(c) for c in contexts]
        if max(N_list) + self.K >= self.capacity:
            raise ValueError(f"contexts: longer than the drafter's capacity {self.capacity}")
        for b in range(n):  # only what arrived since the last round
            if self.filled[b] < N_list[b] - 1:
                self.buf[0][b, self.filled[b]:N_list[b] - 1] = hidden[b][self.filled[b]:N_list[b] - 1]
                self.filled[b] = N_list[b] - 1
            if self.written[b] < N_list[b]:
                self.tok[b, self.written[b]:N_list[b]] = torch.tensor(contexts[b][self.written[b]:], device=device)
                self.written[b] = N_list[b]
        N = torch.tensor(N_list, device=device)
        rows = torch.arange(n, device=device)
        D = self.buf[0].shape[-1]
        drafts = torch.zeros(n, self.K, dtype=torch.long, device=device)
        dists: list[Tensor | None] = []
        for k in range(1, self.K + 1):
            lens = self.cache.lens[self.layer0 + k - 1]
            lo = lens.long()
            P = N - 1 - lo  # [n] positions to compute per row
            Pm = int(P.max())
            pos = lo[:, None] + torch.arange(Pm, device=device)  # [n, Pm]
            at = pos.clamp(max=self.capacity - 1)
            h = self.buf[k - 1].gather(1, at[..., None].expand(n, Pm, D))
            tok = self.tok.gather(1, (pos + k).clamp(max=self.tok.shape[1] - 1))
            out, normed = self._block(k, h, tok, pos)
            self.buf[k].scatter_(1, at[..., None].expand(n, Pm, D), out)
            lp = policy_logprobs(self.model.lm_head(normed[rows, P - 1]), temperature, top_p)
            d = sample_from(lp, temperature, generator)
            drafts[:, k - 1] = d
            self.tok[rows, N + k - 1] = d  # read by the next blocks; overwritten by the context later
            dists.append(lp if temperature > 0 else None)
            lens.copy_((N - k).clamp(min=0))  # positions 0..N-1-k read committed tokens only
        return drafts.tolist(), dists


def accept(target: Tensor, drafts: list[list[int]], draft_lp: list[Tensor | None], temperature: float,
           generator=None) -> list[tuple[list[int], list[float], int]]:
    """Rejection sampling for a batch of rows. ``target`` ``[n, K+1, V]``: policy log-probs at
    the verified positions; ``drafts`` ``n`` lists of K drafts; ``draft_lp[j]`` ``[n, V]`` the draft
    policy of draft ``j`` (None at temperature 0). Returns per row (tokens to commit, their target
    log-probs, number of drafts accepted). Draws a uniform for every draft of every row; those
    after a row's first rejection are unused, which leaves the output distribution as it is."""
    n, K1, _ = target.shape
    K = K1 - 1
    rows = torch.arange(n, device=target.device)
    d = torch.tensor(drafts, dtype=torch.long, device=target.device).view(n, K)
    if temperature == 0:
        ok = d == target[:, :K].argmax(-1)
    else:
        p_d = target[:, :K].double().gather(-1, d[..., None]).squeeze(-1).exp()
        q_d = torch.stack([draft_lp[j][rows, d[:, j]] for j in range(K)], 1).double().exp()
        u = torch.rand(n, K, generator=generator, dtype=torch.float64)
        ok = u * q_d < p_d  # u < p/q without dividing (q_d > 0: the draft was drawn from q)
    ok = torch.cat([ok, torch.zeros(n, 1, dtype=torch.bool, device=ok.device)], 1)
    a = ok.long().cumprod(1).sum(1)  # leading accepted drafts per row
    last = torch.empty(n, dtype=torch.long, device=target.device)
    full = a == K
    if bool(full.any()):  # every draft kept: one more token from the last verified position
        last[full] = sample_from(target[full, K], temperature, generator)
    rej = ~full
    if bool(rej.any()):
        at = a[rej]
        if temperature == 0:
            last[rej] = target[rej, at].argmax(-1)
        else:
            p = target[rej, at].double().exp().masked_fill(target[rej, at] <= OUTSIDE_NUCLEUS, 0.0)
            q_all = torch.stack([draft_lp[j] for j in range(K)], 1)[rej, at]
            q = q_all.double().exp().masked_fill(q_all <= OUTSIDE_NUCLEUS, 0.0)
            residual = torch.clamp(p - q, min=0)
            last[rej] = torch.multinomial(residual / residual.sum(-1, keepdim=True), 1, generator=generator).squeeze(-1)
    out = []
    a_list, last_list, d_list = a.tolist(), last.tolist(), d.tolist()
    for b in range(n):
        toks = d_list[b][:a_list[b]] + [last_list[b]]
        out.append((toks, _lps(target[b], toks), a_list[b]))
    return out


def _lps(target: Tensor, tokens: list[int]) -> list[float]:
    idx = torch.tensor(tokens, device=target.device)
    return target[torch.arange(len(tokens), device=target.device), idx].tolist()


def _settle(engine, live, cache, firsts: dict, env, generator, stats) -> None:
    """Rows of ``live`` that took an observation: append ``firsts[slot]`` (their unprocessed last
    token, if any) and the observation to their caches (rows of equal length together), then
    sample their next (pending) token; repeat while such a token itself ends a turn with an
    observation."""
    model = engine.model
    while True:
        waiting = [(s, r) for s, r in enumerate(live) if r.pending_obs is not None and not r.done]
        if not waiting:
            return
        items = [(s, firsts.get(s, []) + r.pending_obs) for s, r in waiting]
        for _, r in waiting:
            r.pending_obs = None
        hidden = engine.append_chunks(cache, items, stats)
        last = torch.stack([hidden[s][-1] for s, _ in waiting])
        lp = engine.policy(model.logits(last))
        tok = sample_from(lp, engine.params.temperature, generator)
        for j, (s, r) in enumerate(waiting):
            r.hidden.append(hidden[s])
            engine.commit(r, int(tok[j]), float(lp[j, tok[j]]), env)
            firsts[s] = [int(tok[j])]  # if this token took an observation too, it is unprocessed


class _Tail:
    """A row's processed hidden states from absolute position ``start`` on, sliced by absolute
    positions (the drafter reads only the positions it has not stored yet)."""

    def __init__(self, parts: list[Tensor], start: int):
        self.h, self.start = (torch.cat(parts) if len(parts) > 1 else parts[0]), start

    def __getitem__(self, sl: slice) -> Tensor:
        return self.h[sl.start - self.start:sl.stop - self.start]


def run_speculative(engine, rows, env, generator, stats) -> None:
    p = engine.params
    K, T = p.num_draft, p.temperature
    model = engine.model
    device = engine._device()
    cache = engine._new_cache(rows)
    drafter = Drafter(model, len(rows), cache.max_len, K, next(iter(cache.k.values())).dtype, device)
    h_last = engine._prefill(rows, cache, stats)
    lp = engine.policy(model.logits(h_last))
    tok = sample_from(lp, T, generator)
    for s, r in enumerate(rows):
        engine.commit(r, int(tok[s]), float(lp[s, tok[s]]), env)
    _settle(engine, rows, cache, {s: [int(t)] for s, t in enumerate(tok.tolist())}, env, generator, stats)
    live = list(rows)
    while True:
        keep = [s for s, r in enumerate(live) if not r.done]
        if not keep:
            break
        if len(keep) < len(live):
            cache = take_rows(cache, keep)
            drafter.take(keep)
            live = [live[s] for s in keep]
        contexts = [r.context for r in live]
        tails = [_Tail(r.hidden, drafter.filled[s]) for s, r in enumerate(live)]
        drafts, dists = drafter.draft(tails, contexts, T, p.top_p, generator)
        for r in live:
            r.hidden = []  # the drafter holds them now
        ids = torch.tensor([[c[-1]] + d for c, d in zip(contexts, drafts)], device=device)
        h = engine._forward(ids, cache, stats)  # [n, K+1, D]
        target = engine.policy(model.logits(h))  # [n, K+1, V]
        stats.rounds += len(live)
        stats.verify_forwards += 1
        keep_len = next(iter(cache.lens.values())).clone()
        firsts = {}
        verdicts = accept(target, drafts, dists, T, generator)
        for s, r in enumerate(live):
            processed = len(contexts[s]) - 1
            new, lps, a = verdicts[s]
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
        _settle(engine, live, cache, firsts, env, generator, stats)
