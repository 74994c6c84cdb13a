"""Dr. GRPO (Liu et al., 2025, "Understanding R1-Zero-like training"): GRPO without its two
normalisation biases.

    A_i  = r_i - mean(r)                                       (no division by std(r))
    J(θ) = 1/(G · L_max) Σ_i Σ_t min(ρ_i,t A_i, clip(ρ_i,t, 1-ε, 1+ε) A_i)

Departures from GRPO: the group std no longer rescales advantages (questions that are too easy
or too hard are not up-weighted), and the per-response ``1/|o_i|`` becomes a constant
``1/L_max`` (``seq-mean-token-sum-norm``), so long wrong answers are not penalised less per
token than short ones. No KL term.
"""

from . import Recipe, register_recipe

RECIPE = register_recipe(Recipe(
    name="dr_grpo",
    summary="Dr. GRPO: r - mean advantages (no std), seq-mean-token-sum-norm (1/(G L_max)), no KL",
    overrides=dict(advantage="dr_grpo", loss="ppo_clip", aggregation="seq-mean-token-sum-norm", eps_low=0.2,
                   eps_high=0.2, kl_coef=0.0),
    module=__name__,
))
