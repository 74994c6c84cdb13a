"""hysparse_kernels.models: decoders built from an ``ir.ModelGraph`` on the ``hysparse_kernels`` ops,
a KV cache allocated as the IR's KV plan says, generation, and safetensors checkpoints with
Hugging Face names.

Example::

    from hysparse_kernels.models import build_model, generate
    model = build_model("tiny-hysparse-7b")
    new_tokens = generate(model, [[1, 2, 3], [4, 5]], max_new_tokens=8)
"""

import torch

from hysparse_kernels import ir

from .cache import KVCache
from .config import ModelConfig, get_config
from .generate import generate, sample
from .loading import CheckpointError, hf_names, load_pretrained, save_pretrained
from .model import HybridLM


def list_models() -> list[str]:
    """Names of the zoo's models (full-size and their ``tiny-*`` twins)."""
    return ir.list_graphs()


def _build(graph, device) -> HybridLM:
    if device is None:
        return HybridLM(graph)
    with torch.device(device):  # parameters are created there, never first on the CPU
        return HybridLM(graph)


def from_hf_config(config: dict, *, device=None) -> HybridLM:
    """A randomly initialised model from a ``config.json`` dict (``device="meta"``: the module tree
    with shapes and no memory, e.g. to check a published checkpoint's index against it)."""
    return _build(ModelConfig.from_hf_config(config).to_graph(), device)


def build_model(name: str, *, device=None) -> HybridLM:
    """A randomly initialised model of the zoo graph ``name``; real sizes need real memory, or
    ``device="meta"`` (shapes only: ``build_model("mimo-v2-flash", device="meta")`` holds 309B
    parameters in no memory)."""
    return _build(ir.get_graph(name), device)


__all__ = ["HybridLM", "KVCache", "generate", "sample", "save_pretrained", "load_pretrained", "CheckpointError",
           "hf_names", "list_models", "build_model", "ModelConfig", "get_config", "from_hf_config"]
