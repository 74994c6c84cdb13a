"""Image-space pieces of the toolkit: multimodal tool use."""
