"""Generation with the audio LM: prefill each prompt into the backbone's KV cache, then one position
at a time: the LM head picks the next text token; when it is ``<|empty|>`` the patch decoder
generates the next patch (its own KV cache over the 11 local steps), and the new position is fed
back through the decode ops. ``force_audio`` skips the text choice (continuation of audio).

Example::

    out = generate(lm, [(text, audio)], max_positions=16, force_audio=True, temperature=0.8, top_k=20)
    new_text, new_audio = out[0]          # [n], [n, P, C]
"""

from __future__ import annotations

import torch
from torch import Tensor

from .config import EMPTY, EOSP
from .lm import AudioLM


def sample_tokens(logits: Tensor, temperature: float = 0.0, top_k: int | None = None, generator=None) -> Tensor:
    """[N, V] logits -> [N] tokens: argmax at temperature 0 (ties to the lower id), else a draw
    from the softmax at ``temperature`` restricted to the ``top_k`` best."""
    if temperature == 0:
        return logits.argmax(-1)
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    return torch.multinomial(torch.softmax(logits, -1), 1, generator=generator).squeeze(-1)


def _check_prompts(model: AudioLM, prompts) -> None:
    if not prompts:
        raise ValueError("prompts: expected a non-empty list of (text [G], audio [G, P, C]) pairs")
    for i, (text, audio) in enumerate(prompts):
        if text.dim() != 1 or text.numel() == 0:
            raise ValueError(f"prompts[{i}]: expected a non-empty text [G], got shape {tuple(text.shape)}")
        model.check(text[None], audio[None])


@torch.no_grad()
def generate(model: AudioLM, prompts, max_positions: int, *, force_audio: bool = False, stop_token: int | None = EOSP,
             temperature: float = 0.0, top_k: int | None = None, text_temperature: float = 0.0,
             generator: torch.Generator | None = None) -> list[tuple[Tensor, Tensor]]:
    """Continue each prompt ``(text [G], audio [G, P, C])`` by up to ``max_positions`` positions.

    Audio tokens are drawn at ``temperature`` / ``top_k``, text tokens at ``text_temperature``.
    Without ``force_audio`` a sequence stops after emitting ``stop_token``. Returns per prompt the
    new ``(text [n], audio [n, P, C])``.
    """
    if isinstance(max_positions, bool) or not isinstance(max_positions, int) or max_positions < 1:
        raise ValueError(f"max_positions: expected a positive int, got {max_positions!r}")
    if temperature < 0 or text_temperature < 0:
        raise ValueError(f"temperature/text_temperature: expected >= 0, got {temperature}, {text_temperature}")
    _check_prompts(model, prompts)
    cfg = model.cfg
    B = len(prompts)
    device = model.lm_head.weight.device
    cache = model.new_cache(B, max(len(t) for t, _ in prompts) + max_positions)
    last = []
    for b, (text, audio) in enumerate(prompts):
        last.append(model.hidden_states(text[None].to(device), audio[None].to(device), cache.select(b))[:, -1])
    hidden = torch.cat(last)  # [B, hidden]
    empty_patch = torch.tensor(cfg.empty_ids, device=device).expand(cfg.group_size, cfg.num_channels)
    out_text = [[] for _ in range(B)]
    out_audio = [[] for _ in range(B)]
    done = torch.zeros(B, dtype=torch.bool, device=device)

    def audio_sampler(logits, channel, step):
        return sample_tokens(logits, temperature, top_k, generator)

    for i in range(max_positions):
        if force_audio:
            tok = torch.full((B,), EMPTY, dtype=torch.long, device=device)
        else:
            tok = sample_tokens(model.text_logits(hidden), text_temperature, None, generator)
        patches = empty_patch.expand(B, -1, -1).clone()
        is_audio = tok == EMPTY
        if bool(is_audio.any()):
            patches[is_audio] = model.patch_decoder.generate(hidden[is_audio], model.speech_embeddings, audio_sampler)
        for b in range(B):
            if not done[b]:
                out_text[b].append(tok[b])
                out_audio[b].append(patches[b])
        if stop_token is not None and not force_audio:
            done |= tok == stop_token
            if bool(done.all()):
                break
        if i + 1 == max_positions:
            break
        hidden = model.hidden_states(tok[:, None], patches[:, None], cache)[:, -1]
    return [(torch.stack(t) if t else torch.zeros(0, dtype=torch.long, device=device),
             torch.stack(a) if a else empty_patch[None][:0]) for t, a in zip(out_text, out_audio)]
