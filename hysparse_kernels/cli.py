"""`hysparse` command line: a thin dispatcher.

Each subcommand lives in its own package's ``cli.py`` and is imported only when it runs, so the
kernel layer never imports what stands on it (docs/ARCHITECTURE.md, the import floors). A subcommand module
provides ``add_arguments(parser)`` and ``run(args) -> int``.

Errors are one line on stderr and exit 2, never a traceback: bad options, and the validation
errors a subcommand raises (``ValueError`` / ``TypeError`` / ``KeyError``, which name the
argument, and ``OSError`` for files); Ctrl-C exits 130. Warnings print as one
line each. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import sys
import warnings

# What a subcommand raises for bad input: reported in one line (anything else is a bug).
USER_ERRORS = (ValueError, TypeError, KeyError, OSError)


class Parser(argparse.ArgumentParser):
    """``argparse`` with one-line errors (its default prints the usage block first)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def one_line(exc: BaseException) -> str:
    """The exception's message on one line (a KeyError's without the quotes ``str`` adds)."""
    text = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
    text = " ".join(str(text).split()) or type(exc).__name__
    return text if isinstance(exc, (ValueError, KeyError)) else f"{type(exc).__name__}: {text}"


def _one_line_warning(message, category, filename, lineno, line=None) -> str:
    return f"{category.__name__}: {' '.join(str(message).split())}\n"

# name -> (module, one-line help). Modules that are not part of this install are not offered.
SUBCOMMANDS = {
    "info": ("hysparse_kernels.info", "versions, device, and which backends run here (and why not)"),
    "ir": ("hysparse_kernels.ir.cli", "a model's graph, KV plan and kernel plan"),
    "models": ("hysparse_kernels.models.cli", "the model zoo: parameters and KV bytes"),
    "train": ("hysparse_kernels.training.cli", "training recipes"),
    "recipe": ("hysparse_kernels.training.rl.cli", "RL and SFT recipes: list, run (writes metrics, curves, eval.json)"),
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
    parser = Parser(
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
    parser = Parser(prog=f"hysparse {name}", description=commands[name][1])
    module.add_arguments(parser)
    args = parser.parse_args(rest)
    saved, warnings.formatwarning = warnings.formatwarning, _one_line_warning
    try:
        return int(module.run(args) or 0)
    except BrokenPipeError:  # the reader went away (`hysparse models --names M | head`): not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except USER_ERRORS as exc:
        print(f"hysparse {name}: error: {one_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"hysparse {name}: interrupted", file=sys.stderr)
        return 130
    finally:
        warnings.formatwarning = saved


if __name__ == "__main__":
    sys.exit(main())
