"""pytest-benchmark face of ``bench/attention_cpu.py`` (``make bench``): the TVM kernels and their
baselines (torch SDPA, FlexAttention compiled, the reference) on the issue's CPU shapes.

Each case is one group, so ``--benchmark-group-by=group`` (the default here) lines the
implementations of a case up and the ratio against the baseline is read off the same run.
The 4K / 8K cases are marked ``slow`` (tens of seconds per implementation on two cores).
"""

from __future__ import annotations

import pathlib
import sys

import pytest
import torch

pytest.importorskip("tvm", reason="apache-tvm is not installed")
pytest.importorskip("pytest_benchmark")
sys.path.insert(0, str(pathlib.Path(__file__).parent))

import attention_cpu as suite  # noqa: E402

_CASES = {
    "prefill-1K-fp32": (lambda: suite.prefill_case(1024, torch.float32, reference=True, flex=True), False),
    "prefill-1K-bf16": (lambda: suite.prefill_case(1024, torch.bfloat16, reference=False, flex=False), False),
    "decode-32K-fp32": (lambda: suite.decode_case(32768), False),
    "sparse-pads-100K": (lambda: suite.sparse_pads_case(), False),
    "prefill-4K-fp32": (lambda: suite.prefill_case(4096, torch.float32, reference=False, flex=True), True),
    "prefill-4K-bf16": (lambda: suite.prefill_case(4096, torch.bfloat16, reference=False, flex=False), True),
    "swa128-8K-fp32": (lambda: suite.swa_case(8192, 128), True),
}
_BUILT: dict[str, suite.Case] = {}


def _case(name: str) -> suite.Case:
    if name not in _BUILT:
        _BUILT.clear()  # keep one case's tensors alive at a time
        _BUILT[name] = _CASES[name][0]()
    return _BUILT[name]


def _params():
    impls = {
        "prefill-1K-fp32": ("tvm", "sdpa", "flex", "reference"),
        "prefill-1K-bf16": ("tvm", "sdpa"),
        "decode-32K-fp32": ("tvm hysparse step", "tvm full decode", "sdpa full decode"),
        "sparse-pads-100K": ("tvm k=4", "tvm k=100000 (pads)", "reference k=100000 (pads)"),
        "prefill-4K-fp32": ("tvm", "sdpa", "flex"),
        "prefill-4K-bf16": ("tvm", "sdpa"),
        "swa128-8K-fp32": ("tvm", "flex", "sdpa"),
    }
    for name, (_, slow) in _CASES.items():
        for impl in impls[name]:
            marks = [pytest.mark.slow] if slow else []
            yield pytest.param(name, impl, id=f"{name}-{impl.replace(' ', '_')}", marks=marks)


@pytest.mark.parametrize("case,impl", list(_params()))
def test_attention_cpu(benchmark, case, impl):
    c = _case(case)
    benchmark.group = c.name
    benchmark.extra_info["useful_gflop"] = c.flops / 1e9
    fn = c.impls[impl]
    once = impl in c.once
    benchmark.pedantic(fn, rounds=1 if once else c.rounds, iterations=1, warmup_rounds=0 if once else 1)
