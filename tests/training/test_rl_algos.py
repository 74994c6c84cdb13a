"""Advantage estimators, policy losses, aggregation, KL, DAPO pieces: each against numbers
worked out by hand in the test (not by running the same code again)."""

import math

import pytest
import torch

from hysparse_kernels.training.rl import algos
from hysparse_kernels.training.rl.algos import AdvantageInput, AlgoConfig

# Six rollouts: group 0 has four (rewards 1, 0, 0, 1), group 1 two (1, 1).
# Model-token counts 2, 1, 3, 2, 1, 1; rewards are split over tokens to show the estimators sum
# the per-token inputs (row 0: 0.25 + 0.75).
MASK = torch.tensor([[1, 1, 0], [1, 0, 0], [1, 1, 1], [1, 1, 0], [1, 0, 0], [1, 0, 0]], dtype=torch.float64)
TOKEN_REWARDS = torch.tensor([[0.25, 0.75, 0], [0, 0, 0], [0, 0, 0], [0, 1, 0], [1, 0, 0], [1, 0, 0]], dtype=torch.float64)
GROUP = torch.tensor([0, 0, 0, 0, 1, 1])


def inp():
    return AdvantageInput(TOKEN_REWARDS.clone(), MASK.clone(), GROUP.clone())


def per_row(values):
    return torch.tensor(values, dtype=torch.float64)[:, None] * MASK


def test_grpo_advantage_by_hand():
    # group 0: mean 0.5, unbiased std sqrt((4 * 0.25) / 3) = 0.5773503; group 1: std 0 -> A = 0
    a = 0.5 / (math.sqrt(1 / 3) + 1e-6)
    got = algos.get_advantage("grpo")(inp(), AlgoConfig())
    torch.testing.assert_close(got, per_row([a, -a, -a, a, 0, 0]), rtol=0, atol=1e-12)


def test_dr_grpo_advantage_by_hand():
    got = algos.get_advantage("dr_grpo")(inp(), AlgoConfig())
    torch.testing.assert_close(got, per_row([0.5, -0.5, -0.5, 0.5, 0, 0]), rtol=0, atol=1e-12)


def test_rloo_advantage_by_hand():
    # row 0: 1 - (0 + 0 + 1) / 3 = 2/3; row 1: 0 - (1 + 0 + 1) / 3 = -2/3; group 1: 1 - 1 = 0
    got = algos.get_advantage("rloo")(inp(), AlgoConfig())
    torch.testing.assert_close(got, per_row([2 / 3, -2 / 3, -2 / 3, 2 / 3, 0, 0]), rtol=0, atol=1e-12)


def test_reinforce_pp_baseline_by_hand():
    # r - mean_g on tokens: 0.5 x2, -0.5 x1, -0.5 x3, 0.5 x2, 0, 0 -> 10 tokens, sum 0, mean 0,
    # unbiased variance (8 * 0.25) / 9 = 2/9 -> each nonzero token becomes +-0.5 / sqrt(2/9 + 1e-8)
    w = 0.5 / math.sqrt(2 / 9 + 1e-8)
    got = algos.get_advantage("reinforce_pp_baseline")(inp(), AlgoConfig())
    torch.testing.assert_close(got, per_row([w, -w, -w, w, 0, 0]), rtol=0, atol=1e-12)


def test_group_of_one_gets_zero_advantage():
    single = AdvantageInput(torch.tensor([[1.0]], dtype=torch.float64), torch.ones(1, 1, dtype=torch.float64), torch.tensor([7]))
    for name in ("grpo", "dr_grpo", "rloo"):
        assert float(algos.get_advantage(name)(single, AlgoConfig()).abs().sum()) == 0.0


def test_outcome_rewards_sit_on_the_last_model_token():
    mask = torch.tensor([[1, 1, 0, 1, 0], [0, 0, 0, 0, 0], [1, 0, 0, 0, 0]], dtype=torch.float64)
    got = algos.outcome_rewards(torch.tensor([2.0, 3.0, -1.0], dtype=torch.float64), mask)
    want = torch.tensor([[0, 0, 0, 2, 0], [0, 0, 0, 0, 0], [-1, 0, 0, 0, 0]], dtype=torch.float64)
    torch.testing.assert_close(got, want)


def _ratios(*r):
    return torch.log(torch.tensor([r], dtype=torch.float64)), torch.zeros(1, len(r), dtype=torch.float64)


def test_ppo_clip_by_hand_symmetric_asymmetric_and_dual():
    logp, old = _ratios(1.5, 0.5, 0.5, 4.0)
    adv = torch.tensor([[1.0, 1.0, -1.0, -1.0]], dtype=torch.float64)
    mask = torch.ones(1, 4, dtype=torch.float64)
    # eps 0.2: (1.5, A=+1): max(-1.5, -1.2) = -1.2 clipped; (0.5, +1): max(-0.5, -0.8) = -0.5;
    # (0.5, -1): max(0.5, 0.8) = 0.8 clipped; (4, -1): max(4, 1.2) = 4
    loss, m = algos.get_loss("ppo_clip")(logp, old, adv, mask, AlgoConfig())
    torch.testing.assert_close(loss, torch.tensor([[-1.2, -0.5, 0.8, 4.0]], dtype=torch.float64))
    assert float(m["clip_frac"]) == pytest.approx(0.5)
    # eps_high 0.28: the first token clips at 1.28
    loss, _ = algos.get_loss("ppo_clip")(logp, old, adv, mask, AlgoConfig(eps_high=0.28))
    assert float(loss[0, 0]) == pytest.approx(-1.28)
    # dual clip c = 3 bounds the negative-advantage token: min(4, 3) = 3; the others unchanged
    loss, m = algos.get_loss("ppo_clip")(logp, old, adv, mask, AlgoConfig(dual_clip=3.0))
    torch.testing.assert_close(loss, torch.tensor([[-1.2, -0.5, 0.8, 3.0]], dtype=torch.float64))
    assert float(m["dual_clip_frac"]) == pytest.approx(0.25)


def test_ppo_clip_gradient_is_zero_where_clipped():
    logp, old = _ratios(1.5, 0.5)
    logp.requires_grad_(True)
    adv = torch.ones(1, 2, dtype=torch.float64)
    loss, _ = algos.get_loss("ppo_clip")(logp, old, adv, torch.ones(1, 2, dtype=torch.float64), AlgoConfig())
    loss.sum().backward()
    # d(-A ρ)/d logp = -A ρ: 0 for the clipped token, -0.5 for the other
    torch.testing.assert_close(logp.grad, torch.tensor([[0.0, -0.5]], dtype=torch.float64))


def test_gspo_by_hand():
    # seq 0: log ratios 0.1, 0.3 -> s = e^0.2 = 1.2214, A = +1 -> clipped at 1.2 on both tokens
    # seq 1: log ratios 0.0, 0.1 -> s = e^0.05 = 1.05127, A = -1 -> loss 1.05127 per token,
    #        gradient per token -A s / |y| = 1.05127 / 2 under seq-mean-token-mean
    old = torch.zeros(2, 2, dtype=torch.float64)
    logp = torch.tensor([[0.1, 0.3], [0.0, 0.1]], dtype=torch.float64, requires_grad=True)
    adv = torch.tensor([[1.0, 1.0], [-1.0, -1.0]], dtype=torch.float64)
    mask = torch.ones(2, 2, dtype=torch.float64)
    cfg = AlgoConfig(loss="gspo")
    loss, m = algos.get_loss("gspo")(logp, old, adv, mask, cfg)
    s1 = math.exp(0.05)
    torch.testing.assert_close(loss.detach(), torch.tensor([[-1.2, -1.2], [s1, s1]], dtype=torch.float64))
    assert float(m["clip_frac"]) == pytest.approx(0.5)
    algos.get_aggregation("seq-mean-token-mean")(loss, mask, cfg).backward()
    # mean over 2 sequences of (1/2) sum_t: each token of seq 1 gets (1/2)(1/2) s1
    torch.testing.assert_close(logp.grad, torch.tensor([[0.0, 0.0], [s1 / 4, s1 / 4]], dtype=torch.float64))


def test_aggregations_by_hand():
    loss = torch.tensor([[1.0, 2.0, 3.0], [4.0, 9.0, 9.0], [5.0, 5.0, 5.0]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0], [0, 0, 0]])
    cfg = AlgoConfig(max_response_len=5)
    assert float(algos.get_aggregation("token-mean")(loss, mask, cfg)) == pytest.approx(10 / 4)
    assert float(algos.get_aggregation("seq-mean-token-mean")(loss, mask, cfg)) == pytest.approx((2 + 4) / 2)
    # (6 + 4) / (3 rollouts * L_max 5)
    assert float(algos.get_aggregation("seq-mean-token-sum-norm")(loss, mask, cfg)) == pytest.approx(10 / 15)


def test_kl_k3_by_hand():
    # pi = 0.5, pi_ref = 0.25: ratio 0.5 -> 0.5 - log 0.5 - 1 = 0.193147
    got = algos.kl_k3(torch.tensor([math.log(0.5)]), torch.tensor([math.log(0.25)]))
    assert float(got) == pytest.approx(0.5 + math.log(2) - 1, abs=1e-7)
    assert float(algos.kl_k3(torch.tensor([-1.3]), torch.tensor([-1.3]))) == 0.0


def test_filter_groups_drops_all_right_and_all_wrong():
    scores = torch.tensor([1.0, 1, 0, 1, 0, 0, 1, 1])
    group = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    assert algos.filter_groups(scores, group).tolist() == [False, False, True, True, False, False, False, False]


def test_overlong_penalty_by_hand():
    # max_len 10, buffer 4: free up to 6 tokens; 8 -> -(8 - 6)/4 = -0.5; 10 and beyond -> -1 (x factor)
    got = algos.overlong_penalty(torch.tensor([3, 6, 8, 10, 12]), max_len=10, buffer=4, factor=2.0)
    torch.testing.assert_close(got, torch.tensor([0.0, 0.0, -1.0, -2.0, -2.0], dtype=torch.float64))
    with pytest.raises(ValueError, match="buffer: expected"):
        algos.overlong_penalty(torch.tensor([1]), max_len=4, buffer=0)


def test_policy_objective_adds_kl_and_entropy_by_hand():
    # ratio 1, A = +1 -> pg -1 per token; kl_coef 0.1 * 0.193147; entropy_coef 0.01 * 0.5
    logp = torch.full((1, 2), math.log(0.5), dtype=torch.float64)
    ref = torch.full((1, 2), math.log(0.25), dtype=torch.float64)
    cfg = AlgoConfig(aggregation="token-mean", kl_coef=0.1, entropy_coef=0.01)
    loss, m = algos.policy_objective(logp, logp.clone(), torch.ones(1, 2, dtype=torch.float64),
                                     torch.ones(1, 2), cfg, ref_logp=ref, entropy=torch.full((1, 2), 0.5, dtype=torch.float64))
    assert float(loss) == pytest.approx(-1 + 0.1 * (0.5 + math.log(2) - 1) - 0.01 * 0.5, abs=1e-12)
    assert float(m["kl"]) == pytest.approx(0.5 + math.log(2) - 1, abs=1e-12)
    assert float(m["entropy"]) == pytest.approx(0.5)


def test_a_recipe_registers_a_per_token_estimator():
    name = "test_step_weighted"
    if name in algos.ADVANTAGES:
        del algos.ADVANTAGES[name]

    @algos.register_advantage(name)
    def step_weighted(inp: AdvantageInput, cfg: AlgoConfig):
        # FaithRL-like: scale the GRPO advantage by 0.75 on tokens of step 1
        base = algos.get_advantage("grpo")(inp, cfg)
        return torch.where(inp.step_ids == 1, 0.75 * base, base)

    try:
        i = inp()
        i.step_ids = torch.tensor([[0, 1, -1]] * 6)
        got = algos.get_advantage(name)(i, AlgoConfig(advantage=name))
        a = 0.5 / (math.sqrt(1 / 3) + 1e-6)
        assert float(got[0, 0]) == pytest.approx(a) and float(got[0, 1]) == pytest.approx(0.75 * a)
        with pytest.raises(ValueError, match="already registered"):
            algos.register_advantage(name)(lambda inp, cfg: None)
    finally:
        del algos.ADVANTAGES[name]


def test_bad_names_and_settings_are_named():
    with pytest.raises(ValueError, match="advantage: expected one of"):
        AlgoConfig(advantage="nope")
    with pytest.raises(ValueError, match="aggregation: expected one of"):
        AlgoConfig(aggregation="mean")
    with pytest.raises(ValueError, match="dual_clip: expected a constant > 1"):
        AlgoConfig(dual_clip=0.5)
    with pytest.raises(ValueError, match="group: expected shape"):
        AdvantageInput(torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(3))
