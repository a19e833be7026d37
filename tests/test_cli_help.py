"""`lpla <command> --help` tells the truth: every choice it lists is read from the registry that
defines it, every default it shows is the one the command uses (a registry's, a config's, or
each preset's), and a preset gives way to the flags given."""

from __future__ import annotations

import re
import sys

import pytest

from lpla_fast.attacks import ATTACKS
from lpla_fast.attacks.base import LEVELS
from lpla_fast.cli import SUBCOMMANDS, Choices, Lazy, build_parser, parse_args, show
from lpla_fast.cli.experiment import DEFAULT_PRESET, build_config, fit_sizes
from lpla_fast.data import DATASETS, SHIPPED_DATASETS
from lpla_fast.encoders.backbones import BACKBONES
from lpla_fast.encoders.base import OUTPUTS
from lpla_fast.encoders.config import FRAMEWORKS
from lpla_fast.splits import SplitSizes
from lpla_fast.study import ExperimentConfig
from lpla_fast.study.settings import PRESETS

# What a flag lists, wherever a command has it.
REGISTRY = {"--dataset": DATASETS, "--backbone": BACKBONES, "--framework": FRAMEWORKS, "--frameworks": FRAMEWORKS,
            "--shadow-framework": FRAMEWORKS, "--defense-framework": FRAMEWORKS, "--attacks": ATTACKS,
            "--level": LEVELS, "--outputs": OUTPUTS, "--output": OUTPUTS, "--preset": tuple(PRESETS)}
# Where a command lists a narrower registry under a shared flag name.
COMMAND_REGISTRY = {("export-images", "--dataset"): SHIPPED_DATASETS}
# The presets' values that `lpla experiment --help` shows, as ExperimentConfig attributes.
PRESET_FIELDS = {"--references": "references", "--seeds": "seeds", "--members": "sizes.target_members",
                 "--dataset": "dataset", "--backbone": "backbone", "--ladder": "ladder", "--k": "study.k",
                 "--frameworks": "frameworks", "--bootstrap": "study.n_bootstrap", "--amp": "amp"}


def subparsers():
    parser = build_parser()
    action = next(a for a in parser._actions if a.dest == "command")
    return action.choices


# Every command the parser has: one per module of SUBCOMMANDS (export_images is `export-images`).
COMMANDS = tuple(subparsers())


def test_every_module_of_the_cli_is_a_command():
    assert len(COMMANDS) == len(SUBCOMMANDS)
    assert {c.replace("-", "_") for c in COMMANDS} == set(SUBCOMMANDS)


def actions(command):
    return [a for a in subparsers()[command]._actions if a.option_strings and a.dest != "help"]


def help_text(command, capsys) -> str:
    with pytest.raises(SystemExit):
        parse_args([command, "--help"])
    return " ".join(capsys.readouterr().out.split())


def help_of(command, flag) -> str:
    """The help of one flag as `lpla COMMAND --help` prints it, its lines joined."""
    parser = subparsers()[command]
    action = next(a for a in parser._actions if flag in a.option_strings)
    return " ".join(parser._get_formatter()._expand_help(action).split())


def named_registry(value) -> bool:
    """Whether `value` is a module-level name of the package (a registry), not typed in place."""
    return any(getattr(module, name) is value for module_name, module in list(sys.modules.items())
               if module_name.startswith("lpla_fast") and module is not None for name in dir(module))


@pytest.mark.parametrize("command", COMMANDS)
def test_every_listed_choice_is_read_from_its_registry(command, capsys):
    text = help_text(command, capsys)
    for action in actions(command):
        if action.choices is None:
            continue
        registry = action.choices.get() if isinstance(action.choices, Choices) else action.choices
        assert named_registry(registry), f"{command} {action.option_strings[0]}: choices typed in place"
        names = tuple(registry)
        listed = ", ".join(map(str, names)) in text or "{" + ",".join(map(str, names)) + "}" in text
        assert listed, f"{command} {action.option_strings[0]} does not list {names}"
        expected = COMMAND_REGISTRY.get((command, action.option_strings[0]), REGISTRY.get(action.option_strings[0]))
        if expected is not None:
            assert names == tuple(expected), (command, action.option_strings[0])


@pytest.mark.parametrize("command", COMMANDS)
def test_no_default_is_typed_in_a_help_string(command):
    for action in actions(command):
        raw = action.help or ""
        if "%(default)s" not in raw:
            typed = re.search(r"default[^)]*?\d", raw)
            assert not typed, f"{command} {action.option_strings[0]}: a default typed in its help: {raw!r}"


@pytest.mark.parametrize("command", COMMANDS)
def test_a_flag_not_given_gets_what_its_help_shows(command):
    for action in actions(command):
        if isinstance(action.default, Lazy) and not isinstance(action.default, Choices):
            value = action.default.value()
            if value is not None:  # None: the config or the preset decides, as the help says
                assert show(value) == str(action.default), (command, action.option_strings[0])


def test_the_registries_are_complete_in_the_help():
    """The names the help had left out (mnist5k, deep_cnn) are listed."""
    assert "mnist5k" in help_of("experiment", "--dataset")
    assert "deep_cnn" in help_of("experiment", "--backbone")
    assert "mnist5k" in help_of("train", "--dataset")


@pytest.mark.parametrize("flag", sorted(PRESET_FIELDS))
def test_experiment_help_shows_each_presets_value(flag):
    shown = re.search(r"\((default: [^()]*)\)", help_of("experiment", flag)).group(1)
    values = dict(part.split(": ", 1) for part in shown.split("; "))
    assert set(values) <= set(PRESETS) and DEFAULT_PRESET in values
    for name in PRESETS:
        config = ExperimentConfig.preset(name)
        for attribute in PRESET_FIELDS[flag].split("."):
            config = getattr(config, attribute)
        assert values.get(name, values[DEFAULT_PRESET]) == show(config), (flag, name)


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_a_preset_is_its_config_when_no_flag_is_given(preset):
    config, notes = build_config(parse_args(["experiment", "--preset", preset]))
    assert config == ExperimentConfig.preset(preset) and notes == []


def test_flags_given_override_the_preset():
    config, _ = build_config(parse_args(["experiment", "--preset", "full", "--references", "2", "--members", "50",
                                         "--no-amp", "--ladder"]))
    assert config.references == 2 and config.ladder == () and not config.amp and config.seeds == 8
    assert (config.sizes.target_members, config.sizes.target_nonmembers, config.sizes.shadow_members,
            config.sizes.shadow_nonmembers) == (50, 50, 50, 50)


def test_a_fixed_width_backbone_takes_its_own_width():
    config, notes = build_config(parse_args(["experiment", "--preset", "quick", "--backbone", "resnet18"]))
    assert config.backbone == "resnet18" and config.width is None
    assert notes == ["resnet18 has a fixed width of 64: using it (the preset said 8)"]
    with pytest.raises(ValueError, match="--width 8: resnet18 has a fixed width of 64; leave --width out"):
        build_config(parse_args(["experiment", "--backbone", "resnet18", "--width", "8"]))


def test_a_smaller_dataset_scales_the_presets_splits():
    paper = ExperimentConfig.preset("paper").sizes
    fitted = fit_sizes(None)(paper, 1797)
    assert fitted.total <= 1797 and fitted.target_members == int(paper.target_members * 1797 / paper.total)


def test_members_given_stay_and_the_rest_scales_or_the_flag_is_named():
    sizes = ExperimentConfig.preset("paper").sizes
    sizes = SplitSizes(**{**sizes.__dict__, **{n: 64 for n in ("target_members", "target_nonmembers",
                                                               "shadow_members", "shadow_nonmembers")}})
    fitted = fit_sizes(64)(sizes, 1797)
    assert fitted.target_members == fitted.shadow_nonmembers == 64 and fitted.total <= 1797
    assert min(fitted.reference, fitted.probe_train, fitted.probe_test) >= 64
    big = SplitSizes(**{**sizes.__dict__, **{n: 5000 for n in ("target_members", "target_nonmembers",
                                                               "shadow_members", "shadow_nonmembers")}})
    with pytest.raises(ValueError, match=r"--members 5000 needs 35,000\+ images .* has 1,797: pass --members (\d+)"):
        fit_sizes(5000)(big, 1797)
    largest = 1797 // 7
    fit_sizes(largest)(SplitSizes(**{**big.__dict__, **{n: largest for n in ("target_members", "target_nonmembers",
                                                                             "shadow_members", "shadow_nonmembers")}}),
                       1797)


def test_building_the_parser_imports_no_registry():
    """`lpla --help` and every command's parsing stay fast: the registries' packages (lightly,
    the study) are imported only to check a value given or to format a command's help."""
    import subprocess

    code = ("import sys; from lpla_fast.cli import build_parser; build_parser(); "
            "print(sorted(m for m in sys.modules if m.startswith(('lpla_fast.encoders', 'lpla_fast.attacks', "
            "'lpla_fast.study', 'lpla_fast.streaming', 'lpla_fast.data', 'lightly'))))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
