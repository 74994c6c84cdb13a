"""MTP drafting and speculative decoding: greedy equals plain greedy, rollback is exact,
rejection sampling preserves the target distribution."""

import pytest
import torch

from hysparse_kernels.models import HybridLM, ModelConfig, build_model, generate
from hysparse_kernels.models import speculative as spec
from hysparse_kernels.models.mtp import mtp_logits
from hysparse_kernels.training.pretrain import model_config

pytestmark = pytest.mark.filterwarnings("ignore::hysparse_kernels.BackendFallbackWarning")


def _model(name):
    if name == "tiny-hysparse-80b-a3b-mtp3":
        return HybridLM(model_config("tiny-hysparse-80b-a3b", 3).to_graph()).double().eval()
    return build_model(name).double().eval()


@pytest.mark.parametrize("name,K", [("tiny-mimo-v2-flash", 1), ("tiny-mimo-v2-flash", 3), ("tiny-hysparse-80b-a3b-mtp3", 2), ("tiny-mimo-7b", 1)])
def test_greedy_speculative_equals_plain_greedy(name, K):
    model = _model(name)
    prompt = list(range(5, 30))
    plain = generate(model, [prompt], 30)[0]
    out, stats = spec.speculative_generate(model, prompt, 30, num_draft=K)
    assert out == plain
    assert stats.rounds >= 1 and stats.tokens == len(out) - 1


def test_accepted_drafts_and_rollback_keep_greedy_output(monkeypatch):
    """Drafts that are partly right (accept some, reject the rest) exercise the rollback of the
    full caches, the SWA rings and the HySparse selection; the output must stay greedy's."""
    model = _model("tiny-hysparse-80b-a3b-mtp3")
    prompt = list(range(40, 75))
    plain = generate(model, [prompt], 40)[0]
    truth = prompt + plain
    calls = {"n": 0}

    def oracle_draft(model_, hidden, tokens, num_draft, temperature, generator=None):
        calls["n"] += 1
        n = len(tokens)
        good = calls["n"] % (num_draft + 1)  # 0..K correct drafts, then a wrong one
        drafts = [truth[n + j] if j < good else (truth[n + j] + 1) % 259 for j in range(num_draft)]
        return drafts, [None] * num_draft

    monkeypatch.setattr(spec, "draft", oracle_draft)
    out, stats = spec.speculative_generate(model, prompt, 40, num_draft=3)
    assert out == plain
    assert stats.acceptance_length > 1.5 and sum(stats.accepted_per_head) > 0
    # per round: round i accepts (i + 1) % 4 drafts and commits one more token
    assert stats.round_tokens == [(i + 1) % 4 + 1 for i in range(stats.rounds)]
    # and the entropy of the main model at the round's first drafted position, recomputed here by
    # a plain forward of the context the round started from
    start = len(prompt) + 1
    for i, h in enumerate(stats.round_entropy):
        n = start + sum(stats.round_tokens[:i])
        with torch.no_grad():
            p = torch.softmax(model(torch.tensor([truth[:n]]))[0, -1], dim=-1)
        expected = float(-(p * p.log()).sum())
        assert h == pytest.approx(expected, rel=1e-9, abs=1e-12)


def test_mtp_draft_matches_training_view():
    """The draft path (window recompute) gives block 1 the same logits as the training view."""
    model = _model("tiny-mimo-v2-flash")
    ids = torch.randint(0, 259, (1, 40))
    with torch.no_grad():
        hidden = model.hidden_states(ids)
        train_logits = mtp_logits(model, hidden, ids)[0]  # position i predicts ids[i + 2]
        drafts, _ = spec.draft(model, hidden[0, :-1], ids[0].tolist(), 1, 0.0)
    assert drafts[0] == int(train_logits[0, 38].argmax())


def test_rejection_rule_preserves_the_target_distribution():
    g = torch.Generator().manual_seed(0)
    p = torch.tensor([0.5, 0.2, 0.2, 0.1], dtype=torch.float64)
    q = torch.tensor([0.1, 0.6, 0.1, 0.2], dtype=torch.float64)
    n = 20000
    counts = torch.zeros(4)
    for _ in range(n):
        d = int(torch.multinomial(q, 1, generator=g))
        counts[spec.accept_or_resample(p, q, d, g)[1]] += 1
    chi2 = float(((counts - n * p) ** 2 / (n * p)).sum())
    assert chi2 < 16.27, chi2  # 3 degrees of freedom, p = 0.001


@pytest.mark.slow
def test_speculative_sampling_matches_the_target_model_end_to_end():
    cfg = ModelConfig.from_hf_config({
        "vocab_size": 4, "hidden_size": 16, "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 1,
        "intermediate_size": 32, "num_nextn_predict_layers": 1, "mtp_layer_type": "full_attention",
    })
    model = HybridLM(cfg.to_graph()).double().eval()
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(40)  # sharpen the distributions so the draft and target differ
    prompt = [1, 2]
    with torch.no_grad():
        p1 = torch.softmax(model(torch.tensor([prompt]))[0, -1].double(), -1)
        joint = torch.stack([p1[a] * torch.softmax(model(torch.tensor([prompt + [a]]))[0, -1].double(), -1) for a in range(4)])
    g = torch.Generator().manual_seed(1)
    n = 1500
    counts = torch.zeros(4, 4)
    for _ in range(n):
        out, _ = spec.speculative_generate(model, prompt, 2, num_draft=1, temperature=1.0, generator=g)
        counts[out[0], out[1]] += 1
    expected = n * joint
    keep = expected > 5
    chi2 = float(((counts[keep] - expected[keep]) ** 2 / expected[keep]).sum())
    assert chi2 < 37.7, chi2  # <= 15 degrees of freedom, p = 0.001


def test_bad_arguments():
    model = build_model("tiny-mimo-7b")
    with pytest.raises(ValueError, match=r"num_draft: expected 1..1"):
        spec.speculative_generate(model, [1, 2], 4, num_draft=2)
    with pytest.raises(ValueError, match="expected a model with MTP blocks"):
        spec.speculative_generate(build_model("tiny-hysparse-7b"), [1, 2], 4)
