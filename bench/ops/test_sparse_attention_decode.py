"""pytest-benchmark face of ``bench/ops/sparse_attention_decode.py`` (``make bench``): the HySparse
decode step at 32K context vs full decode."""

from __future__ import annotations

import pathlib
import sys

import pytest

pytest.importorskip("tvm", reason="apache-tvm is not installed")
pytest.importorskip("pytest_benchmark")
sys.path.insert(0, str(pathlib.Path(__file__).parent))

import sparse_attention_decode as suite  # noqa: E402
from harness import built, run_benchmark  # noqa: E402

# name: (build, implementations)
_CASES = {
    "decode-32K-fp32": (lambda: suite.decode_case(32768), ("tvm hysparse step", "tvm full decode", "sdpa full decode")),
}


@pytest.mark.parametrize("case,impl", [pytest.param(n, i, id=f"{n}-{i.replace(' ', '_')}")
                                       for n, (_, impls) in _CASES.items() for i in impls])
def test_sparse_attention_decode(benchmark, case, impl):
    run_benchmark(benchmark, built(case, _CASES[case][0]), impl)
