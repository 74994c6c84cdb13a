"""Launch configs of the Triton attention kernels: vendor lists, heuristic default, tuned-config hook."""

import pytest

from hysparse_kernels.ops.attention.triton import config

OPS = ("attention_fwd", "attention_block_scores", "attention_bwd", "sparse_attention", "sparse_attention_bwd",
       "decode", "topk_blocks")


@pytest.mark.parametrize("op", OPS)
def test_every_op_has_configs_for_each_vendor(op):
    for configs in (config.cuda_configs(op), config.hip_configs(op)):
        assert configs and all(c.num_warps >= 1 and c.block_m >= 1 for c in configs)


def test_unknown_op_is_refused():
    with pytest.raises(KeyError, match="op: no triton configs for 'nope'"):
        config.cuda_configs("nope")


def test_provider_supplies_configs_on_the_gpu_path(monkeypatch):
    monkeypatch.setattr(config, "interpreted", lambda: False)
    tuned = config.Config(128, 128, 8, 3)
    seen = []

    def provider(op, shape):
        seen.append((op, shape["sk"]))
        return tuned if shape["sk"] >= 8192 else None  # no entry for short sequences

    previous = config._provider
    config.set_config_provider(provider)
    try:
        assert config.config_for("attention_fwd", {"dqk": 128, "dv": 128, "sk": 16384}) == tuned
        fallback = config.config_for("attention_fwd", {"dqk": 128, "dv": 128, "sk": 1024})
        assert fallback == config.default_config("attention_fwd", {"dqk": 128, "dv": 128, "sk": 1024})
        assert seen == [("attention_fwd", 16384), ("attention_fwd", 1024)]
    finally:
        config.set_config_provider(previous)  # the autotune cache, as the other tests expect


def test_heuristic_default_follows_head_dim(monkeypatch):
    monkeypatch.setattr(config, "interpreted", lambda: False)
    big = config.default_config("attention_fwd", {"dqk": 192, "dv": 128, "sk": 4096})
    small = config.default_config("attention_fwd", {"dqk": 128, "dv": 128, "sk": 4096})
    assert big.block_m < small.block_m  # Dqk = 192 (padded to 256) takes the smaller tile


def test_single_config_under_the_interpreter(monkeypatch):
    monkeypatch.setattr(config, "interpreted", lambda: True)
    previous = config._provider
    config.set_config_provider(lambda op, shape: config.Config(256, 256, 8, 4))
    try:
        assert config.config_for("attention_fwd", {"sk": 16384}).num_stages == 1
    finally:
        config.set_config_provider(previous)  # the autotune cache, as the other tests expect


def test_head_block_pads_to_a_power_of_two():
    assert [config.head_block(d) for d in (8, 16, 64, 96, 128, 192)] == [16, 16, 64, 128, 128, 256]
