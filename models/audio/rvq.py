"""Residual vector quantisation with EMA codebooks (k-means initialisation, dead-code restart).

Level ``l`` quantises what the levels before it left: ``r_0 = z``, ``q_l = E_l[argmin_k
|r_l - E_l[k]|^2]``, ``r_{l+1} = r_l - q_l``; the output is ``sum_l q_l``. Codebooks are not
trained by gradient: in training mode each level's codebook follows an exponential moving average
of the residuals assigned to each code (``decay``), is initialised by k-means on the first batch,
and codes used less than ``dead_code_threshold`` times (EMA count) are restarted on random
residuals of the batch. The encoder learns through the straight-through estimator and the
commitment loss ``sum_l mean |r_l - sg(q_l)|^2``.

Example::

    rvq = ResidualVQ(dim=64, codebook_sizes=(128, 128, 32))
    quantized, codes, commit = rvq(z)          # z [B, T, 64] -> [B, T, 64], long [B, T, 3], scalar
    rvq.decode(codes[..., :2])                 # the first two levels only: [B, T, 64]
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def _kmeans(x: Tensor, k: int, iters: int, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """k-means of ``x`` [N, D] into ``k`` centroids [k, D] (and their counts [k]); random init from x."""
    n = x.shape[0]
    pick = torch.randint(0, n, (k,), generator=generator) if n < k else torch.randperm(n, generator=generator)[:k]
    centroids = x[pick.to(x.device)].clone()
    counts = torch.zeros(k, dtype=x.dtype, device=x.device)
    for _ in range(iters):
        assign = torch.cdist(x, centroids).argmin(-1)
        counts = torch.bincount(assign, minlength=k).to(x.dtype)
        sums = torch.zeros_like(centroids).index_add_(0, assign, x)
        filled = counts > 0
        centroids[filled] = sums[filled] / counts[filled, None]
    return centroids, counts


class Codebook(nn.Module):
    """One level: ``embed`` [K, D] (a buffer, EMA-updated), ``cluster_size`` [K], ``embed_sum`` [K, D]."""

    def __init__(self, dim: int, size: int, decay: float, dead_code_threshold: float, eps: float = 1e-5):
        super().__init__()
        self.size, self.decay, self.dead_code_threshold, self.eps = size, decay, dead_code_threshold, eps
        self.register_buffer("embed", torch.randn(size, dim) * 0.1)
        self.register_buffer("cluster_size", torch.ones(size))
        self.register_buffer("embed_sum", self.embed.clone())
        self.register_buffer("initialized", torch.zeros((), dtype=torch.bool))

    def assign(self, r: Tensor) -> Tensor:
        """Nearest code of each row of ``r`` [N, D] -> long [N]."""
        # |r - e|^2 = |r|^2 - 2 r.e + |e|^2; |r|^2 does not change the argmin
        scores = 2 * r @ self.embed.t() - self.embed.pow(2).sum(-1)
        return scores.argmax(-1)

    @torch.no_grad()
    def update(self, r: Tensor, codes: Tensor) -> None:
        """EMA step on the residuals ``r`` [N, D] with their codes [N] (training only)."""
        r = r.to(self.embed.dtype)
        if not bool(self.initialized):
            centroids, counts = _kmeans(r, self.size, iters=10)
            self.embed.copy_(centroids)
            self.cluster_size.copy_(counts.clamp(min=1.0))
            self.embed_sum.copy_(centroids * self.cluster_size[:, None])
            self.initialized.fill_(True)
            return
        onehot_counts = torch.bincount(codes, minlength=self.size).to(r.dtype)
        sums = torch.zeros_like(self.embed).index_add_(0, codes, r)
        self.cluster_size.mul_(self.decay).add_(onehot_counts, alpha=1 - self.decay)
        self.embed_sum.mul_(self.decay).add_(sums, alpha=1 - self.decay)
        n = self.cluster_size.sum()
        smoothed = (self.cluster_size + self.eps) / (n + self.size * self.eps) * n  # Laplace smoothing
        self.embed.copy_(self.embed_sum / smoothed[:, None])
        dead = self.cluster_size < self.dead_code_threshold
        if bool(dead.any()):
            pick = torch.randint(0, r.shape[0], (int(dead.sum()),), device=r.device)
            self.embed[dead] = r[pick]
            self.embed_sum[dead] = r[pick] * self.dead_code_threshold
            self.cluster_size[dead] = self.dead_code_threshold


class ResidualVQ(nn.Module):
    """``len(codebook_sizes)`` levels of ``dim``-wide codes (see the module docstring)."""

    def __init__(self, dim: int, codebook_sizes, *, decay: float = 0.99, dead_code_threshold: float = 1.0):
        super().__init__()
        self.dim = dim
        self.codebook_sizes = tuple(codebook_sizes)
        self.levels = nn.ModuleList(Codebook(dim, k, decay, dead_code_threshold) for k in self.codebook_sizes)

    def forward(self, z: Tensor, levels: int | None = None, *, update: bool | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """``z`` [B, T, D] -> (straight-through quantized [B, T, D], codes long [B, T, L], commitment loss).

        ``update`` (default: the module's training mode) runs the EMA / k-means codebook updates."""
        update = self.training if update is None else update
        if z.dim() != 3 or z.shape[-1] != self.dim:
            raise ValueError(f"z: expected [B, T, {self.dim}], got shape {tuple(z.shape)}")
        L = len(self.levels) if levels is None else levels
        flat = z.reshape(-1, self.dim)
        residual = flat
        quantized = torch.zeros_like(flat)
        codes, commit = [], z.new_zeros(())
        for book in list(self.levels)[:L]:
            r = residual.detach()
            code = book.assign(r)
            if update:
                fresh = not bool(book.initialized)
                book.update(r, code)
                if fresh:  # the k-means initialisation replaced the codebook the codes came from
                    code = book.assign(r)
            q = book.embed[code].to(z.dtype)
            commit = commit + (residual - q.detach()).pow(2).mean()
            quantized = quantized + q
            residual = residual - q.detach()
            codes.append(code)
        out = flat + (quantized - flat).detach()  # straight-through: forward quantized, backward identity
        return out.view_as(z), torch.stack(codes, -1).view(*z.shape[:-1], L), commit

    def decode(self, codes: Tensor) -> Tensor:
        """Codes long [B, T, L] (any first ``L`` levels) -> the summed embeddings [B, T, D]."""
        L = codes.shape[-1]
        if L > len(self.levels):
            raise ValueError(f"codes: expected at most {len(self.levels)} levels in the last dim, got {L}")
        for level, size in enumerate(self.codebook_sizes[:L]):
            bad = (codes[..., level] < 0) | (codes[..., level] >= size)
            if bool(bad.any()):
                raise ValueError(f"codes[..., {level}]: expected ids in [0, {size}), got {int(codes[..., level][bad][0])}")
        return sum(self.levels[level].embed[codes[..., level]] for level in range(L))

    @torch.no_grad()
    def usage(self, codes: Tensor) -> list[dict]:
        """Per level: fraction of codes used and perplexity (exp of the code entropy) over ``codes`` [..., L]."""
        out = []
        for level, size in enumerate(self.codebook_sizes[: codes.shape[-1]]):
            counts = torch.bincount(codes[..., level].flatten(), minlength=size).double()
            p = counts / counts.sum()
            entropy = -(p[p > 0] * p[p > 0].log()).sum()
            out.append({"size": size, "used": float((counts > 0).double().mean()), "perplexity": float(entropy.exp())})
        return out
