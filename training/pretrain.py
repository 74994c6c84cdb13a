"""Pretraining of the zoo's tiny models on the CPU: next-token loss plus the MTP loss.

``loss = CE(main) + mtp_weight * mean_k CE(MTP block k)`` (``mtp_weight`` 0.3, as the MiMo reports
use). With ``mtp_only`` the main model is frozen and only the MTP blocks learn (MiMo-7B's recipe
for adding draft heads to a trained model). MoE routers' selection biases follow the
aux-loss-free sign rule after every step.

Outputs in ``out``: ``metrics.jsonl`` (one line per step), ``loss.png`` (the curves against the
corpus' unigram baseline), ``checkpoints/`` (atomic; ``resume=True`` continues from the newest
readable one of the same run and reproduces the uninterrupted run's losses), and ``final/`` (the
model, ``load_pretrained``-able).

A run is identified by its settings (every ``PretrainConfig`` field but ``out`` and
``checkpoint_every``): a resume with other settings is refused, and so is a fresh run in an
``out`` that already holds another run's checkpoints.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from hysparse_kernels import ir
from hysparse_kernels.models import HybridLM, ModelConfig, get_config, save_pretrained
from hysparse_kernels.models.files import remove_leftovers
from hysparse_kernels.models.mtp import mtp_logits
from . import checkpoint, distributed, sharded_checkpoint
from .data import ByteTokenizer, TokenStream, make_corpus, unigram_entropy


@dataclass
class PretrainConfig:
    model: str = "tiny-hysparse-80b-a3b"
    mtp_layers: int | None = 3  # None: as the flavor has; else replace its MTP blocks by this many
    steps: int = 300
    batch: int = 16
    seq_len: int = 96
    lr: float = 3e-3
    warmup: int = 20
    mtp_weight: float = 0.3
    mtp_only: bool = False
    bias_update_rate: float = 1e-3
    corpus_lines: int = 20000
    seed: int = 0
    checkpoint_every: int = 100
    out: str = "runs/pretrain"
    init_from: str | None = None  # a checkpoint directory to start from (e.g. for mtp_only)
    dtype: str = "float32"  # of the weights and the computation: float32 or float64
    data_parallel: str = "fsdp"  # under torchrun: fsdp (FSDP2) or ddp
    expert_parallel: int = 1  # under torchrun: ranks that share out each MoE layer's experts


def model_config(name: str, mtp_layers: int | None) -> ModelConfig:
    """The flavor's config, with ``mtp_layers`` sliding-window MTP blocks (dense FFN) when asked."""
    cfg = get_config(name)
    if mtp_layers is None or mtp_layers == cfg.num_nextn_predict_layers:
        return cfg
    window = cfg.sliding_window or cfg.sparse_window or 128
    return dataclasses.replace(
        cfg, num_nextn_predict_layers=mtp_layers, mtp_layer_type="sliding_attention", sliding_window=window,
        add_swa_attention_sink_bias=True, intermediate_size=cfg.intermediate_size or 2 * (cfg.moe_intermediate_size or 64),
        name=f"{name}-mtp{mtp_layers}",
    )


def losses(model: HybridLM, ids: torch.Tensor, *, with_mtp: bool) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Next-token CE of the main model and of each MTP block over a batch ``[B, S]``."""
    hidden = model.hidden_states(ids)
    logits = model.logits(hidden)
    lm = F.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten())
    mtp = []
    if with_mtp and getattr(model.model, "mtp", None) is not None:
        for k, lk in enumerate(mtp_logits(model, hidden, ids), start=1):
            if lk.shape[1] < 2:
                break
            mtp.append(F.cross_entropy(lk[:, :-1].flatten(0, 1), ids[:, k + 1:].flatten()))
    return lm, mtp


def _lr(cfg: PretrainConfig, step: int) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))))


def _moe_blocks(module):
    return [m for m in module.modules() if hasattr(m, "update_bias")]


# Settings that do not change what a run computes: a resume may change them (the layout over
# ranks included: a checkpoint of one layout resumes under another, one process included).
NOT_RUN_SETTINGS = ("out", "checkpoint_every", "data_parallel", "expert_parallel")
# Settings added after checkpoints were first written: at their default they are left out of a
# run's settings, so those checkpoints still resume.
LATER_SETTINGS = {"dtype": "float32"}
DTYPES = {"float32": torch.float32, "float64": torch.float64}


def run_settings(cfg: PretrainConfig) -> dict:
    """What identifies a run: a checkpoint resumes only under the same values."""
    return {k: v for k, v in dataclasses.asdict(cfg).items()
            if k not in NOT_RUN_SETTINGS and not (k in LATER_SETTINGS and v == LATER_SETTINGS[k])}


class PretrainLoss(torch.nn.Module):
    """``forward(ids [B, S]) -> (lm, [mtp_k])``: the losses as one module call, the unit that
    DDP and FSDP2 wrap (their hooks run around a module's forward)."""

    def __init__(self, model: HybridLM):
        super().__init__()
        self.model = model

    def forward(self, ids: torch.Tensor):
        return losses(self.model, ids, with_mtp=True)


def read_metrics(path: Path) -> list[dict]:
    """The rows of ``metrics.jsonl``; lines that do not parse (a write cut short by a kill) are
    skipped with a warning naming them."""
    rows, bad = [], []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        try:
            row = json.loads(line)
            if not isinstance(row, dict) or not isinstance(row.get("step"), int):
                raise ValueError("no step")
        except ValueError:
            bad.append(number)
            continue
        rows.append(row)
    if bad:
        warnings.warn(f"{path}: skipped {len(bad)} unreadable line(s) {bad[:5]} (a write cut short)", stacklevel=2)
    return rows


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def train(cfg: PretrainConfig, *, resume: bool = False, progress: bool = True) -> dict:
    """Train as ``cfg`` says, in this process or as one rank of a ``torchrun`` job (then every rank
    calls it: each trains on its part of every batch, rank 0 writes the files)."""
    if cfg.dtype not in DTYPES:
        raise ValueError(f"--dtype: expected one of {sorted(DTYPES)}, got {cfg.dtype!r}")
    par = distributed.setup(cfg.data_parallel, cfg.expert_parallel)
    try:
        return _train(cfg, par, resume, progress)
    finally:
        distributed.teardown(par)


def _init_from(model: HybridLM, path: str, graph) -> None:
    """Start from the weights of ``path``: a ``load_pretrained`` folder or a distributed checkpoint
    (``sharded_checkpoint``); the MTP blocks may be missing there (they start fresh)."""
    from hysparse_kernels.models import CheckpointError, load_pretrained

    try:
        if (Path(path) / checkpoint.TRAINER_JSON).exists():
            init = sharded_checkpoint.load_model(path)
        else:
            init = load_pretrained(path)
    except CheckpointError as exc:
        raise CheckpointError(f"--init-from: {exc}") from exc
    missing, unexpected = model.load_state_dict(init.state_dict(), strict=False)
    if unexpected or any(not k.startswith("model.mtp.") for k in missing):
        raise ValueError(f"init_from: does not fit {graph.name}: missing {missing[:5]}, unexpected {unexpected[:5]}")


def _train(cfg: PretrainConfig, par: distributed.Parallel, resume: bool, progress: bool) -> dict:
    out = Path(cfg.out)
    settings = run_settings(cfg)
    if par.is_main:
        checkpoint.remove_leftovers(out)
        remove_leftovers(out / "final")
    distributed.barrier(par)
    if not resume and (earlier := checkpoint.candidates(out)):
        raise ValueError(f"--out: {out} holds checkpoints of an earlier run (newest {earlier[0].name}); "
                         f"pass --resume to continue it, or choose another --out")
    torch.manual_seed(cfg.seed)
    tok = ByteTokenizer()
    ids = tok.encode(make_corpus(cfg.corpus_lines, cfg.seed))
    baseline = unigram_entropy(ids)
    graph = model_config(cfg.model, cfg.mtp_layers).to_graph()
    if graph.vocab < tok.vocab_size:
        raise ValueError(f"model: vocabulary {graph.vocab} is smaller than the tokenizer's {tok.vocab_size}")
    stream = TokenStream(ids, cfg.seq_len, cfg.batch, seed=cfg.seed, rank=par.rank, world=par.world)
    model = HybridLM(graph).to(DTYPES[cfg.dtype])
    if cfg.init_from:
        _init_from(model, cfg.init_from, graph)
    if cfg.mtp_only:
        if getattr(model.model, "mtp", None) is None:
            raise ValueError("mtp_only: the model has no MTP blocks (set mtp_layers)")
        for name, p in model.named_parameters():
            p.requires_grad_(name.startswith("model.mtp."))
    root = distributed.parallelize(PretrainLoss(model.to(par.device)), model, par)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.01, betas=(0.9, 0.95))
    if par.is_main:
        out.mkdir(parents=True, exist_ok=True)  # only once the settings have proved usable
    distributed.barrier(par)
    start, kept = 0, []
    metrics_path = out / "metrics.jsonl"
    reader = sharded_checkpoint.reader(model, optimizer, par)
    if resume and (meta := checkpoint.resume(out, model, optimizer, stream.generator, settings, reader=reader)) is not None:
        start = meta["step"]
        kept = [row for row in read_metrics(metrics_path) if row["step"] < start] if metrics_path.exists() else []
        if par.is_main:
            _write_atomic(metrics_path, "".join(json.dumps(row) + "\n" for row in kept))
    elif metrics_path.exists() and par.is_main:
        metrics_path.unlink()
    if par.is_main:
        _write_atomic(out / "config.json", json.dumps(dataclasses.asdict(cfg), indent=2))

    bar = None
    if progress and par.is_main:
        from tqdm import tqdm

        bar = tqdm(total=cfg.steps, initial=start, desc=f"pretrain {graph.name}", unit="step")
    root.train()
    t0 = time.perf_counter()
    last = kept[-1] if kept else {}  # a resumed run that was already finished trains no step
    for step in range(start, cfg.steps):
        for group in optimizer.param_groups:
            group["lr"] = _lr(cfg, step)
        batch = stream.next_batch().to(par.device)
        lm, mtp = root(batch)
        mtp_mean = torch.stack(mtp).mean() if mtp else torch.zeros((), dtype=lm.dtype, device=lm.device)
        loss = mtp_mean if cfg.mtp_only else lm + cfg.mtp_weight * mtp_mean
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if par.distributed:
            distributed.clip_grad_norm_(params, 1.0)
        else:
            torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        # Frozen means frozen: with mtp_only the main model's routing biases stay as loaded too.
        blocks = _moe_blocks(model.model.mtp if cfg.mtp_only else model)
        distributed.all_reduce_sum_([b.last_load for b in blocks if b.last_load is not None], par)  # the global load
        for block in blocks:
            block.update_bias(cfg.bias_update_rate)
        values = distributed.mean_over_ranks([float(loss.detach()), float(lm.detach())] + [float(x.detach()) for x in mtp], par)
        last = {"step": step, "loss": values[0], "lm_loss": values[1], "mtp_loss": values[2:],
                "lr": _lr(cfg, step), "tokens": (step + 1) * cfg.batch * cfg.seq_len}
        if par.is_main:
            with metrics_path.open("a") as f:
                f.write(json.dumps(last) + "\n")
        if bar is not None:
            bar.update(1)
            bar.set_postfix(lm=f"{last['lm_loss']:.3f}", mtp=f"{sum(values[2:]) / max(1, len(values) - 2):.3f}")
        if (step + 1) % cfg.checkpoint_every == 0 or step + 1 == cfg.steps:
            extra = {"model": graph.name, "settings": settings}
            if par.distributed:
                sharded_checkpoint.save(out, step + 1, model, optimizer, stream.generator, extra, par)
            else:
                checkpoint.save(out, step + 1, model, optimizer, stream.generator, extra)
    if bar is not None:
        bar.close()
    seconds = time.perf_counter() - t0
    _save_final(model, out / "final", par)
    if par.is_main:
        plot(metrics_path, out / "loss.png", baseline)
    return {"model": graph.name, "steps": cfg.steps, "final": last, "unigram_baseline": baseline,
            "seconds": seconds, "out": str(out), "ranks": par.world}


def _save_final(model: HybridLM, path: Path, par: distributed.Parallel) -> None:
    """``final/``: the whole model (gathered to rank 0 from every rank's shards) as ``load_pretrained`` reads it."""
    if not par.distributed:
        save_pretrained(model, path)
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if par.is_main:
        save_pretrained(model, path, state=full)
    distributed.barrier(par)


def plot(metrics_path: Path, png: Path, baseline: float) -> None:
    """Loss curves (main and each MTP block) against the unigram baseline."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics(metrics_path)
    steps = [r["step"] for r in rows]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(steps, [r["lm_loss"] for r in rows], label="main (next token)")
    for k in range(max((len(r["mtp_loss"]) for r in rows), default=0)):
        ax.plot(steps, [r["mtp_loss"][k] if len(r["mtp_loss"]) > k else float("nan") for r in rows],
                label=f"MTP block {k + 1} (token +{k + 2})", alpha=0.8)
    ax.axhline(baseline, color="gray", linestyle="--", label=f"unigram baseline {baseline:.2f}")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    tmp = png.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(png)


if __name__ == "__main__":  # torchrun --nproc-per-node N -m hysparse_kernels.training.pretrain [options]
    import sys

    from hysparse_kernels.cli import main

    sys.exit(main(["train", "pretrain", *sys.argv[1:]]))
