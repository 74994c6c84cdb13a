"""Decode of a batch whose sequences have different lengths equals decoding each sequence on its
own: the full layers score and select blocks over each sequence's own keys of the padded cache
(one ``attention_with_block_scores`` / ``topk_blocks`` call with ``cache_seqlens``)."""

import pytest
import torch

import hysparse_kernels as hk
from hysparse_kernels.models import KVCache, build_model

pytestmark = pytest.mark.filterwarnings("ignore::hysparse_kernels.BackendFallbackWarning")

PROMPTS = (7, 41, 23)  # tokens; blocks of 16: 1, 3 and 2 blocks, so the selections differ in size
STEPS = 4


def _decode(model, prompts, steps, dtype):
    """Prefill each prompt into its own row of one batch cache, then ``steps`` batched decode
    steps: ``[B, steps, vocab]`` logits."""
    cache = KVCache(model.graph, len(prompts), max(p.shape[1] for p in prompts) + steps, dtype=dtype)
    for b, prompt in enumerate(prompts):
        model(prompt, cache=cache.select(b))
    return torch.cat([model(steps_ids, cache=cache) for steps_ids in _columns(prompts, steps)], 1)


def _columns(prompts, steps):
    g = torch.Generator().manual_seed(7)
    ids = torch.randint(0, 97, (len(prompts), steps), generator=g)
    return [ids[:, t:t + 1] for t in range(steps)]


@pytest.mark.parametrize("name", ["tiny-hysparse-7b", pytest.param("tiny-hysparse-80b-a3b", marks=pytest.mark.slow)])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
def test_ragged_batch_decode_equals_per_sequence_decode(name, dtype, monkeypatch):
    model = build_model(name).to(dtype).eval()
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(0, 97, (1, n), generator=g) for n in PROMPTS]
    calls = []
    real = hk.attention_with_block_scores

    def spy(*args, **kwargs):
        calls.append(kwargs.get("cache_seqlens"))
        return real(*args, **kwargs)

    monkeypatch.setattr(hk, "attention_with_block_scores", spy)  # what models.layers calls
    with torch.no_grad():
        batched = _decode(model, prompts, STEPS, dtype)
        monkeypatch.undo()
        cols = _columns(prompts, STEPS)
        alone = []
        for b, prompt in enumerate(prompts):
            cache = KVCache(model.graph, 1, prompt.shape[1] + STEPS, dtype=dtype)
            model(prompt, cache=cache)
            alone.append(torch.cat([model(c[b:b + 1], cache=cache) for c in cols], 1))
    # the decode steps score the whole ragged batch at once, with its lengths (prefill: one row)
    whole = [c.tolist() for c in calls if c is not None and c.shape == (len(PROMPTS),)]
    assert whole and whole[0] == [n + 1 for n in PROMPTS], whole
    tol = 1e-10 if dtype == torch.float64 else 1e-4
    torch.testing.assert_close(batched, torch.cat(alone), rtol=tol, atol=tol)
