"""TSPO (arXiv 2601.22776): a first-occurrence latent reward for multi-turn search, and
turn-level advantages.

On the lookup task with the ``search`` tool, rollout i has turns k = 0..K_i (searches, then the
answer). Turn rewards (the paper gives no formula or value; this is the reading of its
description, with λ = 0.5 chosen here)::

    r_i,k = λ · 1[gold ∈ obs_i,k and gold ∉ obs_i,j for j < k]       (FOLR: the turn whose tool
                                                                     observation first shows the
                                                                     gold answer)
          + 1[k = K_i and o_i correct]                              (the outcome)
    G_i,k = Σ_{j >= k} r_i,j                                         (the turn's return)
    A_i,k = (G_i,k - mean_g G_·,k) / (std_g G_·,k + eps)             (group-normalised per turn
                                                                     index, over the rollouts of
                                                                     the group that have turn k)
    J(θ)  = GRPO's objective with A_i,k on every model token of turn k (clip 0.2, 1/|o_i|, k3 KL)

Unanswerable questions have no gold answer to find (only the outcome counts). Departures from
GRPO (``grpo``): GRPO's ``A_i = (R_i - mean) / std`` with the outcome alone gives every token of a
rollout the same advantage, and a group whose rollouts all fail (or all succeed) gives none;
here a rollout that retrieved the answer but did not use it is told apart from one that never
found it (the paper's "intra-group homogenization"), and turns after the retrieval do not share
its credit. Everything else (clip, aggregation, KL β = 0.04) is GRPO's.

Per step ``metrics.jsonl`` gets ``reward_var`` / ``zero_var_groups`` (mean within-group variance
of the TSPO returns, share of groups where it is 0) beside ``outcome_reward_var`` /
``outcome_zero_var_groups`` (the same for the outcome reward alone, on the same rollouts), and
``folr_rate`` (rollouts whose observations showed the gold answer).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..algos import AdvantageInput, AlgoConfig, group_stats, register_advantage
from . import Recipe, register_recipe

LAMBDA = 0.5


def turn_returns(token_rewards: Tensor, response_mask: Tensor, turn_ids: Tensor) -> tuple[Tensor, Tensor]:
    """``G [N, T]`` (each turn's reward plus all later ones) and ``has [N, T]`` (turn k holds a
    model token) from token rewards ``[N, L]`` summed per turn."""
    N = token_rewards.shape[0]
    tid = turn_ids.long()
    T = int(tid.max()) + 1 if tid.numel() and int(tid.max()) >= 0 else 1
    valid = tid >= 0
    r = torch.zeros(N, T, dtype=torch.float64).scatter_add_(1, tid.clamp(min=0), torch.where(valid, token_rewards.double(), 0.0))
    has = torch.zeros(N, T, dtype=torch.float64).scatter_add_(1, tid.clamp(min=0), (valid & (response_mask > 0)).double()) > 0
    G = r.flip(1).cumsum(1).flip(1)
    return G, has


@register_advantage("tspo_turn")
def tspo_turn_advantage(inp: AdvantageInput, cfg: AlgoConfig) -> Tensor:
    """Turn-level advantages ``[N, L]`` (module docstring): the turn returns of token rewards
    grouped by ``inp.turn_ids``, normalised per (group, turn index) over the rollouts that have
    that turn (a turn only one rollout of its group reached gets 0). Needs ``turn_ids``."""
    if inp.turn_ids is None:
        raise ValueError("turn_ids: the tspo_turn advantage needs each token's turn, got None")
    G, has = turn_returns(inp.token_rewards, inp.response_mask, inp.turn_ids)
    A = torch.zeros_like(G)
    for g in torch.unique(inp.group):
        rows = inp.group == g
        for k in range(G.shape[1]):
            sel = rows & has[:, k]
            n = int(sel.sum())
            if n < 2:
                continue
            vals = G[sel, k]
            A[sel, k] = (vals - vals.mean()) / (vals.std(unbiased=True) + cfg.std_eps)
    tid = inp.turn_ids.long()
    per_token = torch.gather(A, 1, tid.clamp(min=0))
    return torch.where(tid >= 0, per_token, torch.zeros_like(per_token)) * inp.response_mask.to(A.dtype)


def first_occurrence(example, observations: list[str], gold_in) -> int | None:
    """The index of the first observation showing the gold answer (``gold_in(example, obs)``),
    or None."""
    return next((k for k, obs in enumerate(observations) if gold_in(example, obs)), None)


def variance_stats(scores: Tensor, group: Tensor) -> tuple[float, float]:
    """Mean within-group variance (unbiased) of ``scores [N]`` and the share of groups where it is 0."""
    _, std, _ = group_stats(scores.double(), group)
    _, first = torch.unique(group, return_inverse=True)
    per_group = torch.zeros(int(first.max()) + 1, dtype=torch.float64).scatter_(0, first, std ** 2)
    return float(per_group.mean()), float((per_group == 0).double().mean())


class FolrRewards:
    """The recipe's ``rewards`` hook: FOLR on the last model token of the retrieving turn, the
    outcome on the last model token of the rollout; logs the variance metrics."""

    def __init__(self, lam: float = LAMBDA):
        if lam < 0:
            raise ValueError(f"lam: expected >= 0, got {lam}")
        self.lam = lam

    def __call__(self, ctx) -> Tensor:
        mask = ctx.batch["response_mask"].double()
        tid = ctx.batch["turn_ids"].long()
        N, L = mask.shape
        rewards = torch.zeros(N, L, dtype=torch.float64)
        pos = torch.arange(1, L + 1)
        found = 0
        for i, (ex, r, v) in enumerate(zip(ctx.examples, ctx.rollouts, ctx.verdicts)):
            if not mask[i].any():
                continue
            last = int((mask[i] * pos).argmax())
            rewards[i, last] += v.reward
            k = first_occurrence(ex, r.observations, ctx.task.gold_in)
            if k is not None:
                found += 1
                in_turn = (tid[i] == k) & (mask[i] > 0)
                if in_turn.any():
                    rewards[i, int((in_turn.double() * pos).argmax())] += self.lam
        group = torch.arange(N) // ctx.config.group_size  # the trainer keeps a prompt's rollouts together
        outcome = torch.tensor([v.reward for v in ctx.verdicts], dtype=torch.float64)
        var, zero = variance_stats(rewards.sum(-1), group)
        ovar, ozero = variance_stats(outcome, group)
        ctx.metrics.update({"reward_var": var, "zero_var_groups": zero, "outcome_reward_var": ovar,
                            "outcome_zero_var_groups": ozero, "folr_rate": found / max(1, N)})
        return rewards


RECIPE = register_recipe(Recipe(
    name="tspo",
    summary="TSPO: first-occurrence latent reward (0.5 at the turn that retrieves the gold answer), turn-level advantages",
    overrides=dict(advantage="tspo_turn", loss="ppo_clip", aggregation="seq-mean-token-mean", eps_low=0.2, eps_high=0.2,
                   kl_coef=0.04),
    tasks=("lookup",),
    rewards=FolrRewards(),
    module=__name__,
))
