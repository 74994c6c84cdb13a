"""AoI update control (the age-of-information survey's RL setting): learn when to sample and
transmit so that the monitor's information stays fresh at a bounded transmission cost.

Environment ``envs.aoi.AoIEnv``: per slot, ``r_t = -(Δ_t + λ c_t)`` (AoI plus λ = 10 per
transmission), random delay ``D ∈ {1, 2, 3, 8}`` (probabilities 0.4 / 0.3 / 0.2 / 0.1), erasure
probability 0.2, 200-slot episodes. The policy is a small MLP ``π_θ(a | Δ/64, busy, in-flight)``
over ``a ∈ {wait, transmit}``, trained with the registry's estimators exactly as the text recipes
are: G episodes from the same start state ``Δ_0`` form a group, each decision slot is a "token",
the episode's return is its score::

    R_i    = Σ_t r_i,t                                      (episode i, decision slots t)
    A_i    = (R_i - mean_g R) / (std_g R + eps)             (``grpo``; any registered estimator)
    J(θ)   = 1/G Σ_i 1/|o_i| Σ_t min(ρ_i,t A_i, clip(ρ_i,t, 1 - ε, 1 + ε) A_i)      (ε = 0.2)

The mask keeps only the slots where the channel is idle (the action matters); busy slots still
count in the return. Departures from GRPO: no language model and no KL; the "response" is an
episode of decisions; groups share a random start age ``Δ_0 ∈ [1, 20]`` rather than a prompt.

Baselines, measured on the same evaluation seeds: zero-wait (transmit whenever idle), the best
fixed period and the best age threshold (each found by a sweep on separate seeds). ``eval.json``:
``after`` is the learned policy (greedy), ``before`` the untrained one, ``baselines`` the three
classic policies, each with per-slot ``aoi``, ``cost`` and ``reward = -(aoi + λ cost)``;
``aoi.png`` plots the AoI over one evaluation episode for each policy.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from ..algos import AdvantageInput, get_advantage, group_stats, policy_objective
from . import Recipe, register_recipe

SWEEP_SEED = 50_000  # the sweeps' episodes; evaluation uses 10_000 + k
EVAL_SEED = 10_000
MAX_START_AGE = 20


class UpdatePolicy(nn.Module):
    """``[B, 3]`` observations -> ``[B, 2]`` logits (wait, transmit)."""

    def __init__(self, hidden: int = 32):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(3, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh(),
                                 nn.Linear(hidden, 2))

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.net(obs)


def collect(policy: UpdatePolicy, config, starts: list[int], group_size: int, generator: torch.Generator,
            seed: int) -> dict:
    """Run ``len(starts) * group_size`` episodes in lockstep, sampling actions from ``policy``.
    Row ``i`` belongs to group ``g = i // group_size`` and starts from the group's state: age
    ``starts[g]`` and env seed ``seed + g`` (the channel's k-th transmission gets the same delay
    and erasure in every episode of a group, so returns differ by the actions, not the luck).

    Returns ``obs [N, T, 3]``, ``actions [N, T]``, ``logp [N, T]`` (sampling log-probs),
    ``rewards [N, T]`` (float64), ``mask [N, T]`` (1 where the channel was idle), ``group [N]``,
    ``ages [N, T]`` (``Δ`` after each slot) and ``cost [N, T]``."""
    import numpy as np

    from ..envs.aoi import AoIEnv

    N, T = len(starts) * group_size, config.horizon
    envs = [AoIEnv(config) for _ in range(N)]
    obs = np.stack([env.reset(seed=seed + i // group_size, options={"age": starts[i // group_size]})[0]
                    for i, env in enumerate(envs)])
    out = {k: torch.zeros(N, T, dtype=torch.float64) for k in ("rewards", "mask", "ages", "cost", "logp")}
    out["obs"] = torch.zeros(N, T, 3)
    out["actions"] = torch.zeros(N, T, dtype=torch.long)
    with torch.no_grad():
        for t in range(T):
            o = torch.from_numpy(obs)
            logits = policy(o)
            a = torch.multinomial(torch.softmax(logits.double(), -1), 1, generator=generator)[:, 0]
            out["obs"][:, t] = o
            out["actions"][:, t] = a
            out["logp"][:, t] = torch.log_softmax(logits.double(), -1).gather(1, a[:, None])[:, 0]
            out["mask"][:, t] = torch.tensor([float(not env.busy) for env in envs], dtype=torch.float64)
            rows = []
            for i, env in enumerate(envs):
                ob, r, _, _, info = env.step(int(a[i]))
                rows.append(ob)
                out["rewards"][i, t], out["ages"][i, t], out["cost"][i, t] = r, info["age"], info["cost"]
            obs = np.stack(rows)
    out["group"] = torch.arange(N) // group_size
    return out


def update(policy: UpdatePolicy, optimizer, batch: dict, algo, minibatches: int, generator: torch.Generator) -> dict:
    """Advantages from the registry (``algo.advantage``), then one clipped-ratio pass over
    ``minibatches`` shuffled slices of the episodes. Returns the mean metrics."""
    adv = get_advantage(algo.advantage)(AdvantageInput(batch["rewards"], batch["mask"], batch["group"]), algo)
    order = torch.randperm(batch["mask"].shape[0], generator=generator)
    sums: dict[str, float] = {}
    parts = [p for p in order.chunk(minibatches) if len(p)]
    for idx in parts:
        logits = policy(batch["obs"][idx]).double()
        logp_all = torch.log_softmax(logits, -1)
        logp = logp_all.gather(2, batch["actions"][idx][..., None])[..., 0]
        entropy = -(logp_all.exp() * logp_all).sum(-1)
        loss, m = policy_objective(logp, batch["logp"][idx], adv[idx], batch["mask"][idx], algo, entropy=entropy)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(policy.parameters(), 1.0)
        optimizer.step()
        for k, v in {**m, "loss": loss.detach()}.items():
            sums[k] = sums.get(k, 0.0) + float(v) / len(parts)
    return sums


def greedy(policy: UpdatePolicy):
    """The policy's most likely action in the env's current state (``envs.aoi`` policy form)."""

    def act(env) -> int:
        with torch.no_grad():
            return int(policy(torch.from_numpy(env.observation())[None]).argmax(-1))

    return act


def idle_actions(policy: UpdatePolicy, max_age: int) -> list[int]:
    """The greedy action (1: transmit) of ``policy`` with an idle channel at ages ``1..max_age``
    (a threshold policy reads ``0 ... 0 1 ... 1``)."""
    obs = torch.tensor([[a / max_age, 0.0, 0.0] for a in range(1, max_age + 1)])
    with torch.no_grad():
        return policy(obs).argmax(-1).tolist()


def train(cfg, config, out, progress: bool = True) -> tuple[UpdatePolicy, list[dict]]:
    """``cfg.steps`` updates of ``cfg.prompts_per_step`` groups x ``cfg.group_size`` episodes;
    one ``metrics.jsonl`` row per step. Returns the policy and the rows."""
    from .. import runs

    torch.manual_seed(cfg.seed)
    policy = UpdatePolicy()
    optimizer = torch.optim.Adam(policy.parameters(), lr=cfg.lr)
    gen = torch.Generator().manual_seed(cfg.seed)
    algo = cfg.algo(max_response_len=config.horizon)
    rows = []
    bar = runs.progress_bar(cfg.steps, 0, "aoi", progress)
    metrics_path = out / "metrics.jsonl"
    metrics_path.unlink(missing_ok=True)
    for step in range(cfg.steps):
        starts = torch.randint(1, MAX_START_AGE + 1, (cfg.prompts_per_step,), generator=gen).tolist()
        batch = collect(policy, config, starts, cfg.group_size, gen, seed=1_000_000 * (cfg.seed + 1) + step * 10_000)
        m = update(policy, optimizer, batch, algo, cfg.minibatches, gen)
        slots = batch["rewards"].numel()
        _, std, _ = group_stats(batch["rewards"].sum(-1), batch["group"])
        row = {"step": step, "reward": float(batch["rewards"].sum()) / slots, "aoi": float(batch["ages"].sum()) / slots,
               "cost": float(batch["cost"].sum()) / slots, "transmit_when_idle":
                   float((batch["actions"] * batch["mask"]).sum() / batch["mask"].sum().clamp(min=1)),
               "group_return_std": float(std.mean()), **m}
        runs.append_metrics(metrics_path, row)
        rows.append(row)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(reward=f"{row['reward']:.2f}")
    if bar is not None:
        bar.close()
    return policy, rows


def plot_ages(traces: dict, png, title: str) -> None:
    """AoI over the slots of one evaluation episode, one line per policy."""
    import os

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(traces), 1, figsize=(9, 1.7 * len(traces)), sharex=True, squeeze=False)
    for ax, (name, (ages, stats)) in zip(axes[:, 0], traces.items()):
        ax.step(range(1, len(ages) + 1), ages, where="post", lw=1.0)
        ax.set_ylabel("AoI")
        ax.set_title(f"{name}: over {stats['episodes']} episodes, mean AoI {stats['aoi']:.2f}, "
                     f"cost {stats['cost']:.3f}/slot, reward {stats['reward']:.2f}", fontsize=9)
        ax.grid(alpha=0.3)
    axes[-1, 0].set_xlabel("slot")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    tmp = png.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=90)
    plt.close(fig)
    os.replace(tmp, png)


def run(args, recipe, cfg) -> dict:
    """Train the policy, sweep the baselines, evaluate all on the same seeds, write the run's files."""
    from pathlib import Path

    from .. import runs
    from ..envs.aoi import AoIConfig, fixed_period, run_policy, sweep, threshold, zero_wait

    out = Path(args.out)
    if args.resume:
        raise ValueError("--resume: the aoi recipe trains in minutes and does not resume; run it again")
    if cfg.init_from or cfg.num_draft:
        raise ValueError("--init-from/--num-draft: the aoi recipe trains its own small policy network from scratch, "
                         f"got init_from={cfg.init_from!r}, num_draft={cfg.num_draft}")
    if (out / "eval.json").exists():
        raise ValueError(f"--out: {out} holds an earlier aoi run; choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    config = AoIConfig()
    runs.write_json(out / "config.json", {**dataclasses.asdict(cfg), "env": dataclasses.asdict(config)})
    episodes = cfg.eval_n
    torch.manual_seed(cfg.seed)
    before = run_policy(greedy(UpdatePolicy()), config, episodes, EVAL_SEED)
    policy, rows = train(cfg, config, out, progress=not args.no_progress)
    torch.save(policy.state_dict(), out / ".policy.pt.tmp")
    (out / ".policy.pt.tmp").replace(out / "policy.pt")
    tau, tau_table = sweep(threshold, range(1, 31), config, episodes, SWEEP_SEED)
    period, period_table = sweep(fixed_period, range(1, 31), config, episodes, SWEEP_SEED)
    policies = {"learned (greedy)": greedy(policy), "zero-wait": zero_wait, f"fixed period {period}": fixed_period(period),
                f"threshold {tau}": threshold(tau)}
    results = {name: run_policy(p, config, episodes, EVAL_SEED, trace=True) for name, p in policies.items()}
    traces = {name: (r.pop("ages"), r) for name, r in results.items()}
    report = {"recipe": recipe.name, "task": "aoi", "metric": "reward", "before": before,
              "after": {**results["learned (greedy)"], "idle_actions": idle_actions(policy, config.max_age)},
              "baselines": {"zero_wait": results["zero-wait"], "fixed_period": {"period": period, **results[f"fixed period {period}"]},
                            "threshold": {"tau": tau, **results[f"threshold {tau}"]}},
              "sweeps": {"threshold": tau_table, "fixed_period": period_table}, "n_eval": episodes,
              "env": dataclasses.asdict(config)}
    runs.write_json(out / "eval.json", report)
    runs.plot_curves(out / "metrics.jsonl", out / "curves.png",
                     ["reward", "aoi", "cost", "transmit_when_idle", "entropy", "clip_frac", "group_return_std"],
                     title="aoi: GRPO on the update-control environment")
    plot_ages(traces, out / "aoi.png", f"AoI over one evaluation episode (λ = {config.cost_weight})")
    learned, best = report["after"]["reward"], report["baselines"]["threshold"]["reward"]
    return {"before": before["reward"], "after": learned, "best_threshold": best, "tau": tau, "out": str(out)}


RECIPE = register_recipe(Recipe(
    name="aoi",
    summary="AoI update control: MLP policy trained by GRPO on episode groups vs zero-wait / period / threshold",
    overrides=dict(advantage="grpo", loss="ppo_clip", aggregation="seq-mean-token-mean", kl_coef=0.0, lr=3e-3,
                   steps=300, prompts_per_step=8, group_size=8, minibatches=2, eval_n=200),
    quick=dict(steps=150, eval_n=100),
    tasks=("aoi",),
    run=run,
    module=__name__,
))
