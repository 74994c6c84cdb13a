"""JSON export of a ModelGraph: ``from_json(to_json(g)) == g`` and ``to_json(from_json(s)) == s``.

Every dataclass is written as an object with a ``"type"`` tag and its fields in declaration
order; the document carries ``{"format": "hysparse-ir", "version": 1}``.

Example::

    text = to_json(g)
    assert from_json(text) == g and to_json(from_json(text)) == text
"""

from __future__ import annotations

import json
from dataclasses import fields, is_dataclass

from .graph import AttentionDims, Dense, LayerSpec, ModelGraph, MoE, MTPSpec
from .patterns import Full, OracleSparse, SlidingWindow

FORMAT, VERSION = "hysparse-ir", 1
TYPES = {cls.__name__: cls for cls in (Full, SlidingWindow, OracleSparse, Dense, MoE, AttentionDims,
                                       LayerSpec, MTPSpec, ModelGraph)}


def _encode(value):
    if is_dataclass(value):
        name = type(value).__name__
        if name not in TYPES:
            raise TypeError(f"to_json: cannot encode {name}")
        out = {"type": name}
        for f in fields(value):
            out[f.name] = _encode(getattr(value, f.name))
        return out
    if isinstance(value, (list, tuple)):
        return [_encode(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"to_json: cannot encode {type(value).__name__} {value!r}")


def _decode(value, where: str):
    if isinstance(value, list):
        return tuple(_decode(v, f"{where}[{i}]") for i, v in enumerate(value))
    if not isinstance(value, dict):
        return value
    kind = value.get("type")
    if kind not in TYPES:
        raise ValueError(f"from_json: {where}: expected a 'type' among {sorted(TYPES)}, got {kind!r}")
    cls = TYPES[kind]
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(value) - names - {"type"})
    if unknown:
        raise ValueError(f"from_json: {where} ({kind}): unexpected fields {unknown}")
    kwargs = {k: _decode(v, f"{where}.{k}") for k, v in value.items() if k != "type"}
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise ValueError(f"from_json: {where} ({kind}): {exc}") from exc


def to_json(graph: ModelGraph, *, indent: int | None = 1) -> str:
    """``graph`` as a JSON document (a str)."""
    if not isinstance(graph, ModelGraph):
        raise TypeError(f"graph: expected ModelGraph, got {type(graph).__name__}")
    doc = {"format": FORMAT, "version": VERSION, "graph": _encode(graph)}
    return json.dumps(doc, indent=indent)


def from_json(text: str) -> ModelGraph:
    """The ModelGraph a ``to_json`` document describes; checked like any constructed graph."""
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"from_json: not a JSON document: {exc}") from exc
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise ValueError(f"from_json: expected a document with format {FORMAT!r}, got {doc.get('format') if isinstance(doc, dict) else type(doc).__name__!r}")
    if doc.get("version") != VERSION:
        raise ValueError(f"from_json: expected version {VERSION}, got {doc.get('version')!r}")
    graph = _decode(doc.get("graph"), "graph")
    if not isinstance(graph, ModelGraph):
        raise ValueError(f"from_json: expected the document's 'graph' to be a ModelGraph, got {type(graph).__name__}")
    return graph
