"""``hysparse recipe run latentmem``: LatentMem for a planner/solver team on the lookup task.

1. The team (``roles``, ``team``): a **planner** that writes the question's hops as one line and a
   **solver** that reads the question and that line, calls ``search`` and answers; two zoo models,
   each from its own SFT warm start (``roles.cached_role``; trained with text memory and with
   noisy latent slots in some prompts, so both memory forms are formats it knows), both frozen.
   The experience bank is filled with the team's own episodes (no memory, temperature 1) on
   ``BANK_FILL`` training questions: raw team transcripts with their success.
2. LMPO (``lmpo``) trains the composer (a trainable copy of the solver's weights, ``N_LATENT``
   query vectors, a projection) for ``steps`` steps of ``prompts_per_step`` tasks x
   ``group_size`` team episodes. Each task retrieves its ``TOP_K`` most similar successful
   episode(s) (its own excluded) and the composer reads ``role: <role>``, the experience and the
   task once per role: the same experience composes into one latent memory per role. The team's
   reward (the solver's answer) gives group-relative advantages to both roles' tokens; the
   clipped-ratio loss, averaged over the two roles, reaches only the composer. The episodes of
   each step join the bank.
3. On the first ``eval_n`` questions of ``eval_split`` (held-out by default), with the same bank:
   ``none``; ``text`` (the retrieved transcript pasted before each role's prompt); ``latentmem``
   (each role's latent memory in its slots); two controls: ``latent_swap`` (the planner gets the
   solver's latent memory and the solver the planner's) and ``latent_noexp`` (the trained composer
   given no experience). Each is sampled ``eval_samples`` times at temperature 1 and greedily once;
   success, the planner's exact-plan rate and prompt tokens per role are reported. ``latentmem`` is
   also measured with the untrained composer (``before``). ``latent_roles``: cosine between the
   planner's and the solver's latent memory for the same question, against the cosine between two
   questions' latent memories of the same role.

Writes ``config.json``, ``metrics.jsonl`` (per step: reward, success, plan_exact, loss,
clip_frac, grad_norm, bank size, seconds), ``curves.png``, ``checkpoints/`` (composer and
optimizer), ``final/composer.safetensors``, ``bank/`` (the experience bank at the end) and
``eval.json``.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import torch

from ..data import ByteTokenizer
from ..rl import runs
from ..rl.rollout import collate
from .bank import Entry, ExperienceBank, load_encoder
from .composer import MemoryComposer
from .lmpo import composer_grads_only, lmpo_advantages, lmpo_loss
from .roles import ROLES, RoleSFTConfig, cached_role, gold_plan
from .team import Team

N_LATENT = 4  # latent tokens per role (the warm starts saw 1..N_LATENT noisy slots)
TOP_K = 1
BANK_FILL = 256
ARMS = ("none", "text", "latentmem", "latent_swap", "latent_noexp")


def composer_context(role: str, experience: list[str], example, tok: ByteTokenizer) -> list[int]:
    """What the composer reads before its queries: the role, the experience, the task."""
    text = f"role: {role}\n" + "".join(f"experience:\n{e}" for e in experience) + f"task:\n{example.prompt}"
    return tok.encode(text, bos=True)


def role_sft_config(cfg, role: str) -> RoleSFTConfig:
    """The warm start of ``role`` for the RL settings ``cfg`` (an ``RLConfig``)."""
    return RoleSFTConfig(role=role, task=cfg.task, task_seed=cfg.task_seed, model=cfg.model,
                         steps=cfg.sft_steps, max_slots=N_LATENT)


def role_inits(cfg, progress: bool = True) -> dict[str, str]:
    """Checkpoint per role: ``init_from/<role>`` when ``init_from`` is set, else the cached warm
    starts (trained on first use)."""
    if cfg.init_from:
        root = Path(cfg.init_from)
        missing = [r for r in ROLES if not (root / r / "config.json").exists()]
        if missing:
            raise ValueError(f"--init-from: expected a directory with a checkpoint per role ({', '.join(ROLES)}: "
                             f"<dir>/<role>/config.json), got {str(root)!r} without {', '.join(missing)}")
        return {r: str(root / r) for r in ROLES}
    return {r: str(cached_role(role_sft_config(cfg, r), progress=progress)) for r in ROLES}


def _cos(a, b) -> torch.Tensor:
    return torch.nn.functional.cosine_similarity(a.flatten(1).double(), b.flatten(1).double(), dim=-1, eps=1e-12)


class LatentMemRun:
    """The team, composer, bank and settings of one run (``cfg``: an ``RLConfig``)."""

    def __init__(self, cfg, inits: dict[str, str], embed, n_latent: int = N_LATENT):
        from hysparse_kernels.models import load_pretrained
        from ..rl.tasks import get_task

        self.cfg = cfg
        self.tok = ByteTokenizer()
        self.task = get_task(cfg.task, cfg.task_seed)
        self.team = Team(load_pretrained(inits["planner"]), load_pretrained(inits["solver"]), self.task, n_latent)
        hidden = {r: a.graph.hidden for r, a in self.team.agents.items()}
        if len(set(hidden.values())) != 1:
            raise ValueError(f"inits: the roles' models need one hidden size for one composer, got {hidden}")
        torch.manual_seed(cfg.seed)
        self.composer = MemoryComposer(load_pretrained(inits["solver"]), hidden["solver"], n_latent, seed=cfg.seed)
        for agent in self.team.agents.values():
            composer_grads_only(self.composer, agent.agent)
        self.optimizer = torch.optim.AdamW(self.composer.parameters(), lr=cfg.lr, weight_decay=0.0)
        self.algo = cfg.algo(max_response_len=self.task.max_new_tokens)
        self.generator = torch.Generator().manual_seed(cfg.seed)
        self.bank = ExperienceBank(embed)
        self.train_examples = self.task.examples("train")

    def _entries(self, ep) -> list[Entry]:
        return [Entry(e.prompt.strip(), t, v.success) for e, t, v in zip(ep.examples, ep.transcripts(self.tok), ep.verdicts)]

    def fill_bank(self, n: int) -> dict:
        picks = torch.randint(0, len(self.train_examples), (n,), generator=self.generator).tolist()
        ep = self.team.episodes([self.train_examples[i] for i in picks], "none", reps=1, temperature=1.0,
                                generator=self.generator)
        self.bank.add(self._entries(ep))
        return {"bank_fill": n, "bank_fill_success": sum(v.success for v in ep.verdicts) / n}

    def experience(self, example, *, exclude_self: bool) -> list[str]:
        hits = self.bank.retrieve(example.prompt.strip(), TOP_K, exclude_key=example.prompt.strip() if exclude_self else None)
        return [e.trajectory for e, _ in hits]

    def latents(self, examples, experiences, roles=ROLES) -> dict:
        """Latent memory per role, ``role -> [len(examples), P, D_a]`` (with the composer's gradient)."""
        return {r: self.composer([composer_context(r, x, e, self.tok) for e, x in zip(examples, experiences)])
                for r in roles}

    # ------------------------------------------------------------------ LMPO step

    def step(self, step: int) -> dict:
        cfg, G = self.cfg, self.cfg.group_size
        t0 = time.perf_counter()
        picks = torch.randint(0, len(self.train_examples), (cfg.prompts_per_step,), generator=self.generator).tolist()
        tasks = [self.train_examples[i] for i in picks]
        exps = [self.experience(e, exclude_self=True) for e in tasks]
        self.composer.eval()
        with torch.no_grad():
            lat = self.latents(tasks, exps)
        ep = self.team.episodes(tasks, "latent", reps=G, temperature=cfg.temperature, generator=self.generator,
                                latents=lat)
        t_roll = time.perf_counter() - t0
        n = len(ep.verdicts)
        groups = torch.arange(n) // G
        scores = ep.rewards
        batches = {r: collate(ep.rollouts[r], self.tok.pad) for r in ROLES}
        adv = {r: lmpo_advantages(scores, groups, batches[r]["response_mask"], self.algo) for r in ROLES}
        sums: dict[str, float] = {}
        order = torch.randperm(n, generator=self.generator)
        parts = [p for p in order.chunk(cfg.minibatches) if len(p)]
        self.composer.train()
        for idx in parts:
            lat = self.latents(tasks, exps)
            losses, mets = [], {}
            for r in ROLES:
                mb = {k: v[idx] for k, v in batches[r].items()}
                logp = self.team.agents[r].response_logprobs(lat[r][groups[idx]], mb, cfg.temperature)
                loss_r, m = lmpo_loss(logp, mb["old_logprobs"], adv[r][idx], mb["response_mask"], self.algo)
                losses.append(loss_r)
                mets[f"clip_frac_{r}"] = m["clip_frac"]
            loss = torch.stack(losses).mean()
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            gn = torch.nn.utils.clip_grad_norm_(self.composer.parameters(), cfg.grad_clip)
            for group in self.optimizer.param_groups:
                group["lr"] = cfg.lr * min(1.0, (step + 1) / max(1, cfg.warmup))
            self.optimizer.step()
            for k, v in {**mets, "loss": loss.detach(), "grad_norm": gn}.items():
                sums[k] = sums.get(k, 0.0) + float(v) / len(parts)
        self.bank.add(self._entries(ep))
        return {"reward": float(scores.mean()), "success": sum(v.success for v in ep.verdicts) / n,
                "plan_exact": sum(p == gold_plan(e) for p, e in zip(ep.plans, ep.examples)) / n,
                "zero_var_groups": float((scores.view(-1, G).std(-1) == 0).double().mean()),
                "response_len": sum(r.num_model_tokens for r in ep.rollouts["solver"]) / n, "bank_size": len(self.bank),
                **sums, "t_rollout": t_roll, "t_step": time.perf_counter() - t0}

    # ------------------------------------------------------------------ evaluation

    @torch.no_grad()
    def arm_memory(self, arm: str, examples) -> dict:
        """``mode``, ``texts`` and ``latents`` of ``Team.episodes`` for an arm."""
        if arm not in ARMS:
            raise ValueError(f"arm: expected one of {ARMS}, got {arm!r}")
        if arm == "none":
            return {"mode": "none"}
        exps = [[] if arm == "latent_noexp" else self.experience(e, exclude_self=False) for e in examples]
        if arm == "text":
            return {"mode": "text", "texts": {r: ["".join(x) for x in exps] for r in ROLES}}
        self.composer.eval()
        lat = self.latents(examples, exps)
        if arm == "latent_swap":
            lat = {"planner": lat["solver"], "solver": lat["planner"]}
        return {"mode": "latent", "latents": lat}

    @torch.no_grad()
    def evaluate_arm(self, arm: str, examples) -> dict:
        """Team success (sampled and greedy), the planner's exact-plan rate and prompt tokens per
        role of one arm on ``examples``."""
        from ..rl.evaluate import summarize

        memory = self.arm_memory(arm, examples)
        out: dict = {}
        for name, temp, reps in (("sampled", 1.0, self.cfg.eval_samples), ("greedy", 0.0, 1)):
            ep = self.team.episodes(examples, reps=reps, temperature=temp, generator=torch.Generator().manual_seed(1234),
                                    **memory)
            s = summarize(ep.verdicts, ep.rollouts["solver"], ep.examples)
            s["plan_exact"] = sum(p == gold_plan(e) for p, e in zip(ep.plans, ep.examples)) / len(ep.plans)
            if name == "sampled":
                out.update(s)
                for r in ROLES:
                    out[f"prompt_tokens_{r}"] = sum(ep.prompt_tokens[r]) / len(ep.prompt_tokens[r])
                out["prompt_tokens"] = sum(out[f"prompt_tokens_{r}"] for r in ROLES)
            else:
                out.update({f"{k}_greedy": v for k, v in s.items()
                            if k in ("success", "rate_abstain", "rate_wrong", "plan_exact")})
        out.update({"n": len(examples), "samples": self.cfg.eval_samples})
        return out

    @torch.no_grad()
    def latent_roles(self, examples) -> dict:
        """Whether the latent memories differ by role: mean cosine between the planner's and the
        solver's latent memory of the same question (flattened ``[P * D]``), against the mean cosine
        between consecutive questions' latent memories of one role; and their mean norms."""
        exps = [self.experience(e, exclude_self=False) for e in examples]
        self.composer.eval()
        lat = self.latents(examples, exps)
        p, s = lat["planner"], lat["solver"]
        out = {"cos_planner_solver": float(_cos(p, s).mean())}
        if len(examples) > 1:
            out["cos_same_role_other_question"] = float(torch.cat([_cos(p[:-1], p[1:]), _cos(s[:-1], s[1:])]).mean())
        out.update({f"norm_{r}": float(lat[r].flatten(1).norm(dim=-1).mean()) for r in ROLES})
        out["rel_diff_planner_solver"] = float(((p - s).flatten(1).norm(dim=-1)
                                                / ((p.flatten(1).norm(dim=-1) + s.flatten(1).norm(dim=-1)) / 2).clamp(min=1e-12)).mean())
        return out

    def evaluate(self, arms=ARMS) -> dict:
        examples = self.task.examples(self.cfg.eval_split, self.cfg.eval_n)
        return {arm: self.evaluate_arm(arm, examples) for arm in arms}


def run(args, recipe, cfg, *, n_latent: int = N_LATENT) -> dict:
    """The recipe's ``run``: see the module docstring. Returns a summary."""
    if args.resume:
        raise ValueError("--resume: recipe 'latentmem' does not resume yet; start a fresh --out")
    try:
        embed = load_encoder()
    except ImportError as e:  # one line from the CLI, saying what to install
        raise ValueError(f"recipe latentmem: {e}") from None
    out = Path(args.out)
    inits = role_inits(cfg, progress=not args.no_progress)
    config = {**dataclasses.asdict(cfg), "inits": inits, "n_latent": n_latent, "top_k": TOP_K,
              "bank_fill": BANK_FILL, "roles": list(ROLES), "encoder": embed.name}
    runs.prepare_out(out, False, config)
    out.mkdir(parents=True, exist_ok=True)
    runs.write_json(out / "config.json", config)
    r = LatentMemRun(cfg, inits, embed, n_latent)
    fill = r.fill_bank(BANK_FILL)
    before = r.evaluate(("latentmem",))["latentmem"]
    report = {"recipe": recipe.name, "task": cfg.task, "metric": "success", "before": before, "after": None,
              "n_eval": cfg.eval_n, "split": cfg.eval_split, "inits": inits, "roles": list(ROLES), **fill}
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
    report["latent_roles"] = r.latent_roles(r.task.examples(cfg.eval_split, cfg.eval_n))
    from safetensors.torch import save_file
    from hysparse_kernels.models.files import replace_directory

    replace_directory(out / "final", lambda tmp: save_file(_state(r.composer), str(tmp / "composer.safetensors")))
    r.bank.save(out / "bank")
    runs.write_json(out / "eval.json", report)
    runs.plot_curves(metrics_path, out / "curves.png", ["reward", "success", "plan_exact", "loss", "clip_frac_planner",
                                                         "clip_frac_solver", "grad_norm", "zero_var_groups", "bank_size"],
                     title=f"{recipe.name} on {cfg.task}")
    return {arm: {"success": a["success"], "success_greedy": a["success_greedy"], "prompt_tokens": a["prompt_tokens"]}
            for arm, a in arms.items()} | {"before_latentmem": before["success"], "latent_roles": report["latent_roles"],
                                           "out": str(out)}


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
