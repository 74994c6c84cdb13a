"""LMPO: latent-memory policy optimisation, the update of the memory composer.

For one task ``x`` the frozen agent rolls out ``G`` episodes ``o_i`` with the latent memory
``m = C_φ(role, experience, x)``; each gets a binary reward ``r_i`` (success). Group-relative
advantages ``A_i = (r_i - mean_j r_j) / (std_j r_j + ε)`` (``algos.grpo_advantage``), and the
clipped-ratio loss on the agent's own tokens (observations masked out):

    ρ_{i,t} = π(o_{i,t} | m_φ, x, o_{i,<t}) / π(o_{i,t} | m_φ_old, x, o_{i,<t})
    L(φ) = mean_i mean_t max(-A_i ρ_{i,t}, -A_i clip(ρ_{i,t}, 1-ε_low, 1+ε_high))

(``algos.policy_objective``, ``seq-mean-token-mean``). The agent's weights are frozen; the
gradient reaches only the composer ``φ`` through the latent tokens.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..rl.algos import AdvantageInput, AlgoConfig, get_advantage, outcome_rewards, policy_objective


def lmpo_advantages(scores: Tensor, groups: Tensor, response_mask: Tensor, algo: AlgoConfig) -> Tensor:
    """Per-token advantages ``[N, L]`` of rollouts with rewards ``scores [N]`` in prompt ``groups [N]``."""
    mask = response_mask.double()
    return get_advantage(algo.advantage)(AdvantageInput(outcome_rewards(scores.double(), mask), mask, groups), algo)


def lmpo_loss(logp: Tensor, old_logp: Tensor, adv: Tensor, response_mask: Tensor, algo: AlgoConfig):
    """The scalar LMPO loss and its metrics; ``logp`` ``[N, L]`` carries the composer's gradient."""
    return policy_objective(logp, old_logp.to(logp.dtype), adv, response_mask, algo)


def composer_grads_only(composer, agent) -> None:
    """Check the invariant of LMPO: the agent is frozen, the composer trains."""
    if any(p.requires_grad for p in agent.parameters()):
        raise ValueError("agent: expected frozen parameters (LMPO trains only the composer)")
    if not any(p.requires_grad for p in composer.parameters()):
        raise ValueError("composer: expected trainable parameters")
    return None
