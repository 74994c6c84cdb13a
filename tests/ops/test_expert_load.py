"""``expert_load``: tokens per expert of a routing."""

from __future__ import annotations

import torch

import hysparse_kernels as hk


# ---------------------------------------------------------------- reference


def test_expert_load_counts():
    ids = torch.tensor([[0, 2], [2, 3], [2, 0]], dtype=torch.int32)
    assert hk.expert_load(ids, 5).tolist() == [2, 0, 3, 1, 0]
