"""The zoo's models as ``transformers`` models (the optional ``hf`` extra).

Importing this module registers, with ``AutoConfig`` and ``AutoModelForCausalLM``:

* ``model_type: "hysparse"`` (what ``models.save_pretrained`` writes) -> ``HySparseConfig`` /
  ``HySparseForCausalLM``;
* ``model_type: "mimo"`` (MiMo-7B checkpoints) -> ``MiMoConfig`` / ``MiMoForCausalLM``;
* ``model_type: "mimo_v2_flash"`` -> ``MiMoV2FlashConfig`` / ``MiMoV2FlashForCausalLM``, unless the
  installed ``transformers`` ships its own implementation of that type (it does from 5.x on),
  which stays in place; ``MiMoV2FlashForCausalLM.from_pretrained(path)`` loads such a checkpoint
  into ours explicitly.

The model underneath is the zoo's decoder (``CausalLMBody``): every attention and MoE call goes
through the ``hysparse`` ops, the KV cache is the zoo's ``KVCache`` (allocated from the IR's KV
plan, the sparse layers reading their full layer's cache), and checkpoints are read and written by
``models.loading`` (checksums, all-or-nothing loads, per-expert names on disk). So::

    import hysparse_kernels.models.hf                       # registers the classes
    model = AutoModelForCausalLM.from_pretrained("ckpt/")   # a folder written by save_pretrained
    out = model.generate(input_ids, attention_mask=mask, max_new_tokens=16, do_sample=False)

``generate`` returns the tokens the zoo's ``generate`` returns (left-padded batches: each row is
prefilled on its own, without its padding, then the batch decodes together), and
``model(input_ids, labels=labels)`` returns the usual shifted next-token loss, so ``Trainer`` and
TRL train it. Inputs are token ids (no ``inputs_embeds``); positions come from the attention mask
and the cache (each row counts from its first unmasked token).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import Tensor
from transformers import AutoConfig, AutoModelForCausalLM, GenerationMixin, PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast
from transformers.models.auto.configuration_auto import CONFIG_MAPPING

from .cache import KVCache
from .config import ModelConfig
from .loading import CheckpointError, load_pretrained, save_pretrained
from .model import CausalLMBody, _init

__all__ = ["HySparseConfig", "HySparseForCausalLM", "MiMoConfig", "MiMoForCausalLM", "MiMoV2FlashConfig",
           "MiMoV2FlashForCausalLM", "register"]


class HySparseConfig(PretrainedConfig):
    """A ``transformers`` config holding a zoo ``config.json`` (``ModelConfig`` keys)."""

    model_type = "hysparse"

    def to_model_config(self) -> ModelConfig:
        return ModelConfig.from_hf_config(self.to_dict())

    @classmethod
    def from_graph(cls, graph) -> "HySparseConfig":
        values = ModelConfig.from_graph(graph).to_hf_config()
        values.pop("model_type")
        return cls(**values)


class MiMoConfig(HySparseConfig):
    """MiMo-7B's ``config.json`` (``model_type: mimo``), read with MiMo-7B's defaults."""

    model_type = "mimo"


class MiMoV2FlashConfig(HySparseConfig):
    """MiMo-V2-Flash's ``config.json`` (``model_type: mimo_v2_flash``), read with its defaults."""

    model_type = "mimo_v2_flash"


class HySparseForCausalLM(CausalLMBody, PreTrainedModel, GenerationMixin):
    """A zoo model behind the ``transformers`` causal-LM interface.

    ``forward(input_ids [B, S], attention_mask [B, S or past+S], cache, labels, use_cache,
    logits_to_keep) -> CausalLMOutputWithPast(loss, logits [B, S or logits_to_keep, vocab], cache)``.
    """

    config_class = HySparseConfig
    base_model_prefix = "model"
    main_input_name = "input_ids"
    _no_split_modules = ["DecoderLayer", "MTPBlock"]
    supports_gradient_checkpointing = False

    def __init__(self, config: HySparseConfig):
        PreTrainedModel.__init__(self, config)
        self._build(config.to_model_config().to_graph())
        self.loss_type = "ForCausalLM"
        self.post_init()

    def _init_weights(self, module) -> None:
        _init(module)

    # A KVCache, not a transformers Cache: generate must not make a DynamicCache for us.
    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        return False

    def _valid_auto_compile_criteria(self, *args, **kwargs) -> bool:
        return False  # generate's automatic torch.compile expects a transformers Cache

    def _prepare_cache_for_generation(self, generation_config, model_kwargs, *args, **kwargs) -> None:
        """``generate`` knows the final length (prompt + new tokens): pass it to the first forward,
        which allocates the zoo's ``KVCache`` with that capacity, as the zoo's ``generate`` does."""
        if model_kwargs.get("cache") is not None or generation_config.use_cache is False:
            return
        names = ("generation_mode", "batch_size", "max_cache_length")
        given = dict(zip(names, args)) | {k: v for k, v in kwargs.items() if k in names}
        if "max_cache_length" in given:
            model_kwargs["cache_capacity"] = int(given["max_cache_length"])

    # ------------------------------------------------------------------ forward

    def forward(self, input_ids: Tensor | None = None, attention_mask: Tensor | None = None, cache: KVCache | None = None,
                labels: Tensor | None = None, use_cache: bool | None = None, logits_to_keep: int | Tensor = 0,
                position_ids: Tensor | None = None, inputs_embeds: Tensor | None = None, return_dict: bool | None = None,
                cache_capacity: int | None = None, **kwargs) -> CausalLMOutputWithPast:
        """``cache_capacity``: tokens per sequence the new cache is allocated for (``generate`` passes
        prompt + new tokens); without it the cache starts at ``S`` and doubles when full."""
        if inputs_embeds is not None or input_ids is None:
            raise ValueError("input_ids: expected token ids [B, S] (inputs_embeds are not supported)")
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids: expected [B, S], got shape {tuple(input_ids.shape)}")
        B, S = input_ids.shape
        if cache is None and use_cache:
            param = next(self.parameters())
            if cache_capacity is not None and cache_capacity >= S:
                cache = KVCache(self.graph, B, cache_capacity, dtype=param.dtype, device=param.device)
            else:
                cache = KVCache(self.graph, B, S, dtype=param.dtype, device=param.device, growable=True)
        cached = cache is not None and bool(cache.lens) and int(next(iter(cache.lens.values())).max()) > 0
        spans = _row_spans(attention_mask, B, S, cached=cached)
        hidden = self._hidden(input_ids, cache, spans)
        if position_ids is not None:
            _check_positions(position_ids, cache, spans, S)
        if isinstance(logits_to_keep, int):
            kept = hidden[:, -logits_to_keep:] if logits_to_keep else hidden
        else:
            kept = hidden[:, logits_to_keep]
        logits = self.logits(kept)
        loss = None
        if labels is not None:
            loss = self.loss_function(logits=logits, labels=labels, vocab_size=self.graph.vocab, **kwargs)
        return CausalLMOutputWithPast(loss=loss, logits=logits, cache=cache)

    def _hidden(self, input_ids: Tensor, cache, spans) -> Tensor:
        """Last hidden states [B, S, D]: the whole batch at once, or each row's unmasked span on
        its own (its positions from 0, its cache view) with zeros at the masked positions."""
        if spans is None:
            return self.hidden_states(input_ids, cache)
        S = input_ids.shape[1]
        rows = []
        for b, (lo, hi) in enumerate(spans):
            if hi == lo:  # a row of padding only
                rows.append(self.model.embed_tokens.weight.new_zeros(1, S, self.graph.hidden))
                continue
            h = self.hidden_states(input_ids[b:b + 1, lo:hi], None if cache is None else cache.select(b))
            rows.append(torch.nn.functional.pad(h, (0, 0, lo, S - hi)))
        return torch.cat(rows)

    # ------------------------------------------------------------------ checkpoints

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, config=None, dtype=None, torch_dtype=None,
                        device_map=None, **kwargs):
        """Load a local checkpoint folder (ours, or a published MiMo one) with ``models.loading``:
        verified, all or nothing, in the checkpoint's dtype unless ``dtype`` is given."""
        path = Path(os.fspath(pretrained_model_name_or_path))
        if not path.is_dir():
            raise CheckpointError(f"{path}: expected a local checkpoint folder (download it first, e.g. with "
                                  f"huggingface_hub.snapshot_download)")
        dtype = dtype if dtype is not None else torch_dtype
        if isinstance(dtype, str) and dtype != "auto":
            dtype = getattr(torch, dtype)

        def build(graph):
            cfg = config if isinstance(config, HySparseConfig) else cls.config_class.from_graph(graph)
            return cls(cfg)

        model = load_pretrained(path, dtype=None if dtype in (None, "auto") else dtype, build=build)
        if device_map not in (None, "cpu"):
            model = model.to(device_map if isinstance(device_map, (str, torch.device)) else "cpu")
        model.name_or_path = str(path)
        return model.eval()

    def save_pretrained(self, save_directory, *args, state_dict: dict | None = None, max_shard_size=None, **kwargs):
        """Write the checkpoint with ``models.save_pretrained`` (Hugging Face names, checksums, one
        swap of the folder); ``state_dict``: tensors to write instead of the model's own."""
        max_bytes = _parse_size(max_shard_size) if max_shard_size is not None else None
        save_pretrained(self, save_directory, max_shard_bytes=max_bytes, state=state_dict)


class MiMoForCausalLM(HySparseForCausalLM):
    config_class = MiMoConfig


class MiMoV2FlashForCausalLM(HySparseForCausalLM):
    config_class = MiMoV2FlashConfig


# --------------------------------------------------------------------------- helpers


def _row_spans(attention_mask: Tensor | None, B: int, S: int, *, cached: bool):
    """``None`` when the whole batch runs at once; else each row's ``(lo, hi)`` unmasked span of the
    ``S`` new tokens. A row's tokens must be contiguous (padding before or after them); with a
    cache, padding may only come before them, and only on the first call."""
    if attention_mask is None:
        return None
    if attention_mask.dim() != 2 or attention_mask.shape[0] != B or attention_mask.shape[1] < S:
        raise ValueError(f"attention_mask: expected [B, >= S] = [{B}, >= {S}] (2D, 1 for tokens, 0 for padding), "
                         f"got shape {tuple(attention_mask.shape)}")
    mask = attention_mask[:, -S:].bool()
    if bool(mask.all()):
        return None
    if cached:
        raise ValueError("attention_mask: padding among new tokens after the first call; expected left padding "
                         "of the prompt only")
    spans = []
    for b in range(B):
        idx = mask[b].nonzero().flatten()
        lo, hi = (int(idx[0]), int(idx[-1]) + 1) if idx.numel() else (0, 0)
        if idx.numel() != hi - lo:
            raise ValueError(f"attention_mask: row {b} has padding between its tokens; expected one contiguous run of 1s")
        spans.append((lo, hi))
    return spans


def _check_positions(position_ids: Tensor, cache, spans, S: int) -> None:
    """Positions are the zoo's (each row from its first token, continuing its cache); refuse others."""
    B = position_ids.shape[0]
    start = next(iter(cache.lens.values())).long()[:, None] - S if cache is not None and cache.lens else 0
    expected = torch.arange(S, device=position_ids.device).expand(B, S) + start
    valid = torch.ones(B, S, dtype=torch.bool, device=position_ids.device)
    if spans is not None:
        for b, (lo, hi) in enumerate(spans):
            expected[b] = torch.arange(S, device=position_ids.device) - lo
            valid[b] = False
            valid[b, lo:hi] = True
    if position_ids.shape != (B, S) or not bool((position_ids == expected)[valid].all()):
        raise ValueError("position_ids: the model counts each row from its first unmasked token (and on from its "
                         "cache); other positions are not supported")


def _parse_size(size) -> int:
    if isinstance(size, int):
        return size
    text = str(size).strip().upper()
    for unit, scale in (("GB", 10**9), ("MB", 10**6), ("KB", 10**3), ("GIB", 2**30), ("MIB", 2**20), ("KIB", 2**10)):
        if text.endswith(unit):
            return int(float(text[: -len(unit)]) * scale)
    return int(text)


def register() -> None:
    """Register the configs and models with ``AutoConfig`` / ``AutoModelForCausalLM`` (done on import;
    a model type ``transformers`` already implements keeps its own classes)."""
    for config_cls, model_cls in ((HySparseConfig, HySparseForCausalLM), (MiMoConfig, MiMoForCausalLM),
                                  (MiMoV2FlashConfig, MiMoV2FlashForCausalLM)):
        model_type = config_cls.model_type
        if model_type in CONFIG_MAPPING and CONFIG_MAPPING[model_type] is not config_cls:
            continue  # transformers' own implementation of this type stays
        AutoConfig.register(model_type, config_cls, exist_ok=True)
        AutoModelForCausalLM.register(config_cls, model_cls, exist_ok=True)


register()
