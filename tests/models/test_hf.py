"""transformers interop on the tiny twins, offline: the Auto classes load a folder written by our
``save_pretrained``; ``generate`` returns exactly our ``generate``'s tokens (left-padded batches
included) through the same ``hysparse`` ops and KV cache; ``labels`` give the standard loss and
``Trainer`` trains the model."""

import json

import pytest
import torch

pytest.importorskip("transformers")
import hysparse_kernels.models.hf as hf  # noqa: E402  (registers the Auto classes)
from transformers import AutoConfig, AutoModelForCausalLM  # noqa: E402

from hysparse_kernels import ir  # noqa: E402
from hysparse_kernels.models import KVCache, build_model, generate, save_pretrained  # noqa: E402
from hysparse_kernels.models.config import ModelConfig  # noqa: E402

pytestmark = [pytest.mark.filterwarnings("ignore::hysparse_kernels.BackendFallbackWarning"),
              pytest.mark.filterwarnings("ignore::hysparse_kernels.tuned.TunedConfigWarning")]

TWINS = ["tiny-hysparse-7b", "tiny-mimo-v2-flash", "tiny-mimo-7b"]
PROMPTS = [[5, 6, 7, 8, 9, 10, 11, 12, 13], [3, 1, 4], [9, 2, 6, 5, 3, 5, 8]]


def left_padded(prompts, pad=0):
    S = max(map(len, prompts))
    ids = torch.tensor([[pad] * (S - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (S - len(p)) + [1] * len(p) for p in prompts])
    return ids, mask


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    out = {}
    for name in TWINS:
        torch.manual_seed(0)
        model = build_model(name).eval()
        path = tmp_path_factory.mktemp(name) / "ckpt"
        save_pretrained(model, path)
        out[name] = (model, path)
    return out


@pytest.mark.parametrize("name", TWINS)
def test_auto_classes_load_our_checkpoint(saved, name):
    model, path = saved[name]
    assert json.loads((path / "config.json").read_text())["model_type"] == "hysparse"
    assert type(AutoConfig.from_pretrained(path)) is hf.HySparseConfig
    auto = AutoModelForCausalLM.from_pretrained(path)
    assert type(auto) is hf.HySparseForCausalLM and auto.graph == model.graph
    ours, theirs = model.state_dict(), auto.state_dict()
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    ids = torch.tensor([PROMPTS[0]])
    with torch.no_grad():
        assert torch.equal(auto(ids).logits, model(ids))


@pytest.mark.parametrize("name", TWINS)
def test_generate_returns_our_tokens_with_left_padding(saved, name):
    model, path = saved[name]
    auto = AutoModelForCausalLM.from_pretrained(path)
    ours = generate(model, PROMPTS, max_new_tokens=16, temperature=0.0)
    ids, mask = left_padded(PROMPTS)
    out = auto.generate(ids, attention_mask=mask, max_new_tokens=16, do_sample=False, pad_token_id=0)
    assert out[:, :ids.shape[1]].tolist() == ids.tolist()
    assert out[:, ids.shape[1]:].tolist() == ours


def test_generate_one_prompt_without_a_mask(saved):
    model, path = saved["tiny-mimo-7b"]
    auto = AutoModelForCausalLM.from_pretrained(path)
    single = auto.generate(torch.tensor([PROMPTS[1]]), max_new_tokens=16, do_sample=False, pad_token_id=0)
    assert single[0, len(PROMPTS[1]):].tolist() == generate(model, [PROMPTS[1]], max_new_tokens=16)[0]


def test_generate_runs_the_hysparse_ops_and_the_shared_kv_cache(saved):
    model, path = saved["tiny-hysparse-7b"]
    auto = AutoModelForCausalLM.from_pretrained(path)
    ids, mask = left_padded(PROMPTS)

    def hysparse_ops(fn) -> dict:
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            fn()
        return {e.key: e.count for e in prof.key_averages() if e.key.startswith("hysparse::")}

    theirs = hysparse_ops(lambda: auto.generate(ids, attention_mask=mask, max_new_tokens=4, do_sample=False,
                                                pad_token_id=0))
    ours = hysparse_ops(lambda: generate(model, PROMPTS, max_new_tokens=4))
    assert theirs == ours  # the same ops, as many times
    assert {"hysparse::attention_with_block_scores", "hysparse::topk_blocks", "hysparse::attention_decode",
            "hysparse::sparse_attention_decode"} <= set(ours)
    with torch.no_grad():
        out = auto(ids, attention_mask=mask, use_cache=True)
    cache = out.cache
    assert isinstance(cache, KVCache)
    assert [int(cache.lens[0][b]) for b in range(3)] == [len(p) for p in PROMPTS]
    # The sparse layers hold no cache for their sparse branch: only their 16-token SWA ring.
    sparse = [layer.index for layer in model.graph.layers if layer.pattern.kind == "sparse"]
    assert all(cache.k[i].shape[2] == 16 for i in sparse)
    growable_plan = KVCache(model.graph, 3, ids.shape[1], growable=True)
    assert cache.nbytes == growable_plan.nbytes


def test_labels_give_the_standard_shifted_loss(saved):
    model, path = saved["tiny-mimo-v2-flash"]
    auto = AutoModelForCausalLM.from_pretrained(path).train()
    ids = torch.randint(0, model.graph.vocab, (2, 20), generator=torch.Generator().manual_seed(3))
    labels = ids.clone()
    labels[0, :5] = -100  # e.g. a prompt not trained on
    out = auto(ids, labels=labels)
    logits = model(ids)
    expected = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(),
                                                 ignore_index=-100)
    torch.testing.assert_close(out.loss, expected, rtol=1e-6, atol=1e-6)
    out.loss.backward()
    assert auto.model.layers[1].self_attn.q_proj.weight.grad.abs().sum() > 0


def test_padded_training_batch_equals_the_unpadded_sequences(saved):
    model, path = saved["tiny-hysparse-7b"]
    auto = AutoModelForCausalLM.from_pretrained(path)
    ids, mask = left_padded(PROMPTS)
    right = torch.tensor([p + [0] * (ids.shape[1] - len(p)) for p in PROMPTS])
    with torch.no_grad():
        left_logits = auto(ids, attention_mask=mask).logits
        right_logits = auto(right, attention_mask=mask.flip(1)).logits
        for b, p in enumerate(PROMPTS):
            alone = model(torch.tensor([p]))[0]
            torch.testing.assert_close(left_logits[b, ids.shape[1] - len(p):], alone, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(right_logits[b, :len(p)], alone, rtol=1e-5, atol=1e-5)



def test_trainer_trains_it(saved, tmp_path):
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    _, path = saved["tiny-mimo-7b"]
    auto = AutoModelForCausalLM.from_pretrained(path).train()
    seq = torch.arange(32) % 7 + 1  # one repeated pattern: learnable in a few steps
    data = [{"input_ids": seq, "labels": seq, "attention_mask": torch.ones(32, dtype=torch.long)} for _ in range(16)]
    before = auto(seq[None], labels=seq[None]).loss.item()
    args = transformers.TrainingArguments(output_dir=str(tmp_path / "run"), per_device_train_batch_size=4, max_steps=12,
                                          learning_rate=1e-2, report_to=[], save_strategy="no", logging_steps=4,
                                          use_cpu=True, dataloader_num_workers=0, seed=0)
    result = transformers.Trainer(model=auto, args=args, train_dataset=data).train()
    after = auto(seq[None], labels=seq[None]).loss.item()
    assert torch.isfinite(torch.tensor(result.training_loss)) and after < 0.5 * before
    auto.save_pretrained(tmp_path / "trained")
    again = AutoModelForCausalLM.from_pretrained(tmp_path / "trained")
    assert abs(again(seq[None], labels=seq[None]).loss.item() - after) < 1e-6


def test_a_mimo_config_json_is_built_by_the_auto_classes(tmp_path):
    config = ModelConfig.from_graph(ir.get_graph("tiny-mimo-7b")).to_hf_config()
    config.update(model_type="mimo", architectures=["MiMoForCausalLM"])
    (tmp_path / "config.json").write_text(json.dumps(config))
    cfg = AutoConfig.from_pretrained(tmp_path)
    assert type(cfg) is hf.MiMoConfig
    model = AutoModelForCausalLM.from_config(cfg)
    assert type(model) is hf.MiMoForCausalLM and model.graph == ir.get_graph("tiny-mimo-7b")
    assert model.graph.mtp.layout == "mimo"


def test_unsupported_inputs_are_named(saved):
    _, path = saved["tiny-hysparse-7b"]
    auto = AutoModelForCausalLM.from_pretrained(path)
    ids = torch.tensor([[1, 2, 3, 4]])
    with pytest.raises(ValueError, match="inputs_embeds are not supported"):
        auto(inputs_embeds=torch.zeros(1, 4, 64))
    with pytest.raises(ValueError, match="row 0 has padding between its tokens"):
        auto(ids, attention_mask=torch.tensor([[1, 0, 1, 1]]))
    with pytest.raises(ValueError, match="position_ids: the model counts each row from its first unmasked token"):
        auto(ids, position_ids=torch.tensor([[5, 6, 7, 8]]))
    auto(ids, position_ids=torch.arange(4)[None])  # its own positions are accepted
    with pytest.raises(ValueError, match="expected a local checkpoint folder"):
        hf.HySparseForCausalLM.from_pretrained(path.parent / "missing")
