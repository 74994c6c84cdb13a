"""Search spaces: Triton enumeration pruned by the H100 / A100 limits (no GPU needed), TVM knobs."""

import pytest

from hysparse_kernels.autotune import device, spaces
from hysparse_kernels.ops.attention.triton import config, tuning

H100, A100 = device.GPUS["h100"], device.GPUS["a100"]
SHAPE = {"qk_dim": 128, "v_dim": 128, "group": 8, "seq_q": 4096, "seq_k": 4096}


def keyset(configs):
    return {tuple(sorted(c.items())) for c in configs}


@pytest.mark.parametrize("dev", [H100, A100], ids=["h100", "a100"])
def test_every_kept_config_fits_the_device(dev):
    (configs,) = spaces.space("attention_fwd", "triton", SHAPE, "bf16", dev)
    assert configs
    for c in configs:
        assert tuning.smem_bytes(c, 128, 128, 2) <= dev.smem_per_block
        assert tuning.regs_per_thread(c, 128, 128) <= dev.regs_per_thread
    assert len(configs) < 4 * 4 * 3 * 4  # something was pruned


def test_a100_prunes_what_h100_keeps():
    h = keyset(spaces.space("attention_fwd", "triton", SHAPE, "bf16", H100)[0])
    a = keyset(spaces.space("attention_fwd", "triton", SHAPE, "bf16", A100)[0])
    assert a < h  # strictly fewer on the smaller shared memory
    dropped = [dict(c) for c in h - a]
    assert all(A100.smem_per_block < tuning.smem_bytes(c, 128, 128, 2) <= H100.smem_per_block for c in dropped)
    # 128 x 128 tiles, 3 stages, D = 128 bf16: Q 32 KiB + 3 x (K + V) 192 KiB = 224 KiB (A100: 163 KiB)
    assert (("block_m", 128), ("block_n", 128), ("num_stages", 3), ("num_warps", 8)) in h - a


def test_wide_heads_prune_more_and_fp32_more_than_bf16():
    narrow = spaces.space("attention_fwd", "triton", {**SHAPE, "qk_dim": 64, "v_dim": 64}, "bf16", A100)[0]
    wide = spaces.space("attention_fwd", "triton", {**SHAPE, "qk_dim": 256, "v_dim": 256}, "bf16", A100)[0]
    fp32 = spaces.space("attention_fwd", "triton", SHAPE, "fp32", A100)[0]
    bf16 = spaces.space("attention_fwd", "triton", SHAPE, "bf16", A100)[0]
    assert len(wide) < len(bf16) < len(narrow)
    assert keyset(fp32) < keyset(bf16)


@pytest.mark.parametrize("dev", [H100, A100], ids=["h100", "a100"])
def test_the_heuristic_configs_survive_pruning(dev, monkeypatch):
    monkeypatch.setattr(config, "interpreted", lambda: False)
    kept = keyset(spaces.space("attention_fwd", "triton", SHAPE, "bf16", dev)[0])
    heads = ({"dqk": 128, "dv": 128}, {"dqk": 192, "dv": 128})  # 128x64 (D<=128) and 64x64 (wide heads)
    for c in (config.default_config("attention_fwd", {**h, "sk": 4096}) for h in heads):
        assert (("block_m", c.block_m), ("block_n", c.block_n), ("num_stages", c.num_stages),
                ("num_warps", c.num_warps)) in kept


def test_decode_space_uses_few_rows():
    configs = spaces.space("attention_decode", "triton", SHAPE, "bf16", H100)[0]
    assert configs and {c["block_m"] for c in configs} <= {16, 32}


def test_tvm_spaces():
    (att,) = spaces.space("attention_fwd", "tvm", {**SHAPE, "group": 4}, "bfloat16", device.detect("cpu"))
    assert {"rows": 64, "kv_tile": 64} in att and all(c["rows"] >= 4 for c in att)
    (dec,) = spaces.space("attention_decode", "tvm", SHAPE, "bfloat16", device.detect("cpu"))
    assert all(set(c) == {"kv_tile"} for c in dec)
    # block scores of a prefill choose rows; of a decode step the decode kernel runs (one config)
    (bs_prefill,) = spaces.space("attention_with_block_scores", "tvm", {**SHAPE, "group": 4}, "float32", device.detect("cpu"))
    assert len(bs_prefill) > 1 and all(set(c) == {"rows"} for c in bs_prefill)
    (bs_decode,) = spaces.space("attention_with_block_scores", "tvm", {**SHAPE, "group": 4, "seq_q": 1}, "float32",
                                device.detect("cpu"))
    assert len(bs_decode) == 1
    gate_up, down, mt = spaces.space("moe_fwd", "tvm", {"tokens": 64}, "bfloat16", device.Device("k", "n", "cpu", vector_registers=16))
    # gate/up keeps 2 accumulators per tile element: 2 x 4 tiles (16 + 8 + 2 registers) do not fit 16
    assert {"gate_up_mr": 2, "gate_up_nr": 2} in gate_up and {"gate_up_mr": 2, "gate_up_nr": 4} not in gate_up
    assert {"down_mr": 4, "down_nr": 2} in down and {"down_mr": 4, "down_nr": 4} not in down
    assert [c["mt"] for c in mt] == [32, 64, 128, 256]


def test_triton_moe_space():
    shape = {"tokens": 64, "hidden": 64, "experts": 8, "top_k": 2, "intermediate": 32}
    block_m, gate_up, down = spaces.space("moe_fwd", "triton", shape, "bf16", A100)
    assert [c["block_m"] for c in block_m] == [16, 32, 64, 128]
    # tiles stop at the dimension they cover: N of gate/up is the intermediate size (32), K the hidden (64)
    assert {c["gate_up_block_n"] for c in gate_up} == {16, 32} and {c["gate_up_block_k"] for c in gate_up} == {16, 32, 64}
    assert {c["down_block_n"] for c in down} == {16, 32, 64} and {c["down_block_k"] for c in down} == {16, 32}
    tiny = device.Device("k", "n", "cuda", smem_per_block=3 * 2 * (16 * 16 + 16 * 16))  # room for 16x16 tiles only
    _, gate_up, _ = spaces.space("moe_fwd", "triton", shape, "bf16", tiny)
    assert gate_up == [{"gate_up_block_n": 16, "gate_up_block_k": 16}]


def test_each_backend_lists_its_tunable_ops():
    assert spaces.tunable_ops("tvm") == ("attention_fwd", "attention_decode", "attention_with_block_scores", "moe_fwd")
    assert spaces.tunable_ops("triton") == ("attention_fwd", "attention_decode", "moe_fwd")
    assert spaces.tunable("moe_fwd", "triton") and not spaces.tunable("route", "tvm") and not spaces.tunable("x", "tvm")


def test_unknown_op_names_the_tunable_ones():
    with pytest.raises(KeyError, match="tunable: attention_fwd"):
        spaces.space("route", "tvm", {}, "bf16", device.detect("cpu"))


def test_the_tuner_reaches_kernels_through_their_entry_points_only():
    """Every kernel module the tuner uses exports ``TUNABLE``, ``search_space``, ``heuristic_config``
    and ``run_with_config``, and
    no file of ``autotune/`` touches a private name of a kernel module."""
    import ast
    import importlib
    import pathlib

    from hysparse_kernels.autotune import tasks

    for target in tasks.KERNELS.values():
        module = importlib.import_module(target)
        assert callable(module.heuristic_config) and callable(module.run_with_config), target
        assert callable(module.search_space) and module.TUNABLE, target
    assert spaces.heuristic("moe_fwd", "tvm", {}) == importlib.import_module(
        tasks.KERNELS[("moe", "tvm")]).heuristic_config("moe_fwd", {})
    private = []
    for path in pathlib.Path(spaces.__file__).parent.glob("*.py"):
        tree = ast.parse(path.read_text())
        kernel_names = {alias.asname or alias.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
                        and (node.module or "").startswith("hysparse_kernels.ops") for alias in node.names}
        private += [f"{path.name}:{node.lineno} {node.value.id}.{node.attr}" for node in ast.walk(tree)
                    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                    and node.value.id in kernel_names and node.attr.startswith("_")]
    assert not private, private
