"""Training a ``VisionLM`` to use visual tools: the SFT warm-up on generated traces, one Tool-GRPO
step, and the evaluation (success, format, tool calls per domain and role).

SFT: masked next-token cross-entropy on the model's lines of ``episodes.demonstration`` traces
(prompt and observations masked out; tool images spliced in as in a rollout).

Tool-GRPO step: ``G`` rollouts of each of ``P`` training episodes, the episode reward
``tools.episode_reward`` (format gate x (1 if correct, else 0.25 x mean per-call score)) on each
rollout's last model token, the GRPO advantage of the RL core (``algos``: group-normalised),
then ``minibatches`` PPO-clip updates (``algos.policy_objective``; k3 KL to the warm start when
``kl_coef > 0``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..data import ByteTokenizer
from ..rl.algos import AdvantageInput, AlgoConfig, get_advantage, outcome_rewards, policy_objective
from .episodes import Episode, call_counts, demonstration, verify
from .rollout import Limits, collate, encode, generate, image_tensor, response_logprobs
from .tools import episode_reward, tool_reward, well_formed


def render(ep: Episode, tok: ByteTokenizer, n_patches: int) -> tuple[list[int], list[int], list]:
    """A trace as ids (``BOS`` first), a mask of the model's tokens, and its images in order."""
    ids, mask, images = [tok.bos], [0], []
    for text, model_written, image in demonstration(ep):
        t = encode(text, tok, n_patches)
        ids += t
        mask += [int(model_written)] * len(t)
        if image is not None:
            images.append(image)
    return ids, mask, images


def sft_loss(model, episodes: list[Episode], tok: ByteTokenizer) -> torch.Tensor:
    """Masked next-token CE of ``model`` on the traces of ``episodes``."""
    rendered = [render(e, tok, model.n_patches) for e in episodes]
    S = max(len(i) for i, _, _ in rendered)
    ids = torch.full((len(rendered), S), tok.pad, dtype=torch.long)
    mask = torch.zeros(len(rendered), S)
    for b, (i, m, _) in enumerate(rendered):
        ids[b, :len(i)] = torch.tensor(i)
        mask[b, :len(m)] = torch.tensor(m, dtype=torch.float32)
    logits = model(ids, image_tensor([im for _, _, ims in rendered for im in ims]))
    ce = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), ids[:, 1:].flatten(), reduction="none")
    m = mask[:, 1:].flatten()
    return (ce * m).sum() / m.sum().clamp(min=1)


def train_sft(model, episodes: list[Episode], steps: int, *, batch: int = 32, lr: float = 3e-3, warmup: int = 20,
              generator: torch.Generator, log=None) -> None:
    """``steps`` AdamW steps on random batches of trace ``episodes`` (warm-up, cosine to 10%)."""
    tok = ByteTokenizer()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01, betas=(0.9, 0.95))
    model.train()
    for step in range(steps):
        frac = min(1.0, (step + 1) / warmup) if step < warmup else \
            0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))
        for g in opt.param_groups:
            g["lr"] = lr * frac
        picks = torch.randint(0, len(episodes), (batch,), generator=generator).tolist()
        loss = sft_loss(model, [episodes[i] for i in picks], tok)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if log is not None:
            log({"phase": "sft", "step": step, "lm_loss": float(loss.detach()), "lr": lr * frac})


def score(episodes: list[Episode], rollouts: list) -> list[dict]:
    """Per rollout: ``correct``, ``gate`` (format), ``r_tool`` (mean per-call score / 3) and
    ``reward`` (the Tool-GRPO episode reward)."""
    out = []
    for ep, r in zip(episodes, rollouts):
        session = ep.session()
        correct = verify(ep, r.turn_texts)
        gate = well_formed(r.turn_texts)
        r_tool = tool_reward([session.call_score(t) for t in r.turn_texts[:-1]])
        out.append({"correct": correct, "gate": gate, "r_tool": r_tool, "reward": episode_reward(gate, correct, r_tool)})
    return out


class ToolGRPO:
    """The RL state: ``model``, optional frozen ``reference`` (KL), AdamW, ``AlgoConfig``."""

    def __init__(self, model, cfg, limits: Limits, reference=None):
        self.model, self.cfg, self.limits, self.reference = model, cfg, limits, reference
        self.opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.99))
        self.algo = AlgoConfig(advantage=cfg.advantage, loss=cfg.loss, aggregation=cfg.aggregation, eps_low=cfg.eps_low,
                               eps_high=cfg.eps_high, kl_coef=cfg.kl_coef, entropy_coef=cfg.entropy_coef)
        self.tok = ByteTokenizer()

    def step(self, step: int, episodes: list[Episode], generator: torch.Generator) -> dict:
        """One step on ``episodes`` (each rolled out ``group_size`` times). Returns its metrics."""
        cfg = self.cfg
        eps = [e for e in episodes for _ in range(cfg.group_size)]
        rollouts = generate(self.model, eps, self.limits, cfg.temperature, generator)
        rows = score(eps, rollouts)
        batch = collate(rollouts, self.tok.pad)
        mask = batch["response_mask"]
        with torch.no_grad():
            old, _ = response_logprobs(self.model, batch, cfg.temperature)
            ref = response_logprobs(self.reference, batch, cfg.temperature)[0] if self.reference is not None else None
        rewards = outcome_rewards(torch.tensor([r["reward"] for r in rows], dtype=torch.float64), mask.double())
        groups = torch.arange(len(episodes)).repeat_interleave(cfg.group_size)
        adv = get_advantage(cfg.advantage)(AdvantageInput(rewards, mask.double(), groups, batch["turn_ids"]), self.algo)
        lr = cfg.lr * min(1.0, (step + 1) / max(1, cfg.warmup))
        sums: dict[str, float] = {}
        order = torch.randperm(len(rollouts), generator=generator)
        parts = [p for p in order.chunk(cfg.minibatches) if len(p)]
        for idx in parts:
            mb = {k: v[idx] for k, v in batch.items() if k != "images"}
            mb["images"] = collate([rollouts[i] for i in idx.tolist()], self.tok.pad)["images"]
            logp, ent = response_logprobs(self.model, mb, cfg.temperature, with_entropy=True)
            loss, m = policy_objective(logp, old[idx], adv[idx], mb["response_mask"], self.algo,
                                       ref_logp=None if ref is None else ref[idx], entropy=ent)
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            gn = torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
            for g in self.opt.param_groups:
                g["lr"] = lr
            self.opt.step()
            for k, v in {**m, "loss": loss.detach(), "grad_norm": gn}.items():
                sums[k] = sums.get(k, 0.0) + float(v) / len(parts)
        n = len(rows)
        out = {"phase": "rl", "step": step, "reward": sum(r["reward"] for r in rows) / n,
               "success": sum(r["correct"] for r in rows) / n, "format_ok": sum(r["gate"] for r in rows) / n,
               "tool_reward": sum(r["r_tool"] for r in rows) / n, "lr": lr,
               "turns": sum(len(r.turn_texts) for r in rollouts) / n, **sums}
        out.update({k: v for k, v in call_counts(eps, [r.turn_texts for r in rollouts]).items() if k.startswith("used_")})
        return out


@torch.no_grad()
def evaluate(model, episodes: list[Episode], limits: Limits, *, temperature: float = 1.0, seed: int = 1234,
             batch: int = 64, greedy: bool = True) -> dict:
    """Metrics of one sampled rollout per episode (at ``temperature``, generator seeded with
    ``seed``: the same draws for every checkpoint): ``success`` (overall and
    ``success_<domain>``), ``format_ok``, ``tool_reward``, ``reward``, ``turns``,
    ``calls_<domain>_<role>`` / ``used_<domain>_<role>``, and ``transcripts`` (turn texts);
    with ``greedy``, also ``success_greedy`` and ``success_greedy_<domain>`` (greedy decoding)."""
    gen = torch.Generator().manual_seed(seed)
    rollouts = []
    for i in range(0, len(episodes), batch):
        rollouts += generate(model, episodes[i:i + batch], limits, temperature, gen)
    rows = score(episodes, rollouts)
    n = len(rows)
    out = {"n": n, "temperature": temperature, "success": sum(r["correct"] for r in rows) / n,
           "format_ok": sum(r["gate"] for r in rows) / n, "tool_reward": sum(r["r_tool"] for r in rows) / n,
           "reward": sum(r["reward"] for r in rows) / n, "turns": sum(len(r.turn_texts) for r in rollouts) / n}
    domains = sorted({e.domain for e in episodes})
    for d in domains:
        idx = [i for i, e in enumerate(episodes) if e.domain == d]
        out[f"success_{d}"] = sum(rows[i]["correct"] for i in idx) / len(idx)
    out.update(call_counts(episodes, [r.turn_texts for r in rollouts]))
    out["transcripts"] = [r.turn_texts for r in rollouts]
    if greedy:
        g = evaluate(model, episodes, limits, temperature=0.0, batch=batch, greedy=False)
        out["success_greedy"] = g["success"]
        out.update({f"success_greedy_{d}": g[f"success_{d}"] for d in domains})
        out["transcripts_greedy"] = g["transcripts"]
    return out
