"""`hysparse audio`: MiMo-Audio on the zoo.

    hysparse audio tokenize IN.wav --tokenizer DIR [--out codes.safetensors] [--reconstruct OUT.wav] [--levels L]
    hysparse audio generate --model DIR --tokenizer DIR [--prompt IN.wav] [--text T] --seconds S --out OUT.wav [--png P]
    hysparse audio train-tokenizer [--steps N ...] [--resume]
    hysparse audio pretrain --tokenizer DIR [--seed S ...] [--resume]
    hysparse audio fewshot --model DIR --tokenizer DIR [--episodes N] [--out eval.json]

WAV input at another sample rate is resampled to the tokenizer's (polyphase, scipy). Errors are
one line on stderr and a non-zero exit.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path


def _dataclass_flags(p, cls, skip=()) -> None:
    defaults = cls()
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        value = getattr(defaults, f.name)
        p.add_argument("--" + f.name.replace("_", "-"), type=type(value), default=value, help=f"(default {value})")


def add_arguments(parser) -> None:
    from .pretrain import AudioPretrainConfig
    from .tokenizer_train import TokenizerTrainConfig

    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    p = sub.add_parser("tokenize", help="WAV -> RVQ codes (and optionally back to WAV)")
    p.add_argument("wav", help="input WAV file (PCM; resampled to the tokenizer's rate)")
    p.add_argument("--tokenizer", required=True, help="tokenizer checkpoint directory")
    p.add_argument("--out", help="write the codes [T, L] here (.safetensors)")
    p.add_argument("--reconstruct", help="write the decoded audio here (.wav)")
    p.add_argument("--levels", type=int, default=None, help="RVQ levels to use (default all)")

    p = sub.add_parser("generate", help="continue a WAV prompt (or a text prompt) with the audio LM")
    p.add_argument("--model", required=True, help="audio LM checkpoint directory")
    p.add_argument("--tokenizer", required=True, help="tokenizer checkpoint directory")
    p.add_argument("--prompt", help="prompt WAV file (its audio span is continued)")
    p.add_argument("--text", default="", help="text before the audio span (default none)")
    p.add_argument("--seconds", type=float, default=2.0, help="seconds of audio to generate (default 2)")
    p.add_argument("--temperature", type=float, default=0.0, help="audio token temperature (default 0: greedy)")
    p.add_argument("--top-k", type=int, default=None, help="sample among the k best tokens (default all)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    p.add_argument("--out", required=True, help="output WAV: the prompt followed by the continuation")
    p.add_argument("--png", help="also write spectrograms of prompt and continuation here (.png)")
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads (default 0: torch's choice)")

    p = sub.add_parser("train-tokenizer", help="train the RVQ tokenizer on synthetic audio")
    _dataclass_flags(p, TokenizerTrainConfig, skip=("tokenizer",))
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --out")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")

    p = sub.add_parser("pretrain", help="pretrain the audio LM on the synthetic corpus")
    _dataclass_flags(p, AudioPretrainConfig)
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --out")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")

    p = sub.add_parser("fewshot", help="few-shot in-context tasks: scores against the number of shots")
    p.add_argument("--model", required=True, help="audio LM checkpoint directory")
    p.add_argument("--tokenizer", required=True, help="tokenizer checkpoint directory")
    p.add_argument("--episodes", type=int, default=24, help="episodes per task (classification: twice as many; default 24)")
    p.add_argument("--seed", type=int, default=0, help="episode seed (default 0)")
    p.add_argument("--out", help="write the results here (.json)")
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads (default 0: torch's choice)")


def _positive(name: str, value) -> None:
    if value is not None and value <= 0:
        raise ValueError(f"--{name}: expected a positive number, got {value}")


def _load_audio(path: str, rate: int):
    from hysparse_kernels.models.audio.io import read_wav, resample

    if not Path(path).is_file():
        raise FileNotFoundError(f"{path}: no such file")
    audio, sr = read_wav(path)
    if len(audio) == 0:
        raise ValueError(f"{path}: the WAV file holds no samples")
    return resample(audio, sr, rate)


def _tokenize(args) -> int:
    import torch
    from safetensors.torch import save_file

    from hysparse_kernels.models.audio.io import atomic_write, load_checkpoint, write_wav

    if not Path(args.wav).is_file():
        raise FileNotFoundError(f"{args.wav}: no such file")
    tok = load_checkpoint(args.tokenizer, expect="tokenizer")
    if args.levels is not None and not 1 <= args.levels <= tok.cfg.num_codebooks:
        raise ValueError(f"--levels: expected 1..{tok.cfg.num_codebooks}, got {args.levels}")
    audio = _load_audio(args.wav, tok.cfg.sample_rate)
    codes = tok.encode(audio, args.levels)[0]  # [T, L]
    L = codes.shape[-1]
    print(f"{args.wav}: {len(audio) / tok.cfg.sample_rate:.2f} s at {tok.cfg.sample_rate} Hz -> {codes.shape[0]} frames x {L} "
          f"codebooks ({tok.cfg.frame_rate:g} Hz, {tok.cfg.bits_per_second(L):.0f} bit/s)")
    if args.out:
        atomic_write(Path(args.out), lambda tmp: save_file({"codes": codes.to(torch.int32).contiguous()}, tmp,
                                                            metadata={"sample_rate": str(tok.cfg.sample_rate)}))
        print(f"codes -> {args.out}")
    if args.reconstruct:
        write_wav(args.reconstruct, tok.decode(codes[None])[0, : len(audio)], tok.cfg.sample_rate)
        print(f"reconstruction -> {args.reconstruct}")
    return 0


def _generate(args) -> int:
    import time

    import numpy as np
    import torch

    from hysparse_kernels.models.audio import BOS, encode_text
    from hysparse_kernels.models.audio.generate import generate
    from hysparse_kernels.models.audio.io import load_checkpoint, write_wav
    from .corpus import assemble, encode_clips
    from .plots import spectrograms

    _positive("seconds", args.seconds)
    _positive("top-k", args.top_k)
    if args.temperature < 0:
        raise ValueError(f"--temperature: expected >= 0, got {args.temperature}")
    tok = load_checkpoint(args.tokenizer, expect="tokenizer")
    lm = load_checkpoint(args.model, expect="audio_lm")
    if tuple(tok.cfg.codebook_sizes) != tuple(lm.cfg.codebook_sizes):
        raise ValueError(f"--tokenizer: codebook sizes {list(tok.cfg.codebook_sizes)} differ from the model's {list(lm.cfg.codebook_sizes)}")
    P = lm.cfg.group_size
    prompt_audio = _load_audio(args.prompt, tok.cfg.sample_rate).numpy() if args.prompt else None
    segments = ([("text", args.text)] if args.text else []) + [("open", prompt_audio)]
    clips = [prompt_audio] if prompt_audio is not None else []
    text, audio = assemble(segments, encode_clips(tok, clips, P), tok.cfg.codebook_sizes, P)
    empty = torch.tensor(tok.cfg.codebook_sizes).expand(1, P, -1)
    text, audio = torch.cat([torch.tensor([BOS]), text]), torch.cat([empty, audio])
    if any(t >= lm.graph.vocab for t in encode_text(args.text)):
        raise ValueError("--text: holds bytes outside the model's vocabulary")
    positions = max(1, round(args.seconds * tok.cfg.frame_rate / P))
    g = torch.Generator().manual_seed(args.seed)
    t0 = time.perf_counter()
    (_, new), = generate(lm, [(text, audio)], positions, force_audio=True, temperature=args.temperature, top_k=args.top_k,
                         generator=g)
    t_lm = time.perf_counter() - t0
    continuation = tok.decode(new.reshape(1, positions * P, -1))[0].numpy()
    prompt_wave = np.zeros(0, dtype=np.float32) if prompt_audio is None else prompt_audio
    write_wav(args.out, np.concatenate([prompt_wave, continuation]), tok.cfg.sample_rate)
    secs = len(continuation) / tok.cfg.sample_rate
    print(f"generated {secs:.2f} s ({positions} patches) in {t_lm:.2f} s of LM time, first-call kernel builds included ({secs / t_lm:.2f} audio s / wall s) -> {args.out}")
    if args.png:
        both = np.concatenate([prompt_wave, continuation])
        split = len(prompt_wave) / tok.cfg.sample_rate if prompt_audio is not None else None
        panels = ([("prompt", prompt_wave)] if prompt_audio is not None else []) + [
            ("continuation", continuation), ("prompt + continuation (dashed: where the model starts)", both, split)]
        spectrograms(Path(args.png), panels, tok.cfg.sample_rate)
        print(f"spectrograms -> {args.png}")
    return 0


def _config(cls, args, skip=()):
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if f.name not in skip}
    for name in ("steps", "batch", "checkpoint_every"):
        if name in values and values[name] < 1:
            raise ValueError(f"--{name.replace('_', '-')}: expected a positive int, got {values[name]}")
    return cls(**values)


def _run(args) -> int:
    if args.action == "tokenize":
        return _tokenize(args)
    if args.action == "generate":
        return _generate(args)
    if args.action == "train-tokenizer":
        from .tokenizer_train import TokenizerTrainConfig, train_tokenizer

        report = train_tokenizer(_config(TokenizerTrainConfig, args, skip=("tokenizer",)), resume=args.resume,
                                 progress=not args.no_progress)
        print(json.dumps({"mean": report["mean"], "bits_per_second": report["bits_per_second"]}, indent=2))
        return 0
    if args.action == "pretrain":
        from .pretrain import AudioPretrainConfig, pretrain

        report = pretrain(_config(AudioPretrainConfig, args), resume=args.resume, progress=not args.no_progress)
        print(json.dumps(report, indent=2))
        return 0
    if args.action == "fewshot":
        from hysparse_kernels.models.audio.io import atomic_write, load_checkpoint
        from .fewshot import evaluate

        _positive("episodes", args.episodes)
        tok = load_checkpoint(args.tokenizer, expect="tokenizer")
        lm = load_checkpoint(args.model, expect="audio_lm")
        results = evaluate(lm, tok, seed=args.seed, episodes=args.episodes, progress=True)
        text = json.dumps(results, indent=2)
        if args.out:
            atomic_write(Path(args.out), lambda tmp: Path(tmp).write_text(text))
        print(text)
        return 0
    raise ValueError(f"action: unknown {args.action!r}")


def run(args) -> int:
    import torch

    from hysparse_kernels.models.audio.io import AudioCheckpointError

    try:
        if getattr(args, "threads", 0):
            torch.set_num_threads(args.threads)
        return _run(args)
    except (ValueError, FileNotFoundError, KeyError, AudioCheckpointError, OSError) as exc:
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        print(f"hysparse audio {args.action}: error: {message}", file=sys.stderr)
        return 2
