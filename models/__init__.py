"""hysparse_kernels.models: decoders built from an ``ir.ModelGraph`` on the ``hysparse_kernels`` ops,
a KV cache allocated as the IR's KV plan says, generation, and safetensors checkpoints with
Hugging Face names.

Example::

    from hysparse_kernels.models import build_model, generate
    model = build_model("tiny-hysparse-7b")
    new_tokens = generate(model, [[1, 2, 3], [4, 5]], max_new_tokens=8)
"""

from hysparse_kernels import ir

from .cache import KVCache
from .config import ModelConfig, get_config
from .generate import generate, sample
from .loading import CheckpointError, load_pretrained, save_pretrained
from .model import HybridLM


def list_models() -> list[str]:
    """Names of the zoo's models (full-size and their ``tiny-*`` twins)."""
    return ir.list_graphs()


def from_hf_config(config: dict) -> HybridLM:
    """A randomly initialised model from a ``config.json`` dict."""
    return HybridLM(ModelConfig.from_hf_config(config).to_graph())


def build_model(name: str) -> HybridLM:
    """A randomly initialised model of the zoo graph ``name`` (real sizes need real memory)."""
    return HybridLM(ir.get_graph(name))


__all__ = ["HybridLM", "KVCache", "generate", "sample", "save_pretrained", "load_pretrained", "CheckpointError",
           "list_models", "build_model", "ModelConfig", "get_config", "from_hf_config"]
