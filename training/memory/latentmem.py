"""``hysparse recipe run latentmem``: LatentMem on the lookup task, and its baselines.

1. The agent is the frozen SFT warm start of the RL recipes (``trainer.resolve_init``). The
   experience bank is filled with its own episodes (no memory, temperature 1) on ``BANK_FILL``
   training questions: raw transcripts with their success.
2. LMPO (``lmpo``) trains the composer (a trainable copy of the agent's weights, ``N_LATENT``
   query vectors, a projection) for ``steps`` steps of ``prompts_per_step`` tasks x
   ``group_size`` episodes. Each task retrieves its ``TOP_K`` most similar successful episode(s)
   (its own episodes excluded) and composes ``N_LATENT`` latent tokens for the ``solver`` role.
   The episodes of each step join the bank.
3. On the first ``eval_n`` questions of ``eval_split`` (held-out by default) three arms are run
   with the same bank: ``none`` (the question alone), ``text`` (the retrieved transcript pasted
   before the question) and ``latentmem`` (latent tokens before the question), each sampled
   ``eval_samples`` times at temperature 1 and greedily once. ``latentmem`` is measured with
   the untrained composer (``before``) and the trained one (``after``). A control arm,
   ``latent_noexp``, runs the trained composer with no experience in its context: what the
   latent tokens give without the memory.

Roles: the lookup agent has one role, the ``solver`` that searches and answers; the composer
reads the role name in its context (``ROLES`` can hold more), but only one role is exercised.

Writes ``config.json``, ``metrics.jsonl`` (per step: reward, success, loss, clip_frac,
grad_norm, bank size, seconds), ``curves.png``, ``checkpoints/`` (composer and optimizer),
``final/composer.safetensors``, ``bank/`` (the experience bank at the end) and ``eval.json``.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import torch

from ..data import ByteTokenizer
from ..rl import runs
from ..rl.evaluate import TaskEnv, prompt_ids, summarize, task_sampling
from ..rl.rollout import RolloutEngine, collate
from .bank import Entry, ExperienceBank, load_encoder
from .composer import LatentAgent, MemoryComposer
from .lmpo import composer_grads_only, lmpo_advantages, lmpo_loss

N_LATENT = 1  # latent tokens; the frozen SFT agent tolerates few extra positions (composer.py)
TOP_K = 1
BANK_FILL = 256
ROLES = ("solver",)
ARMS = ("none", "text", "latentmem", "latent_noexp")


def transcript(example, rollout, tok: ByteTokenizer) -> str:
    """The raw episode: the question, then every line the model and the tool wrote."""
    return example.prompt + tok.decode(rollout.tokens)


def composer_context(role: str, experience: list[str], example, tok: ByteTokenizer) -> list[int]:
    text = f"role: {role}\n" + "".join(f"experience:\n{e}" for e in experience) + f"task:\n{example.prompt}"
    return tok.encode(text, bos=True)


class LatentMemRun:
    """The agent, composer, bank and settings of one run (``cfg``: an ``RLConfig``)."""

    def __init__(self, cfg, init: str, embed, n_latent: int = N_LATENT):
        from hysparse_kernels.models import load_pretrained
        from ..rl.tasks import get_task

        self.cfg = cfg
        self.tok = ByteTokenizer()
        self.task = get_task(cfg.task, cfg.task_seed)
        agent = load_pretrained(init).eval()
        self.agent = LatentAgent(agent, n_latent)
        torch.manual_seed(cfg.seed)
        self.composer = MemoryComposer(load_pretrained(init), agent.graph.hidden, n_latent, seed=cfg.seed)
        composer_grads_only(self.composer, agent)
        self.optimizer = torch.optim.AdamW(self.composer.parameters(), lr=cfg.lr, weight_decay=0.0)
        self.algo = cfg.algo(max_response_len=self.task.max_new_tokens)
        self.generator = torch.Generator().manual_seed(cfg.seed)
        self.bank = ExperienceBank(embed)
        self.train_examples = self.task.examples("train")

    def engine(self, model, temperature: float) -> RolloutEngine:
        return RolloutEngine(model, self.tok, task_sampling(self.task, temperature))

    def fill_bank(self, n: int) -> dict:
        picks = torch.randint(0, len(self.train_examples), (n,), generator=self.generator).tolist()
        examples = [self.train_examples[i] for i in picks]
        rollouts, _ = self.engine(self.agent.agent, 1.0).generate([prompt_ids(e, self.tok) for e in examples],
                                                                TaskEnv(self.task, examples), self.generator)
        verdicts = [self.task.verify(e, self.tok.decode(r.tokens)) for e, r in zip(examples, rollouts)]
        self.bank.add([Entry(e.prompt.strip(), transcript(e, r, self.tok), v.success)
                       for e, r, v in zip(examples, rollouts, verdicts)])
        return {"bank_fill": n, "bank_fill_success": sum(v.success for v in verdicts) / n}

    def experience(self, example, *, exclude_self: bool) -> list[str]:
        hits = self.bank.retrieve(example.prompt.strip(), TOP_K, exclude_key=example.prompt.strip() if exclude_self else None)
        return [e.trajectory for e, _ in hits]

    def latent(self, examples, experiences, role: str = "solver"):
        """Latent memory ``[len(examples), P, D_a]`` (with the composer's gradient)."""
        return self.composer([composer_context(role, x, e, self.tok) for e, x in zip(examples, experiences)])

    # ------------------------------------------------------------------ LMPO step

    def step(self, step: int) -> dict:
        cfg, G = self.cfg, self.cfg.group_size
        t0 = time.perf_counter()
        picks = torch.randint(0, len(self.train_examples), (cfg.prompts_per_step,), generator=self.generator).tolist()
        tasks = [self.train_examples[i] for i in picks]
        exps = [self.experience(e, exclude_self=True) for e in tasks]
        prompts = [self.agent.prompt(prompt_ids(e, self.tok)) for e in tasks]
        with torch.no_grad():
            self.agent.set_memory(prompts, self.latent(tasks, exps))
        reps = [e for e in tasks for _ in range(G)]
        rollouts, _ = self.engine(self.agent, cfg.temperature).generate(
            [p for p in prompts for _ in range(G)], TaskEnv(self.task, reps), self.generator)
        verdicts = [self.task.verify(e, self.tok.decode(r.tokens)) for e, r in zip(reps, rollouts)]
        t_roll = time.perf_counter() - t0
        batch = collate(rollouts, self.tok.pad)
        groups = torch.arange(len(rollouts)) // G
        scores = torch.tensor([v.reward for v in verdicts], dtype=torch.float64)
        adv = lmpo_advantages(scores, groups, batch["response_mask"], self.algo)
        sums: dict[str, float] = {}
        order = torch.randperm(len(rollouts), generator=self.generator)
        parts = [p for p in order.chunk(cfg.minibatches) if len(p)]
        self.composer.train()
        for idx in parts:
            mb = {k: v[idx] for k, v in batch.items()}
            lat = self.latent(tasks, exps)[groups[idx]]  # [n, P, D_a]
            logp = self.agent.response_logprobs(lat, mb, cfg.temperature)
            loss, m = lmpo_loss(logp, mb["old_logprobs"], adv[idx], mb["response_mask"], self.algo)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            gn = torch.nn.utils.clip_grad_norm_(self.composer.parameters(), cfg.grad_clip)
            for group in self.optimizer.param_groups:
                group["lr"] = cfg.lr * min(1.0, (step + 1) / max(1, cfg.warmup))
            self.optimizer.step()
            for k, v in {**m, "loss": loss.detach(), "grad_norm": gn}.items():
                sums[k] = sums.get(k, 0.0) + float(v) / len(parts)
        self.bank.add([Entry(e.prompt.strip(), transcript(e, r, self.tok), v.success)
                       for e, r, v in zip(reps, rollouts, verdicts)])
        n = len(verdicts)
        return {"reward": float(scores.mean()), "success": sum(v.success for v in verdicts) / n,
                "zero_var_groups": float((scores.view(-1, G).std(-1) == 0).double().mean()),
                "response_len": sum(r.num_model_tokens for r in rollouts) / n, "bank_size": len(self.bank),
                **sums, "t_rollout": t_roll, "t_step": time.perf_counter() - t0}

    # ------------------------------------------------------------------ evaluation

    @torch.no_grad()
    def evaluate_arm(self, arm: str, examples) -> dict:
        """Success (sampled and greedy) and prompt tokens of one arm on ``examples``."""
        cfg = self.cfg
        if arm not in ARMS:
            raise ValueError(f"arm: expected one of {ARMS}, got {arm!r}")
        exps = [[] if arm == "latent_noexp" else self.experience(e, exclude_self=False) for e in examples]
        if arm == "none":  # latent_noexp: the trained composer given no experience (a control)
            prompts, model = [prompt_ids(e, self.tok) for e in examples], self.agent.agent
        elif arm == "text":
            prompts = [self.tok.encode("".join(x) + e.prompt, bos=True) for e, x in zip(examples, exps)]
            model = self.agent.agent
        else:
            self.composer.eval()
            prompts = [self.agent.prompt(prompt_ids(e, self.tok)) for e in examples]
            self.agent.set_memory(prompts, self.latent(examples, exps))
            model = self.agent
        out = {"prompt_tokens": sum(len(p) for p in prompts) / len(prompts)}
        for name, temp, reps in (("sampled", 1.0, cfg.eval_samples), ("greedy", 0.0, 1)):
            gen = torch.Generator().manual_seed(1234)
            rows = [e for e in examples for _ in range(reps)]
            rollouts, _ = self.engine(model, temp).generate([p for p in prompts for _ in range(reps)],
                                                            TaskEnv(self.task, rows), gen)
            verdicts = [self.task.verify(e, self.tok.decode(r.tokens)) for e, r in zip(rows, rollouts)]
            s = summarize(verdicts, rollouts, rows)
            if name == "sampled":
                out.update(s)
            else:
                out.update({f"{k}_greedy": v for k, v in s.items() if k in ("success", "rate_abstain", "rate_wrong")})
        out.update({"n": len(examples), "samples": cfg.eval_samples})
        return out

    def evaluate(self, arms=ARMS) -> dict:
        examples = self.task.examples(self.cfg.eval_split, self.cfg.eval_n)
        return {arm: self.evaluate_arm(arm, examples) for arm in arms}


def run(args, recipe, cfg, *, n_latent: int = N_LATENT) -> dict:
    """The recipe's ``run``: see the module docstring. Returns a summary."""
    from ..rl.trainer import resolve_init

    if args.resume:
        raise ValueError("--resume: recipe 'latentmem' does not resume yet; start a fresh --out")
    try:
        embed = load_encoder()
    except ImportError as e:  # one line from the CLI, saying what to install
        raise ValueError(f"recipe latentmem: {e}") from None
    out = Path(args.out)
    init = resolve_init(cfg, progress=not args.no_progress)
    config = {**dataclasses.asdict(cfg), "init": str(init), "n_latent": n_latent, "top_k": TOP_K,
              "bank_fill": BANK_FILL, "roles": list(ROLES), "encoder": embed.name}
    runs.prepare_out(out, False, config)
    out.mkdir(parents=True, exist_ok=True)
    runs.write_json(out / "config.json", config)
    r = LatentMemRun(cfg, init, embed, n_latent)
    fill = r.fill_bank(BANK_FILL)
    before = r.evaluate(("latentmem",))["latentmem"]
    report = {"recipe": recipe.name, "task": cfg.task, "metric": "success", "before": before, "after": None,
              "n_eval": cfg.eval_n, "split": cfg.eval_split, "init": str(init), **fill}
    runs.write_json(out / "eval.json", report)
    metrics_path = out / "metrics.jsonl"
    metrics_path.unlink(missing_ok=True)
    bar = runs.progress_bar(cfg.steps, 0, f"{recipe.name} {cfg.task}", not args.no_progress)
    for step in range(cfg.steps):
        m = r.step(step)
        runs.append_metrics(metrics_path, {"step": step, **m})
        if bar is not None:
            bar.update(1)
            bar.set_postfix(reward=f"{m['reward']:.2f}")
        if (step + 1) % cfg.checkpoint_every == 0 or step + 1 == cfg.steps:
            save_checkpoint(out, step + 1, r, config)
    if bar is not None:
        bar.close()
    arms = r.evaluate()
    report["after"] = arms["latentmem"]
    report["arms"] = arms
    from safetensors.torch import save_file
    from hysparse_kernels.models.files import replace_directory

    replace_directory(out / "final", lambda tmp: save_file(_state(r.composer), str(tmp / "composer.safetensors")))
    r.bank.save(out / "bank")
    runs.write_json(out / "eval.json", report)
    runs.plot_curves(metrics_path, out / "curves.png", ["reward", "success", "loss", "clip_frac", "grad_norm",
                                                         "zero_var_groups", "response_len", "bank_size"],
                     title=f"{recipe.name} on {cfg.task}")
    return {arm: {"success": a["success"], "success_greedy": a["success_greedy"], "prompt_tokens": a["prompt_tokens"]}
            for arm, a in arms.items()} | {"before_latentmem": before["success"], "out": str(out)}


def _state(module) -> dict:
    return {k: v.detach().contiguous().clone() for k, v in module.state_dict().items()}


def save_checkpoint(out: Path, step: int, r: LatentMemRun, config: dict) -> Path:
    """``out/checkpoints/step-NNNNNN/``: ``composer.safetensors``, ``optimizer.pt`` (state and
    generator) and ``trainer.json``, written whole or not at all; ``latest`` names it."""
    import json

    from safetensors.torch import save_file
    from hysparse_kernels.models.files import replace_directory
    from ..checkpoint import point_latest

    final = out / "checkpoints" / f"step-{step:06d}"

    def write(tmp: Path) -> None:
        save_file(_state(r.composer), str(tmp / "composer.safetensors"))
        torch.save({"optimizer": r.optimizer.state_dict(), "generator": r.generator.get_state()}, tmp / "optimizer.pt")
        (tmp / "trainer.json").write_text(json.dumps({"step": step, "recipe": config["recipe"], "bank_size": len(r.bank),
                                                      "config": config}, indent=2))

    replace_directory(final, write)
    point_latest(final)
    return final
