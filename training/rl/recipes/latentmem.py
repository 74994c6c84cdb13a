"""LatentMem: a team of frozen agents (planner, solver) reads latent memory composed per role from
retrieved experience.

    m_role = W · h_L(C_θ; [role, experience, task, q_1..q_P])[q positions]   (P latent tokens per role)
    π_role(o | m_role, x) = π_agent(role)(o | [m_role; x])                    (agents frozen)
    L(θ) = mean_i mean_t max(-A_i ρ_{i,t}, -A_i clip(ρ_{i,t}, 1-ε, 1+ε)),  A_i = (r_i - mean) / (std + ε)

Departure from GRPO: the policy's weights do not move; the group-relative clipped-ratio loss on
both agents' tokens (one team reward per episode) trains only the memory composer's parameters ``θ`` (backbone copy, queries ``q``, projection
``W``) through the latent tokens (LMPO).
Implementation in ``training.memory`` (experience bank, composer, LMPO, baselines).
"""

from __future__ import annotations

from . import Recipe, register_recipe


def run(args, recipe, cfg) -> dict:
    from ...memory.latentmem import run as run_latentmem

    return run_latentmem(args, recipe, cfg)


RECIPE = register_recipe(Recipe(
    name="latentmem",
    summary="latent memory per role composed from an experience bank for a frozen planner/solver team, composer trained by LMPO",
    overrides=dict(steps=60, prompts_per_step=4, group_size=8, lr=1e-4, warmup=3, minibatches=2, eval_n=200,
                   eval_samples=2, checkpoint_every=10),
    quick=dict(steps=20, eval_n=100, eval_samples=2, checkpoint_every=10),
    tasks=("lookup",),
    run=run,
    module=__name__,
))
