"""Audio generation speed on the CPU: seconds of audio per wall-clock second.

``python bench/audio_cpu.py [--model DIR --tokenizer DIR] [--rounds N] [--threads N] [--json PATH]``

For a prompt of 4 s of audio (25 patches) the audio LM generates 2 s (12 patches, 48 frames x 8
codebooks: 12 backbone decode steps and 12 x 11 patch-decoder steps) greedily; the tokenizer
then decodes the codes to a waveform (Griffin-Lim, 32 iterations). Reported per round:
audio seconds / wall second of the LM alone, of the tokenizer's decoding alone, and of both.
The baseline measured in the same rounds is the backbone generating text tokens with the zoo's
``generate`` (the same graph without the audio modules), so the ratio "one patch costs N text
tokens" does not depend on the load of the machine. Rounds interleave the three measurements.
Without checkpoints the models are randomly initialised (the speed does not depend on weights).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import warnings

import torch


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", help="audio LM checkpoint (default: random tiny-mimo-audio)")
    p.add_argument("--tokenizer", help="tokenizer checkpoint (default: random)")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads (default: torch's choice)")
    p.add_argument("--prompt-patches", type=int, default=25)
    p.add_argument("--new-patches", type=int, default=12)
    p.add_argument("--json", help="write the rounds here")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore")
    from hysparse_kernels.models import HybridLM, generate as text_generate
    from hysparse_kernels.models.audio import (EMPTY, SOSP, AudioLM, AudioTokenizer, TokenizerConfig, get_audio_config)
    from hysparse_kernels.models.audio.generate import generate
    from hysparse_kernels.models.audio.io import load_checkpoint

    lm = load_checkpoint(args.model, expect="audio_lm") if args.model else AudioLM(get_audio_config("tiny-mimo-audio")).eval()
    tok = load_checkpoint(args.tokenizer, expect="tokenizer") if args.tokenizer else AudioTokenizer(TokenizerConfig()).eval()
    text_lm = HybridLM(lm.graph).eval()
    cfg = lm.cfg
    P, G = cfg.group_size, args.prompt_patches
    g = torch.Generator().manual_seed(0)
    text = torch.tensor([SOSP] + [EMPTY] * G)
    audio = torch.tensor(cfg.empty_ids).expand(G + 1, P, cfg.num_channels).clone()
    audio[1:] = torch.stack([torch.randint(0, k, (G, P), generator=g) for k in cfg.codebook_sizes], -1)
    n = args.new_patches
    seconds = n * P / tok.cfg.frame_rate
    text_prompt = [torch.randint(0, 256, (G + 1,), generator=g).tolist()]
    rounds = []
    for r in range(args.rounds + 1):  # round 0 warms up (kernel builds, caches)
        t0 = time.perf_counter()
        (_, new), = generate(lm, [(text, audio)], n, force_audio=True)
        t1 = time.perf_counter()
        tok.decode(new.reshape(1, n * P, -1))
        t2 = time.perf_counter()
        text_generate(text_lm, text_prompt, n)
        t3 = time.perf_counter()
        if r:
            rounds.append({"lm_s": t1 - t0, "decode_s": t2 - t1, "text_s": t3 - t2})
    med = {k: statistics.median(x[k] for x in rounds) for k in rounds[0]}
    ratios = [x["lm_s"] / x["text_s"] for x in rounds]
    out = {
        "audio_seconds": seconds, "patches": n, "prompt_patches": G, "threads": torch.get_num_threads(),
        "lm_audio_s_per_wall_s": seconds / med["lm_s"],
        "decode_audio_s_per_wall_s": seconds / med["decode_s"],
        "end_to_end_audio_s_per_wall_s": seconds / (med["lm_s"] + med["decode_s"]),
        "text_tokens_per_s": n / med["text_s"],
        "patch_cost_in_text_tokens": {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios)},
        "rounds": rounds,
    }
    print(f"| threads | LM audio s / wall s | decode (Griffin-Lim) | end to end | text tokens / s (same backbone) | "
          f"one patch = N text tokens (median, range) |")
    print("|---|---|---|---|---|---|")
    pc = out["patch_cost_in_text_tokens"]
    print(f"| {out['threads']} | {out['lm_audio_s_per_wall_s']:.2f} | {out['decode_audio_s_per_wall_s']:.1f} | "
          f"{out['end_to_end_audio_s_per_wall_s']:.2f} | {out['text_tokens_per_s']:.1f} | "
          f"{pc['median']:.1f} ({pc['min']:.1f}-{pc['max']:.1f}) |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
