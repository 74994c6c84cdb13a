"""DiffThinker against the text-centric baseline on the same generated puzzles.

``run_compare(out, cfg)`` trains both models on the training split of every setting, samples
the test split, scores the answers with the puzzles' verifiers and writes to ``out``:

- ``eval.json``: solve rates per setting for the DiT at each number of Euler steps and best-of-N
  (verifier selection among N parallel samples), the same for the text baseline (greedy first,
  then sampled), parameter counts, training losses and seconds;
- ``puzzles.png``, ``dit_outputs.png``, ``solutions.png``: one row per setting (aligned columns),
  and ``grid.png`` with the three stacked per setting;
- ``dit.pt`` / ``text.pt``: the trained weights with their settings; ``metrics.jsonl``.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from hysparse_kernels.models.audio.io import atomic_write
from hysparse_kernels.models.vision import DiTConfig
from .data import build_set
from .diffthinker import rates, sample_answers, score_images, train_dit
from .puzzles import render_grid
from .text_baseline import TextReasoner, sample_texts, score_texts, train_text

SETTINGS = (("maze", 3), ("maze", 4), ("frozenlake", 4), ("frozenlake", 5), ("jigsaw", 2), ("sudoku", 4), ("tsp", 5))


@dataclass
class CompareConfig:
    """``settings``: (domain, size) pairs trained and evaluated; ``n_train`` / ``n_test``: puzzles
    per setting; ``steps``: optimiser steps of each model; ``sampling_steps``: Euler step counts
    evaluated (the last is the default reported); ``n_samples``: parallel samples per puzzle;
    ``edit``: the DiT's flow generates the edit ``solution - puzzle`` (added back to the puzzle),
    which a from-scratch model learns far sooner than the whole image (it starts as a copy)."""

    settings: tuple = SETTINGS
    px: int = 32
    n_train: int = 1000
    n_test: int = 100
    steps: int = 1500
    batch: int = 32
    lr: float = 1e-3
    text_lr: float = 1e-3
    seed: int = 0
    sampling_steps: tuple = (1, 2, 5, 10, 20)
    n_samples: int = 4
    edit: bool = True
    temperature: float = 1.0
    dit: dict = field(default_factory=lambda: dict(patch=4, dim=96, depth=3, heads=4, mlp_ratio=4))
    text: dict = field(default_factory=lambda: dict(patch=4, hidden=96, layers=3, heads=4, intermediate=480))

    def validate(self) -> None:
        for name in ("n_train", "n_test", "steps", "batch", "n_samples"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"{name}: expected a positive int, got {getattr(self, name)!r}")
        if not self.sampling_steps or any(not isinstance(s, int) or s < 1 for s in self.sampling_steps):
            raise ValueError(f"sampling_steps: expected positive ints, got {self.sampling_steps!r}")


def _params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _save(path: Path, model: torch.nn.Module, settings: dict) -> None:
    atomic_write(path, lambda tmp: torch.save({"settings": settings, "state_dict": model.state_dict()}, tmp))


def run_compare(out, cfg: CompareConfig, progress=None) -> dict:
    """Train, sample, verify, write (see the module docstring); returns the ``eval.json`` dict.
    ``progress``: optional ``fn(str)`` called with one line per phase."""
    cfg.validate()
    say = progress or (lambda _: None)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    train = build_set(list(cfg.settings), "train", cfg.n_train, cfg.px)
    test = build_set(list(cfg.settings), "test", cfg.n_test, cfg.px)
    say(f"data: {len(train.keys)} train / {len(test.keys)} test puzzles ({time.perf_counter() - t0:.0f}s)")
    with open(out / "metrics.jsonl", "w") as log:

        def logger(model):
            def write(row):
                log.write(json.dumps({"model": model, **row}) + "\n")
                if row["step"] % 100 == 0:
                    say(f"{model} step {row['step']}: loss {row['loss']:.4f}")
            return write

        dit_config = DiTConfig(px=cfg.px, **cfg.dit)
        dit, dit_metrics = train_dit(dit_config, train, steps=cfg.steps, batch=cfg.batch, lr=cfg.lr, seed=cfg.seed,
                                     edit=cfg.edit, log=logger("dit"))
        _save(out / "dit.pt", dit, dit_config.to_dict())
        torch.manual_seed(cfg.seed)
        text = TextReasoner(px=cfg.px, **cfg.text)
        text_metrics = train_text(text, train, steps=cfg.steps, batch=cfg.batch, lr=cfg.text_lr, seed=cfg.seed,
                                  log=logger("text"))
        _save(out / "text.pt", text, text.settings)
    ns = tuple(n for n in (1, 2, 4, 8, 16) if n <= cfg.n_samples)
    report = {
        "recipe": "diffthinker", "config": asdict(cfg), "metric": "solve rate (verifier)",
        "params": {"dit": _params(dit), "text": _params(text)},
        "train": {"dit": {"final_loss": _tail(dit_metrics), "seconds": dit_metrics[-1]["seconds"]},
                  "text": {"final_loss": _tail(text_metrics), "seconds": text_metrics[-1]["seconds"]}},
        "dit": {}, "text": {},
    }
    answers = None
    for steps in cfg.sampling_steps:
        t = time.perf_counter()
        answers = sample_answers(dit, test, steps=steps, n_samples=cfg.n_samples, seed=cfg.seed, edit=cfg.edit)
        report["dit"][str(steps)] = rates(test, score_images(test, answers), ns)
        report["dit"][str(steps)]["seconds"] = time.perf_counter() - t
        say(f"dit {steps} steps: {report['dit'][str(steps)]['all']}")
    texts = sample_texts(text, test, n_samples=cfg.n_samples, seed=cfg.seed, temperature=cfg.temperature)
    report["text"] = rates(test, score_texts(test, texts), ns)
    say(f"text: {report['text']['all']}")
    report["text_examples"] = {k: {"answer": texts[0][i], "solution": test.puzzles[i].solution_text}
                               for k, i in _first_of_each(test.keys).items()}
    report["seconds"] = time.perf_counter() - t0
    _grids(out, test, answers[0])
    atomic_write(out / "eval.json", lambda tmp: Path(tmp).write_text(json.dumps(report, indent=2)))
    return report


def _tail(metrics: list[dict], n: int = 20) -> float:
    rows = metrics[-n:]
    return sum(r["loss"] for r in rows) / len(rows)


def _first_of_each(keys: list[str]) -> dict[str, int]:
    out = {}
    for i, k in enumerate(keys):
        out.setdefault(k, i)
    return out


def _grids(out: Path, test, answers, per_row: int = 8) -> None:
    """PNG grids of the first ``per_row`` test puzzles of each setting: puzzles, DiT outputs
    (first sample at the last step count), solutions; and all three stacked in ``grid.png``."""
    keys = list(_first_of_each(test.keys))
    rows = {"puzzles": [], "dit_outputs": [], "solutions": []}
    for key in keys:
        idx = [i for i, k in enumerate(test.keys) if k == key][:per_row]
        rows["puzzles"].append([test.puzzles[i].image for i in idx])
        rows["dit_outputs"].append([answers[i] for i in idx])
        rows["solutions"].append([test.puzzles[i].solution_image for i in idx])
    for name, r in rows.items():
        render_grid(r, out / f"{name}.png", labels=keys)
    stacked, labels = [], []
    for j, key in enumerate(keys):
        for name, tag in (("puzzles", "P"), ("dit_outputs", "DiT"), ("solutions", "S")):
            stacked.append(rows[name][j])
            labels.append(f"{key} {tag}")
    render_grid(stacked, out / "grid.png", labels=labels)
