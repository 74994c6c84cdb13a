"""The LatentMem team: the roles' formats and contexts, their SFT batches (text memory, latent
slots), per-role composition, a planner -> solver episode with a scripted engine, and LMPO on
both roles' tokens."""

import random

import pytest
import torch

from hysparse_kernels.training.data import ByteTokenizer
from hysparse_kernels.training.memory import team as team_mod
from hysparse_kernels.training.memory.bank import Entry
from hysparse_kernels.training.memory.composer import LatentAgent
from hysparse_kernels.training.memory.latentmem import ARMS, LatentMemRun, composer_context, role_inits
from hysparse_kernels.training.memory.roles import (MEMORY_HEADER, RoleSFTConfig, demonstration, gold_plan,
                                                   gold_transcript, memory_block, role_prompt, sample_batch, slot_loss)
from hysparse_kernels.training.memory.team import Team, first_line
from hysparse_kernels.training.rl.policy import build_policy
from hysparse_kernels.training.rl.rollout import Rollout
from hysparse_kernels.training.rl.tasks import get_task
from hysparse_kernels.training.rl.trainer import RLConfig

from test_memory_latentmem import _short_lookup, bag_embed

pytestmark = [pytest.mark.filterwarnings("ignore::hysparse_kernels.BackendFallbackWarning",
                                        "ignore::hysparse_kernels.tuned.TunedConfigWarning")]


def _example(task, hops=2, answerable=True):
    return next(e for e in task.examples("train") if e.meta["hops"] == hops and e.meta["answerable"] == answerable)


def test_role_prompts_plans_and_memory_block():
    task = get_task("lookup", 0)
    ex = _example(task, 2)
    start, (r1, r2) = ex.meta["start"], ex.meta["path"]
    assert gold_plan(ex) == f"plan: {start} {r1}; ? {r2}\n"
    assert role_prompt("planner", ex) == ex.prompt
    assert role_prompt("solver", ex, "plan: x") == ex.prompt + "plan: x\n"
    mem = "Q: Tari friend\nsearch: Tari friend\n"
    block = memory_block(mem)
    assert block == MEMORY_HEADER + "| Q: Tari friend\n| search: Tari friend\n"
    assert role_prompt("planner", ex, memory=mem) == block + ex.prompt
    # the question is the only line that starts with "Q:"
    assert [ln for ln in role_prompt("solver", ex, gold_plan(ex), mem).splitlines() if ln.startswith("Q:")] == [ex.prompt.strip()]
    with pytest.raises(ValueError, match="role: expected one of"):
        role_prompt("critic", ex)
    with pytest.raises(ValueError, match="plan"):
        role_prompt("solver", ex)
    # demonstrations: the planner writes the plan; the solver's prompt carries it, then the lookup turns
    p = demonstration("planner", task, ex)
    assert [(s.text, s.model) for s in p] == [(ex.prompt, False), (gold_plan(ex), True)]
    s = demonstration("solver", task, ex, memory=mem)
    assert s[0].text == block + ex.prompt + gold_plan(ex) and not s[0].model
    assert [x.text for x in s[1:]] == [x.text for x in task.demonstration(ex)[1:]]
    assert gold_transcript(task, ex).startswith(ex.prompt + gold_plan(ex) + "search: ")


def test_composer_context_holds_the_role():
    task = get_task("lookup", 0)
    tok = ByteTokenizer()
    ex = _example(task, 1)
    a = tok.decode(composer_context("planner", ["exp\n"], ex, tok))
    b = tok.decode(composer_context("solver", ["exp\n"], ex, tok))
    assert a.startswith("role: planner\n") and b.startswith("role: solver\n")
    assert a.split("\n", 1)[1] == b.split("\n", 1)[1] == f"experience:\nexp\ntask:\n{ex.prompt}"


def test_sft_batches_carry_text_memory_and_latent_slots():
    task = get_task("lookup", 0)
    tok = ByteTokenizer()
    train = task.examples("train")
    rng = random.Random(0)
    ids, mask, slots = sample_batch(RoleSFTConfig(role="solver", batch=6, p_text=0.0, p_latent=1.0, max_slots=3),
                                    task, train, rng, tok)
    assert slots.min() >= 1 and slots.max() <= 3
    for b in range(6):
        k = int(slots[b])
        assert ids[b, :k + 1].tolist() == [tok.bos] * (k + 1) and mask[b, :k + 1].sum() == 0
        assert tok.decode(ids[b, k + 1:].tolist()).startswith("Q: ")
    ids, mask, slots = sample_batch(RoleSFTConfig(role="planner", batch=4, p_text=1.0, p_latent=0.0), task, train, rng, tok)
    assert slots.tolist() == [0] * 4
    for b in range(4):
        text = tok.decode(ids[b, 1:].tolist())
        assert text.startswith(MEMORY_HEADER + "| Q: ")
        written = tok.decode(ids[b][mask[b].bool()].tolist())
        assert written.startswith("plan: ") and written.endswith("\n") and written.count("\n") == 1
    with pytest.raises(ValueError, match="p_text, p_latent"):
        RoleSFTConfig(p_text=0.7, p_latent=0.5).validate()


def test_slot_loss_without_noise_is_the_masked_cross_entropy_of_the_ids():
    from hysparse_kernels.training.rl.sft import sft_losses

    torch.manual_seed(0)
    model = build_policy("tiny-mimo-7b", seed=0)
    task = get_task("lookup", 0)
    ids, mask, slots = sample_batch(RoleSFTConfig(batch=3, p_text=0.3, p_latent=0.7), task, task.examples("train"),
                                    random.Random(1), ByteTokenizer())
    got = slot_loss(model, ids, mask, slots, 0.0, torch.Generator().manual_seed(0))
    want, _ = sft_losses(model, ids, mask, with_mtp=False)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    noisy = slot_loss(model, ids, mask, torch.full_like(slots, 2), 1.0, torch.Generator().manual_seed(0))
    noisy = noisy.detach()
    assert torch.isfinite(noisy) and float(noisy) != pytest.approx(float(got.detach()), abs=1e-7)


class ScriptedEngine:
    """Stands in for ``RolloutEngine``: the planner writes the gold plan of the question in its
    prompt; the solver follows the plan line in its prompt with the real tool (``env``), then
    answers the last person found. Records what each role was shown."""

    seen: list = []

    def __init__(self, model, tok, params):
        self.model, self.tok, self.params = model, tok, params

    def generate(self, prompts, env, generator):
        task = get_task("lookup", 0)
        out = []
        for row, p in enumerate(prompts):
            ScriptedEngine.seen.append((type(self.model).__name__, p))
            text = self.tok.decode([t for t in p if t not in (self.tok.bos, self.tok.pad)])
            lines = [ln for ln in text.splitlines() if not ln.startswith("| ") and ln != MEMORY_HEADER.strip()]
            r = Rollout(prompt=list(p))
            q = next(ln for ln in lines if ln.startswith("Q: "))
            ex = next(e for e in task.examples("train") if e.prompt.strip() == q)
            if env is None:  # the planner
                turns = [gold_plan(ex)]
            else:
                plan = next(ln for ln in lines if ln.startswith("plan: "))[len("plan: "):].split("; ")
                who, turns = plan[0].split()[0], []
                for hop in plan:
                    rel = hop.split()[-1]
                    turns.append(f"search: {who} {rel}\n")
                    obs = env.observe(row, turns[-1])
                    facts = obs[2:].strip().split()
                    turns.append(obs)
                    who = facts[-1] if facts[0] != "none" else "unknown"
                    if who == "unknown":
                        break
                turns.append(f"answer: {who}\n")
            for i, t in enumerate(turns):
                ids = self.tok.encode(t)
                model_turn = env is None or i % 2 == 0 or i == len(turns) - 1
                r.tokens += ids
                r.mask += [int(model_turn)] * len(ids)
                r.logprobs += [-0.5 if model_turn else 0.0] * len(ids)
                r.turn += [i // 2] * len(ids)
            out.append(r)
        return out, None


def test_team_episode_flow_with_a_scripted_engine(monkeypatch):
    monkeypatch.setattr(team_mod, "RolloutEngine", ScriptedEngine)
    ScriptedEngine.seen = []
    task = get_task("lookup", 0)
    exs = [_example(task, 2), _example(task, 3, answerable=False)]
    tm = Team(build_policy("tiny-mimo-7b", seed=0), build_policy("tiny-mimo-7b", seed=1), task, n_latent=3)
    ep = tm.episodes(exs, "none", reps=2, temperature=1.0, generator=torch.Generator())
    assert ep.plans == [gold_plan(e) for e in exs for _ in range(2)]
    assert [v.outcome for v in ep.verdicts] == ["correct"] * 4  # the unanswerable one answers "unknown"
    assert ep.prompt_tokens["planner"] == [1 + len(e.prompt) for e in exs for _ in range(2)]
    assert ep.prompt_tokens["solver"] == [1 + len(e.prompt) + len(gold_plan(e)) for e in exs for _ in range(2)]
    tr = ep.transcripts(ByteTokenizer())
    assert tr[0].startswith(exs[0].prompt + gold_plan(exs[0]) + "search: ") and tr[0].endswith(f"answer: {exs[0].answer}\n")
    # text memory: before both roles' prompts; latent memory: slots after BOS, one latent per role
    texts = {"planner": ["Q: Zz\n", "Q: Yy\n"], "solver": ["Q: Xx\n", "Q: Ww\n"]}
    ep = tm.episodes(exs, "text", reps=1, temperature=1.0, generator=torch.Generator(), texts=texts)
    assert [v.outcome for v in ep.verdicts] == ["correct"] * 2
    assert ep.prompt_tokens["planner"][0] == 1 + len(memory_block("Q: Zz\n")) + len(exs[0].prompt)
    ScriptedEngine.seen = []
    lat = {"planner": torch.randn(2, 3, 64), "solver": torch.randn(2, 3, 64)}
    ep = tm.episodes(exs, "latent", reps=2, temperature=1.0, generator=torch.Generator(), latents=lat)
    assert [k for k, _ in ScriptedEngine.seen] == ["LatentAgent"] * 8
    assert ep.prompt_tokens["planner"][0] == 1 + 3 + len(exs[0].prompt)
    for role in ("planner", "solver"):
        mem = tm.agents[role]._memory
        prompts = tm.prompts(role, exs, "latent", plans=[gold_plan(e) for e in exs] if role == "solver" else None)
        for i, p in enumerate(prompts):
            assert torch.equal(mem[tuple(p)], lat[role][i])
    with pytest.raises(ValueError, match="latents"):
        tm.episodes(exs, "latent", reps=1, temperature=1.0, generator=torch.Generator(), latents={"solver": lat["solver"]})
    with pytest.raises(ValueError, match="mode"):
        tm.episodes(exs, "both", reps=1, temperature=1.0, generator=torch.Generator())
    assert first_line("plan: a; ? b\nsearch") == "plan: a; ? b\n" and first_line("plan: a") == "plan: a\n"


@pytest.fixture
def inits(tmp_path):
    from hysparse_kernels.models import save_pretrained

    for seed, role in enumerate(("planner", "solver")):
        save_pretrained(build_policy("tiny-mimo-7b", seed=seed), tmp_path / "init" / role)
    return str(tmp_path / "init")


def test_role_inits_needs_a_checkpoint_per_role(tmp_path, inits):
    cfg = RLConfig(recipe="latentmem", init_from=inits)
    assert role_inits(cfg) == {r: f"{inits}/{r}" for r in ("planner", "solver")}
    with pytest.raises(ValueError, match=r"--init-from: expected a directory with a checkpoint per role .*without planner, solver"):
        role_inits(RLConfig(recipe="latentmem", init_from=str(tmp_path)))


def test_composition_per_role_shapes_and_difference(inits):
    cfg = RLConfig(recipe="latentmem", init_from=inits)
    r = LatentMemRun(cfg, role_inits(cfg), bag_embed, n_latent=3)
    exs = r.task.examples("dev", 2)
    lat = r.latents(exs, [["Q: Tari friend\n"], []])
    assert set(lat) == {"planner", "solver"}
    assert all(v.shape == (2, 3, 64) for v in lat.values())
    assert all(torch.count_nonzero(v) == 0 for v in lat.values())  # the projection starts at zero
    with torch.no_grad():
        r.composer.proj.weight.normal_(0, 0.05)
    lat = r.latents(exs, [["Q: Tari friend\n"], []])
    assert not torch.allclose(lat["planner"], lat["solver"], atol=1e-6)  # same experience, other role
    stats = r.latent_roles(exs)
    assert -1 <= stats["cos_planner_solver"] <= 1 and stats["rel_diff_planner_solver"] > 0
    swap = r.arm_memory("latent_swap", exs)["latents"]
    same = r.arm_memory("latentmem", exs)["latents"]
    assert torch.equal(swap["planner"], same["solver"]) and torch.equal(swap["solver"], same["planner"])
    assert r.arm_memory("none", exs) == {"mode": "none"}
    assert set(ARMS) == {"none", "text", "latentmem", "latent_swap", "latent_noexp"}
    with pytest.raises(ValueError, match="arm"):
        r.arm_memory("both", exs)


def test_lmpo_step_trains_the_composer_through_both_roles(inits, monkeypatch):
    """One team LMPO step with rewards that vary inside each group: the composer moves, neither
    agent does, the loss has a gradient from each role's tokens, the episodes join the bank."""
    from hysparse_kernels.training.rl.tasks import Verdict

    _short_lookup(monkeypatch)
    cfg = RLConfig(recipe="latentmem", init_from=inits, prompts_per_step=2, group_size=4, lr=1e-2, warmup=1,
                   minibatches=2)
    r = LatentMemRun(cfg, role_inits(cfg), bag_embed, n_latent=2)
    r.fill_bank(4)
    r.bank.entries = [Entry(e.key, e.trajectory, True) for e in r.bank.entries]
    r.task.verify = lambda e, text: Verdict("correct", 1.0, "x") if len(text) % 2 else Verdict("wrong", 0.0, "y")
    agents0 = {role: {k: v.clone() for k, v in a.agent.state_dict().items()} for role, a in r.team.agents.items()}
    comp0 = {k: v.clone() for k, v in r.composer.state_dict().items()}
    grads = {}
    real = r.team.agents["planner"].response_logprobs

    def spy(latent, batch, temperature):
        lat = latent.detach().requires_grad_()
        lp = real(lat, batch, temperature)
        (lp * batch["response_mask"]).sum().backward(retain_graph=False)
        grads["planner"] = lat.grad.abs().sum()
        return real(latent, batch, temperature)

    monkeypatch.setattr(r.team.agents["planner"], "response_logprobs", spy)
    m = r.step(0)
    for role, a in r.team.agents.items():
        assert all(torch.equal(agents0[role][k], v) for k, v in a.agent.state_dict().items()), role
    moved = [k for k, v in r.composer.state_dict().items() if not torch.equal(comp0[k], v)]
    assert "proj.weight" in moved and "queries" in moved
    assert m["grad_norm"] > 0 and grads["planner"] > 0
    assert len(r.bank) == 4 + 8 and 0 <= m["plan_exact"] <= 1


def test_role_warm_start_is_cached_by_settings(tmp_path, monkeypatch):
    """A role's warm start trains once into the cache (a whole ``final/``) and is reused; other
    settings get another entry."""
    from hysparse_kernels.models import load_pretrained
    from hysparse_kernels.training.memory import roles

    monkeypatch.setenv("HYSPARSE_CACHE", str(tmp_path / "cache"))
    cfg = RoleSFTConfig(role="planner", steps=2, batch=2, warmup=1)
    calls = []
    real = roles.train_role
    monkeypatch.setattr(roles, "train_role", lambda c, out, progress=True: calls.append(c.role) or real(c, out, progress=False))
    a = roles.cached_role(cfg, progress=False)
    assert a == roles.cached_role(cfg, progress=False) and calls == ["planner"]
    assert a.parent.name.startswith("lookup-planner-tiny-mimo-7b-") and (a / "config.json").exists()
    assert load_pretrained(str(a)).graph.hidden == 64
    assert len((a.parent / "metrics.jsonl").read_text().splitlines()) == 2
    b = roles.cached_role(RoleSFTConfig(role="solver", steps=2, batch=2, warmup=1), progress=False)
    assert b != a and calls == ["planner", "solver"]
