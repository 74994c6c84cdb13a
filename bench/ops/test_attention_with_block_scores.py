"""pytest-benchmark face of ``bench/ops/attention_with_block_scores.py`` (``make bench``): block scores
and top-k of a ragged decode batch (per-sequence lengths)."""

from __future__ import annotations

import pathlib
import sys

import pytest

pytest.importorskip("tvm", reason="apache-tvm is not installed")
pytest.importorskip("pytest_benchmark")
sys.path.insert(0, str(pathlib.Path(__file__).parent))

import attention_with_block_scores as suite  # noqa: E402
from harness import built, run_benchmark  # noqa: E402

# name: (build, implementations)
_CASES = {
    "ragged-decode-fp32": (suite.ragged_decode_case, ("tvm ragged", "tvm ragged, prefill kernel", "tvm decode, no scores",
                                                      "reference ragged", "tvm per-sequence loop")),
}


@pytest.mark.parametrize("case,impl", [pytest.param(n, i, id=f"{n}-{i.replace(' ', '_')}")
                                       for n, (_, impls) in _CASES.items() for i in impls])
def test_attention_with_block_scores(benchmark, case, impl):
    run_benchmark(benchmark, built(case, _CASES[case][0]), impl)
