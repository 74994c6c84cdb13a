"""TAME: test-time evolution of a frozen agent with an executor memory and an evaluator memory.

Each episode of a stream of benign tasks and trust probes (``training.memory.trust_bench``):

    J(θ) = E_t[ b_t ],   θ = (executor memory, evaluator memory),   b_t in {0, 1}: utility on a task, safety on a probe
    s*  = argmax_s V_exec(s | x)          over experiences kept by the evaluator filter   (draft)
    v*  = argmax_v V_eval(v | d(s*, x))   v in {accept, abstain, refuse}                   (refinement)
    V(a | key) = (sum_i w_i q_i [a_i = a] + m p) / (sum_i w_i [a_i = a] + m),   w_i = exp((cos_i - 1) / tau)
    q_i <- q_i + alpha (b - q_i)   for the experiences used (executor: task bits only; evaluator: every bit)

(epsilon-greedy exploration). Departure from GRPO: no gradient and no weight moves; the agent is
the frozen SFT warm start and what learns is two memories of scored decisions. ``steps`` is the
number of episodes in the stream, ``group_size`` the sampled attempts per item besides the greedy
one. Baselines on the same stream and attempts: no memory; one evolving memory learning from task
outcomes (the misevolution baseline); the same fed every bit (an ablation). Implementation
in ``training.memory.tame`` and ``training.memory.tame_run``.
"""

from __future__ import annotations

from . import Recipe, register_recipe


def run(args, recipe, cfg) -> dict:
    from ...memory.tame_run import run as run_tame

    return run_tame(args, recipe, cfg)


RECIPE = register_recipe(Recipe(
    name="tame",
    summary="dual executor/evaluator memory evolving at test time on a stream of tasks and trust probes",
    overrides=dict(steps=600, group_size=4),
    quick=dict(steps=300),
    tasks=("lookup",),
    run=run,
    module=__name__,
))
