"""Lowering to a kernel plan: ops per layer and phase, dispatch's backend, the tuned-config hook."""

import pytest

from hysparse_kernels import dispatch
from hysparse_kernels.dispatch import BackendUnavailableError
from hysparse_kernels.ir import get_graph, lower
from hysparse_kernels.ir.lower import MOE_OPS


def test_hysparse_plan_ops_per_layer_and_phase():
    plan = lower(get_graph("tiny-hysparse-7b"), "cpu", seq_len=256)  # FSSS FSS F
    by = {}
    for e in plan.entries:
        by.setdefault((e.phase, e.layer), []).append(e.op)
    assert by[("prefill", 0)] == ["attention_with_block_scores", "topk_blocks"]
    assert by[("prefill", 1)] == ["sparse_attention_fwd", "attention_fwd"]
    assert by[("prefill", 7)] == ["attention_fwd"]  # the last full layer feeds no sparse layer
    assert by[("decode", 4)] == ["attention_with_block_scores", "topk_blocks"]
    assert by[("decode", 6)] == ["sparse_attention_decode", "attention_decode"]
    assert by[("decode", 7)] == ["attention_decode"]
    assert [e.op for e in plan.for_layer(5, "decode")] == by[("decode", 5)]
    roles = {(e.layer, e.op): e.role for e in plan.entries if e.phase == "prefill"}
    assert roles[(1, "attention_fwd")] == "swa branch" and roles[(7, "attention_fwd")] == "full"


def test_entries_use_dispatch_resolution_and_name_the_kernel():
    plan = lower(get_graph("tiny-mimo-v2-flash"), "cpu", batch=2, seq_len=64)
    attention = [e for e in plan.entries if e.role != "moe"]
    assert attention
    for e in attention:
        assert e.backend == dispatch.resolve(e.op, "cpu")
        assert e.kernel == dispatch.target(e.op, e.backend)
        assert e.config_source == "heuristic" and e.config == ()
    swa = next(e for e in plan.entries if e.layer == 1 and e.phase == "decode" and not e.mtp)
    assert dict(swa.shape) == {"batch": 2, "q_heads": 4, "kv_heads": 2, "qk_dim": 24, "v_dim": 16,
                               "seq_q": 1, "seq_k": 64, "window": 16}
    assert sum(e.mtp for e in plan.entries) == 3 * 2  # 3 MTP blocks x (prefill, decode)


def test_moe_ops_not_registered_are_marked_not_yet_available(monkeypatch):
    registered = dispatch.registered_ops()
    plan = lower(get_graph("tiny-hysparse-80b-a3b"), "cpu", seq_len=64)
    moe = [e for e in plan.entries if e.role == "moe"]
    assert len(moe) == 13 * len(MOE_OPS) * 2
    for e in moe:
        if e.op in registered:
            assert e.backend == dispatch.resolve(e.op, "cpu")
        else:
            assert (e.backend, e.kernel, e.config_source) == ("-", "-", "not yet available")
    # Once the kernel layer registers an op, the plan resolves it like any other.
    impls = {op: dict(v) for op, v in dispatch._IMPLS.items()}
    impls[MOE_OPS[-1]] = {"reference": "some.module:moe_fn"}
    monkeypatch.setattr(dispatch, "_IMPLS", impls)
    plan = lower(get_graph("tiny-hysparse-80b-a3b"), "cpu", seq_len=64)
    e = next(e for e in plan.entries if e.op == MOE_OPS[-1])
    assert (e.backend, e.kernel, e.config_source) == ("reference", "some.module:moe_fn", "heuristic")


def test_tuned_configs_come_from_the_lookup_hook():
    asked = []

    def lookup(op, *, backend, device, shape):
        asked.append((op, backend, device))
        return {"BLOCK_M": 64, "num_warps": 4} if op == "sparse_attention_fwd" else None

    plan = lower(get_graph("tiny-hysparse-7b"), "cpu", seq_len=128, tuned_lookup=lookup)
    sparse = [e for e in plan.entries if e.op == "sparse_attention_fwd"]
    assert sparse and all(e.config_source == "tuned" and dict(e.config) == {"BLOCK_M": 64, "num_warps": 4}
                          for e in sparse)
    assert all(e.config_source == "heuristic" for e in plan.entries if e.op != "sparse_attention_fwd")
    # asked for the backend auto picks here (tvm where installed, else the reference)
    assert ("attention_fwd", dispatch.resolve("attention_fwd", "cpu"), "cpu") in asked


def test_explicit_backend_and_bad_device():
    plan = lower(get_graph("tiny-mimo-7b"), "cpu", backend="reference", seq_len=16)
    assert {e.backend for e in plan.entries} == {"reference"}
    with pytest.raises(BackendUnavailableError, match="cutlass"):
        lower(get_graph("tiny-mimo-7b"), "cpu", backend="cutlass", seq_len=16)
    with pytest.raises(ValueError, match="device: expected one of"):
        lower(get_graph("tiny-mimo-7b"), "tpu")
    with pytest.raises(ValueError, match="seq_len: expected a positive int, got 0"):
        lower(get_graph("tiny-mimo-7b"), "cpu", seq_len=0)
    with pytest.raises(ValueError, match="phases"):
        lower(get_graph("tiny-mimo-7b"), "cpu", phases=("train",))


def test_planning_for_a_device_this_machine_lacks_is_noted():
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    for _ in range(2):  # the note does not depend on dispatch's once-per-process warning
        plan = lower(get_graph("tiny-mimo-7b"), "cuda", seq_len=16)
        assert all("can run cuda tensors on this machine" in e.note for e in plan.entries)
    assert all(e.note == "" for e in lower(get_graph("tiny-mimo-7b"), "cpu", seq_len=16).entries)
