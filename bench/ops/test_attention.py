"""pytest-benchmark face of ``bench/ops/attention.py`` (``make bench``): the TVM kernels of
``attention`` and their baselines (torch SDPA, FlexAttention compiled, the reference).

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

import attention as suite  # noqa: E402
from harness import built, run_benchmark  # noqa: E402

# name: (build, slow, implementations)
_CASES = {
    "prefill-1K-fp32": (lambda: suite.prefill_case(1024, torch.float32, reference=True, flex=True), False,
                        ("tvm", "sdpa", "flex", "reference")),
    "prefill-1K-bf16": (lambda: suite.prefill_case(1024, torch.bfloat16, reference=False, flex=False), False,
                        ("tvm", "sdpa")),
    "prefill-4K-fp32": (lambda: suite.prefill_case(4096, torch.float32, reference=False, flex=True), True,
                        ("tvm", "sdpa", "flex")),
    "prefill-4K-bf16": (lambda: suite.prefill_case(4096, torch.bfloat16, reference=False, flex=False), True,
                        ("tvm", "sdpa")),
    "swa128-8K-fp32": (lambda: suite.swa_case(8192, 128), True, ("tvm", "flex", "sdpa")),
}


def _params():
    for name, (_, slow, impls) in _CASES.items():
        for impl in impls:
            yield pytest.param(name, impl, id=f"{name}-{impl.replace(' ', '_')}",
                               marks=[pytest.mark.slow] if slow else [])


@pytest.mark.parametrize("case,impl", list(_params()))
def test_attention(benchmark, case, impl):
    run_benchmark(benchmark, built(case, _CASES[case][0]), impl)
