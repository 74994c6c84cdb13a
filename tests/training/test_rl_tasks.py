"""Verifiable tasks: deterministic by seed, disjoint splits, demonstrations that verify, the
search tool, the step verifier and the answer checks."""

import pytest

from hysparse_kernels.training.rl.tasks import ABSTAIN, SPLITS, Example, get_task


def response_of(task, example):
    return "".join(s.text for s in task.demonstration(example)[1:])


@pytest.mark.parametrize("name", ["lookup", "arith", "countdown"])
def test_examples_are_deterministic_and_splits_disjoint(name):
    a, b = get_task(name, seed=3), get_task(name, seed=3)
    ids = {}
    for split in SPLITS:
        ea, eb = a.examples(split, 50), b.examples(split, 50)
        assert ea == eb and len(ea) == 50
        ids[split] = {e.id for e in a.examples(split, 50)}
    assert not (ids["train"] & ids["dev"]) and not (ids["train"] & ids["heldout"]) and not (ids["dev"] & ids["heldout"])
    assert get_task(name, seed=4).examples("train", 50) != a.examples("train", 50)


@pytest.mark.parametrize("name", ["lookup", "arith", "countdown"])
def test_demonstrations_verify_and_replay_the_tool(name):
    task = get_task(name)
    for ex in task.examples("dev", 60):
        segs = task.demonstration(ex)
        assert segs[0].text == ex.prompt and not segs[0].model
        assert task.verify(ex, response_of(task, ex)).outcome == "correct"
        # every observation in a demonstration is what the tool answers to the turn before it
        for turn, obs in zip(segs[1:], segs[2:]):
            if turn.model and not obs.model:
                assert task.observe(ex, turn.text) == obs.text
        assert all(s.text.endswith("\n") for s in segs)


def test_lookup_fact_base_and_questions():
    task = get_task("lookup")
    base = task.base
    train = task.examples("train")
    unanswerable = [e for e in train if not e.meta["answerable"]]
    assert 0.05 < len(unanswerable) / len(train) < 0.4
    assert {e.meta["hops"] for e in train} == {1, 2, 3}
    for e in train[:200]:
        chain = base.follow(e.meta["start"], e.meta["path"])
        assert e.answer == (chain[-1] if chain[-1] is not None else ABSTAIN)
    # the questions read the path left to right: "Q: X r1 r2" asks r2 of (r1 of X)
    e = next(x for x in train if x.meta["hops"] == 2 and x.meta["answerable"])
    x, (r1, r2) = e.meta["start"], e.meta["path"]
    assert e.prompt == f"Q: {x} {r1} {r2}\n" and e.answer == base.lookup(base.lookup(x, r1), r2)


def test_search_tool():
    task = get_task("lookup")
    base = task.base
    (s, r), o = next(iter(base.facts.items()))
    assert base.search(f"{s} {r}") == [f"{s} {r} {o}"]
    assert base.search(f"{r} of {s}") == [f"{s} {r} {o}"]
    assert set(base.search(s)) == {f"{s} {rr} {base.facts[(s, rr)]}" for rr in base.relations if (s, rr) in base.facts}
    assert base.search("nobody mentor") == []
    assert task.tool_output("nobody") == "> none\n"
    missing = next((s2, r2) for s2 in base.entities for r2 in base.relations if (s2, r2) not in base.facts)
    assert task.observe(task.examples("dev")[0], f"search: {missing[0]} {missing[1]}\n") == "> none\n"
    assert task.observe(task.examples("dev")[0], "answer: Bo\n") is None


def test_step_verifier_and_gold_in_observation():
    task = get_task("lookup")
    (s, r), o = next(iter(task.base.facts.items()))
    other = next(e for e in task.base.entities if e not in (o, s))
    assert task.verify_step(f"{s}'s {r} is {o}") is True
    assert task.verify_step(f"{s} {r} {o}") is True
    assert task.verify_step(f"{s}'s {r} is {other}") is False
    assert task.verify_step("the sky is blue") is None
    assert task.base.check(s, r, o) and not task.base.check(s, r, other)
    e = next(x for x in task.examples("train")
             if x.meta["answerable"] and x.meta["hops"] == 2 and x.answer not in x.meta["chain"][:2])
    obs = [seg.text for seg in task.demonstration(e) if not seg.model][1:]
    assert [task.gold_in(e, t) for t in obs] == [False, True]  # the gold first appears in the last observation
    u = next(x for x in task.examples("train") if not x.meta["answerable"])
    assert not any(task.gold_in(u, seg.text) for seg in task.demonstration(u))


def test_lookup_verdicts():
    task = get_task("lookup")
    e = next(x for x in task.examples("dev") if x.meta["answerable"])
    other = next(n for n in task.base.entities if n != e.answer)
    assert task.verify(e, f"answer: {e.answer}\n").outcome == "correct"
    assert task.verify(e, f"answer: {other}\n").outcome == "wrong"
    assert task.verify(e, "answer: unknown\n").outcome == "abstain"
    assert task.verify(e, "search: x\n> none\n").outcome == "invalid"
    assert task.verify(e, f"answer: {other}\nanswer: {e.answer}\n").success  # the last answer counts
    u = next(x for x in task.examples("dev") if not x.meta["answerable"])
    assert task.verify(u, "answer: unknown\n").success and task.verify(u, f"answer: {other}\n").outcome == "wrong"


def test_arithmetic_and_countdown_verifiers():
    arith = get_task("arith")
    e = Example("2+3", "Q: 2+3\n", "5")
    assert arith.verify(e, "answer: 5\n").success
    assert arith.verify(e, "answer: 6\n").outcome == "wrong"
    assert arith.verify(e, "answer: five\n").outcome == "invalid"
    cd = get_task("countdown")
    e = Example("x", "Q: 3 7 12 -> 33\n", "3*7+12", {"numbers": [3, 7, 12], "target": 33})
    assert cd.verify(e, "answer: 12+7*3\n").success
    assert cd.verify(e, "answer: 3*7+12+0\n").outcome == "wrong"  # 0 is not given
    assert cd.verify(e, "answer: 3*7*3\n").outcome == "wrong"  # 3 used twice
    assert cd.verify(e, "answer: __import__('os')\n").outcome == "invalid"
    assert cd.verify(e, "answer: 33/1\n").outcome == "invalid"


def test_bad_task_arguments_are_named():
    with pytest.raises(ValueError, match="task: expected one of"):
        get_task("chess")
    with pytest.raises(ValueError, match="split: expected one of"):
        get_task("arith").examples("test")
    with pytest.raises(ValueError, match="max_hops: expected 1..4"):
        get_task("lookup", max_hops=9)
    with pytest.raises(ValueError, match="n: expected at most"):
        get_task("lookup").examples("heldout", 10**6)
