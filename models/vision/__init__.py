"""Vision models: ``dit`` (a diffusion transformer mapping a puzzle image to its solution image)."""

from .dit import DiT, DiTConfig, euler_sample, flow_matching_loss, patchify, unpatchify

__all__ = ["DiT", "DiTConfig", "euler_sample", "flow_matching_loss", "patchify", "unpatchify"]
