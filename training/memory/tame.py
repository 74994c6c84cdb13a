"""TAME: test-time evolution with an executor memory and an evaluator memory, and its baselines.

The agent is frozen (the lookup SFT model); what evolves is memory, and memory acts on *scored
decisions*, never on the prompt (the tiny agent cannot read text put before its question):

1. **Memory filtering.** The executor memory retrieves experiences by sentence-embedding cosine
   similarity of the question (``Q: Tari friend boss``); the evaluator filter then drops the
   experiences whose draft the evaluator revised (their outcome measured the revision, not the
   strategy).
2. **Draft.** The executor picks a *strategy* (:data:`STRATEGIES`) by the value the kept
   experiences give it, and the strategy builds a draft from the frozen model's attempts at the
   question (a greedy one and ``K`` sampled at temperature 1):
   ``direct`` (the greedy attempt), ``retry`` (the first attempt whose search chain closes, that
   is follows the question's relations from its start person to an answer, else the greedy one),
   ``persist`` (as ``retry``, but with no closed chain the first attempt that names someone: never
   leaves the question unanswered), ``abstain``, ``refuse``.
3. **Trustworthy refinement.** The evaluator memory is queried with a fixed structured summary of
   the draft (:func:`draft_key`: question, what it answers, whether its chain closed, whether a
   search found nothing, the tool's words) and picks a *verdict* (:data:`VERDICTS`): ``accept``
   the draft, revise it to ``abstain`` or to ``refuse``.
4. **Execution.** The final action is delivered and checked (:mod:`.trust_bench`); the episode's
   one binary feedback bit comes back (utility for a task, safety for a probe).
5. **Dual-track update.** Executor memory (the utility track): ``(question, strategy, bit)`` of
   every task episode, successes and failures alike (contrastive), marked whether the strategy's
   draft was executed; probes leave it untouched. Evaluator memory (the trust track):
   ``(draft summary, verdict, bit)`` of every vetted draft, tasks (utility) and probes (safety).
   In both, the experiences that informed the decision move their value towards the bit,
   ``q <- q + alpha (bit - q)`` (Q-value down-weighting; nothing is deleted).

A memory's value of an action ``a`` for a query: over the ``k`` most similar entries,
``V(a) = (sum_i w_i q_i [a_i = a] + m p_a) / (sum_i w_i [a_i = a] + m)``, ``w_i = exp((s_i - 1) / tau)``
(``s_i``: cosine similarity, ``p_a``: prior, ``m``: prior strength). The agent takes the best
action (ties in menu order), or with probability ``epsilon`` a uniformly random one.

Baselines over the same stream and the same attempts: ``none`` (always ``direct``, nothing
learned); ``single``, the misevolution baseline: one evolving memory (the executor memory alone,
no evaluator) that, like the experience memories TAME is compared with, learns from task outcomes
only (utility bits; a probe gives it nothing); and ``single_fb``, an ablation: the same single
memory fed every episode's bit, probes' safety bits included (the feedback TAME gets), to tell
what the safety signal does from what the dual structure does.
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass
from pathlib import Path

import torch

from .bank import BankError, Entry, ExperienceBank, _write_json, read_json
from .trust_bench import REFUSE, Final, Outcome, StreamItem, final_from_text

STRATEGIES = ("direct", "retry", "persist", "abstain", "refuse")
VERDICTS = ("accept", "abstain", REFUSE)
ARMS = ("none", "single", "single_fb", "tame")
VALUES_FORMAT = "hysparse-tame-values"


@dataclass(frozen=True)
class Attempt:
    """One rollout of the frozen agent: its parsed ``answer`` (None: it gave none), its search
    ``queries``, the tool's ``observations`` and whether its chain ``closed``."""

    answer: str | None
    queries: tuple[str, ...]
    observations: tuple[str, ...]
    closed: bool


def chain_closes(example, queries, observations, answer: str | None) -> bool:
    """Whether the attempt searched ``start r1``, then ``<found> r2``, ... along the question's
    path and answered the last person found (an unanswerable question never closes)."""
    path, subject = example.meta["path"], example.meta["start"]
    if len(queries) != len(path) or len(observations) < len(path):
        return False
    for q, rel, obs in zip(queries, path, observations):
        if q.split() != [subject, rel]:
            return False
        facts = [f.split() for f in obs.strip().lstrip(">").split(";")]
        found = [f[2] for f in facts if len(f) == 3 and f[0] == subject and f[1] == rel]
        if not found:
            return False
        subject = found[0]
    return answer == subject


def parse_attempt(example, turn_texts, observations) -> Attempt:
    """An :class:`Attempt` from a rollout's turns (the model's lines) and observations."""
    lines = [t.strip() for t in turn_texts]
    queries = tuple(t[len("search:"):].strip() for t in lines if t.startswith("search:"))
    answers = [t[len("answer:"):].strip() for t in lines if t.startswith("answer:")]
    answer = answers[-1] if answers and answers[-1] else None
    obs = tuple(o.strip() for o in observations)
    return Attempt(answer, queries, obs, chain_closes(example, queries, obs, answer))


def draft(strategy: str, attempts: list[Attempt]) -> tuple[Final, Attempt | None]:
    """The strategy's draft from ``attempts`` (greedy first): the final action it proposes and the
    attempt it rests on (None for ``abstain`` / ``refuse``)."""
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy: expected one of {STRATEGIES}, got {strategy!r}")
    if not attempts:
        raise ValueError("attempts: expected at least the greedy attempt, got none")
    if strategy in ("abstain", REFUSE):
        return Final(strategy), None
    pick = attempts[0]
    if strategy in ("retry", "persist"):
        closed = [a for a in attempts if a.closed]
        named = [a for a in attempts if a.answer is not None and a.answer.lower() != "unknown"]
        if closed:
            pick = closed[0]
        elif strategy == "persist" and named:
            pick = named[0]
    return final_from_text(pick.answer, pick.queries), pick


def draft_key(item: StreamItem, final: Final, attempt: Attempt | None) -> str:
    """The evaluator's structured summary of a draft (what its memory is keyed by)."""
    q = item.example.prompt.strip()
    if attempt is None:
        return f"{q} | {final.action} | no draft"
    said = "answers someone" if final.action == "answer" and final.answer else (
        "abstains" if final.action == "abstain" else "gives no answer")
    chain = "chain closed" if attempt.closed else "chain open"
    none = "a search found nothing" if any(o == "> none" for o in attempt.observations) else "every search found facts"
    return f"{q} | {said} | {chain} | {none} | tool: {' '.join(attempt.observations)}"


class ValueMemory:
    """Experiences ``(key, action, value q)`` in an :class:`ExperienceBank` (the action and
    extras in each entry's ``trajectory`` as JSON, the feedback bit as ``success``), with a
    value per entry that learning moves; see the module docstring for ``values``."""

    def __init__(self, embed, actions, *, k: int = 16, tau: float = 0.1, prior=0.5, strength: float = 1.0,
                 alpha: float = 0.3):
        if k < 1 or tau <= 0 or strength < 0 or not 0 < alpha <= 1:
            raise ValueError(f"ValueMemory: expected k >= 1, tau > 0, strength >= 0, 0 < alpha <= 1; got "
                             f"k={k}, tau={tau}, strength={strength}, alpha={alpha}")
        self.bank = ExperienceBank(embed)
        self.actions = tuple(actions)
        self.priors = {a: float(prior[a] if isinstance(prior, dict) else prior) for a in self.actions}
        self.k, self.tau, self.strength, self.alpha = k, tau, strength, alpha
        self.q: list[float] = []
        self.meta: list[dict] = []

    def __len__(self) -> int:
        return len(self.q)

    def values(self, key: str, keep=None) -> tuple[dict, dict]:
        """``({action: V}, {action: [entry indices that informed V]})`` for the query ``key``;
        ``keep(meta) -> bool`` filters the retrieved entries."""
        num = {a: self.strength * self.priors[a] for a in self.actions}
        den = {a: self.strength for a in self.actions}
        used: dict[str, list[int]] = {a: [] for a in self.actions}
        if self.q:
            sims = self.bank.similarities(key)
            top = torch.topk(sims, min(self.k, len(self.q)))
            for s, i in zip(top.values.tolist(), top.indices.tolist()):
                m = self.meta[i]
                if keep is not None and not keep(m):
                    continue
                w = math.exp((s - 1.0) / self.tau)
                num[m["action"]] += w * self.q[i]
                den[m["action"]] += w
                used[m["action"]].append(i)
        return {a: num[a] / den[a] for a in self.actions}, used

    def choose(self, values: dict, rng: random.Random, epsilon: float) -> str:
        if rng.random() < epsilon:
            return rng.choice(self.actions)
        return max(self.actions, key=lambda a: (values[a], -self.actions.index(a)))

    def add(self, key: str, action: str, bit: bool, **extra) -> int:
        if action not in self.actions:
            raise ValueError(f"action: expected one of {self.actions}, got {action!r}")
        meta = {"action": action, **extra}
        self.bank.add([Entry(key, json.dumps(meta, sort_keys=True), bool(bit))])
        self.q.append(float(bit))
        self.meta.append(meta)
        return len(self.q) - 1

    def reinforce(self, indices, bit: bool) -> None:
        """Move the value of each entry in ``indices`` towards ``bit`` (down-weighting, no deletion)."""
        for i in indices:
            self.q[i] += self.alpha * (float(bit) - self.q[i])

    def set_extra(self, index: int, **extra) -> None:
        self.meta[index].update(extra)

    # ------------------------------------------------------------------ persistence

    def save(self, directory) -> Path:
        """The bank (``bank.json``, ``embeddings.safetensors``) and ``values.json`` (format tag,
        actions, per-entry value and extras), each written atomically."""
        d = self.bank.save(directory)
        _write_json(d / "values.json", {"format": VALUES_FORMAT, "version": 1, "actions": list(self.actions),
                                        "count": len(self.q), "q": self.q, "meta": self.meta})
        return d

    def load(self, directory) -> "ValueMemory":
        """Replace this memory's entries with those saved in ``directory`` (same actions).
        Raises ``BankError`` naming the bad file."""
        d = Path(directory)
        bank = ExperienceBank.load(d, self.bank.embed)
        path = d / "values.json"
        v = read_json(path, "the values", "TAME values", VALUES_FORMAT)
        if v.get("actions") != list(self.actions):
            raise BankError(f"{path}: expected actions {list(self.actions)}, got {v.get('actions')!r}")
        q, meta = v.get("q"), v.get("meta")
        if not (isinstance(q, list) and isinstance(meta, list) and len(q) == len(meta) == len(bank) == v.get("count")):
            raise BankError(f"{path}: expected {len(bank)} values and extras (the bank's entries), got "
                            f"{len(q) if isinstance(q, list) else q!r} and {len(meta) if isinstance(meta, list) else meta!r}")
        if any(not isinstance(m, dict) or m.get("action") not in self.actions for m in meta):
            raise BankError(f"{path}: an entry's action is not one of {list(self.actions)}")
        self.bank, self.q, self.meta = bank, [float(x) for x in q], meta
        return self


@dataclass
class Step:
    """What an agent did in one episode (``strategy``/``verdict``: None where it has none)."""

    final: Final
    strategy: str
    verdict: str | None = None


class NoMemoryAgent:
    """The frozen agent's greedy attempt, every episode; learns nothing."""

    name = "none"

    def act(self, item: StreamItem, attempts: list[Attempt]) -> Step:
        return Step(draft("direct", attempts)[0], "direct")

    def learn(self, item: StreamItem, step: Step, outcome: Outcome) -> None:
        pass


class SingleMemoryAgent:
    """One evolving memory: the question's most similar experiences pick the strategy; the
    episode's feedback bit goes to the strategy that produced it. ``learn_probes=False``: only
    task outcomes (utility) are learned from, probes leave no trace (the misevolution baseline)."""

    name = "single"

    def __init__(self, embed, rng: random.Random, epsilon: float = 0.1, learn_probes: bool = True,
                 strategies: tuple[str, ...] = STRATEGIES, **memory):
        if sorted(strategies) != sorted(STRATEGIES):
            raise ValueError(f"strategies: expected an order of {STRATEGIES}, got {strategies!r}")
        self.executor = ValueMemory(embed, strategies, **memory)  # the order breaks ties
        self.rng, self.epsilon, self.learn_probes = rng, epsilon, learn_probes
        self._used: list[int] = []

    def plan(self, item: StreamItem) -> str:
        values, used = self.executor.values(item.example.prompt.strip(), keep=lambda m: m.get("executed", True))
        strategy = self.executor.choose(values, self.rng, self.epsilon)
        self._used = used[strategy]
        return strategy

    def act(self, item: StreamItem, attempts: list[Attempt]) -> Step:
        strategy = self.plan(item)
        return Step(draft(strategy, attempts)[0], strategy)

    def learn(self, item: StreamItem, step: Step, outcome: Outcome) -> None:
        if outcome.utility is None and not self.learn_probes:
            return
        bit = outcome.feedback
        self.executor.reinforce(self._used, bit)
        self.executor.add(item.example.prompt.strip(), step.strategy, bit, executed=True)


class TameAgent(SingleMemoryAgent):
    """The executor memory (filtered by the evaluator's revisions) drafts; the evaluator memory
    vets the draft; the executor learns from task outcomes, the evaluator from every bit (see the
    module docstring)."""

    name = "tame"

    def __init__(self, embed, rng: random.Random, epsilon: float = 0.1, eval_epsilon: float = 0.02,
                 strategies: tuple[str, ...] = STRATEGIES, **memory):
        super().__init__(embed, rng, epsilon, False, strategies, **memory)
        self.evaluator = ValueMemory(embed, VERDICTS, **memory)
        self.eval_epsilon = eval_epsilon
        self._key: str | None = None
        self._eval_used: list[int] = []

    def act(self, item: StreamItem, attempts: list[Attempt]) -> Step:
        strategy = self.plan(item)
        final, attempt = draft(strategy, attempts)
        if attempt is None:  # the strategy itself abstains or refuses: nothing to vet
            self._key = None
            return Step(final, strategy)
        self._key = draft_key(item, final, attempt)
        values, used = self.evaluator.values(self._key)
        verdict = self.evaluator.choose(values, self.rng, self.eval_epsilon)
        self._eval_used = used[verdict]
        if verdict != "accept":
            final = Final(verdict)
        return Step(final, strategy, verdict)

    def learn(self, item: StreamItem, step: Step, outcome: Outcome) -> None:
        bit = outcome.feedback
        executed = step.verdict in (None, "accept")
        if outcome.utility is not None:  # the utility track: task outcomes only
            if executed:  # a revised draft's outcome says nothing about the strategy's own result
                self.executor.reinforce(self._used, bit)
            self.executor.add(item.example.prompt.strip(), step.strategy, bit, executed=executed)
        if self._key is not None:
            self.evaluator.reinforce(self._eval_used, bit)
            self.evaluator.add(self._key, step.verdict, bit)


def make_agent(arm: str, embed, seed: int, **options):
    """The agent of ``arm`` (:data:`ARMS`); its exploration draws from a generator seeded by ``seed``."""
    rng = random.Random(f"tame-agent:{arm}:{seed}")
    if arm == "none":
        return NoMemoryAgent()
    if arm in ("single", "single_fb"):
        options.pop("eval_epsilon", None)
        return SingleMemoryAgent(embed, rng, learn_probes=arm == "single_fb", **options)
    if arm == "tame":
        return TameAgent(embed, rng, **options)
    raise ValueError(f"arm: expected one of {ARMS}, got {arm!r}")


def run_stream(bench, attempts: list[list[Attempt]], agent) -> list[dict]:
    """Run ``agent`` over the stream (``attempts[i]``: the frozen model's attempts at item ``i``);
    one record per episode: kind, strategy, verdict, final action, utility, safe, feedback."""
    if len(attempts) != len(bench.items):
        raise ValueError(f"attempts: expected one list per stream item ({len(bench.items)}), got {len(attempts)}")
    records = []
    for item, atts in zip(bench.items, attempts):
        step = agent.act(item, atts)
        outcome = bench.check(item, step.final)
        agent.learn(item, step, outcome)
        records.append({"episode": item.index, "kind": item.kind, "strategy": step.strategy, "verdict": step.verdict,
                        "action": step.final.action, "utility": outcome.utility, "safe": outcome.safe,
                        "feedback": outcome.feedback})
    return records


def curve(records: list[dict], blocks: int) -> dict:
    """Utility (tasks) and trust (probes) per block of consecutive episodes: ``{"episode": [end
    of each block], "utility": [...], "trust": [...]}`` (NaN where a block has none)."""
    n = len(records)
    if not 1 <= blocks <= n:
        raise ValueError(f"blocks: expected 1..{n}, got {blocks}")
    out = {"episode": [], "utility": [], "trust": []}
    for b in range(blocks):
        part = records[b * n // blocks:(b + 1) * n // blocks]
        u = [r["utility"] for r in part if r["utility"] is not None]
        t = [r["safe"] for r in part if r["safe"] is not None]
        out["episode"].append(part[-1]["episode"] + 1)
        out["utility"].append(sum(u) / len(u) if u else float("nan"))
        out["trust"].append(sum(t) / len(t) if t else float("nan"))
    return out


def summary(records: list[dict]) -> dict:
    """Utility, trust (overall, per probe kind, first and last half) and the choices made."""
    def mean(xs):
        return sum(xs) / len(xs) if xs else float("nan")

    half = len(records) // 2
    out = {}
    for name, part in (("", records), ("_first_half", records[:half]), ("_second_half", records[half:])):
        out[f"utility{name}"] = mean([r["utility"] for r in part if r["utility"] is not None])
        out[f"trust{name}"] = mean([r["safe"] for r in part if r["safe"] is not None])
    for kind in ("protected", "injection", "unanswerable"):
        out[f"trust_{kind}"] = mean([r["safe"] for r in records if r["kind"] == kind])
    out["strategies"] = {s: sum(r["strategy"] == s for r in records) for s in STRATEGIES}
    out["verdicts"] = {v: sum(r["verdict"] == v for r in records) for v in VERDICTS}
    return out
