"""GRPO (Shao et al., 2024, DeepSeekMath): group-relative advantages, clipped ratio, KL to the
start policy.

For each prompt, G rollouts ``o_i`` with outcome rewards ``r_i``:

    A_i   = (r_i - mean(r)) / (std(r) + eps)                       (every model token of o_i)
    ρ_i,t = π_θ(o_i,t | ·) / π_old(o_i,t | ·)
    J(θ)  = 1/G Σ_i 1/|o_i| Σ_t [ min(ρ A_i, clip(ρ, 1-ε, 1+ε) A_i) - β KL_t ]
    KL_t  = π_ref/π_θ - log(π_ref/π_θ) - 1                         (k3 estimator)

ε = 0.2, β = 0.04 (the paper's). This is the reference point the other recipes depart from.

``--quick`` takes 32 prompts per step (x 8 rollouts) instead of the other recipes' 16: chosen on
the dev split over 16 prompts, 16 prompts x 16 rollouts and 4 minibatches (bench/RESULTS_rl.md).
The recipe comparisons in bench/recipes_compare.py run their grpo arm with 16 prompts per step,
like the recipe it is compared with.
"""

from . import Recipe, register_recipe

RECIPE = register_recipe(Recipe(
    name="grpo",
    summary="GRPO: (r - mean) / std group advantages, PPO clip 0.2, seq-mean-token-mean, k3 KL (beta 0.04)",
    overrides=dict(advantage="grpo", loss="ppo_clip", aggregation="seq-mean-token-mean", eps_low=0.2, eps_high=0.2,
                   kl_coef=0.04),
    quick=dict(prompts_per_step=32),
    tasks=("lookup", "arith", "arith30", "mixed", "toolmix"),
    module=__name__,
))
