"""Files of the audio models: checkpoints (safetensors + ``config.json``) and WAV audio.

A checkpoint directory holds ``config.json`` (``{"kind": "tokenizer" | "audio_lm", "config": {...}}``)
and ``model.safetensors``; each file is written under a temporary name and renamed into place,
and loading checks every key and shape before any weight reaches the model (all or nothing).
WAV files are read and written with the standard library's ``wave`` module (PCM 8/16/24/32-bit;
written as 16-bit mono).

Example::

    save_checkpoint(tokenizer, "runs/audio/tokenizer")
    tok = load_checkpoint("runs/audio/tokenizer")          # an AudioTokenizer, weights loaded
    audio, rate = read_wav("in.wav")                        # float32 [N] in [-1, 1], mono
    write_wav("out.wav", audio, rate)
"""

from __future__ import annotations

import json
import os
import tempfile
import wave
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .config import AudioLMConfig, TokenizerConfig
from .lm import AudioLM
from .tokenizer import AudioTokenizer

CONFIG = "config.json"
WEIGHTS = "model.safetensors"


class AudioCheckpointError(ValueError):
    """A checkpoint that cannot be loaded: what is wrong is in the message."""


def atomic_write(path: Path, write) -> None:
    """Call ``write(tmp_path)`` then rename the temporary file to ``path`` (removed on failure)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _kind(model: nn.Module) -> tuple[str, dict]:
    if isinstance(model, AudioTokenizer):
        return "tokenizer", model.cfg.to_dict()
    if isinstance(model, AudioLM):
        return "audio_lm", model.cfg.to_dict()
    raise TypeError(f"model: expected an AudioTokenizer or AudioLM, got {type(model).__name__}")


def save_checkpoint(model: nn.Module, directory) -> Path:
    """Write ``config.json`` and ``model.safetensors`` (parameters and buffers) to ``directory``."""
    from safetensors.torch import save_file

    directory = Path(directory)
    kind, cfg = _kind(model)
    tensors = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    atomic_write(directory / WEIGHTS, lambda tmp: save_file(tensors, tmp, metadata={"format": "pt", "kind": kind}))
    atomic_write(directory / CONFIG, lambda tmp: Path(tmp).write_text(json.dumps({"kind": kind, "config": cfg}, indent=2)))
    return directory


def read_config(directory) -> tuple[str, TokenizerConfig | AudioLMConfig]:
    """The kind (``tokenizer`` / ``audio_lm``) and config of a checkpoint directory."""
    path = Path(directory) / CONFIG
    if not path.exists():
        raise AudioCheckpointError(f"{path}: missing (expected a directory written by save_checkpoint)")
    try:
        meta = json.loads(path.read_text())
        kind = meta["kind"]
        cls = {"tokenizer": TokenizerConfig, "audio_lm": AudioLMConfig}[kind]
        return kind, cls.from_dict(meta["config"])
    except (KeyError, TypeError, ValueError) as exc:
        raise AudioCheckpointError(f"{path}: not an audio model config ({type(exc).__name__}: {exc})") from exc


def load_checkpoint(directory, *, expect: str | None = None) -> nn.Module:
    """Build the model a checkpoint directory describes and load its weights (all or nothing).
    ``expect``: ``"tokenizer"`` or ``"audio_lm"`` to refuse the other kind."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    directory = Path(directory)
    kind, cfg = read_config(directory)
    if expect is not None and kind != expect:
        raise AudioCheckpointError(f"{directory}: expected a {expect} checkpoint, got a {kind} one")
    model = AudioTokenizer(cfg) if kind == "tokenizer" else AudioLM(cfg)
    try:
        tensors = load_file(str(directory / WEIGHTS))
    except (SafetensorError, OSError) as exc:
        raise AudioCheckpointError(f"{directory / WEIGHTS}: cannot read safetensors file ({exc})") from exc
    expected = model.state_dict()
    missing, unexpected = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise AudioCheckpointError(f"{directory}: keys do not match the model: missing {missing[:8]}, unexpected {unexpected[:8]}")
    for name, t in tensors.items():
        if tuple(t.shape) != tuple(expected[name].shape):
            raise AudioCheckpointError(f"{directory}: {name}: expected shape {tuple(expected[name].shape)}, got {tuple(t.shape)}")
    model.load_state_dict(tensors, strict=True)
    return model.eval()


# ---------------------------------------------------------------------------------------- WAV


def read_wav(path) -> tuple[torch.Tensor, int]:
    """A PCM WAV file -> (float32 [N] in [-1, 1], averaged over channels; sample rate)."""
    path = Path(path)
    try:
        with wave.open(str(path), "rb") as f:
            channels, width, rate, n = f.getnchannels(), f.getsampwidth(), f.getframerate(), f.getnframes()
            raw = f.readframes(n)
    except (wave.Error, EOFError) as exc:
        raise ValueError(f"{path}: not a readable PCM WAV file ({exc})") from exc
    if width == 1:
        data = (np.frombuffer(raw, dtype=np.uint8).astype(np.float32) - 128.0) / 128.0
    elif width == 2:
        data = np.frombuffer(raw, dtype="<i2").astype(np.float32) / 32768.0
    elif width == 3:
        b = np.frombuffer(raw, dtype=np.uint8).reshape(-1, 3).astype(np.int32)
        v = b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)
        data = (np.where(v >= 1 << 23, v - (1 << 24), v)).astype(np.float32) / float(1 << 23)
    elif width == 4:
        data = np.frombuffer(raw, dtype="<i4").astype(np.float32) / float(1 << 31)
    else:
        raise ValueError(f"{path}: expected 8, 16, 24 or 32-bit PCM, got {8 * width}-bit samples")
    data = data[: len(data) - len(data) % channels].reshape(-1, channels).mean(axis=1)
    return torch.from_numpy(np.ascontiguousarray(data)), rate


def write_wav(path, audio, sample_rate: int) -> Path:
    """Write mono float audio [N] (clipped to [-1, 1]) as 16-bit PCM, atomically."""
    a = audio.detach().cpu().double().numpy() if torch.is_tensor(audio) else np.asarray(audio, dtype=np.float64)
    if a.ndim == 2 and a.shape[0] == 1:
        a = a[0]
    if a.ndim != 1:
        raise ValueError(f"audio: expected mono [N] (or [1, N]), got shape {a.shape}")
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, int) or sample_rate < 1:
        raise ValueError(f"sample_rate: expected a positive int, got {sample_rate!r}")
    pcm = (np.clip(a, -1.0, 1.0) * 32767.0).round().astype("<i2").tobytes()

    def write(tmp):
        with wave.open(tmp, "wb") as f:
            f.setnchannels(1)
            f.setsampwidth(2)
            f.setframerate(sample_rate)
            f.writeframes(pcm)

    atomic_write(Path(path), write)
    return Path(path)


def resample(audio: torch.Tensor, rate_in: int, rate_out: int) -> torch.Tensor:
    """Polyphase resampling (scipy) of [N] float audio from ``rate_in`` to ``rate_out`` Hz."""
    if rate_in == rate_out:
        return audio
    from math import gcd

    from scipy.signal import resample_poly

    g = gcd(rate_in, rate_out)
    out = resample_poly(audio.double().numpy(), rate_out // g, rate_in // g)
    return torch.from_numpy(out.astype(np.float32))
