"""The RL loop every recipe drives.

One step: draw ``prompts_per_step`` training questions, roll each out ``group_size`` times
(``rollout.RolloutEngine``), judge them (``Task.verify``), turn verdicts into token rewards (the
recipe's ``rewards`` hook, or the outcome reward on the last model token, plus DAPO's overlong
penalty when set), optionally drop all-right / all-wrong groups and sample more (DAPO dynamic
sampling), compute advantages (``algos`` registry, per-token inputs), with the old
policy's log-probs (and the reference policy's when ``kl_coef > 0``) recomputed first, then for each of
``minibatches`` shuffled slices: policy log-probs with gradients, ``algos.policy_objective``,
backward, clip, optimizer step.

Per step ``metrics.jsonl`` gets: ``reward``, ``success``, outcome rates, ``kl``, ``entropy``,
``response_len``, ``clip_frac``, ``tokens_per_s`` (rollout), the seconds of each phase
(``t_rollout``, ``t_logprob``, ``t_backward``, ``t_optimizer``) and more. Checkpoints (model,
optimizer, torch RNG and the rollout generator) are written atomically by
``training.checkpoint``; ``resume=True`` continues from the newest and reproduces the
uninterrupted run's metrics (timings aside).

Data parallel (``torchrun``, ``distributed.py``): prompts and rollouts are per rank (generator
seeded by ``(seed, rank, step)``), each minibatch's loss is weighted by the rank's share of the
global minibatch and DDP averages the gradients, so an update equals one process's update on
the union of every rank's rollouts (advantages whose statistics span the whole batch, such as
``reinforce_pp_baseline``'s, are taken over each rank's batch); metrics pass through
``distributed.reduce_metrics``; only the main rank writes and evaluates. Dynamic sampling runs
in one process only.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from hysparse_kernels.models import load_pretrained, save_pretrained
from .. import checkpoint
from ..data import ByteTokenizer
from . import distributed, runs
from .algos import AdvantageInput, AlgoConfig, filter_groups, get_advantage, outcome_rewards, overlong_penalty, policy_objective
from .evaluate import TaskEnv, evaluate, prompt_ids, task_sampling
from .policy import sequence_logprobs
from .rollout import RolloutEngine, collate
from .tasks import OUTCOMES, get_task

TIMING_KEYS = ("t_rollout", "t_logprob", "t_backward", "t_optimizer", "t_step", "tokens_per_s")
# Settings that do not change what a run computes: a resume may change them.
NOT_RUN_SETTINGS = ("checkpoint_every",)


def run_settings(config: dict) -> dict:
    """What identifies a run: a checkpoint resumes only under the same values."""
    return {k: v for k, v in config.items() if k not in NOT_RUN_SETTINGS}


@dataclass
class RLConfig:
    """Settings of one RL run (recorded in ``config.json``)."""

    recipe: str = "grpo"
    task: str = "lookup"
    task_seed: int = 0
    model: str = "tiny-mimo-7b"
    init_from: str | None = None  # None: the cached SFT warm start of (task, model)
    sft_steps: int = 400  # the warm start's SFT schedule (when init_from is None) ...
    sft_target: float | None = 0.35  # ... ended once sampled dev success reaches this (None: all steps)
    steps: int = 100
    prompts_per_step: int = 16
    group_size: int = 8
    temperature: float = 1.0
    top_p: float = 1.0
    num_draft: int = 0  # MTP speculative rollouts (0: off)
    lr: float = 3e-4
    warmup: int = 5
    weight_decay: float = 0.0
    minibatches: int = 2
    grad_clip: float = 1.0
    advantage: str = "grpo"
    loss: str = "ppo_clip"
    aggregation: str = "seq-mean-token-mean"
    eps_low: float = 0.2
    eps_high: float = 0.2
    dual_clip: float | None = None
    kl_coef: float = 0.0
    entropy_coef: float = 0.0
    dynamic_sampling: bool = False
    max_sampling_rounds: int = 3  # dynamic sampling: generation rounds per step at most
    overlong_buffer: int = 0  # DAPO soft overlong penalty over the last tokens of max_new_tokens (0: off)
    overlong_factor: float = 1.0
    eval_split: str = "heldout"
    eval_n: int = 200
    eval_samples: int = 2
    seed: int = 0
    checkpoint_every: int = 10

    def algo(self, max_response_len: int | None = None) -> AlgoConfig:
        return AlgoConfig(advantage=self.advantage, loss=self.loss, aggregation=self.aggregation, eps_low=self.eps_low,
                          eps_high=self.eps_high, dual_clip=self.dual_clip, kl_coef=self.kl_coef,
                          entropy_coef=self.entropy_coef, max_response_len=max_response_len)

    def validate(self) -> None:
        for name in ("steps", "prompts_per_step", "group_size", "minibatches", "checkpoint_every", "eval_n",
                     "eval_samples", "max_sampling_rounds", "sft_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: expected a positive int, got {getattr(self, name)}")
        if self.lr <= 0:
            raise ValueError(f"lr: expected > 0, got {self.lr}")
        if self.temperature <= 0:
            raise ValueError(f"temperature: expected > 0 for training rollouts, got {self.temperature}")
        if self.eval_split not in ("dev", "heldout"):
            raise ValueError(f"eval_split: expected 'dev' (choosing settings) or 'heldout' (reporting), got {self.eval_split!r}")
        self.algo()


@dataclass
class StepContext:
    """What a recipe's ``rewards`` hook sees: the task, the rollouts and their examples, verdicts
    and collated tensors (``rollout.collate``), and the tokenizer.

    ``old_logprobs [N, L]`` (float64): the current policy's log-probs of the response tokens,
    recomputed before the update (π_old; ``batch["old_logprobs"]`` are the sampler's, π_rollout).

    The hook may also fill in ``step_ids [N, L]`` (a reasoning-step id per response token, -1:
    none) and ``extra`` (anything its advantage estimator reads), which the trainer hands to the
    estimator in ``AdvantageInput``, ``loss_mask [N, L]`` (0 drops a model token from the loss:
    multiplied into the response mask the loss and its aggregation see), and ``metrics`` (floats
    added to the step's metrics row)."""

    task: object
    examples: list
    rollouts: list
    verdicts: list
    batch: dict
    tokenizer: ByteTokenizer
    config: RLConfig
    old_logprobs: torch.Tensor | None = None
    step_ids: torch.Tensor | None = None
    loss_mask: torch.Tensor | None = None
    extra: dict = dataclasses.field(default_factory=dict)
    metrics: dict = dataclasses.field(default_factory=dict)


def default_rewards(ctx: StepContext) -> torch.Tensor:
    """Outcome reward: each verdict's reward on its rollout's last model token ``[N, L]``."""
    scores = torch.tensor([v.reward for v in ctx.verdicts], dtype=torch.float64)
    return outcome_rewards(scores, ctx.batch["response_mask"].double())


# ``--quick``: the short setting shared by the RL recipes (a recipe's ``quick`` dict goes on top).
QUICK = dict(steps=45, eval_n=200, eval_samples=2, checkpoint_every=10)


def resolve_init(cfg: RLConfig, progress: bool = True) -> str:
    """The checkpoint the policy starts from: ``init_from``, or the cached SFT warm start."""
    if cfg.init_from:
        return cfg.init_from
    from .sft import cached_sft

    return str(cached_sft(warm_start_config(cfg), progress=progress))


def warm_start_config(cfg: RLConfig):
    """The SFT settings of the warm start an RL run without ``init_from`` begins from."""
    from .sft import SFTConfig

    return SFTConfig(task=cfg.task, task_seed=cfg.task_seed, model=cfg.model, steps=cfg.sft_steps,
                     target_success=cfg.sft_target, check_from=cfg.sft_steps // 2)


def _lr(cfg: RLConfig, step: int) -> float:
    return cfg.lr * min(1.0, (step + 1) / max(1, cfg.warmup))


class Trainer:
    """Holds the policy, reference, optimizer, task and generator of one run."""

    def __init__(self, cfg: RLConfig, init: str, rewards=None, eval_judge=None):
        cfg.validate()
        self.cfg = cfg
        self.task = get_task(cfg.task, cfg.task_seed)
        self.tok = ByteTokenizer()
        self.rewards = rewards or default_rewards
        self.eval_judge = eval_judge
        policy = load_pretrained(init)
        self.policy = policy
        self.model = distributed.wrap_model(policy)
        self.reference = load_pretrained(init).eval() if cfg.kl_coef > 0 else None
        if self.reference is not None:
            self.reference.requires_grad_(False)
        self.optimizer = torch.optim.AdamW(policy.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.99))
        self.generator = torch.Generator().manual_seed(distributed.rank_seed(cfg.seed))
        self.train_examples = self.task.examples("train")
        self.params = task_sampling(self.task, cfg.temperature, cfg.top_p, cfg.num_draft)
        self.algo = cfg.algo(max_response_len=self.params.max_new_tokens)
        self.engine = RolloutEngine(policy, self.tok, self.params)  # checks num_draft against the model now

    # ------------------------------------------------------------------ one step

    def _sample(self, n_prompts: int):
        picks = torch.randint(0, len(self.train_examples), (n_prompts,), generator=self.generator).tolist()
        examples = [self.train_examples[i] for i in picks for _ in range(self.cfg.group_size)]
        rollouts, stats = self.engine.generate([prompt_ids(e, self.tok) for e in examples], TaskEnv(self.task, examples),
                                          self.generator)
        verdicts = [self.task.verify(e, self.tok.decode(r.tokens)) for e, r in zip(examples, rollouts)]
        return examples, rollouts, verdicts, stats

    def step(self, step: int) -> dict:
        """One step: ``collect`` this rank's rollouts, then ``update`` the policy on them."""
        rollouts = self.collect(step)
        metrics = rollouts.pop("metrics")
        if not rollouts["rollouts"]:  # dynamic sampling kept nothing: no update this step
            metrics.update({"t_logprob": 0.0, "t_backward": 0.0, "t_optimizer": 0.0, "skipped": 1})
            return metrics
        metrics.update(self.update(step, **rollouts))
        return metrics

    def collect(self, step: int) -> dict:
        """This rank's rollouts of one step: ``examples``, ``rollouts``, ``verdicts`` and ``groups``
        (the prompt index of each rollout, lists of ``N``) and their ``metrics``. On several ranks
        the generator is first seeded by ``(seed, rank, step)``, so every rank rolls out other
        prompts and a resumed run draws what the uninterrupted one drew."""
        cfg = self.cfg
        if distributed.rank_and_world()[1] > 1:
            self.generator.manual_seed(distributed.step_seed(cfg.seed, step))
        t0 = time.perf_counter()
        examples, rollouts, verdicts, groups = [], [], [], []
        model_tokens, roll_s, rounds, accept = 0, 0.0, 0, []
        first = None
        while True:
            ex, ro, ve, st = self._sample(cfg.prompts_per_step)
            rounds += 1
            model_tokens += st.model_tokens
            roll_s += st.seconds
            accept.append(st.acceptance_length)
            base = (rounds - 1) * cfg.prompts_per_step
            examples += ex
            rollouts += ro
            verdicts += ve
            groups += [base + i // cfg.group_size for i in range(len(ro))]
            if first is None:
                first = (list(ve), list(ro))
            if not cfg.dynamic_sampling:
                break
            scores = torch.tensor([v.reward for v in verdicts], dtype=torch.float64)
            kept = filter_groups(scores, torch.tensor(groups))
            if int(kept.sum()) >= cfg.prompts_per_step * cfg.group_size or rounds >= cfg.max_sampling_rounds:
                idx = [i for i in range(len(rollouts)) if kept[i]][:cfg.prompts_per_step * cfg.group_size]
                examples, rollouts, verdicts, groups = ([x[i] for i in idx] for x in (examples, rollouts, verdicts, groups))
                break
        metrics = self._rollout_metrics(*first)
        metrics.update({"tokens_per_s": model_tokens / roll_s if roll_s else 0.0, "sampling_rounds": rounds,
                        "kept_rollouts": len(rollouts), "t_rollout": time.perf_counter() - t0})
        if cfg.num_draft:
            metrics["acceptance_length"] = sum(accept) / len(accept)
        return {"examples": examples, "rollouts": rollouts, "verdicts": verdicts, "groups": groups, "metrics": metrics}

    def update(self, step: int, examples: list, rollouts: list, verdicts: list, groups: list) -> dict:
        """Rewards, advantages, old (and reference) log-probs of ``rollouts`` (``N`` >= 1, with
        their ``examples``, ``verdicts`` and prompt ``groups``), then ``minibatches`` optimizer steps.
        On several ranks each minibatch's loss is weighted by this rank's share of the global
        minibatch (rows, or tokens for ``token-mean``), so the gradient DDP averages is that of one
        process over the union of every rank's minibatch. Returns the update's metrics."""
        cfg = self.cfg
        batch = collate(rollouts, self.tok.pad)
        mask = batch["response_mask"]
        t1 = time.perf_counter()
        with torch.no_grad():
            old, _ = sequence_logprobs(self.policy, batch, cfg.temperature, cfg.top_p)
            ref = sequence_logprobs(self.reference, batch, cfg.temperature, cfg.top_p)[0] if self.reference is not None else None
        gap = float(((old.double() - batch["old_logprobs"]).abs() * mask).max())
        t_logprob = time.perf_counter() - t1

        ctx = StepContext(self.task, examples, rollouts, verdicts, batch, self.tok, cfg, old_logprobs=old.double())
        token_rewards = self.rewards(ctx).double()
        if cfg.overlong_buffer:
            pen = overlong_penalty(mask.sum(-1), self.params.max_new_tokens, cfg.overlong_buffer, cfg.overlong_factor)
            token_rewards = token_rewards + outcome_rewards(pen, mask.double())
        adv = get_advantage(cfg.advantage)(
            AdvantageInput(token_rewards, mask.double(), torch.tensor(groups), batch["turn_ids"], ctx.step_ids, ctx.extra),
            self.algo)
        recipe_metrics = {k: float(v) for k, v in ctx.metrics.items()}  # a recipe's own (rewards hook)
        if ctx.loss_mask is not None:  # tokens the recipe drops from the loss
            if ctx.loss_mask.shape != mask.shape:
                raise ValueError(f"loss_mask: expected shape {tuple(mask.shape)}, got {tuple(ctx.loss_mask.shape)}")
            batch = {**batch, "response_mask": mask * ctx.loss_mask.to(mask.dtype)}

        order = torch.randperm(len(rollouts), generator=self.generator)
        parts = [p for p in order.chunk(cfg.minibatches) if len(p)]
        t_bwd = t_opt = 0.0
        sums: dict[str, float] = {}
        for idx in parts:
            t2 = time.perf_counter()
            mb = _rows(batch, idx)
            logp, ent = sequence_logprobs(self.model, mb, cfg.temperature, cfg.top_p, with_entropy=True)
            L = mb["response"].shape[1]
            loss, m = policy_objective(logp, old[idx, :L], adv[idx, :L], mb["response_mask"], self.algo,
                                       ref_logp=None if ref is None else ref[idx, :L], entropy=ent)
            units = mb["response_mask"].sum() if cfg.aggregation == "token-mean" else len(idx)
            share = distributed.share_of_global(float(units))
            self.optimizer.zero_grad(set_to_none=True)
            (loss * share if share != 1.0 else loss).backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(self.policy.parameters(), cfg.grad_clip)
            t3 = time.perf_counter()
            for group in self.optimizer.param_groups:
                group["lr"] = _lr(cfg, step)
            self.optimizer.step()
            t_opt += time.perf_counter() - t3
            t_bwd += t3 - t2
            for k, v in {**m, "loss": loss.detach(), "grad_norm": grad_norm}.items():
                sums[k] = sums.get(k, 0.0) + float(v) / len(parts)
        return {**recipe_metrics, **sums, "logprob_gap": gap, "lr": _lr(cfg, step),
                "advantage_abs": float((adv.abs() * mask).sum() / mask.sum().clamp(min=1)),
                "t_logprob": t_logprob, "t_backward": t_bwd, "t_optimizer": t_opt}

    def _rollout_metrics(self, verdicts, rollouts) -> dict:
        n = len(verdicts)
        out = {"reward": sum(v.reward for v in verdicts) / n, "success": sum(v.success for v in verdicts) / n,
               "response_len": sum(r.num_model_tokens for r in rollouts) / n,
               "turns": sum(len(r.turn_texts) for r in rollouts) / n,
               "truncated": sum(r.finish == "length" for r in rollouts) / n}
        out.update({f"rate_{o}": sum(v.outcome == o for v in verdicts) / n for o in OUTCOMES})
        return out

    def evaluate(self, model=None) -> dict:
        cfg = self.cfg
        return evaluate(model or self.policy, self.task, split=cfg.eval_split, n=cfg.eval_n, temperature=cfg.temperature,
                        top_p=cfg.top_p, samples=cfg.eval_samples, judge=self.eval_judge)


def _rows(batch: dict, idx: torch.Tensor) -> dict:
    """Rows ``idx`` of a collated batch, with the padding none of them needs cut off."""
    out = {k: v[idx] for k, v in batch.items()}
    L = int(out["token_mask"].sum(-1).max().clamp(min=1))
    T = int((out["prompt_lens"] + out["token_mask"].sum(-1).long()).max())
    for k in ("response", "response_mask", "token_mask", "old_logprobs", "turn_ids"):
        out[k] = out[k][:, :L]
    out["input_ids"] = out["input_ids"][:, :T]
    return out


def train_rl(cfg: RLConfig, out, *, init: str, rewards=None, resume: bool = False, progress: bool = True,
             stop_after: int | None = None, recipe_name: str | None = None, eval_judge=None) -> dict:
    """Run RL from checkpoint ``init`` into ``out``; see the module docstring. ``stop_after``
    ends the run after that many steps, as a crash would (for resume tests). ``eval_judge``: extra
    held-out metrics (see ``evaluate.evaluate``'s ``judge``). Returns a summary."""
    owned = distributed.setup()
    try:
        return _train_rl(cfg, Path(out), init, rewards, resume, progress, stop_after, recipe_name, eval_judge)
    finally:
        distributed.teardown(owned)


def _train_rl(cfg: RLConfig, out: Path, init: str, rewards, resume: bool, progress: bool, stop_after: int | None,
              recipe_name: str | None, eval_judge=None) -> dict:
    main = distributed.is_main()
    world = distributed.rank_and_world()[1]
    if world > 1 and cfg.dynamic_sampling:
        raise ValueError(f"dynamic_sampling: not supported on several ranks yet (got {world} ranks): "
                         "ranks would keep different numbers of rollouts")
    config = {**dataclasses.asdict(cfg), "init": str(init)}
    settings = run_settings(config)
    if main:
        runs.prepare_out(out, resume, config)
    distributed.barrier()
    trainer = Trainer(cfg, init, rewards, eval_judge)
    metrics_path = out / "metrics.jsonl"
    start = 0
    if main:
        out.mkdir(parents=True, exist_ok=True)
    if resume and (meta := checkpoint.resume(out, trainer.policy, trainer.optimizer, trainer.generator, settings)):
        start = meta["step"]
        if main:
            runs.truncate_metrics(metrics_path, start)
    else:
        torch.manual_seed(cfg.seed)
        if main and metrics_path.exists():
            metrics_path.unlink()
    distributed.barrier()  # every rank has read the checkpoint before rank 0 writes again
    if main:
        runs.write_json(out / "config.json", config)
    eval_path = out / "eval.json"
    report = runs.read_json(eval_path) if resume and main else None
    if main and (report is None or report.get("before") is None):
        before = trainer.evaluate()  # the main rank evaluates; the others wait in the first step's all-reduce
        report = {"recipe": recipe_name or cfg.recipe, "task": cfg.task, "metric": "success", "before": before,
                  "after": None, "n_eval": cfg.eval_n, "split": cfg.eval_split, "init": str(init)}
        if main:
            runs.write_json(eval_path, report)
    bar = runs.progress_bar(cfg.steps, start, f"{recipe_name or cfg.recipe} {cfg.task}", progress and main)
    end = cfg.steps if stop_after is None else min(cfg.steps, stop_after)
    for step in range(start, end):
        t0 = time.perf_counter()
        m = trainer.step(step)
        m = distributed.reduce_metrics({"step": step, **m, "t_step": time.perf_counter() - t0})
        m["step"] = step
        if main:
            runs.append_metrics(metrics_path, m)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(reward=f"{m['reward']:.2f}", kl=f"{m.get('kl', 0.0):.3f}")
        if main and ((step + 1) % cfg.checkpoint_every == 0 or step + 1 == cfg.steps):
            checkpoint.save(out, step + 1, trainer.policy, trainer.optimizer, trainer.generator,
                            {"model": trainer.policy.graph.name, "recipe": recipe_name or cfg.recipe, "settings": settings})
    if bar is not None:
        bar.close()
    if end < cfg.steps:
        return {"stopped_at": end}
    if not main:
        return {"rank": distributed.rank_and_world()[0], "out": str(out)}
    after = trainer.evaluate()
    report["after"] = after
    if main:
        save_pretrained(trainer.policy, out / "final")
        runs.write_json(eval_path, report)
        runs.plot_curves(metrics_path, out / "curves.png",
                         ["reward", "success", "kl", "entropy", "response_len", "clip_frac", "tokens_per_s", "pg_loss",
                          "grad_norm", "rate_wrong", "rate_abstain", "step_faithfulness", "reward_var",
                          "zero_var_groups"], title=f"{recipe_name or cfg.recipe} on {cfg.task}")
    return {"before": report["before"]["success"], "after": after["success"], "out": str(out)}

