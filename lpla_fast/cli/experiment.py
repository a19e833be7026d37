"""`lpla experiment`: the main study (train, measure, attack, sweep, report) in one run folder."""

from __future__ import annotations

import argparse
import sys

from . import ATTACKS, BACKBONES, DATASETS, FRAMEWORKS, OUTPUTS, Choices, Lazy, add_no_progress, parse_p, show

PRESETS = Choices("lpla_fast.study.settings", "PRESETS")
DEFAULT_PRESET = "default"
# The splits that --members sets: members and non-members of the target and of the shadow.
MEMBER_SPLITS = ("target_members", "target_nonmembers", "shadow_members", "shadow_nonmembers")


class PresetValue(Lazy):
    """The default of a flag that the presets set: --help shows each preset's value, the runner
    gets None (the chosen preset's value stands). `read` is an attribute path of
    ExperimentConfig ("sizes.target_members") or a function of the config."""

    def __init__(self, read):
        self.read = read

    def get(self) -> dict:
        from ..study import ExperimentConfig

        def read(config):
            if callable(self.read):
                return self.read(config)
            for attribute in self.read.split("."):
                config = getattr(config, attribute)
            return config

        return {name: read(ExperimentConfig.preset(name)) for name in PRESETS}

    def value(self):
        return None

    def __str__(self) -> str:
        """"default: 2; full: 6; paper: 6": the default preset's value, then the presets that differ."""
        values = self.get()
        main = values.pop(DEFAULT_PRESET)
        return "; ".join([f"{DEFAULT_PRESET}: {show(main)}"] +
                         [f"{name}: {show(value)}" for name, value in values.items() if value != main])


def _trained(name):
    """The training setting `name` of a preset's encoders (TrainConfig's default where the preset has none)."""
    return lambda config: getattr(config.train_config(config.frameworks[0], 16, 0), name)


def _width(config):
    from ..encoders.backbones import DEFAULT_WIDTH

    return config.width or DEFAULT_WIDTH[config.backbone]


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "experiment",
        help="the main study: train encoders per framework, attack them, sweep p / K / knowledge, report",
        description=(
            "Train target encoders and a complementary pair of shadow encoders per contrastive framework, "
            "measure feature quality, run every membership-inference attack, sweep p, K and the attacker's "
            "knowledge, and write "
            "results.json, report.md and plots/ to one run folder. A preset is a set of defaults: every "
            "flag given overrides it, and the defaults below are listed per preset. A rerun with the "
            "same --out reuses finished encoders."
        ),
    )
    parser.add_argument("--out", default="runs/experiment", help="run folder (default: %(default)s)")
    parser.add_argument("--preset", choices=PRESETS, default=DEFAULT_PRESET, metavar="NAME",
                        help="the study to run, of %(choices)s (default: %(default)s): quick is tiny encoders and a "
                             "little of every axis, default about 11 minutes on 2 CPU cores, power SimCLR with the "
                             "seeds to decide a 0.02 AUC difference, full hours on a CPU, "
                             "paper CIFAR-10 with ResNet-18 on a GPU (README: The main job, the presets table)")
    parser.add_argument("--quick", action="store_true", help="the same as --preset quick")
    parser.add_argument("--frameworks", nargs="+", choices=FRAMEWORKS, metavar="NAME",
                        default=PresetValue("frameworks"), help="target frameworks, of %(choices)s (%(default)s)")
    parser.add_argument("--shadow-framework", choices=FRAMEWORKS, metavar="NAME",
                        help="the shadow encoders' framework, of %(choices)s (default: the same as each target)")
    parser.add_argument("--dataset", choices=DATASETS, metavar="NAME", default=PresetValue("dataset"),
                        help="dataset, of %(choices)s (%(default)s)")
    parser.add_argument("--data-root", help="folder of the file-based datasets (never downloaded)")
    parser.add_argument("--image-size", type=int, help="image side (default: the dataset's usual size)")
    parser.add_argument("--backbone", choices=BACKBONES, metavar="NAME", default=PresetValue("backbone"),
                        help="backbone, of %(choices)s (%(default)s)")
    parser.add_argument("--width", type=int, default=PresetValue(_width),
                        help="backbone width (%(default)s); a backbone of a fixed width named by --backbone "
                             "takes its own")
    parser.add_argument("--epochs", type=int, default=PresetValue(_trained("epochs")),
                        help="training epochs per encoder (%(default)s)")
    parser.add_argument("--batch-size", type=int, default=PresetValue(_trained("batch_size")),
                        help="training batch size (%(default)s)")
    parser.add_argument("--lr", type=float, default=PresetValue(_trained("lr")),
                        help="training learning rate (%(default)s)")
    parser.add_argument("--amp", action=argparse.BooleanOptionalAction, default=PresetValue("amp"),
                        help="bf16 autocast when training on CUDA (%(default)s)")
    parser.add_argument("--device", default=PresetValue("device"), help="auto, cpu, cuda or cuda:i (%(default)s)")
    parser.add_argument("--seed", type=int, default=PresetValue("seed"),
                        help="seed of splits, training and queries (%(default)s)")
    parser.add_argument("--members", type=int, default=PresetValue("sizes.target_members"),
                        help="members per encoder, and as many non-members, of the target and the shadow "
                             "(%(default)s); without it, a dataset smaller than the preset's splits scales them")
    parser.add_argument("--seeds", type=int, default=PresetValue("seeds"),
                        help="targets per configuration, each with its own members and training randomness "
                             "(%(default)s)")
    parser.add_argument("--references", type=int, default=PresetValue("references"),
                        help="reference encoders per target for LiRA / RMIA, 0 for none (%(default)s)")
    parser.add_argument("--ladder", nargs="*", metavar="ARCH", default=PresetValue("ladder"),
                        help="architecture ladder, backbone or backbone-width names, e.g. small_cnn-8 resnet18; "
                             "none without names (%(default)s)")
    parser.add_argument("--release-defenses", nargs="*", metavar="DEFENSE", default=PresetValue("release_defenses"),
                        help="release-time defenses, e.g. normalize noise:0.1 quantize:4 truncate:32 "
                             "(README: Defenses) (%(default)s)")
    parser.add_argument("--train-defenses", nargs="*", metavar="DEFENSE", default=PresetValue("train_defenses"),
                        help="training-time defenses, e.g. epochs:0.33 weight_decay:0.001 members:2 dp:8 "
                             "(README: Defenses) (%(default)s)")
    parser.add_argument("--defense-framework", choices=FRAMEWORKS, metavar="NAME",
                        default=PresetValue("defense_framework"),
                        help="the framework the defenses are measured on; DP-SGD needs byol or simsiam (%(default)s)")
    parser.add_argument("--workers", type=int,
                        default=PresetValue(lambda config: config.workers or "one per CPU core on a CPU, 1 on a GPU"),
                        help="training processes (%(default)s)")
    parser.add_argument("--outputs", nargs="+", choices=OUTPUTS, metavar="OUTPUT", default=PresetValue("outputs"),
                        help="representations attacked, of %(choices)s (%(default)s)")
    parser.add_argument("--attacks", nargs="+", choices=ATTACKS, metavar="NAME",
                        default=PresetValue("study.attacks"),
                        help="attacks of the main table, of %(choices)s (%(default)s)")
    parser.add_argument("--k", type=int, default=PresetValue("study.k"),
                        help="default query budget, views per sample (%(default)s)")
    parser.add_argument("--ks", nargs="+", type=int, default=PresetValue("study.ks"),
                        help="query budgets of the K sweep (%(default)s)")
    parser.add_argument("--ps", nargs="+", type=parse_p, default=PresetValue("study.ps"),
                        help="norm orders of the p sweep (%(default)s)")
    parser.add_argument("--bootstrap", type=int, default=PresetValue("study.n_bootstrap"),
                        help="bootstrap replicates per interval (%(default)s)")
    parser.add_argument("--save-embeddings", action="store_true", help="also write every split's views as .npy")
    add_no_progress(parser)
    parser.set_defaults(func=run)


def build_config(args):
    """The ExperimentConfig an argument namespace asks for: the preset (--quick first), then every
    flag given (None: not given). Returns (config, notes): a note says what of the preset gave way
    to the flags."""
    from dataclasses import replace

    from ..encoders.backbones import DEFAULT_WIDTH, FIXED_WIDTH
    from ..study import ExperimentConfig

    config = ExperimentConfig.preset("quick" if args.quick else args.preset)
    notes = []
    overrides = {name: getattr(args, name) for name in (
        "frameworks", "shadow_framework", "dataset", "data_root", "image_size", "backbone", "width", "epochs",
        "batch_size", "lr", "amp", "device", "seed", "outputs", "seeds", "references", "ladder", "release_defenses",
        "train_defenses", "defense_framework", "workers") if getattr(args, name) is not None}
    backbone = overrides.get("backbone", config.backbone)
    if backbone in FIXED_WIDTH:
        fixed = DEFAULT_WIDTH[backbone]
        if args.width is not None and args.width != fixed:
            raise ValueError(f"--width {args.width}: {backbone} has a fixed width of {fixed}; leave --width out")
        if args.width is None and config.width not in (None, fixed):
            notes.append(f"{backbone} has a fixed width of {fixed}: using it (the preset said {config.width})")
            overrides["width"] = None
    if args.save_embeddings:
        overrides["save_embeddings"] = True
    if args.members is not None:
        overrides["sizes"] = replace(config.sizes, **{name: args.members for name in MEMBER_SPLITS})
    study = {name: getattr(args, arg) for name, arg in (("attacks", "attacks"), ("k", "k"), ("ks", "ks"),
                                                          ("ps", "ps"), ("n_bootstrap", "bootstrap"))
             if getattr(args, arg) is not None}
    if study:
        overrides["study"] = replace(config.study, **study)
    return replace(config, **overrides), notes


def fit_sizes(members):
    """How the splits fit a dataset smaller than they need (run_experiment's `fit_sizes`): the
    preset's sizes scale down in proportion; sizes set by --members (`members`) stay, the other
    splits scale to the rest, and the reference and probe splits keep at least as many images as
    the members (fewer would leave the attacker's calibration and the probe weaker than the set
    attacked); a --members that cannot be met is refused, naming the largest that can."""
    from ..splits import SplitSizes

    def need(sizes: SplitSizes, m: int) -> int:
        others = [getattr(sizes, name) for name in SplitSizes.__dataclass_fields__ if name not in MEMBER_SPLITS]
        return len(MEMBER_SPLITS) * m + sum(min(n, m) for n in others)

    def fit(sizes: SplitSizes, num_samples: int) -> SplitSizes:
        if members is None:
            return sizes.fitted_to(num_samples)
        if need(sizes, members) > num_samples:
            largest = max(m for m in range(members + 1) if need(sizes, m) <= num_samples)
            raise ValueError(f"--members {members} needs {need(sizes, members):,}+ images (members and non-members of "
                             f"target and shadow, reference and probe splits at least as large); the dataset has "
                             f"{num_samples:,}: pass --members {largest} or fewer")
        return sizes.fitted_to(num_samples, keep=MEMBER_SPLITS)

    return fit


def run(args) -> int:
    from ..study import run_experiment
    from ..study.log import Stages

    try:
        config, notes = build_config(args)
        for note in notes:
            Stages(not args.no_progress).say(note)
        results = run_experiment(config, args.out, progress=not args.no_progress, fit_sizes=fit_sizes(args.members))
    except (ValueError, FileNotFoundError) as exc:
        print(f"lpla experiment: error: {exc}", file=sys.stderr)
        return 2
    _print_summary(results, args.out)
    return 0


def _print_summary(results, out: str) -> None:
    for r in results.select(study="main", attack="lpla", seed=0):
        if not r.metrics:
            continue
        q = results.target_of(r).feature_quality
        probe = (q.get("backbone") or q[r.output])["linear_probe"]
        ci = (r.metrics.get("ci") or {}).get("auc")
        interval = f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else ""
        print(f"{r.framework:<12} {r.output:<8} linear probe {probe:.3f}  LpLA AUC {r.auc:.3f}{interval}")
    print(f"report: {out}/report.md ({results.timings['total']:.0f} s)")
