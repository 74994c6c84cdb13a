"""The backends a test runs on, as pytest params that skip where the package is missing."""

from __future__ import annotations

import importlib.util

import pytest

_PACKAGE = {"tvm": "tvm", "triton": "triton"}


def installed(backend: str) -> bool:
    return backend not in _PACKAGE or importlib.util.find_spec(_PACKAGE[backend]) is not None


def params(*backends: str):
    """``pytest.param(name)`` for each backend, skipped when its package is not installed."""
    return [
        pytest.param(b, id=b, marks=pytest.mark.skipif(not installed(b), reason=f"{b} is not installed"))
        for b in backends
    ]


ATTENTION = params("reference", "tvm", "triton")
