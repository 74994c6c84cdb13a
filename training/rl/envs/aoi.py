"""Age-of-information update control: a ``gymnasium`` environment and the classic policies.

A generate-at-will source feeds a monitor over a channel with random delay and erasures. Each
slot the agent chooses ``a = 1`` (sample the source now and transmit the fresh update) or
``a = 0`` (wait); one update can be in flight at a time, so ``a = 1`` while the channel is busy
does nothing and costs nothing. A transmission takes ``D`` slots, ``D`` drawn from ``delays``
with ``delay_probs``, and is lost with probability ``erasure`` (the sender learns it when the
``D`` slots are over). The monitor's age of information ``Δ`` grows by one per slot and drops to
the delivered update's age ``D`` when an update arrives::

    Δ_{t+1} = D            if an update sampled at slot t + 1 - D arrives (not erased)
              Δ_t + 1      otherwise
    r_t     = -(Δ_{t+1} + λ · c_t),   c_t = 1 if a transmission starts at slot t, else 0

An episode lasts ``horizon`` slots. Observation (``float32 [3]``): ``min(Δ, max_age) / max_age``,
busy (0 / 1), slots in flight / max delay. ``reset(options={"age": a})`` starts from ``Δ = a``
with an idle channel (episodes that share a start state form a group in training).

Policies (``fn(env) -> action``, read the env's state): :func:`zero_wait` (transmit whenever
idle), :func:`fixed_period` (every ``period`` slots, when idle), :func:`threshold` (when idle and
``Δ >= tau``); :func:`run_policy` measures one over episodes.
"""

from __future__ import annotations

from dataclasses import dataclass

import gymnasium as gym
import numpy as np
from gymnasium import spaces


@dataclass(frozen=True)
class AoIConfig:
    """Channel and cost settings (defaults: the recipe's)."""

    horizon: int = 200
    cost_weight: float = 10.0  # λ
    erasure: float = 0.2
    delays: tuple[int, ...] = (1, 2, 3, 8)
    delay_probs: tuple[float, ...] = (0.4, 0.3, 0.2, 0.1)
    max_age: int = 64

    def __post_init__(self):
        if self.horizon < 1:
            raise ValueError(f"horizon: expected a positive int, got {self.horizon}")
        if self.cost_weight < 0:
            raise ValueError(f"cost_weight: expected >= 0, got {self.cost_weight}")
        if not 0 <= self.erasure < 1:
            raise ValueError(f"erasure: expected a probability in [0, 1), got {self.erasure}")
        if not self.delays or min(self.delays) < 1 or len(self.delays) != len(self.delay_probs):
            raise ValueError(f"delays/delay_probs: expected positive delays with one probability each, got "
                             f"{self.delays} and {self.delay_probs}")
        if abs(sum(self.delay_probs) - 1) > 1e-9 or min(self.delay_probs) < 0:
            raise ValueError(f"delay_probs: expected probabilities summing to 1, got {self.delay_probs}")
        if self.max_age < 2:
            raise ValueError(f"max_age: expected at least 2, got {self.max_age}")


class AoIEnv(gym.Env):
    """The update-control environment (module docstring). ``info`` after each step: ``age``,
    ``cost`` (0 / 1), ``delivered`` (an update arrived this slot), ``idle`` (whether the next
    action matters)."""

    metadata = {"render_modes": []}

    def __init__(self, config: AoIConfig | None = None):
        self.config = config or AoIConfig()
        self.observation_space = spaces.Box(0.0, 1.0, shape=(3,), dtype=np.float32)
        self.action_space = spaces.Discrete(2)
        self._probs = np.asarray(self.config.delay_probs, dtype=np.float64)
        self.age, self.t = 1, 0
        self.remaining, self.elapsed, self.erased = 0, 0, False

    @property
    def busy(self) -> bool:
        return self.remaining > 0

    def observation(self) -> np.ndarray:
        c = self.config
        return np.array([min(self.age, c.max_age) / c.max_age, float(self.busy), self.elapsed / max(c.delays)],
                        dtype=np.float32)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        age = int((options or {}).get("age", 1))
        if age < 1:
            raise ValueError(f"options['age']: expected a positive int, got {age}")
        self.age, self.t = age, 0
        self.remaining, self.elapsed, self.erased = 0, 0, False
        return self.observation(), {"age": self.age, "idle": True}

    def step(self, action):
        if action not in (0, 1):
            raise ValueError(f"action: expected 0 (wait) or 1 (transmit), got {action!r}")
        c = self.config
        cost = 0
        if action == 1 and not self.busy:
            cost = 1
            self.remaining = int(self.np_random.choice(c.delays, p=self._probs))
            self.erased = bool(self.np_random.random() < c.erasure)
            self.elapsed = 0
        self.age += 1
        delivered = False
        if self.busy:
            self.remaining -= 1
            self.elapsed += 1
            if self.remaining == 0:
                if not self.erased:
                    self.age = min(self.age, self.elapsed)
                    delivered = True
                self.elapsed = 0
        self.t += 1
        reward = -(self.age + c.cost_weight * cost)
        info = {"age": self.age, "cost": cost, "delivered": delivered, "idle": not self.busy}
        return self.observation(), float(reward), False, self.t >= c.horizon, info


# ------------------------------------------------------------------------------- baselines


def zero_wait(env: AoIEnv) -> int:
    """Transmit a fresh update as soon as the channel is idle."""
    return int(not env.busy)


def fixed_period(period: int):
    """Transmit at slots ``0, period, 2·period, ...`` (a slot that finds the channel busy is
    skipped)."""
    if period < 1:
        raise ValueError(f"period: expected a positive int, got {period}")
    return lambda env: int(not env.busy and env.t % period == 0)


def threshold(tau: int):
    """Transmit when the channel is idle and the monitor's age is at least ``tau``."""
    if tau < 1:
        raise ValueError(f"tau: expected a positive int, got {tau}")
    return lambda env: int(not env.busy and env.age >= tau)


def run_policy(policy, config: AoIConfig, episodes: int, seed: int = 10_000, start_age: int = 1,
               trace: bool = False) -> dict:
    """Mean per-slot ``aoi``, ``cost`` (transmissions per slot) and ``reward`` of ``policy`` over
    ``episodes`` episodes (env seeds ``seed, seed + 1, ...``: every policy meets the same seeds);
    with ``trace``, also ``ages``: the first episode's ``Δ`` per slot."""
    env = AoIEnv(config)
    aoi = cost = reward = 0.0
    ages: list[int] = []
    for k in range(episodes):
        env.reset(seed=seed + k, options={"age": start_age})
        done = False
        while not done:
            _, r, term, trunc, info = env.step(policy(env))
            done = term or trunc
            aoi += info["age"]
            cost += info["cost"]
            reward += r
            if trace and k == 0:
                ages.append(info["age"])
    n = episodes * config.horizon
    out = {"aoi": aoi / n, "cost": cost / n, "reward": reward / n, "episodes": episodes}
    if trace:
        out["ages"] = ages
    return out


def sweep(make, values, config: AoIConfig, episodes: int, seed: int) -> tuple[int, list[dict]]:
    """Each of ``make(v)`` for ``v`` in ``values`` measured by :func:`run_policy`; returns the
    value with the highest mean reward and the table."""
    table = [{"value": v, **run_policy(make(v), config, episodes, seed)} for v in values]
    best = max(table, key=lambda row: row["reward"])
    return best["value"], table
