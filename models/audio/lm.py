"""The MiMo-Audio LM: patch encoder -> a zoo backbone -> patch decoder; text and audio in one sequence.

A sequence has ``G`` positions at the backbone's rate (6.25 Hz for audio). Position ``g`` holds a
text token ``text[g]`` and a patch of codes ``audio[g]`` ``[P, C]``: a text position has codes of
the empty ids; an audio position has the text token ``<|empty|>``. MiMo-Audio's own layout is one
tensor ``[1 + C, G * P]`` (text in row 0, repeated over the ``P`` columns of its position; channel
``c`` in row ``1 + c``): ``pack`` / ``unpack`` convert.

The input of position ``g`` is ``embed_tokens(text[g])`` (zero for ``<|empty|>``) plus the patch
encoder's vector of ``audio[g]`` (zero at text positions). The backbone (a zoo decoder built from
its ``ir`` graph, attention through the ``hysparse`` ops) runs over positions; from its normed
hidden state at ``g`` the LM head predicts ``text[g + 1]`` and, when that is ``<|empty|>``, the
patch decoder predicts ``audio[g + 1]``. Parameter names follow MiMo-Audio (``model.layers...``,
``lm_head``, ``speech_embeddings``, ``input_local_transformer``, ``local_transformer``, ...).

Example::

    lm = AudioLM(get_audio_config("tiny-mimo-audio"))
    text = torch.tensor([[SOSP, EMPTY, EMPTY, EOSP]])                 # [B, G]
    audio = torch.randint(0, 32, (1, 4, 4, 8)); audio[:, [0, 3]] = torch.tensor(lm.cfg.empty_ids)
    loss = lm.losses(text, audio)["total"]
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..cache import KVCache
from ..layers import Step
from hysparse_kernels import ir

from ..model import Decoder
from .config import EMPTY, PAD, AudioLMConfig
from .patch import PatchDecoder, PatchEncoder, frame_embeddings


def pack(text: Tensor, audio: Tensor) -> Tensor:
    """(text [B, G], audio [B, G, P, C]) -> MiMo-Audio's layout [B, 1 + C, G * P]."""
    B, G, P, C = audio.shape
    rows = torch.cat([text[..., None, None].expand(B, G, P, 1), audio], dim=-1)  # [B, G, P, 1 + C]
    return rows.reshape(B, G * P, 1 + C).transpose(1, 2)


def unpack(ids: Tensor, group_size: int) -> tuple[Tensor, Tensor]:
    """MiMo-Audio's layout [B, 1 + C, G * P] -> (text [B, G], audio [B, G, P, C])."""
    B, rows, T = ids.shape
    if T % group_size:
        raise ValueError(f"ids: expected a length that is a multiple of group_size {group_size}, got {T}")
    grouped = ids.transpose(1, 2).reshape(B, T // group_size, group_size, rows)
    text = grouped[:, :, 0, 0]
    if not bool((grouped[..., 0] == text[..., None]).all()):
        raise ValueError("ids: row 0 must repeat each position's text token over its group_size columns")
    return text, grouped[..., 1:]


class AudioLM(nn.Module):
    """See the module docstring. ``cfg.backbone`` names the zoo graph (its MTP blocks dropped)."""

    def __init__(self, cfg: AudioLMConfig):
        super().__init__()
        self.cfg = cfg
        self.graph = cfg.backbone_graph()
        H = self.graph.hidden
        self.model = Decoder(self.graph, cfg.norm_eps)
        self.lm_head = nn.Linear(H, self.graph.vocab, bias=False)
        if self.graph.tie_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        self.speech_embeddings = nn.ModuleList(
            nn.Embedding(v, cfg.input_local_dim, padding_idx=e) for v, e in zip(cfg.vocab_sizes, cfg.empty_ids))
        self.patch_encoder = PatchEncoder(cfg, H)
        self.patch_decoder = PatchDecoder(cfg, H)
        self.apply(_init)
        for emb, e in zip(self.speech_embeddings, cfg.empty_ids):
            if emb.weight.device.type != "meta":
                with torch.no_grad():
                    emb.weight[e].zero_()

    # ------------------------------------------------------------------ checks

    def check(self, text: Tensor, audio: Tensor) -> None:
        """Shapes and id ranges of a sequence; raises ValueError naming what is wrong."""
        cfg = self.cfg
        if text.dim() != 2 or text.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"text: expected integer [B, G], got {text.dtype} of shape {tuple(text.shape)}")
        want = (*text.shape, cfg.group_size, cfg.num_channels)
        if tuple(audio.shape) != want:
            raise ValueError(f"audio: expected shape {want} ([B, G, group_size, channels]), got {tuple(audio.shape)}")
        if bool((text < 0).any()) or bool((text >= self.graph.vocab).any()):
            raise ValueError(f"text: expected ids in [0, {self.graph.vocab}), got {int(text.min())}..{int(text.max())}")
        hi = torch.tensor(cfg.vocab_sizes, device=audio.device)
        if bool((audio < 0).any()) or bool((audio >= hi).any()):
            raise ValueError(f"audio: expected channel c's ids in [0, {list(cfg.vocab_sizes)}[c]), got values outside")

    # ------------------------------------------------------------------ forward

    def embed(self, text: Tensor, audio: Tensor) -> Tensor:
        """Input vectors [B, G, hidden]: text embeddings + patch-encoder vectors."""
        is_audio = text == EMPTY
        x = self.model.embed_tokens(text) * (~is_audio).unsqueeze(-1).to(self.model.embed_tokens.weight.dtype)
        if bool(is_audio.any()):
            frames = frame_embeddings(self.speech_embeddings, audio[is_audio], self.cfg.empty_ids)  # [N, P, d_in]
            x = x.index_put((is_audio,), x[is_audio] + self.patch_encoder(frames))
        return x

    def hidden_states(self, text: Tensor, audio: Tensor, cache: KVCache | None = None) -> Tensor:
        """Normed backbone outputs [B, G, hidden]. With a ``KVCache`` the positions are appended
        after each sequence's cached ones (the decode ops of the ``hysparse`` library)."""
        self.check(text, audio)
        B, G = text.shape
        if cache is None:
            positions = torch.arange(G, device=text.device).expand(B, G)
        else:
            positions = next(iter(cache.lens.values())).long()[:, None] + torch.arange(G, device=text.device)
        x = self.embed(text, audio)
        step = Step(positions=positions, cache=cache)
        for layer in self.model.layers:
            x = layer(x, step)
        return self.model.norm(x)

    def text_logits(self, hidden: Tensor) -> Tensor:
        return self.lm_head(hidden)

    def new_cache(self, batch: int, max_len: int, dtype=None) -> KVCache:
        """A KV cache for the backbone (allocated as its graph's KV plan says)."""
        p = self.lm_head.weight
        return KVCache(self.graph, batch, max_len, dtype=dtype or p.dtype, device=p.device)

    def losses(self, text: Tensor, audio: Tensor, *, decoder_patches: int | None = None,
               generator: torch.Generator | None = None) -> dict:
        """Next-position losses of a batch (``PAD`` text targets are ignored): ``text`` CE, ``audio``
        CE per channel [C] (over positions whose next text is ``<|empty|>``), and their weighted
        mean ``total`` (weights ``text_loss_weight`` and ``audio_loss_weights``).

        ``decoder_patches``: train the patch decoder on at most this many of those positions,
        drawn uniformly with ``generator`` (the backbone still reads every position; the patch
        decoder's 11 local steps per patch dominate the cost of a step)."""
        cfg = self.cfg
        hidden = self.hidden_states(text, audio)[:, :-1]
        targets = text[:, 1:]
        valid = targets != PAD
        text_ce = F.cross_entropy(self.text_logits(hidden[valid]).float(), targets[valid])
        next_audio = valid & (targets == EMPTY)
        w_text = cfg.text_loss_weight
        w_audio = torch.tensor(cfg.audio_loss_weights, dtype=text_ce.dtype, device=text_ce.device)
        if bool(next_audio.any()):
            h, patches = hidden[next_audio], audio[:, 1:][next_audio]
            if decoder_patches is not None and len(h) > decoder_patches:
                pick = torch.randperm(len(h), generator=generator)[:decoder_patches].to(h.device)
                h, patches = h[pick], patches[pick]
            audio_ce = self.patch_decoder.losses(h, patches, self.speech_embeddings)
            total = (w_text * text_ce + (w_audio * audio_ce).sum()) / (w_text + w_audio.sum())
        else:
            audio_ce = torch.full((cfg.num_channels,), float("nan"), device=text_ce.device)
            total = text_ce
        return {"total": total, "text": text_ce, "audio": audio_ce}


def _init(module: nn.Module) -> None:
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, std=0.02)


def param_count(cfg: AudioLMConfig) -> dict[str, int]:
    """Parameters per part, from the IR's counts of the backbone and of the two local Transformers'
    graphs (their placeholder embedding and head excluded) plus the audio matrices; ``total``."""
    def body(graph):
        pc = ir.param_count(graph)
        return pc.total - pc.embedding - pc.lm_head

    backbone = cfg.backbone_graph()
    H = backbone.hidden
    parts = {
        "backbone": ir.param_count(backbone).total,
        "speech_embeddings": sum(cfg.vocab_sizes) * cfg.input_local_dim,
        "patch_encoder": body(cfg.patch_encoder_graph()) + cfg.group_size * cfg.input_local_dim * H,
        "patch_decoder": (body(cfg.patch_decoder_graph()) + H * cfg.local_dim + sum(cfg.vocab_sizes) * cfg.local_dim
                          + (cfg.input_local_dim * cfg.local_dim if cfg.input_local_dim != cfg.local_dim else 0)),
    }
    parts["total"] = sum(parts.values())
    return parts


def build_audio_lm(cfg: AudioLMConfig | str, *, device=None, dtype=None) -> AudioLM:
    """An ``AudioLM`` of a config or a named flavor; ``device="meta"`` builds it without memory
    (parameter counts of the full-size model)."""
    from .config import get_audio_config

    if isinstance(cfg, str):
        cfg = get_audio_config(cfg)
    with torch.device(device or "cpu"):
        model = AudioLM(cfg)
    return model.to(dtype) if dtype is not None else model
