"""Attention patterns: what one layer's attention sees.

Three patterns, each a frozen dataclass checked when it is built:

* ``Full(causal=True)``: every earlier key (causal) or every key.
* ``SlidingWindow(window=128, sink=True)``: the query and the ``window - 1`` keys before it,
  with an optional learnable per-head sink in the softmax denominator.
* ``OracleSparse(topk=16, block_size=64, window=128, sink=True, gate="sigmoid")``: the HySparse
  sparse layer. Its sparse branch reads the *preceding full layer's* K/V cache at the ``topk``
  blocks of ``block_size`` keys that the full layer selected (oracle selection); its sliding-window
  branch (``window``; ``None`` drops it) has its own K/V projections and a ring-buffer cache; the
  two outputs are mixed by ``gate`` gates: ``o = g_a(x) * o_sparse + g_b(x) * o_swa``.

Example::

    >>> SlidingWindow(window=128).kind
    'swa'
    >>> OracleSparse(topk=16).selected_tokens
    1024
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Union

GATES = ("sigmoid",)


def _check_int(name: str, value, *, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name}: expected an int, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{name}: expected an int >= {minimum}, got {value}")


def _check_bool(name: str, value) -> None:
    if not isinstance(value, bool):
        raise TypeError(f"{name}: expected a bool, got {type(value).__name__} {value!r}")


@dataclass(frozen=True)
class Full:
    """Full attention; with ``causal=True`` query i sees keys ``<= i``. Owns a full-length KV cache."""

    causal: bool = True

    kind = "full"
    letter = "F"

    def __post_init__(self):
        _check_bool("Full.causal", self.causal)

    def describe(self) -> str:
        return "full" if self.causal else "full(bidirectional)"


@dataclass(frozen=True)
class SlidingWindow:
    """Sliding-window attention: key j is visible to query i when ``i - window < j <= i``.

    Owns a ring-buffer cache of ``window`` tokens. ``sink``: a learnable per-head scalar added
    to the softmax denominator only.
    """

    window: int = 128
    sink: bool = True

    kind = "swa"
    letter = "W"

    def __post_init__(self):
        _check_int("SlidingWindow.window", self.window)
        _check_bool("SlidingWindow.sink", self.sink)

    def describe(self) -> str:
        return f"swa(w{self.window}{', sink' if self.sink else ''})"


@dataclass(frozen=True)
class OracleSparse:
    """HySparse sparse layer: top-``topk`` blocks of the preceding full layer's K/V, plus a
    sliding-window branch of ``window`` tokens with its own K/V (``window=None``: no such branch).

    ``block_size`` must be a power of two (it is the attention kernel's KV tile);
    ``topk * block_size`` tokens are attended by the sparse branch per query.
    """

    topk: int = 16
    block_size: int = 64
    window: int | None = 128
    sink: bool = True
    gate: str = "sigmoid"

    kind = "sparse"
    letter = "S"

    def __post_init__(self):
        _check_int("OracleSparse.topk", self.topk)
        _check_int("OracleSparse.block_size", self.block_size)
        if self.block_size & (self.block_size - 1):
            raise ValueError(f"OracleSparse.block_size: expected a power of two, got {self.block_size}")
        if self.window is not None:
            _check_int("OracleSparse.window", self.window)
        _check_bool("OracleSparse.sink", self.sink)
        if self.gate not in GATES:
            raise ValueError(f"OracleSparse.gate: expected one of {GATES}, got {self.gate!r}")

    @property
    def selected_tokens(self) -> int:
        """Keys the sparse branch reads per query: ``topk * block_size``."""
        return self.topk * self.block_size

    def describe(self) -> str:
        swa = f", swa{self.window}" if self.window is not None else ""
        return f"sparse(top{self.topk}x{self.block_size}{swa}{', sink' if self.sink else ''})"


Pattern = Union[Full, SlidingWindow, OracleSparse]
PATTERN_TYPES = (Full, SlidingWindow, OracleSparse)
BY_KIND = {cls.kind: cls for cls in PATTERN_TYPES}
BY_LETTER = {cls.letter: cls for cls in PATTERN_TYPES}


def check_pattern(name: str, value) -> None:
    if not isinstance(value, PATTERN_TYPES):
        raise TypeError(f"{name}: expected Full, SlidingWindow or OracleSparse, got {type(value).__name__}")
