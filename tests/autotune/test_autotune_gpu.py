"""A short real Triton tuning on the GPU (skipped without CUDA)."""

import pytest

from hysparse_kernels import tuned
from hysparse_kernels.cli import main


@pytest.mark.gpu
def test_short_triton_tuning_is_used_by_the_kernel(cache):
    import torch

    import hysparse_kernels as hk
    from hysparse_kernels.ops.attention.triton import config

    pytest.importorskip("triton")
    shape = "B=1,Hq=8,Hkv=2,S=1024,D=64"
    assert main(["autotune", "--op", "attention.fwd", "--shape", shape, "--device", "cuda", "--backend", "triton",
                 "--max-candidates", "6", "--no-plots", "--no-progress"]) == 0
    (entry,) = tuned.entries("attention_fwd", backend="triton", device="cuda").values()
    assert entry["complete"] and entry["time_ms"] <= entry["heuristic_ms"]
    shape = config.cache_shape({"dqk": 64, "dv": 64, "sq": 1024, "sk": 1024, "group": 4})
    cfg = tuned.lookup("attention_fwd", backend="triton", device="cuda", shape=shape)
    assert cfg is not None and cfg["block_m"] == entry["config"]["block_m"]
    seen = config.launch("attention_fwd", {"dqk": 64, "dv": 64, "sq": 1024, "sk": 1024, "group": 4}, lambda c: c)
    assert seen.block_m == entry["config"]["block_m"]
    q = torch.randn(1, 8, 1024, 64, device="cuda", dtype=torch.bfloat16)
    k, v = (torch.randn(1, 2, 1024, 64, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    out = hk.attention(q, k, v, backend="triton")
    ref = hk.attention(q.double(), k.double(), v.double(), backend="reference")
    assert (out.double() - ref).abs().max() < 3e-2
