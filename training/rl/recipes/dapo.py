"""DAPO (Yu et al., 2025): GRPO without KL, with clip-higher, token-level loss, dynamic sampling
and a soft overlong penalty.

    A_i  = (r_i - mean(r)) / (std(r) + eps)
    J(θ) = 1/Σ_i|o_i| Σ_i Σ_t min(ρ_i,t A_i, clip(ρ_i,t, 1-ε_low, 1+ε_high) A_i)
    s.t. 0 < #{correct in the group} < G                       (dynamic sampling)
    r_i += min(0, -(|o_i| - (L_max - L_buf)) / L_buf)          (soft overlong penalty, >= -1)

Departures from GRPO: ε_high = 0.28 > ε_low = 0.2 (clip-higher, against entropy collapse);
token-mean aggregation (long responses weigh by their tokens); no KL term; groups whose
rollouts all succeed or all fail are dropped and more prompts are sampled (up to
``max_sampling_rounds`` generation rounds per step); responses entering the last ``L_buf``
tokens of the length budget are penalised linearly.
"""

from . import Recipe, register_recipe

RECIPE = register_recipe(Recipe(
    name="dapo",
    summary="DAPO: clip-higher (0.2/0.28), token-mean loss, no KL, dynamic sampling, soft overlong penalty",
    overrides=dict(advantage="grpo", loss="ppo_clip", aggregation="token-mean", eps_low=0.2, eps_high=0.28, kl_coef=0.0,
                   dynamic_sampling=True, max_sampling_rounds=3, overlong_buffer=16, overlong_factor=1.0),
    module=__name__,
))
