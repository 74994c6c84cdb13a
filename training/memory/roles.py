"""The two roles of the lookup team, their text formats, and their SFT warm starts.

A team episode on a lookup question (``Q: Tari friend boss``) has two agents, each a zoo model:

* the **planner** reads the question and writes one line, the hops as sub-questions, the first
  one a ready search query and the later ones waiting for the person the previous hop finds::

      Q: Tari friend boss
      plan: Tari friend; ? boss

* the **solver** reads the question and the planner's line, calls ``search`` and answers (the
  lookup transcript of ``rl.tasks.lookup``)::

      Q: Tari friend boss
      plan: Tari friend; ? boss
      search: Tari friend
      > Tari friend Poku
      search: Poku boss
      > Poku boss Lemi
      answer: Lemi

The team's reward is the solver's answer (``LookupQA.verify``). The experience bank keeps the
team's transcript (:func:`team_transcript`, the text above).

**Memory in the prompt.** Each role's prompt may carry memory in one of two forms, and the warm
starts are trained on both so that neither is a format the agent has never seen:

* text memory: a retrieved transcript before the question, every line behind ``| ``
  (:func:`memory_block`), so its ``Q:`` line is not taken for the question;
* latent slots: ``k`` positions right after BOS (``composer.LatentAgent``). In SFT they hold the
  BOS embedding plus Gaussian noise of a random scale (up to ``noise`` times the RMS of the
  embedding table); at run time they hold ``e_BOS + latent``.

``RoleSFTConfig.p_text`` / ``p_latent`` set the shares of demonstrations with each form (the rest
have none); the text memory of a demonstration is the gold transcript of another training
question with the same start person (what the bank's retrieval tends to return), ``k`` is uniform
in ``1..max_slots``.

Warm starts are cached like the RL recipes' (``training.artifacts``):
``$HYSPARSE_CACHE/rl-sft-roles/lookup-<role>-<model>-<key>/final``.
"""

from __future__ import annotations

import dataclasses
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from ..artifacts import artifact_dir
from ..data import ByteTokenizer
from ..rl.tasks import Example, Segment, Task

ROLES = ("planner", "solver")
MEMORY_HEADER = "memory:\n"
MEMORY_PREFIX = "| "


def check_role(role: str) -> None:
    if role not in ROLES:
        raise ValueError(f"role: expected one of {ROLES}, got {role!r}")


def gold_plan(example: Example) -> str:
    """The planner's line for ``example``: ``"plan: Tari friend; ? boss\\n"``."""
    start, path = example.meta["start"], example.meta["path"]
    return "plan: " + f"{start} {path[0]}" + "".join(f"; ? {r}" for r in path[1:]) + "\n"


def memory_block(transcript: str) -> str:
    """Text memory as it goes before a prompt: a header, then every line behind ``| ``."""
    return MEMORY_HEADER + "".join(f"{MEMORY_PREFIX}{line}\n" for line in transcript.splitlines())


def role_prompt(role: str, example: Example, plan: str | None = None, memory: str | None = None) -> str:
    """The text a role reads (after BOS and any latent slots): text memory if any, the question,
    and for the solver the planner's line (``plan``, newline-terminated)."""
    check_role(role)
    pre = memory_block(memory) if memory else ""
    if role == "planner":
        return pre + example.prompt
    if plan is None:
        raise ValueError("plan: the solver's prompt needs the planner's line, got None")
    return pre + example.prompt + (plan if plan.endswith("\n") else plan + "\n")


def team_transcript(example: Example, plan: str, solver_response: str) -> str:
    """The raw team episode the bank stores: question, plan line, the solver's turns."""
    return role_prompt("solver", example, plan) + solver_response


def gold_transcript(task: Task, example: Example) -> str:
    return team_transcript(example, gold_plan(example), "".join(s.text for s in task.demonstration(example)[1:]))


def demonstration(role: str, task: Task, example: Example, memory: str | None = None) -> list[Segment]:
    """A role's correct transcript as segments (``model=True``: what the role writes)."""
    check_role(role)
    if role == "planner":
        return [Segment(role_prompt(role, example, memory=memory), False), Segment(gold_plan(example), True)]
    return [Segment(role_prompt(role, example, gold_plan(example), memory), False)] + task.demonstration(example)[1:]


# ---------------------------------------------------------------------- SFT warm starts


@dataclass
class RoleSFTConfig:
    """Settings of one role's warm start (hashed into its cache name)."""

    role: str = "solver"
    task: str = "lookup"
    task_seed: int = 0
    model: str = "tiny-mimo-7b"
    steps: int = 400
    batch: int = 32
    lr: float = 3e-3
    warmup: int = 30
    seed: int = 0
    p_text: float = 0.3
    p_latent: float = 0.4
    max_slots: int = 4
    noise: float = 1.0

    def validate(self) -> None:
        check_role(self.role)
        for name in ("steps", "batch", "max_slots"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: expected a positive int, got {getattr(self, name)}")
        if not (0 <= self.p_text and 0 <= self.p_latent and self.p_text + self.p_latent <= 1):
            raise ValueError(f"p_text, p_latent: expected shares >= 0 summing to <= 1, got {self.p_text}, {self.p_latent}")


def _same_start_index(examples: list[Example]) -> dict[str, list[int]]:
    idx: dict[str, list[int]] = {}
    for i, e in enumerate(examples):
        idx.setdefault(e.meta["start"], []).append(i)
    return idx


def sample_batch(cfg: RoleSFTConfig, task: Task, train: list[Example], rng: random.Random, tok: ByteTokenizer,
                 by_start: dict[str, list[int]] | None = None):
    """One SFT batch: ``ids [B, S]`` (right-padded), ``mask [B, S]`` (the role's tokens) and
    ``slots [B]`` (latent slots after BOS, which hold BOS ids here; 0 for most rows)."""
    by_start = by_start if by_start is not None else _same_start_index(train)
    rows, slots = [], []
    for _ in range(cfg.batch):
        ex = train[rng.randrange(len(train))]
        u, memory, k = rng.random(), None, 0
        if u < cfg.p_text:
            others = [i for i in by_start[ex.meta["start"]] if train[i].id != ex.id] or list(range(len(train)))
            memory = gold_transcript(task, train[rng.choice(others)])
        elif u < cfg.p_text + cfg.p_latent:
            k = rng.randint(1, cfg.max_slots)
        ids, mask = [tok.bos] * (1 + k), [0] * (1 + k)
        for seg in demonstration(cfg.role, task, ex, memory):
            t = tok.encode(seg.text)
            ids += t
            mask += [int(seg.model)] * len(t)
        rows.append((ids, mask))
        slots.append(k)
    S = max(len(i) for i, _ in rows)
    ids = torch.full((len(rows), S), tok.pad, dtype=torch.long)
    mask = torch.zeros(len(rows), S)
    for b, (i, m) in enumerate(rows):
        ids[b, :len(i)] = torch.tensor(i)
        mask[b, :len(m)] = torch.tensor(m, dtype=torch.float32)
    return ids, mask, torch.tensor(slots)


def slot_loss(model, ids: torch.Tensor, mask: torch.Tensor, slots: torch.Tensor, noise: float,
              generator: torch.Generator) -> torch.Tensor:
    """Masked next-token cross-entropy with positions ``1..slots[b]`` of row ``b`` holding their
    (BOS) embedding plus Gaussian noise of scale ``U(0, noise) * rms(embedding table)``."""
    x = model.model.embed_tokens(ids)  # [B, S, D]
    pos = torch.arange(ids.shape[1])[None]
    in_slot = ((pos >= 1) & (pos <= slots[:, None])).to(x.dtype)  # [B, S]
    if noise > 0 and bool(in_slot.any()):
        rms = model.model.embed_tokens.weight.detach().pow(2).mean().sqrt()
        scale = torch.rand(ids.shape[0], generator=generator) * noise * rms
        eps = torch.randn(x.shape, generator=generator).to(x.dtype)
        x = x + eps * (scale[:, None, None] * in_slot[..., None])
    logits = model.logits(model.hidden_states(None, inputs_embeds=x))
    loss = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), ids[:, 1:].flatten(), reduction="none")
    m = mask[:, 1:].flatten()
    return (loss * m).sum() / m.sum().clamp(min=1)


def _lr(cfg: RoleSFTConfig, step: int) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))))


def train_role(cfg: RoleSFTConfig, out, *, progress: bool = True) -> dict:
    """Train one role's warm start from a fresh zoo model into ``out/final`` (written whole or
    not at all), with ``metrics.jsonl`` and ``config.json`` beside it. Returns a summary."""
    from hysparse_kernels.models import save_pretrained
    from ..rl import runs
    from ..rl.policy import build_policy
    from ..rl.tasks import get_task

    cfg.validate()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    runs.write_json(out / "config.json", dataclasses.asdict(cfg))
    task = get_task(cfg.task, cfg.task_seed)
    tok = ByteTokenizer()
    torch.manual_seed(cfg.seed)
    model = build_policy(cfg.model, seed=cfg.seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.01, betas=(0.9, 0.95))
    train = task.examples("train")
    by_start = _same_start_index(train)
    rng, gen = random.Random(f"role-sft:{cfg.role}:{cfg.seed}"), torch.Generator().manual_seed(cfg.seed)
    metrics = out / "metrics.jsonl"
    metrics.unlink(missing_ok=True)
    bar = runs.progress_bar(cfg.steps, 0, f"sft {cfg.role}", progress)
    t0 = time.perf_counter()
    model.train()
    loss = torch.zeros(())
    for step in range(cfg.steps):
        for group in optimizer.param_groups:
            group["lr"] = _lr(cfg, step)
        ids, mask, slots = sample_batch(cfg, task, train, rng, tok, by_start)
        loss = slot_loss(model, ids, mask, slots, cfg.noise, gen)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        runs.append_metrics(metrics, {"step": step, "loss": float(loss.detach()), "lr": _lr(cfg, step)})
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{float(loss.detach()):.3f}")
    if bar is not None:
        bar.close()
    model.eval()
    save_pretrained(model, out / "final")  # one swap of the folder: whole or not at all
    return {"role": cfg.role, "steps": cfg.steps, "loss": float(loss.detach()), "seconds": time.perf_counter() - t0}


def cached_role(cfg: RoleSFTConfig, *, progress: bool = True) -> Path:
    """The ``final/`` directory of ``cfg``'s warm start, trained on first use (see the module
    docstring for where it is kept)."""
    out = artifact_dir("rl-sft-roles", cfg, prefix=f"{cfg.task}-{cfg.role}-{cfg.model}-")
    if not (out / "final" / "config.json").exists():
        train_role(cfg, out, progress=progress)
    return out / "final"
