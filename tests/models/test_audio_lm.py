"""MiMo-Audio's LM on the zoo: the delay pattern against a hand-worked example, the patch decoder's
teacher forcing against its step-by-step decoding, the LM's prefill against position-by-position
decoding through the backbone's KV cache (float64), the input layout, losses, generation and the
parameter counts of the IR against the built modules."""

import dataclasses

import pytest
import torch

from hysparse_kernels.models.audio import (EMPTY, EOSP, PAD, SOSP, AudioLM, AudioLMConfig, build_audio_lm, delay_grid,
                                           delay_mask, get_audio_config, pack, param_count, undelay_grid, unpack)
from hysparse_kernels.models.audio.generate import generate
from hysparse_kernels.models.audio.patch import frame_embeddings

pytestmark = [pytest.mark.filterwarnings("ignore::hysparse_kernels.BackendFallbackWarning",
                                        "ignore::hysparse_kernels.tuned.TunedConfigWarning"), pytest.mark.one_thread]


TINY = get_audio_config("tiny-mimo-audio")
E = 9  # the empty id of the hand-worked example's three channels (codebooks of 9 codes)
SMALL = AudioLMConfig(codebook_sizes=(E, E, E), group_size=2, delay_pattern=(0, 1, 2), audio_loss_weights=(3.0, 2.0, 1.0),
                      input_local_layers=1, local_layers=1, local_ffn_dim=32, input_local_dim=16, local_dim=16,
                      local_attn_heads=2)


def test_delay_pattern_hand_worked():
    """P = 2 frames, channels a, b, c with delays 0, 1, 2 (frames a0 b0 c0 = 1 2 3, a1 b1 c1 = 4 5 6):

        step   0    1    2    3
        a      a0   a1   -    -
        b      -    b0   b1   -
        c      -    -    c0   c1
    """
    patch = torch.tensor([[[1, 2, 3], [4, 5, 6]]])  # [N=1, P=2, C=3]
    grid = delay_grid(patch, (0, 1, 2), (E, E, E))
    assert grid.tolist() == [[[1, E, E], [4, 2, E], [E, 5, 3], [E, E, 6]]]
    assert delay_mask(2, (0, 1, 2)).tolist() == [[True, False, False], [True, True, False], [False, True, True], [False, False, True]]
    assert torch.equal(undelay_grid(grid, (0, 1, 2), 2), patch)


def test_mimo_delay_pattern_has_eleven_steps_and_emits_every_token_once():
    mask = delay_mask(4, TINY.delay_pattern)
    assert TINY.delay_steps == 11 and mask.shape == (11, 8)
    assert mask.sum(0).tolist() == [4] * 8  # each channel: its 4 frames
    assert mask.sum(1).tolist() == [1, 2, 3, 4, 4, 4, 4, 4, 3, 2, 1]
    patch = torch.randint(0, 32, (5, 4, 8))
    assert torch.equal(undelay_grid(delay_grid(patch, TINY.delay_pattern, TINY.empty_ids), TINY.delay_pattern, 4), patch)


def test_patch_decoder_inputs_follow_the_delay_pattern():
    """Local step 0 reads the backbone state; step s reads the sum of the embeddings of what step s - 1
    emitted: step 1 emb_a(a0); step 2 emb_a(a1) + emb_b(b0); step 3 emb_b(b1) + emb_c(c0)."""
    lm = AudioLM(SMALL).double()
    seen = {}
    lm.patch_decoder.local_transformer.register_forward_pre_hook(lambda m, args: seen.setdefault("x", args[0]))
    patch = torch.tensor([[[1, 2, 3], [4, 5, 6]]])
    hidden = torch.randn(1, lm.graph.hidden, dtype=torch.float64)
    lm.patch_decoder.logits(hidden, patch, lm.speech_embeddings)
    x = seen["x"][0]  # [S=4, local_dim]
    emb = [lambda i, c=c: lm.speech_embeddings[c].weight[i] for c in range(3)]
    torch.testing.assert_close(x[0], lm.patch_decoder.hidden_states_downcast(hidden)[0])
    torch.testing.assert_close(x[1], emb[0](1))
    torch.testing.assert_close(x[2], emb[0](4) + emb[1](2))
    torch.testing.assert_close(x[3], emb[1](5) + emb[2](3))


def test_frame_embeddings_skip_empty_ids():
    lm = AudioLM(SMALL)
    codes = torch.tensor([[1, E, 3]])
    got = frame_embeddings(lm.speech_embeddings, codes, SMALL.empty_ids)
    torch.testing.assert_close(got, lm.speech_embeddings[0].weight[1:2] + lm.speech_embeddings[2].weight[3:4])


@pytest.mark.parametrize("cfg", [SMALL, TINY], ids=["P2-C3", "mimo-P4-C8"])
def test_patch_decoder_teacher_forcing_equals_step_by_step(cfg):
    lm = AudioLM(cfg).double().eval()
    N = 3
    patch = torch.stack([torch.randint(0, k, (N, cfg.group_size)) for k in cfg.codebook_sizes], -1)
    hidden = torch.randn(N, lm.graph.hidden, dtype=torch.float64)
    forced = lm.patch_decoder.logits(hidden, patch, lm.speech_embeddings)
    grid = delay_grid(patch, cfg.delay_pattern, cfg.empty_ids)
    stepped = {}

    def teacher(logits, c, s):
        stepped[(c, s)] = logits
        return grid[:, s, c]

    out = lm.patch_decoder.generate(hidden, lm.speech_embeddings, teacher)
    assert torch.equal(out, patch)
    mask = delay_mask(cfg.group_size, cfg.delay_pattern)
    assert set(stepped) == {(c, s) for s in range(cfg.delay_steps) for c in range(cfg.num_channels) if mask[s, c]}
    for (c, s), logits in stepped.items():
        want = forced[c][:, s].clone()
        want[:, cfg.empty_ids[c]] = float("-inf")  # generation never offers the empty id
        torch.testing.assert_close(logits, want, rtol=1e-10, atol=1e-10)


def _sequence(cfg, B=2, G=23, seed=0):
    """Text, an audio span, text, a second span: [B, G] and [B, G, P, C]."""
    g = torch.Generator().manual_seed(seed)
    text = torch.randint(0, 256, (B, G), generator=g)
    text[:, 3], text[:, 4:12], text[:, 12] = SOSP, EMPTY, EOSP
    text[:, 15], text[:, 16:G] = SOSP, EMPTY
    audio = torch.tensor(cfg.empty_ids).expand(B, G, cfg.group_size, cfg.num_channels).clone()
    codes = torch.stack([torch.randint(0, k, (B, G, cfg.group_size), generator=g) for k in cfg.codebook_sizes], -1)
    audio[text == EMPTY] = codes[text == EMPTY]
    return text, audio


@pytest.mark.parametrize("backbone", ["tiny-mimo-7b", "tiny-hysparse-7b"])
def test_prefill_equals_position_by_position_decode(backbone):
    """Through the backbone's KV cache (full layers; for the HySparse backbone also its SWA rings
    and per-step top-k, the sequence being longer than the window of 16)."""
    cfg = dataclasses.replace(TINY, backbone=backbone)
    lm = AudioLM(cfg).double().eval()
    text, audio = _sequence(cfg, G=23)
    with torch.no_grad():
        full = lm.hidden_states(text, audio)
        cache = lm.new_cache(2, 32)
        parts = [lm.hidden_states(text[:, :7], audio[:, :7], cache)]
        parts += [lm.hidden_states(text[:, t:t + 1], audio[:, t:t + 1], cache) for t in range(7, 23)]
    steps = torch.cat(parts, 1)
    torch.testing.assert_close(steps, full, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(lm.text_logits(steps), lm.text_logits(full), rtol=1e-9, atol=1e-9)


def test_pack_unpack_is_mimo_layout():
    text, audio = _sequence(TINY, B=1)
    text, audio = text[:, 2:7], audio[:, 2:7]  # text, <|sosp|>, three patches
    ids = pack(text, audio)
    assert ids.shape == (1, 9, 20)
    assert torch.equal(ids[0, 0, ::4], text[0]) and torch.equal(ids[0, 0, 1::4], text[0])
    assert torch.equal(ids[0, 1:, 4:8].t(), audio[0, 1])  # position 1, frames x channels
    t2, a2 = unpack(ids, 4)
    assert torch.equal(t2, text) and torch.equal(a2, audio)
    ids[0, 0, 1] = 7
    with pytest.raises(ValueError, match="row 0 must repeat"):
        unpack(ids, 4)


def test_losses_weights_and_gradients():
    lm = AudioLM(TINY)
    text, audio = _sequence(TINY)
    text[1, -3:] = PAD
    out = lm.losses(text, audio)
    w = torch.tensor(TINY.audio_loss_weights)
    want = (100 * out["text"] + (w * out["audio"]).sum()) / (100 + w.sum())
    torch.testing.assert_close(out["total"], want)
    out["total"].backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in lm.parameters())
    for emb, e in zip(lm.speech_embeddings, TINY.empty_ids):
        assert float(emb.weight[e].detach().abs().sum()) == 0 and float(emb.weight.grad[e].abs().sum()) == 0  # the empty id adds nothing


def test_decoder_patch_subset_is_seeded():
    lm = AudioLM(TINY)
    text, audio = _sequence(TINY)
    a = lm.losses(text, audio, decoder_patches=3, generator=torch.Generator().manual_seed(1))["audio"]
    b = lm.losses(text, audio, decoder_patches=3, generator=torch.Generator().manual_seed(1))["audio"]
    assert torch.equal(a, b)


def test_bad_inputs_are_named():
    lm = AudioLM(TINY)
    text, audio = _sequence(TINY)
    with pytest.raises(ValueError, match=r"audio: expected shape \(2, 23, 4, 8\)"):
        lm.hidden_states(text, audio[:, :, :3])
    bad = audio.clone()
    bad[0, 5, 0, 2] = 33  # channel 2 has 32 codes + the empty id 32
    with pytest.raises(ValueError, match="audio: expected channel c's ids"):
        lm.hidden_states(text, bad)
    with pytest.raises(ValueError, match="AudioLMConfig.delay_pattern"):
        AudioLMConfig(delay_pattern=(0, 1))
    with pytest.raises(ValueError, match="AudioLMConfig.backbone"):
        AudioLMConfig(backbone="gpt-2")


def test_generate_forced_audio_and_text_stop():
    lm = AudioLM(TINY).eval()
    text, audio = _sequence(TINY, B=2)
    prompts = [(text[0, :9], audio[0, :9]), (text[1, :6], audio[1, :6])]
    out = generate(lm, prompts, 3, force_audio=True, temperature=1.0, top_k=5, generator=torch.Generator().manual_seed(0))
    for new_text, new_audio in out:
        assert new_text.tolist() == [EMPTY] * 3 and new_audio.shape == (3, 4, 8)
        assert bool((new_audio < torch.tensor(TINY.codebook_sizes)).all())  # never the empty id
    # text mode: the LM head chooses; a sequence stops after <|eosp|>
    lm.text_logits = lambda h: torch.nn.functional.one_hot(torch.full(h.shape[:-1], EOSP), lm.graph.vocab).float()
    (t, a), = generate(lm, prompts[:1], 5)
    assert t.tolist() == [EOSP] and a.tolist() == [[list(TINY.empty_ids)] * 4]


def test_param_count_from_the_ir_matches_the_modules():
    lm = AudioLM(TINY)
    assert param_count(TINY)["total"] == sum(p.numel() for p in lm.parameters())
    big = build_audio_lm("mimo-audio-7b", device="meta")
    counts = param_count(get_audio_config("mimo-audio-7b"))
    assert counts["total"] == sum(p.numel() for p in big.parameters())
    assert all(p.device.type == "meta" for p in big.parameters())
    assert counts["backbone"] == 7_622_619_136 and 7.9e9 < counts["total"] < 8.1e9  # MiMo-7B + ~0.4B of patch modules
