"""`hysparse` command line: a thin dispatcher.

Each subcommand lives in its own package's ``cli.py`` and is imported only when it runs, so the
kernel layer never imports what stands on it (DESIGN.md, import floors). A subcommand module
provides ``add_arguments(parser)`` and ``run(args) -> int``.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys

# name -> (module, one-line help). Modules that are not part of this install are not offered.
SUBCOMMANDS = {
    "info": ("hysparse_kernels.info", "versions, device, and which backends run here (and why not)"),
    "ir": ("hysparse_kernels.ir.cli", "a model's graph, KV plan and kernel plan"),
    "models": ("hysparse_kernels.models.cli", "the model zoo: parameters and KV bytes"),
    "train": ("hysparse_kernels.training.cli", "training recipes"),
    "autotune": ("hysparse_kernels.autotune.cli", "tune kernels for this machine and save configs"),
    "audio": ("hysparse_kernels.training.audio.cli", "MiMo-Audio: tokenize / generate WAV, train the tokenizer and audio LM, few-shot tasks"),
}


def _available() -> dict[str, tuple[str, str]]:
    found = {}
    for name, (module, help_) in SUBCOMMANDS.items():
        try:
            if importlib.util.find_spec(module) is not None:
                found[name] = (module, help_)
        except ModuleNotFoundError:  # parent package absent
            continue
    return found


def _top_parser(commands) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hysparse",
        description="hysparse-kernels: attention patterns of hybrid models lowered to autotuned kernels.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_) in commands.items():
        sub.add_parser(name, help=help_, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = _available()
    if not argv or argv[0] not in commands:
        parser = _top_parser(commands)
        if not argv:
            parser.print_help()
            return 2
        parser.parse_args(argv)  # prints help / an "invalid choice" error and exits
        return 2
    name, rest = argv[0], argv[1:]
    module = importlib.import_module(commands[name][0])
    parser = argparse.ArgumentParser(prog=f"hysparse {name}", description=commands[name][1])
    module.add_arguments(parser)
    args = parser.parse_args(rest)
    return int(module.run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
