"""Backend choice for every op: explicit ``backend=`` > ``use_backend()`` > ``HYSPARSE_BACKEND`` > auto.

Each op family registers, per backend, where its implementation lives (``"module:function"``);
nothing is imported until the op runs on that backend, so a missing optional package never
breaks ``import hysparse_kernels``.

Rules
-----
* explicit ``backend="tvm"`` on a call: that backend or a clear error (not implemented for the op,
  not installed, or cannot run on the tensors' device).
* ``use_backend("tvm")`` / ``HYSPARSE_BACKEND=tvm``: that backend for every op that has it; an op
  without it falls back to auto with one warning. If the op has it but it cannot run, error.
* auto: the first usable backend in ``AUTO_ORDER[device type]`` that the op implements. Passing
  over a backend the op implements but that is not usable here warns once (op, backend, device).
* dtypes: a backend may declare the dtypes its kernels take (``register(..., dtypes=...)``).
  Auto passes over it silently for other dtypes (float64 runs on the reference by design); asked
  for by name, it is an error; forced, it falls back to auto with one warning.
* inputs: a backend may also declare which inputs its kernels take (``register(..., accepts=
  "module:function")``, a predicate over the op's arguments: block sizes, empty tensors, aligned
  sizes). Inputs it does not take run on the next backend of the device's auto order that takes
  them, the reference last (or at once for a backend outside that order), silently: this is the
  one place an op falls back, the kernels themselves never call another backend.
* directions: a backward op runs on the forward's backend when that backend implements it, else
  on auto (``backward_backend``).
"""

from __future__ import annotations

import contextlib
import importlib
import os
import warnings
from contextvars import ContextVar
from functools import lru_cache
from typing import Callable, Iterator

from .backends import BACKENDS, status

ENV_VAR = "HYSPARSE_BACKEND"

# Preference of `auto` per device type. CUTLASS only ships grouped GEMM, so it is first on CUDA
# for the ops that register it; TVM kernels are built for the CPU (llvm) and run CPU tensors.
AUTO_ORDER = {
    "cuda": ("cutlass", "triton", "reference"),
    "cpu": ("tvm", "reference"),
}


class BackendFallbackWarning(UserWarning):
    """A preferred backend could not be used and another one ran instead."""


class BackendUnavailableError(RuntimeError):
    """A backend asked for by name cannot run this op here."""


_IMPLS: dict[str, dict[str, str]] = {}
_DTYPES: dict[tuple[str, str], tuple] = {}
_ACCEPTS: dict[tuple[str, str], str] = {}
_forced: ContextVar[str | None] = ContextVar("hysparse_backend", default=None)
_warned: set[tuple] = set()


def register(op: str, backend: str, target: str, *, dtypes=None, accepts: str | None = None) -> None:
    """Declare that ``op`` has a ``backend`` implementation at ``"package.module:function"``,
    taking inputs of ``dtypes`` (default: any) for which the predicate at ``accepts``
    (``"package.module:function"``, called with the op's arguments) is true (default: all)."""
    if backend not in BACKENDS:
        raise ValueError(f"backend: expected one of {BACKENDS}, got {backend!r}")
    _IMPLS.setdefault(op, {})[backend] = target
    if dtypes is not None:
        _DTYPES[(op, backend)] = tuple(dtypes)
    else:
        _DTYPES.pop((op, backend), None)
    if accepts is not None:
        _ACCEPTS[(op, backend)] = accepts
    else:
        _ACCEPTS.pop((op, backend), None)
    get_impl.cache_clear()
    _predicate.cache_clear()


def takes(op: str, backend: str, dtype) -> bool:
    """Whether ``backend``'s ``op`` takes inputs of ``dtype`` (None: any)."""
    allowed = _DTYPES.get((op, backend))
    return dtype is None or allowed is None or dtype in allowed


def implemented(op: str) -> tuple[str, ...]:
    """Backends that implement ``op``, in the canonical order of ``BACKENDS``."""
    impls = _IMPLS.get(op)
    if impls is None:
        raise KeyError(f"op: unknown op {op!r}; registered ops: {sorted(_IMPLS)}")
    return tuple(b for b in BACKENDS if b in impls)


def registered_ops() -> dict[str, tuple[str, ...]]:
    return {op: implemented(op) for op in sorted(_IMPLS)}


def target(op: str, backend: str) -> str:
    """Where ``op``'s ``backend`` implementation lives (``"package.module:function"``), unimported."""
    if backend not in implemented(op):
        raise KeyError(f"backend: {op} has no {backend!r} implementation; it has {implemented(op)}")
    return _IMPLS[op][backend]


def _check_name(name: str, what: str) -> str:
    if name not in BACKENDS + ("auto",):
        raise ValueError(f"{what}: expected one of {BACKENDS + ('auto',)}, got {name!r}")
    return name


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Run every op inside the block on backend ``name`` (ops without it fall back to auto).

    Example::

        with hysparse_kernels.use_backend("reference"):
            out = hysparse_kernels.attention(q, k, v)
    """
    token = _forced.set(_check_name(name, "use_backend(name)"))
    try:
        yield
    finally:
        _forced.reset(token)


def _usable_on(backend: str, device_type: str) -> tuple[bool, str]:
    st = status(backend)
    if not st.installed:
        return False, st.reason
    if device_type not in st.devices:
        return False, f"{backend} cannot run {device_type} tensors here ({st.reason})"
    return True, ""


def _warn_once(key: tuple, message: str) -> None:
    if key not in _warned:
        _warned.add(key)
        warnings.warn(message, BackendFallbackWarning, stacklevel=4)


def resolve(op: str, device_type: str, backend: str | None = None, dtype=None) -> str:
    """The backend that runs ``op`` on ``device_type`` tensors of ``dtype``, following the rules above."""
    impls = implemented(op)
    if backend is not None and backend != "auto":
        _check_name(backend, "backend")
        if backend not in impls:
            raise BackendUnavailableError(f"backend: {op} has no {backend!r} implementation; it has {impls}")
        if not takes(op, backend, dtype):
            raise BackendUnavailableError(
                f"backend={backend!r} was asked for {op}, but its kernels take {_DTYPES[(op, backend)]}, got {dtype}; "
                "use backend='reference' (or auto) for this dtype"
            )
        ok, why = _usable_on(backend, device_type)
        if not ok:
            raise BackendUnavailableError(f"backend={backend!r} was asked for {op}, but {why}")
        return backend
    forced = _forced.get() or os.environ.get(ENV_VAR) or None
    if forced is not None and forced != "auto":
        _check_name(forced, f"{ENV_VAR} / use_backend")
        if forced in impls and takes(op, forced, dtype):
            ok, why = _usable_on(forced, device_type)
            if not ok:
                raise BackendUnavailableError(f"backend {forced!r} was forced for {op}, but {why}")
            return forced
        why = f"has no {forced!r} backend (it has {impls})" if forced not in impls else f"{forced!r} kernels do not take {dtype}"
        _warn_once((op, forced, "missing", dtype), f"{op} {why}; using auto")
    for candidate in AUTO_ORDER.get(device_type, ("reference",)):
        if candidate not in impls or not takes(op, candidate, dtype):
            continue
        ok, why = _usable_on(candidate, device_type)
        if ok:
            return candidate
        _warn_once((op, candidate, device_type), f"{op}: skipping {candidate} ({why})")
    if "reference" in impls:
        return "reference"
    raise BackendUnavailableError(f"{op}: no backend can run on {device_type}; implemented: {impls}")


def _load(target: str) -> Callable:
    module, _, fn = target.partition(":")
    return getattr(importlib.import_module(module), fn)


@lru_cache(maxsize=None)
def get_impl(op: str, backend: str) -> Callable:
    """Import and return the implementation of ``op`` on ``backend``."""
    return _load(_IMPLS[op][backend])


@lru_cache(maxsize=None)
def _predicate(op: str, backend: str) -> Callable | None:
    target = _ACCEPTS.get((op, backend))
    return None if target is None else _load(target)


def accepts(op: str, backend: str, *args, **kwargs) -> bool:
    """Whether ``backend``'s kernel of ``op`` takes these arguments (its ``accepts`` predicate)."""
    pred = _predicate(op, backend)
    return pred is None or bool(pred(*args, **kwargs))


def _next_that_accepts(op: str, after: str, device_type: str, dtype, args, kwargs) -> str:
    """The backend after ``after`` in the auto order of ``device_type`` that implements ``op``,
    takes ``dtype``, runs here and accepts the arguments; the reference when none does (and when
    ``after`` is not in that order, e.g. Triton's interpreter on the CPU)."""
    order = AUTO_ORDER.get(device_type, ("reference",))
    impls = implemented(op)
    rest = order[order.index(after) + 1:] if after in order else ()
    for candidate in rest:
        if (candidate in impls and candidate != after and takes(op, candidate, dtype)
                and _usable_on(candidate, device_type)[0] and accepts(op, candidate, *args, **kwargs)):
            return candidate
    if "reference" in impls:
        return "reference"
    raise BackendUnavailableError(f"{op}: no backend takes these inputs on {device_type}; implemented: {impls}")


def backward_backend(op: str, backend: str | None) -> str:
    """The backend a backward ``op`` runs on after a forward on ``backend``: the same one when it
    implements ``op``, else auto (e.g. a forward-only kernel's backward runs on the reference)."""
    return backend if backend is not None and backend in implemented(op) else "auto"


def call(op: str, backend: str | None, like, *args, **kwargs):
    """Resolve the backend for tensors like ``like`` (a tensor, or a device type string) and run
    ``op`` on it; inputs its kernel does not accept run on the next backend that does."""
    if isinstance(like, str):
        device_type, dtype = like, None
    else:
        device_type, dtype = like.device.type, like.dtype
    chosen = resolve(op, device_type, backend, dtype)
    if (op, chosen) in _ACCEPTS and not accepts(op, chosen, *args, **kwargs):
        chosen = _next_that_accepts(op, chosen, device_type, dtype, args, kwargs)
    return get_impl(op, chosen)(*args, **kwargs)
