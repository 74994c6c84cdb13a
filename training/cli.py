"""`hysparse train`: training recipes. `hysparse train pretrain` runs LM + MTP pretraining."""

from __future__ import annotations

import dataclasses
import json

from .pretrain import PretrainConfig


def add_arguments(parser) -> None:
    sub = parser.add_subparsers(dest="recipe", metavar="RECIPE", required=True)
    p = sub.add_parser("pretrain", help="next-token + MTP pretraining of a zoo model on the generated corpus")
    defaults = PretrainConfig()
    for f in dataclasses.fields(PretrainConfig):
        value = getattr(defaults, f.name)
        flag = "--" + f.name.replace("_", "-")
        if isinstance(value, bool):
            p.add_argument(flag, action="store_true", help=f"(default {value})")
        elif f.name in ("mtp_layers",):
            p.add_argument(flag, type=int, default=value, help=f"MTP blocks to train (default {value}; 0 keeps the flavor's)")
        elif f.name == "init_from":
            p.add_argument(flag, default=None, help="checkpoint directory to start from (for --mtp-only on a trained model)")
        else:
            p.add_argument(flag, type=type(value), default=value, help=f"(default {value})")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --out")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args) -> int:
    if args.recipe == "pretrain":
        from .pretrain import train

        values = {f.name: getattr(args, f.name) for f in dataclasses.fields(PretrainConfig)}
        if values["mtp_layers"] == 0:
            values["mtp_layers"] = None
        for name in ("steps", "batch", "seq_len", "checkpoint_every", "corpus_lines"):
            if values[name] < 1:
                raise ValueError(f"--{name.replace('_', '-')}: expected a positive int, got {values[name]}")
        summary = train(PretrainConfig(**values), resume=args.resume, progress=not args.no_progress)
        print(json.dumps(summary, indent=2))
    return 0
