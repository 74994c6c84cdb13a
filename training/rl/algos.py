"""Advantage estimators, policy losses and loss aggregation: one registry that recipes extend.

Every estimator receives **per-token** inputs (:class:`AdvantageInput`): token-level rewards,
the response mask, the group of each rollout, the turn and (optional) reasoning-step id of each
token, and a free ``extra`` dict; so a recipe with turn rewards (TSPO) or step labels (FaithRL)
registers its own estimator instead of patching the dispatcher::

    @register_advantage("my_adv")
    def my_adv(inp: AdvantageInput, cfg: AlgoConfig) -> Tensor:   # [N, L]
        ...

Shapes: ``N`` rollouts, ``L`` response positions (observation tokens and padding have
``response_mask == 0``). A rollout's scalar score is the sum of its token rewards.

Built in (formulas in each docstring; ``r_i`` score of rollout i, group g of size G):

* advantages: ``grpo`` ``(r_i - mean_g) / (std_g + eps)``; ``dr_grpo`` ``r_i - mean_g``;
  ``rloo`` ``r_i - mean_{j != i} r_j``; ``reinforce_pp_baseline`` ``r_i - mean_g`` whitened over
  all response tokens of the batch.
* losses: ``ppo_clip`` (asymmetric ``eps_low`` / ``eps_high`` as DAPO, optional dual clip ``c``),
  ``gspo`` (sequence-level ratio ``(pi/pi_old)^(1/|y|)``).
* aggregation: ``token-mean``, ``seq-mean-token-mean``, ``seq-mean-token-sum-norm``.
* ``kl_k3`` (KL to a reference policy), ``filter_groups`` (DAPO dynamic sampling),
  ``overlong_penalty`` (DAPO soft length penalty); ``policy_objective`` puts them together.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import Tensor

ADVANTAGES: dict[str, Callable] = {}
LOSSES: dict[str, Callable] = {}
AGGREGATIONS: dict[str, Callable] = {}


def _register(table: dict, kind: str, name: str):
    if not isinstance(name, str) or not name:
        raise ValueError(f"name: expected a non-empty string for the {kind}, got {name!r}")

    def deco(fn):
        if name in table and table[name] is not fn:
            raise ValueError(f"{kind} {name!r} is already registered (by {table[name].__module__})")
        table[name] = fn
        return fn

    return deco


def register_advantage(name: str):
    """Decorator: ``fn(inp: AdvantageInput, cfg: AlgoConfig) -> advantages [N, L]``."""
    return _register(ADVANTAGES, "advantage estimator", name)


def register_loss(name: str):
    """Decorator: ``fn(logp, old_logp, advantages, mask, cfg) -> (loss [N, L], metrics dict)``."""
    return _register(LOSSES, "policy loss", name)


def register_aggregation(name: str):
    """Decorator: ``fn(loss [N, L], mask [N, L], cfg) -> scalar``."""
    return _register(AGGREGATIONS, "loss aggregation", name)


def _get(table: dict, kind: str, name: str):
    if name not in table:
        raise ValueError(f"{kind}: expected one of {sorted(table)}, got {name!r}")
    return table[name]


def get_advantage(name: str):
    return _get(ADVANTAGES, "advantage", name)


def get_loss(name: str):
    return _get(LOSSES, "loss", name)


def get_aggregation(name: str):
    return _get(AGGREGATIONS, "aggregation", name)


@dataclass(frozen=True)
class AlgoConfig:
    """Settings of the policy-gradient step.

    ``eps_low`` / ``eps_high``: clip range ``[1 - eps_low, 1 + eps_high]`` of the ratio;
    ``dual_clip``: ``c > 1`` bounds the loss of negative-advantage tokens by ``-c * A`` (None: off);
    ``kl_coef``: weight of the k3 KL to the reference policy; ``entropy_coef``: entropy bonus;
    ``std_eps``: added to the group std (``grpo``); ``max_response_len``: the constant ``L_max``
    of ``seq-mean-token-sum-norm`` (None: the batch's padded length).
    """

    advantage: str = "grpo"
    loss: str = "ppo_clip"
    aggregation: str = "seq-mean-token-mean"
    eps_low: float = 0.2
    eps_high: float = 0.2
    dual_clip: float | None = None
    kl_coef: float = 0.0
    entropy_coef: float = 0.0
    std_eps: float = 1e-6
    max_response_len: int | None = None

    def __post_init__(self):
        get_advantage(self.advantage)
        get_loss(self.loss)
        get_aggregation(self.aggregation)
        if not (self.eps_low >= 0 and self.eps_high >= 0):
            raise ValueError(f"eps_low/eps_high: expected >= 0, got {self.eps_low}, {self.eps_high}")
        if self.dual_clip is not None and not self.dual_clip > 1:
            raise ValueError(f"dual_clip: expected a constant > 1 or None, got {self.dual_clip}")
        if self.kl_coef < 0 or self.entropy_coef < 0:
            raise ValueError(f"kl_coef/entropy_coef: expected >= 0, got {self.kl_coef}, {self.entropy_coef}")


@dataclass
class AdvantageInput:
    """Per-token inputs of an advantage estimator.

    ``token_rewards [N, L]``: rewards placed on response tokens (an outcome reward sits on the
    last model token; turn or step rewards anywhere); ``response_mask [N, L]``: 1 on model
    tokens; ``group [N]``: rollouts of one prompt share an id; ``turn_ids [N, L]``: the turn of
    each token (-1 on padding); ``step_ids [N, L]``: a reasoning-step id per token (-1: none);
    ``extra``: anything a recipe's estimator needs (step labels, teacher log-probs, ...).
    """

    token_rewards: Tensor
    response_mask: Tensor
    group: Tensor
    turn_ids: Tensor | None = None
    step_ids: Tensor | None = None
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.token_rewards.shape != self.response_mask.shape or self.token_rewards.dim() != 2:
            raise ValueError(f"token_rewards/response_mask: expected equal [N, L] shapes, got "
                             f"{tuple(self.token_rewards.shape)} and {tuple(self.response_mask.shape)}")
        if self.group.shape != self.token_rewards.shape[:1]:
            raise ValueError(f"group: expected shape [{self.token_rewards.shape[0]}], got {tuple(self.group.shape)}")

    @property
    def scores(self) -> Tensor:
        """``[N]`` each rollout's total reward."""
        return self.token_rewards.sum(-1)


def outcome_rewards(scores: Tensor, response_mask: Tensor) -> Tensor:
    """``[N, L]`` token rewards with each rollout's ``scores[i]`` on its last model token."""
    N, L = response_mask.shape
    last = (response_mask * torch.arange(1, L + 1, device=response_mask.device)).argmax(-1)
    out = torch.zeros(N, L, dtype=scores.dtype, device=scores.device)
    has = response_mask.sum(-1) > 0
    out[has, last[has]] = scores[has]
    return out


def group_stats(scores: Tensor, group: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Per rollout: its group's mean, unbiased std (0 for groups of one) and size, each ``[N]``."""
    _, inv = torch.unique(group, return_inverse=True)
    size = torch.bincount(inv).to(scores.dtype)
    mean = torch.zeros_like(size).index_add_(0, inv, scores) / size
    dev2 = torch.zeros_like(size).index_add_(0, inv, (scores - mean[inv]) ** 2)
    std = torch.where(size > 1, (dev2 / (size - 1).clamp(min=1)).sqrt(), torch.zeros_like(size))
    return mean[inv], std[inv], size[inv]


def _per_token(values: Tensor, mask: Tensor) -> Tensor:
    return values[:, None].to(mask.dtype) * mask


@register_advantage("grpo")
def grpo_advantage(inp: AdvantageInput, cfg: AlgoConfig) -> Tensor:
    """``A_i = (r_i - mean_g) / (std_g + eps)`` on every model token (std unbiased; a group of
    one gets 0)."""
    r = inp.scores.double()
    mean, std, _ = group_stats(r, inp.group)
    return _per_token((r - mean) / (std + cfg.std_eps), inp.response_mask)


@register_advantage("dr_grpo")
def dr_grpo_advantage(inp: AdvantageInput, cfg: AlgoConfig) -> Tensor:
    """Dr. GRPO: ``A_i = r_i - mean_g`` (no division by the std)."""
    r = inp.scores.double()
    mean, _, _ = group_stats(r, inp.group)
    return _per_token(r - mean, inp.response_mask)


@register_advantage("rloo")
def rloo_advantage(inp: AdvantageInput, cfg: AlgoConfig) -> Tensor:
    """Leave-one-out: ``A_i = r_i - (sum_g - r_i) / (G - 1)`` (0 for a group of one)."""
    r = inp.scores.double()
    mean, _, size = group_stats(r, inp.group)
    loo = torch.where(size > 1, (mean * size - r) / (size - 1).clamp(min=1), r)
    return _per_token(r - loo, inp.response_mask)


@register_advantage("reinforce_pp_baseline")
def reinforce_pp_baseline_advantage(inp: AdvantageInput, cfg: AlgoConfig) -> Tensor:
    """REINFORCE++ with a group baseline: ``r_i - mean_g`` on every model token, then whitened
    over all model tokens of the batch: ``(x - mu) / sqrt(var + 1e-8)`` with the token mean
    ``mu`` and unbiased token variance ``var``."""
    r = inp.scores.double()
    mean, _, _ = group_stats(r, inp.group)
    x = _per_token(r - mean, inp.response_mask)
    m = inp.response_mask.to(x.dtype)
    n = m.sum()
    mu = (x * m).sum() / n
    var = (((x - mu) ** 2) * m).sum() / (n - 1).clamp(min=1)
    return (x - mu) * torch.rsqrt(var + 1e-8) * m


# ---------------------------------------------------------------------------------- losses

_MAX_LOG_RATIO = 20.0


@register_loss("ppo_clip")
def ppo_clip_loss(logp: Tensor, old_logp: Tensor, adv: Tensor, mask: Tensor, cfg: AlgoConfig):
    """Per token ``l = max(-A ρ, -A clip(ρ, 1 - eps_low, 1 + eps_high))``, ``ρ = exp(logp - old)``;
    with ``dual_clip = c``: ``l = min(l, -c A)`` where ``A < 0``. Metrics: ``clip_frac`` (tokens
    where the clipped term is the larger), ``dual_clip_frac``."""
    ratio = torch.exp((logp - old_logp).clamp(-_MAX_LOG_RATIO, _MAX_LOG_RATIO))
    l1 = -adv * ratio
    l2 = -adv * ratio.clamp(1 - cfg.eps_low, 1 + cfg.eps_high)
    loss = torch.maximum(l1, l2)
    dual = torch.zeros_like(loss, dtype=torch.bool)
    if cfg.dual_clip is not None:
        l3 = -adv * cfg.dual_clip
        dual = (adv < 0) & (l3 < loss)
        loss = torch.where(adv < 0, torch.minimum(loss, l3), loss)
    m = mask.to(loss.dtype)
    n = m.sum().clamp(min=1)
    return loss, {"clip_frac": ((l2 > l1).to(m.dtype) * m).sum() / n, "dual_clip_frac": (dual.to(m.dtype) * m).sum() / n,
                  "ratio_mean": (ratio * m).sum() / n}


@register_loss("gspo")
def gspo_loss(logp: Tensor, old_logp: Tensor, adv: Tensor, mask: Tensor, cfg: AlgoConfig):
    """GSPO: one ratio per sequence, ``s_i = exp(mean_t (logp - old))`` over its model tokens;
    per token ``l = max(-A s, -A clip(s, 1 - eps_low, 1 + eps_high))`` with
    ``s_{i,t} = sg(s_i) * exp(logp_t - sg(logp_t))`` (value ``s_i``, gradient of ``s_i`` spread as
    ``s_i ∇ logp_t``; the paper's ``(1/|y|) Σ_t`` comes from ``seq-mean-token-mean``)."""
    m = mask.to(logp.dtype)
    n_tok = m.sum(-1).clamp(min=1)
    seq_log_ratio = ((logp - old_logp) * m).sum(-1) / n_tok  # [N]
    log_s = seq_log_ratio.detach()[:, None] + logp - logp.detach()
    s = torch.exp(log_s.clamp(-_MAX_LOG_RATIO, _MAX_LOG_RATIO))
    l1 = -adv * s
    l2 = -adv * s.clamp(1 - cfg.eps_low, 1 + cfg.eps_high)
    loss = torch.maximum(l1, l2)
    n = m.sum().clamp(min=1)
    return loss, {"clip_frac": ((l2 > l1).to(m.dtype) * m).sum() / n, "ratio_mean": (s.detach() * m).sum() / n}


# ---------------------------------------------------------------------------------- aggregation


@register_aggregation("token-mean")
def token_mean(loss: Tensor, mask: Tensor, cfg: AlgoConfig) -> Tensor:
    """``Σ_{i,t} l m / Σ_{i,t} m`` (DAPO: every token of the batch weighs the same)."""
    m = mask.to(loss.dtype)
    return (loss * m).sum() / m.sum().clamp(min=1)


@register_aggregation("seq-mean-token-mean")
def seq_mean_token_mean(loss: Tensor, mask: Tensor, cfg: AlgoConfig) -> Tensor:
    """``mean_i (Σ_t l m / Σ_t m)`` over rollouts with at least one model token (GRPO)."""
    m = mask.to(loss.dtype)
    n = m.sum(-1)
    has = n > 0
    return ((loss * m).sum(-1)[has] / n[has]).sum() / has.sum().clamp(min=1)


@register_aggregation("seq-mean-token-sum-norm")
def seq_mean_token_sum_norm(loss: Tensor, mask: Tensor, cfg: AlgoConfig) -> Tensor:
    """``Σ_{i,t} l m / (N · L_max)`` with a constant ``L_max`` (Dr. GRPO: no length bias)."""
    m = mask.to(loss.dtype)
    L = cfg.max_response_len or mask.shape[1]
    return (loss * m).sum() / (mask.shape[0] * L)


# ---------------------------------------------------------------------------------- extras


def kl_k3(logp: Tensor, ref_logp: Tensor) -> Tensor:
    """Per-token k3 estimate of KL(π || π_ref): ``exp(ref - logp) - (ref - logp) - 1`` (>= 0)."""
    d = (ref_logp - logp).clamp(-_MAX_LOG_RATIO, _MAX_LOG_RATIO)
    return torch.exp(d) - d - 1


def filter_groups(scores: Tensor, group: Tensor) -> Tensor:
    """DAPO dynamic sampling: ``[N]`` bool, False for rollouts whose whole group got the same
    score (all right or all wrong: zero advantage, no gradient)."""
    _, std, size = group_stats(scores.double(), group)
    return (std > 0) & (size > 1)


def overlong_penalty(lengths: Tensor, max_len: int, buffer: int, factor: float = 1.0) -> Tensor:
    """DAPO soft overlong penalty ``[N]``: 0 up to ``max_len - buffer`` tokens, then falling
    linearly to ``-factor`` at ``max_len`` (and staying there): ``min(0, -(len - (max_len -
    buffer)) / buffer) * factor`` clamped at ``-factor``."""
    if not 0 < buffer <= max_len:
        raise ValueError(f"buffer: expected 0 < buffer <= max_len ({max_len}), got {buffer}")
    over = (lengths.double() - (max_len - buffer)) / buffer
    return -over.clamp(min=0, max=1) * factor


def policy_objective(logp: Tensor, old_logp: Tensor, adv: Tensor, mask: Tensor, cfg: AlgoConfig, *,
                     ref_logp: Tensor | None = None, entropy: Tensor | None = None) -> tuple[Tensor, dict]:
    """The loss to minimise: the registered policy loss, plus ``kl_coef * kl_k3`` and minus
    ``entropy_coef * entropy`` per token, aggregated by ``cfg.aggregation``. Returns the scalar
    and detached metrics (``pg_loss``, ``kl``, ``entropy`` as token means, loss metrics)."""
    loss_tok, metrics = get_loss(cfg.loss)(logp, old_logp, adv.to(logp.dtype), mask, cfg)
    aggregate = get_aggregation(cfg.aggregation)
    m = mask.to(logp.dtype)
    n = m.sum().clamp(min=1)
    out = {"pg_loss": aggregate(loss_tok, mask, cfg).detach()}
    total = loss_tok
    if ref_logp is not None:
        kl = kl_k3(logp, ref_logp)
        out["kl"] = ((kl * m).sum() / n).detach()
        if cfg.kl_coef:
            total = total + cfg.kl_coef * kl
    if entropy is not None:
        out["entropy"] = ((entropy * m).sum() / n).detach()
        if cfg.entropy_coef:
            total = total - cfg.entropy_coef * entropy
    out.update({k: v.detach() for k, v in metrics.items()})
    return aggregate(total, mask, cfg), out
