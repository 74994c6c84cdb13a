"""Episodes of the planner/solver team (``roles``) with memory in either agent's prompt.

``Team(planner, solver, task, n_latent)`` holds the two frozen agents, each wrapped in a
``composer.LatentAgent`` with ``n_latent`` slots. ``Team.episodes(examples, mode, ...)`` runs
``reps`` episodes per example:

1. the planner rolls out one line from its prompt (``reps`` samples per example);
2. the solver's prompt is the question plus that line (``roles.role_prompt``), and it rolls out
   with the ``search`` tool;
3. the solver's answer is judged (``task.verify``): the team's reward.

``mode`` is the memory both roles get: ``none``; ``text`` (``texts[role][i]``, a transcript pasted
before example ``i``'s prompt); ``latent`` (``latents[role]`` ``[B, P, D]``, placed in the slots).
A :class:`TeamEpisodes` keeps the rollouts of both roles (what LMPO scores), the plans, the
verdicts and every prompt's length (a latent slot counts as one token).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..data import ByteTokenizer
from ..rl.evaluate import TaskEnv, task_sampling
from ..rl.rollout import Rollout, RolloutEngine, SamplingParams
from ..rl.tasks import Example, Task, Verdict
from .composer import LatentAgent
from .roles import ROLES, role_prompt, team_transcript

MODES = ("none", "text", "latent")
PLAN_TOKENS = 48  # the planner's line: "plan: Tari friend; ? boss; ? mentor\n" is 37 bytes


@dataclass
class TeamEpisodes:
    """``reps`` episodes per example, row ``i`` answering ``examples[i // reps]``."""

    examples: list[Example]  # one per episode (repeated)
    plans: list[str]
    rollouts: dict[str, list[Rollout]]  # role -> one rollout per episode
    verdicts: list[Verdict]
    prompt_tokens: dict[str, list[int]]  # role -> prompt length per episode

    @property
    def rewards(self) -> Tensor:
        return torch.tensor([v.reward for v in self.verdicts], dtype=torch.float64)

    def transcripts(self, tok: ByteTokenizer) -> list[str]:
        return [team_transcript(e, p, tok.decode(r.tokens))
                for e, p, r in zip(self.examples, self.plans, self.rollouts["solver"])]


def first_line(text: str) -> str:
    """The planner's line as the solver reads it: up to and with the first newline."""
    head = text.split("\n", 1)[0]
    return head + "\n"


class Team:
    """The planner and the solver (frozen ``HybridLM``s) with ``n_latent`` latent slots each."""

    def __init__(self, planner, solver, task: Task, n_latent: int):
        self.task = task
        self.tok = ByteTokenizer()
        self.agents = {"planner": LatentAgent(planner.eval(), n_latent), "solver": LatentAgent(solver.eval(), n_latent)}
        self.n_latent = n_latent

    def prompts(self, role: str, examples: list[Example], mode: str, texts: list[str] | None = None,
                plans: list[str] | None = None) -> list[list[int]]:
        """Token prompts of ``role`` for ``examples`` in ``mode`` (latent slots included)."""
        out = []
        for i, e in enumerate(examples):
            text = role_prompt(role, e, None if plans is None else plans[i], texts[i] if mode == "text" else None)
            ids = self.tok.encode(text, bos=True)
            out.append(self.agents[role].prompt(ids) if mode == "latent" else ids)
        return out

    def _model(self, role: str, mode: str):
        return self.agents[role] if mode == "latent" else self.agents[role].agent

    @torch.no_grad()
    def episodes(self, examples: list[Example], mode: str, *, reps: int, temperature: float,
                 generator: torch.Generator, texts: dict[str, list[str]] | None = None,
                 latents: dict[str, Tensor] | None = None) -> TeamEpisodes:
        """``reps`` team episodes per example (see the module docstring)."""
        if mode not in MODES:
            raise ValueError(f"mode: expected one of {MODES}, got {mode!r}")
        if mode == "text" and (texts is None or any(len(texts.get(r, [])) != len(examples) for r in ROLES)):
            raise ValueError("texts: mode 'text' needs one memory text per example for every role")
        if mode == "latent" and (latents is None or any(r not in latents for r in ROLES)):
            raise ValueError(f"latents: mode 'latent' needs a latent memory [B, P, D] for every role {ROLES}")
        rows = [e for e in examples for _ in range(reps)]
        rep_texts = {r: [t for t in texts[r] for _ in range(reps)] for r in ROLES} if mode == "text" else {}
        # planner
        p_prompts = self.prompts("planner", rows, mode, rep_texts.get("planner"))
        if mode == "latent":
            self.agents["planner"].set_memory(p_prompts, latents["planner"].repeat_interleave(reps, 0))
        params = SamplingParams(temperature=temperature, max_new_tokens=PLAN_TOKENS, max_total_tokens=PLAN_TOKENS,
                                stop=("\n",), max_turns=1)
        p_roll, _ = RolloutEngine(self._model("planner", mode), self.tok, params).generate(p_prompts, None, generator)
        plans = [first_line(self.tok.decode(r.tokens)) for r in p_roll]
        # solver
        s_prompts = self.prompts("solver", rows, mode, rep_texts.get("solver"), plans)
        if mode == "latent":
            self.agents["solver"].set_memory(s_prompts, latents["solver"].repeat_interleave(reps, 0))
        engine = RolloutEngine(self._model("solver", mode), self.tok, task_sampling(self.task, temperature))
        s_roll, _ = engine.generate(s_prompts, TaskEnv(self.task, rows), generator)
        verdicts = [self.task.verify(e, self.tok.decode(r.tokens)) for e, r in zip(rows, s_roll)]
        return TeamEpisodes(rows, plans, {"planner": p_roll, "solver": s_roll}, verdicts,
                            {"planner": [len(p) for p in p_prompts], "solver": [len(p) for p in s_prompts]})
