"""Supervised warm-up on a task's demonstrations, so a tiny model starts RL with non-zero success.

Each step draws ``batch`` training examples, renders their demonstrations (``Task.demonstration``:
prompt, the model's turns, the tool's observations) as ``BOS + bytes`` and minimises the
next-token cross-entropy on the tokens the model writes (prompt and observation tokens are
masked out), plus ``mtp_weight`` times the mean cross-entropy of the MTP blocks on the same
targets (so speculative rollouts have drafts worth accepting).

A warm start may stop early (``target_success``): every ``check_every`` steps the model is
decoded on ``check_n`` questions of the ``dev`` split (never ``heldout``), and training ends
once its sampled success reaches the target.

The run directory has the files of every recipe run (``runs``): ``config.json``,
``metrics.jsonl``, ``curves.png``, ``checkpoints/`` (``--resume``), ``final/``.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from hysparse_kernels.models import save_pretrained
from hysparse_kernels.models.mtp import mtp_logits
from .. import checkpoint
from ..artifacts import artifact_dir
from ..data import ByteTokenizer
from . import runs
from .evaluate import evaluate
from .policy import build_policy
from .tasks import Example, Task, get_task


@dataclass
class SFTConfig:
    task: str = "lookup"
    task_seed: int = 0
    model: str = "tiny-mimo-7b"
    mtp_layers: int | None = None  # None: the flavor's MTP blocks
    init_from: str | None = None
    steps: int = 600
    batch: int = 32
    lr: float = 3e-3
    warmup: int = 30
    mtp_weight: float = 0.3
    seed: int = 0
    checkpoint_every: int = 200
    # Warm starts stop early once sampled success on the dev split (check_n questions, one sample
    # each at temperature 1) reaches target_success, checked every check_every steps: RL then
    # starts from a model that succeeds sometimes, with room left to improve. None: run all steps.
    target_success: float | None = None
    check_every: int = 25
    check_from: int = 0  # first step that may be checked
    check_n: int = 100


def render(task: Task, example: Example, tok: ByteTokenizer) -> tuple[list[int], list[int]]:
    """A demonstration as token ids (``BOS`` first) and a mask of the tokens the model writes."""
    ids, mask = [tok.bos], [0]
    for seg in task.demonstration(example):
        t = tok.encode(seg.text)
        ids += t
        mask += [int(seg.model)] * len(t)
    return ids, mask


def make_batch(task: Task, examples: list[Example], tok: ByteTokenizer) -> tuple[torch.Tensor, torch.Tensor]:
    """``ids [B, S]`` (right-padded) and ``mask [B, S]`` (1 where the token is the model's)."""
    rendered = [render(task, e, tok) for e in examples]
    S = max(len(i) for i, _ in rendered)
    ids = torch.full((len(rendered), S), tok.pad, dtype=torch.long)
    mask = torch.zeros(len(rendered), S)
    for b, (i, m) in enumerate(rendered):
        ids[b, :len(i)] = torch.tensor(i)
        mask[b, :len(m)] = torch.tensor(m, dtype=torch.float32)
    return ids, mask


def sft_losses(model, ids: torch.Tensor, mask: torch.Tensor, with_mtp: bool) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Masked next-token CE of the main model and of each MTP block (targets where ``mask`` is 1)."""
    hidden = model.hidden_states(ids)
    logits = model.logits(hidden)

    def ce(lg, target, m):
        loss = F.cross_entropy(lg.flatten(0, 1).float(), target.flatten(), reduction="none")
        return (loss * m.flatten()).sum() / m.sum().clamp(min=1)

    lm = ce(logits[:, :-1], ids[:, 1:], mask[:, 1:])
    mtp = []
    if with_mtp and getattr(model.model, "mtp", None) is not None:
        for k, lk in enumerate(mtp_logits(model, hidden, ids), start=1):
            if lk.shape[1] < 2:
                break
            mtp.append(ce(lk[:, :-1], ids[:, k + 1:], mask[:, k + 1:]))
    return lm, mtp


def _lr(cfg: SFTConfig, step: int) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))))


def train_sft(cfg: SFTConfig, out, *, resume: bool = False, progress: bool = True, stop_after: int | None = None) -> dict:
    """Run SFT into ``out``; ``stop_after`` ends the run after that many steps (as a crash
    would, for resume tests). Returns a summary."""
    out = Path(out)
    config = dataclasses.asdict(cfg)
    settings = {k: v for k, v in config.items() if k != "checkpoint_every"}
    runs.prepare_out(out, resume, config)
    out.mkdir(parents=True, exist_ok=True)
    task = get_task(cfg.task, cfg.task_seed)
    tok = ByteTokenizer()
    model = build_policy(cfg.model, cfg.mtp_layers, init_from=cfg.init_from, seed=cfg.seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.01, betas=(0.9, 0.95))
    train = task.examples("train")
    gen = torch.Generator().manual_seed(cfg.seed)
    metrics = out / "metrics.jsonl"
    start = 0
    if resume and (meta := checkpoint.resume(out, model, optimizer, gen, settings)) is not None:
        start = meta["step"]
        runs.truncate_metrics(metrics, start)
        if (out / "checks.jsonl").exists():
            runs.truncate_metrics(out / "checks.jsonl", start)
    else:
        for path in (metrics, out / "checks.jsonl"):
            path.unlink(missing_ok=True)
    checks = runs.read_metrics(out / "checks.jsonl")
    done = cfg.target_success is not None and any(c["dev_success"] >= cfg.target_success for c in checks)
    runs.write_json(out / "config.json", config)
    torch.manual_seed(cfg.seed)
    bar = runs.progress_bar(cfg.steps, start, f"sft {cfg.task}", progress)
    model.train()
    t0 = time.perf_counter()
    last = {}
    reached = False
    end = cfg.steps if stop_after is None else min(cfg.steps, stop_after)
    if done:  # resumed after the target was reached: only the final model is missing
        start = end = start
        reached = True
    for step in range(start, end):
        for group in optimizer.param_groups:
            group["lr"] = _lr(cfg, step)
        picks = torch.randint(0, len(train), (cfg.batch,), generator=gen).tolist()
        ids, mask = make_batch(task, [train[i] for i in picks], tok)
        lm, mtp = sft_losses(model, ids, mask, with_mtp=cfg.mtp_weight > 0)
        mtp_mean = torch.stack(mtp).mean() if mtp else torch.zeros(())
        loss = lm + cfg.mtp_weight * mtp_mean
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        last = {"step": step, "loss": float(loss.detach()), "lm_loss": float(lm.detach()),
                "mtp_loss": float(mtp_mean.detach()), "lr": _lr(cfg, step), "tokens": int(mask.sum())}
        runs.append_metrics(metrics, last)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{last['lm_loss']:.3f}")
        reached = False
        if cfg.target_success is not None and (step + 1) % cfg.check_every == 0 and step + 1 >= cfg.check_from:
            dev = evaluate(model, task, split="dev", n=cfg.check_n, samples=1, greedy=False)["success"]
            last["dev_success"] = dev
            runs.append_metrics(out / "checks.jsonl", {"step": step, "dev_success": dev})
            reached = dev >= cfg.target_success
            model.train()
        if (step + 1) % cfg.checkpoint_every == 0 or step + 1 == cfg.steps or reached:
            checkpoint.save(out, step + 1, model, optimizer, gen,
                            {"model": model.graph.name, "recipe": "sft", "settings": settings})
        if reached:
            break
    if bar is not None:
        bar.close()
    if end < cfg.steps and not reached:
        return {"stopped_at": end}
    save_pretrained(model, out / "final")
    runs.plot_curves(metrics, out / "curves.png", ["lm_loss", "mtp_loss", "lr"], title=f"sft on {cfg.task}")
    return {"steps": last.get("step", start - 1) + 1, "final": last, "seconds": time.perf_counter() - t0, "model": str(out / "final")}


def cached_sft(cfg: SFTConfig, *, progress: bool = True) -> Path:
    """The ``final/`` directory of an SFT run with settings ``cfg``, trained on first use and kept
    under ``$HYSPARSE_CACHE/rl-sft/<task>-<model>-<hash of the settings and the code>`` (an
    interrupted training resumes; see ``training.artifacts``)."""
    out = artifact_dir("rl-sft", cfg, prefix=f"{cfg.task}-{cfg.model}-")
    if not (out / "final" / "config.json").exists():
        train_sft(cfg, out, resume=True, progress=progress)
    return out / "final"
