"""Vision models of the zoo: ``dit`` (a diffusion transformer mapping a puzzle image to its
solution image, DiffThinker) and ``multimodal`` (``VisionLM``: patch embeddings spliced into a zoo
LM, AdaReasoner)."""

from .dit import DiT, DiTConfig, euler_sample, flow_matching_loss, patchify, unpatchify

__all__ = ["DiT", "DiTConfig", "euler_sample", "flow_matching_loss", "patchify", "unpatchify"]
