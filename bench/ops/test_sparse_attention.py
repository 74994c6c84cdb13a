"""pytest-benchmark face of ``bench/ops/sparse_attention.py`` (``make bench``): sparse attention with
index lists padded to 100,000 entries."""

from __future__ import annotations

import pathlib
import sys

import pytest

pytest.importorskip("tvm", reason="apache-tvm is not installed")
pytest.importorskip("pytest_benchmark")
sys.path.insert(0, str(pathlib.Path(__file__).parent))

import sparse_attention as suite  # noqa: E402
from harness import built, run_benchmark  # noqa: E402

# name: (build, implementations)
_CASES = {
    "sparse-pads-100K": (suite.sparse_pads_case, ("tvm k=4", "tvm k=100000 (pads)", "reference k=100000 (pads)")),
}


@pytest.mark.parametrize("case,impl", [pytest.param(n, i, id=f"{n}-{i.replace(' ', '_')}")
                                       for n, (_, impls) in _CASES.items() for i in impls])
def test_sparse_attention(benchmark, case, impl):
    run_benchmark(benchmark, built(case, _CASES[case][0]), impl)
