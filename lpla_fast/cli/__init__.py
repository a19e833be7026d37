"""The `lpla` command: one subcommand per module in this package.

Each subcommand module defines `add_parser(subparsers)` (which registers its parser and
sets `func` to its runner) and keeps heavy imports inside the runner, so that `lpla --help`
stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import math
import sys

SUBCOMMANDS = ("experiment", "train", "embed", "attack", "score", "audit", "export_images", "demo")


class Choices:
    """argparse choices read on first use from the module that defines them (the names of
    frameworks, outputs and knowledge levels live in `encoders` and `attacks`, whose imports
    are heavy), so that building the parser imports neither. An argument using them needs a
    metavar (argparse would otherwise list them at build time); its help can say %(choices)s."""

    def __init__(self, module: str, name: str):
        self.module, self.name = module, name

    def names(self) -> tuple:
        return getattr(importlib.import_module(self.module), self.name)

    def __contains__(self, value) -> bool:
        return value in self.names()

    def __iter__(self):
        return iter(self.names())


FRAMEWORKS = Choices("lpla_fast.encoders.config", "FRAMEWORKS")
OUTPUTS = Choices("lpla_fast.encoders.base", "OUTPUTS")
LEVELS = Choices("lpla_fast.attacks.base", "LEVELS")


def parse_p(text: str) -> float:
    """argparse type of a norm order: a number > 0, or inf."""
    value = math.inf if text.lower() in ("inf", "infinity") else float(text)
    if not value > 0:
        raise ValueError(f"p must be in (0, inf], got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lpla",
        description="Membership-inference auditing of contrastive encoders (LpLA and baselines).",
    )
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in SUBCOMMANDS:
        try:
            module = importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"{__name__}.{name}":
                raise
            continue
        module.add_parser(sub)
    for subparser in sub.choices.values():
        # Accepted after the subcommand too; SUPPRESS keeps the top-level value otherwise.
        subparser.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                               help="show the full traceback of an error")
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except OSError as exc:
        # Errors of the operating system (a full disk, a missing permission) are the user's to
        # fix, not bugs: one line naming the path and the cause; the traceback with --debug.
        if args.debug:
            raise
        from ..fileio import describe_os_error

        print(f"lpla {args.command}: error: {describe_os_error(exc)}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
