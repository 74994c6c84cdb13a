"""A small diffusion transformer (DiT) for image-to-image reasoning, trained by rectified flow.

The network sees the noisy answer image and the puzzle image as one token sequence::

    tokens = [patches(x_t) W_in + pos ; patches(cond) W_cond + pos + e_cond]      [B, 2L, D]

(``L = (px / patch)^2``, ``pos`` fixed 2-D sine-cosine codes), runs ``depth`` non-causal transformer blocks whose attention is
``hysparse_kernels.attention(..., causal=False)``, each modulated by the timestep through
adaLN-Zero (shift, scale and gate from ``MLP(sinusoid(1000 σ))``), and reads the velocity of the
first ``L`` tokens back out as an image.

Rectified flow (the objective of DiffThinker's fine-tuning)::

    x_σ = (1 - σ) x_0 + σ ε,   ε ~ N(0, I),   target v = ε - x_0,   L = ‖v_θ(x_σ, σ, c) - v‖²

with ``σ`` drawn logit-normally. Sampling integrates ``dx/dσ = v_θ`` by Euler from ``σ = 1``
(noise) to ``σ = 0`` in a chosen number of steps. Images are ``[B, 3, px, px]`` in ``[-1, 1]``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import Tensor, nn

import hysparse_kernels as hk


@dataclass(frozen=True)
class DiTConfig:
    """``px``: image side; ``patch``: patch side (divides ``px``); ``dim``: width; ``depth``:
    blocks; ``heads``: attention heads (divide ``dim``); ``mlp_ratio``: MLP width / ``dim``."""

    px: int = 32
    patch: int = 4
    channels: int = 3
    dim: int = 128
    depth: int = 4
    heads: int = 4
    mlp_ratio: int = 4

    def __post_init__(self):
        for name in ("px", "patch", "channels", "dim", "depth", "heads", "mlp_ratio"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}: expected a positive int, got {value!r}")
        if self.px % self.patch:
            raise ValueError(f"patch: expected a divisor of px={self.px}, got {self.patch}")
        if self.dim % self.heads:
            raise ValueError(f"heads: expected a divisor of dim={self.dim}, got {self.heads}")

    @property
    def tokens(self) -> int:
        """Patches per image ``L``."""
        return (self.px // self.patch) ** 2

    def to_dict(self) -> dict:
        return asdict(self)


def patchify(x: Tensor, patch: int) -> Tensor:
    """``[B, C, H, W]`` -> ``[B, (H/p)(W/p), C p p]`` (row-major patches)."""
    B, C, H, W = x.shape
    x = x.reshape(B, C, H // patch, patch, W // patch, patch)
    return x.permute(0, 2, 4, 1, 3, 5).reshape(B, (H // patch) * (W // patch), C * patch * patch)


def unpatchify(t: Tensor, patch: int, channels: int) -> Tensor:
    """Inverse of ``patchify``: ``[B, L, C p p]`` -> ``[B, C, H, W]`` (square images)."""
    B, L, _ = t.shape
    side = math.isqrt(L)
    x = t.reshape(B, side, side, channels, patch, patch).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(B, channels, side * patch, side * patch)


def timestep_embedding(sigma: Tensor, dim: int) -> Tensor:
    """Sinusoidal features of ``1000 σ``: ``[B]`` -> ``[B, dim]``."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32, device=sigma.device) / half)
    args = 1000.0 * sigma.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def sincos_2d(side: int, dim: int) -> Tensor:
    """Fixed 2-D sine-cosine position embeddings of a ``side x side`` patch grid: ``[1, side^2, dim]``
    (half the channels encode the row, half the column). Fixed, so a noisy-image token and the
    puzzle token at the same place share their position code from the first step."""
    quarter = dim // 4
    freqs = torch.exp(-math.log(10000.0) * torch.arange(quarter, dtype=torch.float32) / quarter)
    grid = torch.arange(side, dtype=torch.float32)
    rows, cols = torch.meshgrid(grid, grid, indexing="ij")
    parts = []
    for coord in (rows.reshape(-1), cols.reshape(-1)):
        args = coord[:, None] * freqs[None]
        parts += [torch.sin(args), torch.cos(args)]
    emb = torch.cat(parts, dim=-1)
    return nn.functional.pad(emb, (0, dim - emb.shape[-1]))[None]


class Block(nn.Module):
    """Pre-norm transformer block with adaLN-Zero modulation by the timestep embedding."""

    def __init__(self, dim: int, heads: int, mlp_ratio: int):
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_ratio * dim), nn.GELU(approximate="tanh"),
                                 nn.Linear(mlp_ratio * dim, dim))
        self.modulation = nn.Linear(dim, 6 * dim)
        nn.init.zeros_(self.modulation.weight)  # adaLN-Zero: every block starts as the identity
        nn.init.zeros_(self.modulation.bias)

    def forward(self, x: Tensor, temb: Tensor) -> Tensor:
        """``x`` ``[B, S, D]``, ``temb`` ``[B, D]`` -> ``[B, S, D]``."""
        B, S, D = x.shape
        shift1, scale1, gate1, shift2, scale2, gate2 = self.modulation(nn.functional.silu(temb))[:, None].chunk(6, -1)
        h = self.norm1(x) * (1 + scale1) + shift1
        q, k, v = self.qkv(h).reshape(B, S, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)  # 3 x [B, H, S, Dh]
        a = hk.attention(q.contiguous(), k.contiguous(), v.contiguous(), causal=False)  # [B, H, S, Dh]
        x = x + gate1 * self.proj(a.transpose(1, 2).reshape(B, S, D))
        h = self.norm2(x) * (1 + scale2) + shift2
        return x + gate2 * self.mlp(h)


class DiT(nn.Module):
    """``forward(x_t [B, C, px, px], sigma [B], cond [B, C, px, px]) -> velocity [B, C, px, px]``.

    Example::

        model = DiT(DiTConfig(px=32, patch=4, dim=64, depth=2, heads=2))
        v = model(torch.randn(2, 3, 32, 32), torch.rand(2), torch.randn(2, 3, 32, 32))
    """

    def __init__(self, config: DiTConfig):
        super().__init__()
        self.config = c = config
        width = c.channels * c.patch * c.patch
        self.embed_x = nn.Linear(width, c.dim)
        self.embed_cond = nn.Linear(width, c.dim)
        self.register_buffer("pos", sincos_2d(c.px // c.patch, c.dim), persistent=False)  # [1, L, D]
        self.cond_type = nn.Parameter(torch.randn(1, 1, c.dim) * 0.02)
        self.time = nn.Sequential(nn.Linear(c.dim, c.dim), nn.SiLU(), nn.Linear(c.dim, c.dim))
        self.blocks = nn.ModuleList(Block(c.dim, c.heads, c.mlp_ratio) for _ in range(c.depth))
        self.norm_out = nn.LayerNorm(c.dim, elementwise_affine=False, eps=1e-6)
        self.modulation_out = nn.Linear(c.dim, 2 * c.dim)
        self.out = nn.Linear(c.dim, width)
        for layer in (self.modulation_out, self.out):  # the velocity starts at zero
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, x_t: Tensor, sigma: Tensor, cond: Tensor) -> Tensor:
        c = self.config
        expect = (c.channels, c.px, c.px)
        for name, t in (("x_t", x_t), ("cond", cond)):
            if t.dim() != 4 or tuple(t.shape[1:]) != expect:
                raise ValueError(f"{name}: expected [B, {c.channels}, {c.px}, {c.px}], got shape {tuple(t.shape)}")
        if sigma.shape != (x_t.shape[0],):
            raise ValueError(f"sigma: expected [B] with B={x_t.shape[0]}, got shape {tuple(sigma.shape)}")
        L = c.tokens
        tokens = torch.cat([self.embed_x(patchify(x_t, c.patch)) + self.pos,
                            self.embed_cond(patchify(cond, c.patch)) + self.pos + self.cond_type], dim=1)  # [B, 2L, D]
        temb = self.time(timestep_embedding(sigma, c.dim))  # [B, D]
        for block in self.blocks:
            tokens = block(tokens, temb)
        shift, scale = self.modulation_out(nn.functional.silu(temb))[:, None].chunk(2, -1)
        out = self.out(self.norm_out(tokens[:, :L]) * (1 + scale) + shift)  # [B, L, C p p]
        return unpatchify(out, c.patch, c.channels)


def sample_sigma(batch: int, generator: torch.Generator | None = None) -> Tensor:
    """Logit-normal noise levels ``σ = sigmoid(N(0, 1))``: ``[batch]``."""
    return torch.sigmoid(torch.randn(batch, generator=generator))


def flow_matching_loss(model: DiT, x0: Tensor, cond: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Rectified-flow MSE: ``x0`` (answers) and ``cond`` (puzzles) ``[B, C, px, px]`` in ``[-1, 1]``."""
    sigma = sample_sigma(x0.shape[0], generator).to(x0.device)
    noise = torch.randn(x0.shape, generator=generator).to(x0.device)
    s = sigma[:, None, None, None]
    x_t = (1 - s) * x0 + s * noise
    return torch.mean((model(x_t, sigma, cond) - (noise - x0)) ** 2)


@torch.no_grad()
def euler_sample(model: DiT, cond: Tensor, steps: int, generator: torch.Generator | None = None,
                 noise: Tensor | None = None, bound: float = 1.0) -> Tensor:
    """Integrate from noise (``σ = 1``) to an answer (``σ = 0``) in ``steps`` Euler steps on a
    uniform σ grid: ``x ← x + (σ_next - σ) v_θ(x, σ, cond)``. ``cond`` ``[B, C, px, px]`` ->
    ``[B, C, px, px]`` clamped to ``[-bound, bound]`` (2 for edits, differences of two images)."""
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps: expected a positive int, got {steps!r}")
    x = torch.randn(cond.shape, generator=generator).to(cond.device) if noise is None else noise.clone()
    sigmas = torch.linspace(1.0, 0.0, steps + 1)
    for i in range(steps):
        sigma = torch.full((cond.shape[0],), float(sigmas[i]), device=cond.device)
        x = x + float(sigmas[i + 1] - sigmas[i]) * model(x, sigma, cond)
    return x.clamp(-bound, bound)
