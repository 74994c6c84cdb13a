"""bench/ops/gpu/attention.py cannot run without a GPU; check that it imports, parses its options
and refuses cleanly without CUDA."""

import importlib.util
import pathlib
import subprocess
import sys

import pytest
import torch

SCRIPT = pathlib.Path(__file__).resolve().parents[2] / "bench" / "ops" / "gpu" / "attention.py"


def _load():
    spec = importlib.util.spec_from_file_location("attention_gpu", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_options_parse():
    args = _load().parse_args(["--seqlens", "4096", "16384", "--topk", "8", "--no-backward", "--json", "x.json"])
    assert args.seqlens == [4096, 16384] and args.topk == 8 and args.no_backward and args.json == "x.json"
    assert args.dim == 128 and args.dtype == "bf16" and args.block_size == 64


def test_help_runs():
    proc = subprocess.run([sys.executable, str(SCRIPT), "--help"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "--decode-context" in proc.stdout


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU path")
def test_refuses_without_cuda():
    assert _load().main(["--seqlens", "128"]) == 2


def test_flop_count_of_causal_attention():
    mod = _load()
    # causal forward at S=4096, D=128, one head: 4 * S * (S/2) * D
    assert mod.attention_flops(1, 1, 4096, 2048, 128, False) == 4.0 * 4096 * 2048 * 128
    assert mod.attention_flops(1, 1, 4096, 2048, 128, True) == 3.5 * 4.0 * 4096 * 2048 * 128
