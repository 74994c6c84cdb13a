"""Launch configs of the Triton attention kernels: the heuristic default, tuned configs through
``config.launch`` (the same ``tuned.launch`` as TVM), and the tuner's fixed-config path."""

import pytest
import torch

from hysparse_kernels import tuned
from hysparse_kernels.ops.attention.triton import config

OPS = ("attention_fwd", "attention_with_block_scores", "attention_bwd", "sparse_attention", "sparse_attention_bwd",
       "decode", "topk_blocks")


@pytest.mark.parametrize("op", OPS)
def test_every_op_has_a_heuristic_for_each_vendor(op, monkeypatch):
    monkeypatch.setattr(config, "interpreted", lambda: False)
    cuda = config.default_config(op, {"dqk": 128, "dv": 128, "sk": 4096})
    assert cuda.num_warps >= 1 and cuda.block_m >= 1
    monkeypatch.setattr(torch.version, "hip", "6.0")
    hip = config.default_config(op, {"dqk": 128, "dv": 128, "sk": 4096})
    assert (hip.block_m, hip.block_n, hip.num_stages, hip.num_warps) == (cuda.block_m, cuda.block_n, 1,
                                                                         max(4, cuda.num_warps // 2))


def test_unknown_op_is_refused(monkeypatch):
    monkeypatch.setattr(config, "interpreted", lambda: False)
    with pytest.raises(KeyError, match="op: no triton configs for 'nope'"):
        config.default_config("nope", {})


def test_tuned_configs_are_used_on_the_gpu_path(monkeypatch):
    monkeypatch.setattr(config, "interpreted", lambda: False)
    tuned_cfg = {"block_m": 128, "block_n": 128, "num_warps": 8, "num_stages": 3}
    seen = []

    def lookup(op, *, backend, device, shape):
        seen.append((op, backend, device, shape["seq_k"]))
        return dict(tuned_cfg) if shape["seq_k"] >= 8192 else None  # no entry for short sequences

    monkeypatch.setattr(tuned.query, "lookup", lookup)
    monkeypatch.setattr(tuned.query, "warn_heuristic", lambda *a, **k: None)
    long, short = {"dqk": 128, "dv": 128, "sk": 16384}, {"dqk": 128, "dv": 128, "sk": 1024}
    assert config.launch("attention_fwd", long, lambda c: c) == config.Config(**tuned_cfg)
    assert config.launch("attention_fwd", short, lambda c: c) == config.default_config("attention_fwd", short)
    assert seen == [("attention_fwd", "triton", "cuda", 16384), ("attention_fwd", "triton", "cuda", 1024)]
    assert config.launch("decode", long, lambda c: c) == config.Config(**tuned_cfg)
    assert seen[-1][0] == "attention_decode"  # the launcher's name in the cache's


def test_heuristic_default_follows_head_dim(monkeypatch):
    monkeypatch.setattr(config, "interpreted", lambda: False)
    big = config.default_config("attention_fwd", {"dqk": 192, "dv": 128, "sk": 4096})
    small = config.default_config("attention_fwd", {"dqk": 128, "dv": 128, "sk": 4096})
    assert big.block_m < small.block_m  # Dqk = 192 (padded to 256) takes the smaller tile


def test_single_config_under_the_interpreter(monkeypatch):
    monkeypatch.setattr(config, "interpreted", lambda: True)
    monkeypatch.setattr(tuned.query, "lookup", lambda *a, **k: pytest.fail("nothing is looked up under the interpreter"))
    assert config.launch("attention_fwd", {"sk": 16384}, lambda c: c).num_stages == 1


def test_run_with_config_fixes_every_launch_inside_it(monkeypatch):
    """The tuner's timing path: each launch in the call gets exactly the candidate, nothing else."""
    monkeypatch.setattr(config, "interpreted", lambda: False)
    monkeypatch.setattr(tuned.query, "lookup", lambda *a, **k: pytest.fail("a fixed config is not looked up"))
    candidate = {"block_m": 32, "block_n": 128, "num_warps": 2, "num_stages": 4}
    got = config.run_with_config(candidate, lambda: [config.launch(op, {"sk": 64}, lambda c: c) for op in ("attention_fwd", "decode")])
    assert got == [config.Config(**candidate)] * 2
    assert config.heuristic_config("attention_decode", {"qk_dim": 64, "v_dim": 64, "seq_k": 64}) == \
        vars(config.default_config("decode", {"dqk": 64, "dv": 64, "sk": 64}))
