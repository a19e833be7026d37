"""`lpla experiment`: the main study (train, measure, attack, sweep, report) in one run folder."""

from __future__ import annotations

import sys

from ..study.settings import PRESETS
from . import FRAMEWORKS, OUTPUTS, parse_p


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "experiment",
        help="the main study: train encoders per framework, attack them, sweep p / K / knowledge, report",
        description=(
            "Train a target and a shadow encoder per contrastive framework, measure feature quality, "
            "run every membership-inference attack, sweep p, K and the attacker's knowledge, and write "
            "results.json, report.md and plots/ to one run folder. The default (digits, small CNN, five "
            "frameworks) runs on a CPU; a rerun with the same --out reuses finished encoders."
        ),
    )
    parser.add_argument("--out", default="runs/experiment", help="run folder (default: runs/experiment)")
    parser.add_argument("--preset", choices=tuple(PRESETS), default="default",
                        help="the study to run: quick (a minute, tiny encoders), default (about 15 minutes on "
                             "2 CPU cores), power (SimCLR with the seeds to detect a 0.02 AUC difference), "
                             "full (CPU, hours), paper (CIFAR-10, ResNet-18, a GPU)")
    parser.add_argument("--quick", action="store_true", help="the same as --preset quick")
    parser.add_argument("--frameworks", nargs="+", choices=FRAMEWORKS, metavar="NAME",
                        help="target frameworks (default: all of %(choices)s)")
    parser.add_argument("--shadow-framework", choices=FRAMEWORKS, metavar="NAME",
                        help="the shadow encoders' framework, of %(choices)s (default: the same as each target)")
    parser.add_argument("--dataset", help="digits (default), synthetic, cifar10, cifar100, stl10, svhn, imagefolder")
    parser.add_argument("--data-root", help="folder of the file-based datasets (never downloaded)")
    parser.add_argument("--image-size", type=int, help="image side (default: the dataset's usual size)")
    parser.add_argument("--backbone", help="small_cnn (default), resnet18, resnet50, vit_small")
    parser.add_argument("--width", type=int, help="backbone width (default: the backbone's)")
    parser.add_argument("--epochs", type=int, help="training epochs per encoder (default: 300, the digits recipe)")
    parser.add_argument("--batch-size", type=int, help="training batch size")
    parser.add_argument("--lr", type=float, help="training learning rate")
    parser.add_argument("--amp", action="store_true", help="bf16 autocast when training on CUDA")
    parser.add_argument("--device", help="auto (default), cpu, cuda or cuda:i")
    parser.add_argument("--seed", type=int, help="seed of splits, training and queries (default 0)")
    parser.add_argument("--members", type=int, help="members per target and shadow encoder (default preset: 128)")
    parser.add_argument("--seeds", type=int, help="targets per configuration, each with its own members and "
                                                   "training randomness (default preset: 4)")
    parser.add_argument("--references", type=int,
                        help="reference encoders per target for LiRA / RMIA, 0 for none (default preset: 3)")
    parser.add_argument("--ladder", nargs="*", metavar="ARCH",
                        help="architecture ladder, e.g. small_cnn-8 small_cnn-16 resnet18 (none: no ladder)")
    parser.add_argument("--release-defenses", nargs="*", metavar="DEFENSE",
                        help="release-time defenses, e.g. normalize noise:0.1 quantize:4 truncate:32 (README: Defenses)")
    parser.add_argument("--train-defenses", nargs="*", metavar="DEFENSE",
                        help="training-time defenses, e.g. epochs:0.33 weight_decay:0.001 members:2 dp:8 (README: Defenses)")
    parser.add_argument("--defense-framework", choices=FRAMEWORKS, metavar="NAME",
                        help="the framework the defenses are measured on (default simclr; DP-SGD needs byol or simsiam)")
    parser.add_argument("--workers", type=int, help="training processes (default: one per CPU core on a CPU)")
    parser.add_argument("--outputs", nargs="+", choices=OUTPUTS, metavar="OUTPUT",
                        help="representations attacked, of %(choices)s (default: both)")
    parser.add_argument("--attacks", nargs="+", metavar="NAME",
                        help="attacks of the main table (default: lpla norm encodermi-t encodermi-v encodermi-s knn)")
    parser.add_argument("--k", type=int, help="default query budget, views per sample (default 8)")
    parser.add_argument("--ks", nargs="+", type=int, help="query budgets of the K sweep (default 1 2 4 8 16)")
    parser.add_argument("--ps", nargs="+", type=parse_p, help="norm orders of the p sweep (default 1 2 inf)")
    parser.add_argument("--bootstrap", type=int, help="bootstrap replicates per interval (default 1000)")
    parser.add_argument("--save-embeddings", action="store_true", help="also write every split's views as .npy")
    parser.add_argument("--no-progress", action="store_true", help="no stage lines or progress bars")
    parser.set_defaults(func=run)


def build_config(args):
    """The ExperimentConfig an argument namespace asks for (--quick first, then the overrides)."""
    from dataclasses import replace

    from ..study import ExperimentConfig

    config = ExperimentConfig.preset("quick" if args.quick else args.preset)
    overrides = {name: getattr(args, name) for name in (
        "frameworks", "shadow_framework", "dataset", "data_root", "image_size", "backbone", "width", "epochs",
        "batch_size", "lr", "device", "seed", "outputs", "seeds", "references", "ladder", "release_defenses",
        "train_defenses", "defense_framework", "workers") if getattr(args, name) is not None}
    if args.amp:
        overrides["amp"] = True
    if args.save_embeddings:
        overrides["save_embeddings"] = True
    if args.members is not None:
        overrides["sizes"] = replace(config.sizes, target_members=args.members, shadow_members=args.members)
    study = {name: getattr(args, arg) for name, arg in (("attacks", "attacks"), ("k", "k"), ("ks", "ks"),
                                                          ("ps", "ps"), ("n_bootstrap", "bootstrap"))
             if getattr(args, arg) is not None}
    if study:
        overrides["study"] = replace(config.study, **study)
    return replace(config, **overrides)


def run(args) -> int:
    from ..study import run_experiment

    try:
        config = build_config(args)
        results = run_experiment(config, args.out, progress=not args.no_progress)
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
