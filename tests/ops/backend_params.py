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


def requires(backend: str, *, usable: bool = False):
    """Skip mark for a test of one backend: its package is not installed or, with ``usable``,
    it cannot run on this machine (``hysparse_kernels.backends.status``)."""
    if not installed(backend):
        return pytest.mark.skipif(True, reason=f"{backend} is not installed (pip install 'hysparse-kernels[{backend}]')")
    if usable:
        from hysparse_kernels.backends import status

        return pytest.mark.skipif(not status(backend).usable, reason=f"{backend} cannot run here: {status(backend).reason}")
    return pytest.mark.skipif(False, reason="")
