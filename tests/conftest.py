"""Test set-up: Triton's interpreter on machines without a GPU, caches inside the work area,
and the `gpu` marker skipped cleanly where there is no CUDA device."""

import os
import pathlib

import torch

_ROOT = pathlib.Path(__file__).resolve().parent.parent
if not torch.cuda.is_available():
    # Must be set before triton is first imported; kernels then run on numpy (correctness only).
    os.environ.setdefault("TRITON_INTERPRET", "1")
for _var, _sub in (("TRITON_CACHE_DIR", "triton"), ("TORCHINDUCTOR_CACHE_DIR", "inductor"), ("HYSPARSE_CACHE", "hysparse")):
    os.environ.setdefault(_var, str(_ROOT / ".cache" / _sub))

import pytest  # noqa: E402


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
