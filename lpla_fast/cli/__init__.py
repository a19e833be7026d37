"""The `lpla` command: one subcommand per module in this package.

Each subcommand module defines `add_parser(subparsers)` (which registers its parser and
sets `func` to its runner) and keeps heavy imports inside the runner, so that `lpla --help`
stays fast. Choices and defaults are never typed here: they are `Choices` and `Lazy` readers of
the registry, config or preset that defines them (tests/test_cli_help.py holds every command to it).
"""

from __future__ import annotations

import argparse
import copy
import importlib
import math
import sys

SUBCOMMANDS = ("experiment", "train", "embed", "attack", "score", "audit", "export_images", "demo")


class Lazy:
    """A value read on first use from the module that defines it: `Lazy("lpla_fast.data", "DATASETS")`,
    `Lazy("lpla_fast.encoders.config", "TrainConfig", "epochs")` (a field's default). The registries,
    configs and presets live in packages whose imports are heavy (lightly, the study), and building
    the parser imports none of them: argparse gets these instead, and they are read only to check a
    value given on the command line or to format --help.

    As an argument's default, `%(default)s` in its help shows the value, and `parse_args` hands
    the runner `value()` (here the value itself) when the flag is not given."""

    def __init__(self, module: str, name: str, *attributes: str):
        self.module, self.name, self.attributes = module, name, attributes

    def get(self):
        value = getattr(importlib.import_module(self.module), self.name)
        for attribute in self.attributes:
            value = getattr(value, attribute)
        return value

    def value(self):
        """What the runner gets when the flag is not given."""
        return self.get()

    def __str__(self) -> str:
        return show(self.get())


class Auto(Lazy):
    """A default that the runner's config decides (the runner gets None), shown in --help as
    `template` filled with the values read: `Auto("{} rows", Lazy(module, "DEFAULT_BATCH_ROWS"))`."""

    def __init__(self, template: str, *values: Lazy):
        self.template, self.values = template, values

    def get(self):
        return self.template.format(*(show(v.get()) for v in self.values))

    def value(self):
        return None


class Choices(Lazy):
    """argparse choices read on first use from the registry that defines them (a tuple, or a
    dict's keys). An argument using them needs a metavar (argparse would otherwise list them at
    build time); its help can say %(choices)s."""

    def names(self) -> tuple:
        return tuple(self.get())

    def __contains__(self, value) -> bool:
        return value in self.names()

    def __iter__(self):
        return iter(self.names())


def show(value) -> str:
    """A value as it is typed on the command line: 1e-3 as 0.001, inf, lists space-separated."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return "inf" if value == math.inf else f"{value:g}"
    if isinstance(value, (tuple, list)):
        return " ".join(show(v) for v in value) if value else "none"
    return str(value)


FRAMEWORKS = Choices("lpla_fast.encoders.config", "FRAMEWORKS")
BACKBONES = Choices("lpla_fast.encoders.backbones", "BACKBONES")
DATASETS = Choices("lpla_fast.data", "DATASETS")
OUTPUTS = Choices("lpla_fast.encoders.base", "OUTPUTS")
LEVELS = Choices("lpla_fast.attacks.base", "LEVELS")
ATTACKS = Choices("lpla_fast.attacks", "ATTACKS")
POLICIES = Choices("lpla_fast.augment", "POLICIES")
ENGINES = Choices("lpla_fast.streaming.config", "ENGINES")
STATS = Choices("lpla_fast.streaming.config", "STATS")
TRAIN_DEFAULT = "lpla_fast.encoders.config", "TrainConfig"  # Lazy(*TRAIN_DEFAULT, "epochs"): a field's default
SCORE_DEFAULT = "lpla_fast.streaming.config", "ScoreConfig"
STUDY_DEFAULT = "lpla_fast.study.settings", "StudyConfig"


class ShownDefaults:
    """A help formatter mixin: %(default)s shows the default as it is typed (`show`)."""

    def _expand_help(self, action):
        if action.default is not argparse.SUPPRESS:
            action = copy.copy(action)
            action.default = show(action.default)
        return super()._expand_help(action)


def add_no_progress(parser) -> None:
    parser.add_argument("--no-progress", action="store_true",
                        help="quiet: no progress bars or stage lines, only errors and the final result")


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
        subparser.formatter_class = type("Shown" + subparser.formatter_class.__name__,
                                         (ShownDefaults, subparser.formatter_class), {})
        # Accepted after the subcommand too; SUPPRESS keeps the top-level value otherwise.
        subparser.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                               help="show the full traceback of an error")
    return parser


def parse_args(argv=None) -> argparse.Namespace:
    """The command line's arguments; a flag not given has the value its Lazy default stands for."""
    args = build_parser().parse_args(argv)
    for name, value in vars(args).items():
        if isinstance(value, Lazy):
            setattr(args, name, value.value())
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
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
