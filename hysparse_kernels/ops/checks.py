"""Input checks shared by the op families: each error names the argument, what was expected
and what came. They look at metadata only (shapes, dtypes, devices), so they trace under
``torch.compile`` without graph breaks; checks on tensor *values* live inside the ops."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..backends import BACKENDS

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def backend_name(backend) -> str:
    """The public functions' ``backend=`` argument, normalised once: None -> ``"auto"``; a name
    that is no backend is an error here, before any op runs."""
    if backend is not None and not isinstance(backend, str):
        raise TypeError(f"backend: expected a backend name or None, got {type(backend).__name__}")
    if not backend:
        return "auto"
    if backend not in BACKENDS + ("auto",):
        raise ValueError(f"backend: expected one of {BACKENDS + ('auto',)}, got {backend!r}")
    return backend


def tensor(name: str, t, ndim: int | None = None, layout: str = "") -> Tensor:
    if not isinstance(t, Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    if ndim is not None and t.dim() != ndim:
        raise ValueError(f"{name}: expected a {ndim}-D tensor {layout}, got shape {tuple(t.shape)}")
    return t


def floating(name: str, t: Tensor) -> None:
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name}: expected a floating dtype (float16, bfloat16, float32, float64), got {t.dtype}")


def integer(name: str, t: Tensor) -> None:
    if t.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"{name}: expected an int32 or int64 tensor, got {t.dtype}")


def same_dtype(name: str, t: Tensor, ref_name: str, ref: Tensor) -> None:
    if t.dtype != ref.dtype:
        raise TypeError(f"{name}: expected dtype {ref.dtype} (as {ref_name}), got {t.dtype}")


def same_device(name: str, t: Tensor, ref_name: str, ref: Tensor) -> None:
    if t.device != ref.device:
        raise ValueError(f"{name}: expected a tensor on {ref.device} (as {ref_name}), got {t.device}")


def dim_equal(name: str, got: int, expected: int, what: str) -> None:
    if got != expected:
        raise ValueError(f"{name}: expected {what} = {expected}, got {got}")


def positive_int(name: str, value, *, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name}: expected a positive int, got {value!r}")


def power_of_two(name: str, value) -> None:
    positive_int(name, value)
    if value & (value - 1):
        raise ValueError(f"{name}: expected a power of two, got {value}")


def positive_float(name: str, value, *, allow_none: bool = True) -> None:
    """A positive, finite number (``inf`` and ``nan`` are rejected)."""
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
        raise ValueError(f"{name}: expected a positive finite number, got {value!r}")


def finite_float(name: str, value) -> None:
    """Any finite number (``inf`` and ``nan`` are rejected)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name}: expected a number, got {type(value).__name__}")
    if not math.isfinite(value):
        raise ValueError(f"{name}: expected a finite number, got {value!r}")


def nonzero_dim(name: str, got: int, what: str) -> None:
    """A size that must be at least 1 (a head dim of 0 has no meaning)."""
    if got < 1:
        raise ValueError(f"{name}: expected {what} >= 1, got {got}")


def integer_or_floating(name: str, t: Tensor) -> None:
    if t.dtype not in FLOAT_DTYPES + (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8):
        raise TypeError(f"{name}: expected an integer or floating dtype, got {t.dtype}")
