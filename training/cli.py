"""`hysparse train`: training recipes. `hysparse train pretrain` runs LM + MTP pretraining (in one
process, or on N under torchrun: ``--nproc N`` starts them); `hysparse train convert` converts a
distributed checkpoint to and from the safetensors layout `load_pretrained` reads."""

from __future__ import annotations

import dataclasses
import json
import os
import sys

from .pretrain import DTYPES, PretrainConfig

CHOICES = {"dtype": sorted(DTYPES), "data_parallel": ["fsdp", "ddp"]}
HELP = {
    "dtype": "weights and computation (default float32)",
    "data_parallel": "under torchrun: fsdp (FSDP2, sharded) or ddp (replicas) (default fsdp)",
    "expert_parallel": "under torchrun: ranks that share out each MoE layer's experts (default 1)",
}


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
        elif f.name in CHOICES:
            p.add_argument(flag, choices=CHOICES[f.name], default=value, help=HELP[f.name])
        else:
            p.add_argument(flag, type=type(value), default=value, help=HELP.get(f.name, f"(default {value})"))
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --out")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--nproc", type=int, default=None, metavar="N",
                   help="start N processes on this machine with torchrun (data parallel; same as "
                        "torchrun --standalone --nproc-per-node N -m hysparse_kernels.training.pretrain ...)")
    c = sub.add_parser("convert", help="a distributed checkpoint to the safetensors layout, or back")
    c.add_argument("src", help="a checkpoint folder (checkpoints/step-N of a torchrun run, or a load_pretrained folder)")
    c.add_argument("dst", help="the folder to write")
    c.add_argument("--to", choices=("safetensors", "dcp"), required=True,
                   help="safetensors: load_pretrained's layout; dcp: a distributed model folder for --init-from")


def _torchrun_argv(nproc: int, values: dict, args) -> list[str]:
    """The command that runs this pretraining (``values``, the parsed options) on ``nproc`` local processes."""
    flags = []
    for name, value in values.items():
        flag = "--" + name.replace("_", "-")
        if name == "mtp_layers" and value is None:
            flags.append(f"{flag}=0")
        elif isinstance(value, bool):
            flags += [flag] if value else []
        elif value is not None:
            flags.append(f"{flag}={value}")
    flags += ["--resume"] * args.resume + ["--no-progress"] * args.no_progress
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
            "-m", "hysparse_kernels.training.pretrain", *flags]


def run(args) -> int:
    if args.recipe == "convert":
        from .sharded_checkpoint import from_safetensors, to_safetensors

        path = (to_safetensors if args.to == "safetensors" else from_safetensors)(args.src, args.dst)
        print(f"wrote {path}")
        return 0
    if args.recipe == "pretrain":
        values = {f.name: getattr(args, f.name) for f in dataclasses.fields(PretrainConfig)}
        if values["mtp_layers"] == 0:
            values["mtp_layers"] = None
        for name in ("steps", "batch", "seq_len", "checkpoint_every", "corpus_lines", "expert_parallel"):
            if values[name] < 1:
                raise ValueError(f"--{name.replace('_', '-')}: expected a positive int, got {values[name]}")
        if args.nproc is not None:
            from .distributed import launched

            if args.nproc < 1:
                raise ValueError(f"--nproc: expected a positive int, got {args.nproc}")
            if launched():
                raise ValueError("--nproc: already running under torchrun (it started the processes)")
            if values["batch"] % args.nproc:
                raise ValueError(f"--batch: expected a multiple of --nproc {args.nproc}, got {values['batch']}")
            argv = _torchrun_argv(args.nproc, values, args)
            sys.stdout.flush()
            sys.stderr.flush()
            os.execv(argv[0], argv)  # torchrun takes this process's place (its exit status is ours)
        from .distributed import launched
        from .pretrain import train

        summary = train(PretrainConfig(**values), resume=args.resume, progress=not args.no_progress)
        if not launched() or int(os.environ.get("RANK", "0")) == 0:
            print(json.dumps(summary, indent=2))
    return 0
