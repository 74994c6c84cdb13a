"""Batched rollouts on the model's own generation path (``KVCache`` + the ``hysparse`` decode ops).

``RolloutEngine(model, tokenizer, SamplingParams(...)).generate(prompts, env, generator)`` runs
every prompt (token lists of any lengths) to the end and returns one :class:`Rollout` each: the
response tokens, the log-prob of each under the sampling policy (``sampling.policy_logprobs``),
a mask of the tokens the model wrote (1) versus observation tokens (0), the turn of each token
and why it stopped.

* Prefill: consecutive identical prompts (the ``G`` samples of a GRPO group) are prefilled
  together in one forward into a view of their cache rows; other prompts one forward each.
* Decoding: one forward of ``[rows, 1]`` per step over the live rows; per-sequence lengths live
  in the cache. Finished rows are dropped from the cache (compaction) once they are a quarter of
  it, so late steps cost what the rows still running cost.
* Turns: a turn ends at a stop string (or EOS, or a length limit). With an ``env``, its
  ``observe(row, turn_text)`` returns an observation, which is encoded, appended to that row's
  context by one forward of the observation tokens into its cache (the context before it is not
  prefilled again; rows whose observations have the same length share that forward) and marked
  0 in the mask; ``None`` ends the rollout.
* Speculative decoding (``num_draft = K > 0``, ``rollout_spec``): the model's MTP blocks (with
  their own KV caches) draft K tokens per live row, the main model scores ``[pending, d1..dK]``
  in one forward, and drafts are accepted by rejection sampling, so every token is distributed
  exactly as the policy and its log-prob is the policy's (greedy acceptance at temperature 0).

No global state: the engine holds the model and settings; randomness comes from the
``generator`` passed in, so each data-parallel rank runs its own engine on its own prompts.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Protocol

import torch
from torch import Tensor

from hysparse_kernels.models import KVCache
from .kvrows import put_rows, row_slice, take_rows
from .sampling import check_sampling, policy_logprobs, sample_from

FINISH = ("stop", "eos", "length", "turns")


@dataclass(frozen=True)
class SamplingParams:
    """Decoding settings of a rollout.

    ``max_new_tokens``: tokens the model may write per rollout, all turns together;
    ``max_total_tokens``: the response including observations (default ``4 * max_new_tokens``);
    ``stop``: strings that end a turn (kept in the output); ``eos``: a token id that ends the
    rollout; ``max_turns``: turns per rollout; ``num_draft``: MTP drafts per round (0: off).
    """

    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 64
    max_total_tokens: int | None = None
    stop: tuple[str, ...] = ()
    eos: int | None = None
    max_turns: int = 1
    num_draft: int = 0

    def __post_init__(self):
        check_sampling(self.temperature, self.top_p)
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens: expected >= 1, got {self.max_new_tokens}")
        if self.max_total_tokens is not None and self.max_total_tokens < self.max_new_tokens:
            raise ValueError(f"max_total_tokens: expected >= max_new_tokens ({self.max_new_tokens}), got {self.max_total_tokens}")
        if self.max_turns < 1:
            raise ValueError(f"max_turns: expected >= 1, got {self.max_turns}")
        if self.num_draft < 0:
            raise ValueError(f"num_draft: expected >= 0, got {self.num_draft}")
        if any(not isinstance(s, str) or not s for s in self.stop):
            raise ValueError(f"stop: expected non-empty strings, got {self.stop!r}")

    @property
    def total_limit(self) -> int:
        return self.max_total_tokens if self.max_total_tokens is not None else 4 * self.max_new_tokens


class Environment(Protocol):
    """What answers a turn: ``observe(row, turn_text)`` -> observation text, or None to end the
    rollout. ``row`` is the prompt's index in the batch; ``turn_text`` the turn's decoded text
    (stop string included)."""

    def observe(self, row: int, turn_text: str) -> str | None: ...


@dataclass
class Rollout:
    """One finished rollout. Lists are aligned over the response tokens.

    ``tokens``: what follows the prompt (model tokens and observation tokens, in order);
    ``logprobs``: the sampling policy's log-prob of each model token (0.0 on observations);
    ``mask``: 1 for a model token, 0 for an observation token; ``turn``: the turn each token
    belongs to (an observation belongs to the turn it answers); ``turn_texts``: each turn's
    decoded text; ``observations``: the observation texts, in order; ``finish``: ``stop`` (the
    environment or a stop string ended it), ``eos``, ``length`` or ``turns``.
    """

    prompt: list[int]
    tokens: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    mask: list[int] = field(default_factory=list)
    turn: list[int] = field(default_factory=list)
    turn_texts: list[str] = field(default_factory=list)
    observations: list[str] = field(default_factory=list)
    finish: str = ""

    @property
    def num_model_tokens(self) -> int:
        return sum(self.mask)


@dataclass
class RolloutStats:
    rollouts: int = 0
    model_tokens: int = 0  # tokens the model wrote
    observation_tokens: int = 0
    forwarded_tokens: int = 0  # token positions passed through the model (prefill, decode, verify, observations)
    forwards: int = 0
    rounds: int = 0  # speculative: rows verified, summed over verification forwards
    verify_forwards: int = 0
    drafted: int = 0
    accepted: int = 0
    seconds: float = 0.0

    @property
    def tokens_per_second(self) -> float:
        return self.model_tokens / self.seconds if self.seconds else 0.0

    @property
    def acceptance_length(self) -> float:
        """Mean tokens a row gets from one verification (1 + accepted drafts; speculative mode)."""
        return (self.accepted + self.rounds) / self.rounds if self.rounds else 0.0


class _Row:
    """Book-keeping of one live rollout."""

    def __init__(self, index: int, prompt: list[int]):
        self.index = index
        self.out = Rollout(prompt=list(prompt))
        self.turn_start = 0  # index in out.tokens where the current turn began
        self.done = False
        self.pending_obs: list[int] | None = None  # observation to append after this step
        self.hidden: list[Tensor] = []  # speculative mode: main-model hidden states of processed positions

    @property
    def context(self) -> list[int]:
        return self.out.prompt + self.out.tokens


class RolloutEngine:
    """Generates rollouts for ``model`` (a ``HybridLM``) with ``params``.

    ``tokenizer``: ``encode(text) -> ids`` and ``decode(ids) -> text`` (stop strings, observations).
    """

    def __init__(self, model, tokenizer, params: SamplingParams, *, cache_dtype=None):
        self.model, self.tok, self.params = model, tokenizer, params
        self.cache_dtype = cache_dtype
        if params.num_draft:
            stack = getattr(model.model, "mtp", None)
            if stack is None:
                raise ValueError("num_draft: the model has no MTP blocks to draft with (graph.mtp is None)")
            if params.num_draft > len(stack.layers):
                raise ValueError(f"num_draft: expected at most {len(stack.layers)} (the MTP blocks), got {params.num_draft}")
        self._stop_tail = 4 * max((len(s) for s in params.stop), default=0)

    # ------------------------------------------------------------------ public

    @torch.no_grad()
    def generate(self, prompts: list[list[int]], env: Environment | None = None,
                 generator: torch.Generator | None = None) -> tuple[list[Rollout], RolloutStats]:
        """Run every prompt to the end. Returns the rollouts (in prompt order) and statistics."""
        if not prompts or any(len(p) == 0 for p in prompts):
            raise ValueError("prompts: expected a non-empty list of non-empty token lists")
        start = time.perf_counter()
        was_training = self.model.training
        self.model.eval()
        try:
            rows = [_Row(i, p) for i, p in enumerate(prompts)]
            stats = RolloutStats(rollouts=len(rows))
            if self.params.num_draft:
                from .rollout_spec import run_speculative

                run_speculative(self, rows, env, generator, stats)
            else:
                self._run_plain(rows, env, generator, stats)
        finally:
            self.model.train(was_training)
        out = [r.out for r in rows]
        stats.model_tokens = sum(o.num_model_tokens for o in out)
        stats.observation_tokens = sum(len(o.tokens) - o.num_model_tokens for o in out)
        stats.seconds = time.perf_counter() - start
        return out, stats

    # ------------------------------------------------------------------ shared pieces

    def _device(self):
        return next(self.model.parameters()).device

    def _new_cache(self, rows: list[_Row]) -> KVCache:
        p = self.params
        cap = max(len(r.out.prompt) for r in rows) + p.total_limit + p.num_draft + 2
        dtype = self.cache_dtype or next(self.model.parameters()).dtype
        return KVCache(self.model.graph, len(rows), cap, dtype=dtype, device=self._device(), spare=p.num_draft)

    def _forward(self, ids: Tensor, cache: KVCache, stats: RolloutStats) -> Tensor:
        """Hidden states ``[b, s, D]`` of ``ids`` ``[b, s]`` appended to ``cache``."""
        stats.forwarded_tokens += ids.numel()
        stats.forwards += 1
        return self.model.hidden_states(ids, cache=cache)

    def _prefill(self, rows: list[_Row], cache: KVCache, stats: RolloutStats) -> Tensor:
        """Prefill every prompt; returns the hidden states at each prompt's last position ``[B, D]``
        (and keeps all of them per row in speculative mode)."""
        device = self._device()
        last = []
        i = 0
        while i < len(rows):
            j = i + 1
            while j < len(rows) and rows[j].out.prompt == rows[i].out.prompt:
                j += 1
            ids = torch.tensor([rows[i].out.prompt] * (j - i), device=device)
            h = self._forward(ids, row_slice(cache, i, j), stats)
            last.append(h[:, -1])
            if self.params.num_draft:
                for b in range(i, j):
                    rows[b].hidden = [h[b - i]]
            i = j
        return torch.cat(last)

    def append_chunks(self, cache: KVCache, items: list[tuple[int, list[int]]], stats: RolloutStats) -> dict[int, Tensor]:
        """Append token chunks (observations) to some rows of ``cache``: ``items`` = ``(row, ids)``.
        Rows whose chunks have the same length run in one forward (on a copy of their cache rows,
        written back after). Returns each row's hidden states ``[len(ids), D]``."""
        device = self._device()
        by_len: dict[int, list[tuple[int, list[int]]]] = {}
        for slot, ids in items:
            by_len.setdefault(len(ids), []).append((slot, ids))
        out = {}
        for group in by_len.values():
            ids = torch.tensor([i for _, i in group], device=device)
            slots = [s for s, _ in group]
            if len(group) == 1:
                h = self._forward(ids, _select(cache, slots[0]), stats)
            else:
                part = take_rows(cache, slots)
                h = self._forward(ids, part, stats)
                put_rows(cache, slots, part)
            out.update({s: h[j] for j, s in enumerate(slots)})
        return out

    def policy(self, logits: Tensor) -> Tensor:
        return policy_logprobs(logits, self.params.temperature, self.params.top_p)

    def commit(self, row: _Row, token: int, logprob: float, env: Environment | None) -> str | None:
        """Append one model token to ``row``; returns ``None`` (go on), ``"obs"`` (an observation
        is waiting in ``row.pending_obs``) or ``"done"``."""
        p, out = self.params, row.out
        out.tokens.append(token)
        out.logprobs.append(logprob)
        out.mask.append(1)
        out.turn.append(len(out.turn_texts))
        if p.eos is not None and token == p.eos:
            return self._finish(row, "eos", end_turn=True)
        hit = False
        if p.stop:
            tail = self.tok.decode(out.tokens[max(row.turn_start, len(out.tokens) - self._stop_tail):])
            hit = any(tail.endswith(s) for s in p.stop)
        if hit:
            text = self._end_turn(row)
            if env is None:
                return self._finish(row, "stop")
            if len(out.turn_texts) >= p.max_turns:
                return self._finish(row, "turns")
            obs = env.observe(row.index, text)
            if obs is None:
                return self._finish(row, "stop")
            ids = self.tok.encode(obs)
            if len(out.tokens) + len(ids) >= p.total_limit or not ids:
                return self._finish(row, "length")
            out.observations.append(obs)
            turn = len(out.turn_texts) - 1
            out.tokens += ids
            out.logprobs += [0.0] * len(ids)
            out.mask += [0] * len(ids)
            out.turn += [turn] * len(ids)
            row.turn_start = len(out.tokens)
            row.pending_obs = ids
            return "obs"
        if out.num_model_tokens >= p.max_new_tokens or len(out.tokens) >= p.total_limit:
            return self._finish(row, "length", end_turn=True)
        return None

    def _end_turn(self, row: _Row) -> str:
        text = self.tok.decode(row.out.tokens[row.turn_start:])
        row.out.turn_texts.append(text)
        row.turn_start = len(row.out.tokens)
        return text

    def _finish(self, row: _Row, why: str, *, end_turn: bool = False) -> str:
        if end_turn:
            self._end_turn(row)
        row.out.finish = why
        row.done = True
        return "done"

    # ------------------------------------------------------------------ plain decoding

    def _run_plain(self, rows: list[_Row], env, generator, stats: RolloutStats) -> None:
        device = self._device()
        cache = self._new_cache(rows)
        logits = self.model.logits(self._prefill(rows, cache, stats))  # [B, V]
        live = list(rows)  # live[s] sits in cache row s
        while live:
            lp = self.policy(logits)
            tok = sample_from(lp, self.params.temperature, generator)
            tok_lp = lp.gather(-1, tok[:, None]).squeeze(-1)
            for r, t, x in zip(live, tok.tolist(), tok_lp.tolist()):
                if not r.done:
                    self.commit(r, int(t), float(x), env)
            if all(r.done for r in live):
                break
            keep = [s for s, r in enumerate(live) if not r.done]
            if len(keep) <= 0.75 * len(live):  # compaction: drop finished rows from the cache
                cache = take_rows(cache, keep)
                live, tok = [live[s] for s in keep], tok[keep]
            h = self._forward(tok[:, None].to(device), cache, stats)  # [live, 1, D]
            logits = self.model.logits(h[:, -1])
            items = [(s, r.pending_obs) for s, r in enumerate(live) if r.pending_obs is not None and not r.done]
            if items:
                for r in live:
                    r.pending_obs = None
                for s, hs in self.append_chunks(cache, items, stats).items():
                    logits[s] = self.model.logits(hs[-1])


def _select(cache: KVCache, s: int) -> KVCache:
    return cache.select(s) if cache.batch > 1 else cache


def collate(rollouts: list[Rollout], pad_id: int, device=None) -> dict[str, Tensor]:
    """Pad rollouts into training tensors.

    Returns ``input_ids [N, T]`` (prompt then response, right-padded with ``pad_id``),
    ``prompt_lens [N]``, ``response [N, L]``, ``response_mask [N, L]`` (1 on model tokens),
    ``token_mask [N, L]`` (1 on every response token, observations included),
    ``old_logprobs [N, L]`` (the sampling policy's, 0 elsewhere) and ``turn_ids [N, L]`` (-1 on
    padding). ``L`` is the longest response, ``T`` the longest prompt + response.
    """
    N = len(rollouts)
    L = max(1, max(len(r.tokens) for r in rollouts))
    T = max(len(r.prompt) + len(r.tokens) for r in rollouts)
    input_ids = torch.full((N, T), pad_id, dtype=torch.long)
    response = torch.full((N, L), pad_id, dtype=torch.long)
    response_mask = torch.zeros(N, L)
    token_mask = torch.zeros(N, L)
    old = torch.zeros(N, L, dtype=torch.float64)
    turn = torch.full((N, L), -1, dtype=torch.long)
    for i, r in enumerate(rollouts):
        seq = r.prompt + r.tokens
        input_ids[i, :len(seq)] = torch.tensor(seq)
        n = len(r.tokens)
        if n:
            response[i, :n] = torch.tensor(r.tokens)
            response_mask[i, :n] = torch.tensor(r.mask, dtype=torch.float32)
            token_mask[i, :n] = 1
            old[i, :n] = torch.tensor(r.logprobs, dtype=torch.float64)
            turn[i, :n] = torch.tensor(r.turn)
    out = {"input_ids": input_ids, "prompt_lens": torch.tensor([len(r.prompt) for r in rollouts]),
           "response": response, "response_mask": response_mask, "token_mask": token_mask, "old_logprobs": old,
           "turn_ids": turn}
    return {k: v.to(device) for k, v in out.items()} if device is not None else out
