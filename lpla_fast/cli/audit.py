"""`lpla audit`: audit your own encoder on your own images (see `lpla_fast.audit`)."""

from __future__ import annotations

import sys

from . import FRAMEWORKS, OUTPUTS, POLICIES, STUDY_DEFAULT, Choices, Lazy

# The engines that train the references (the scoring job's are `cli.ENGINES`).
ENGINES = Choices("lpla_fast.encoders.parallel", "ENGINES")


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "audit",
        help="audit an encoder (lpla train folder, timm:, torchvision:, python:) on your member / non-member images",
        description=(
            "Measure how much an encoder leaks about its training images: decode --members (images known to be "
            "in its training set) and --nonmembers (held-out images of the same distribution) once into image "
            "caches under OUT/cache/, query K views of each, and run the global attacks at the audit level "
            "(default), or LiRA and RMIA against reference encoders: yours (--references DIR) or R trained here "
            "on random halves of the candidates (--train-references R, locally or on Ray). Writes report.md, "
            "report.html, results.json, scores.parquet (a row per candidate and attack, with its id and path), "
            "roc/*.npz, calibration.json and plots/ (exposed.png: the most and least exposed members) to --out. "
            "Nothing is downloaded."
        ),
    )
    enc = parser.add_argument_group("the encoder")
    enc.add_argument("--encoder", required=True, metavar="SPEC",
                     help="a folder written by `lpla train`, timm:NAME, torchvision:NAME or python:package.module:factory")
    enc.add_argument("--weights", metavar="FILE", help="weights of an external model: .safetensors or a weights-only "
                     "torch file (lightly, solo-learn, Lightning and DDP nesting understood)")
    enc.add_argument("--output", choices=OUTPUTS, default="backbone", metavar="OUTPUT",
                     help="released representation, of %(choices)s: pooled backbone features (default) or the "
                          "model's head")
    enc.add_argument("--image-size", type=int, help="input side (default: the model's own, from its library)")
    enc.add_argument("--mean", type=float, nargs="+", help="per-channel mean of the input normalization "
                     "(default: the model's own; none for a python factory)")
    enc.add_argument("--std", type=float, nargs="+", help="per-channel std (with --mean)")
    data = parser.add_argument_group("images: an ImageFolder tree, or a glob / folder of uint8 .npy, Parquet or "
                                     "WebDataset .tar shards (what `lpla score --images` reads)")
    data.add_argument("--members", required=True, metavar="SOURCE", help="images in the encoder's training set")
    data.add_argument("--nonmembers", required=True, metavar="SOURCE",
                      help="held-out images of the same distribution")
    data.add_argument("--population", metavar="SOURCE", help="more known non-members, in no encoder's training set: "
                      "RMIA's population (default with --train-references: a quarter of --nonmembers)")
    data.add_argument("--skip-bad-images", action="store_true",
                      help="leave undecodable images out (listed in the report) instead of stopping")
    know = parser.add_argument_group("knowledge (default: none, the global attacks on held-out halves)")
    know.add_argument("--references", metavar="DIR", help="your reference encoders: one subfolder each with a "
                      "`lpla train` folder or weights, and members.txt (or mask.json) of the candidate ids it trained on")
    know.add_argument("--train-references", type=int, default=0, metavar="R",
                      help="train R reference encoders of the target's architecture here, each on a random half of "
                           "the candidates (saved in OUT/references/, reused by a rerun)")
    know.add_argument("--recipe", metavar="JSON", help="their training recipe (TrainConfig fields; default: the "
                      "`lpla train` folder's own config, or SimCLR with the flags below for an external model)")
    know.add_argument("--framework", choices=FRAMEWORKS, metavar="NAME", help="recipe override, of %(choices)s")
    know.add_argument("--epochs", type=int, help="recipe override: epochs")
    know.add_argument("--batch-size", type=int, help="recipe override: batch size")
    know.add_argument("--lr", type=float, help="recipe override: learning rate")
    know.add_argument("--augmentation", choices=POLICIES, metavar="POLICY",
                      help="views of training and queries, of %(choices)s (default: the encoder's own; natural for "
                           "an external model)")
    run_ = parser.add_argument_group("where references train")
    run_.add_argument("--engine", choices=ENGINES, default="local", metavar="ENGINE",
                      help="%(choices)s (default %(default)s): one process per core here, or one Ray task per reference")
    run_.add_argument("--address", help="Ray cluster address for --engine ray (default: a local cluster); OUT must be "
                      "on a file system every node sees")
    run_.add_argument("--device", default="cpu", help="cpu or cuda[:i] (default cpu)")
    run_.add_argument("--gpus-per-reference", type=float,
                      help="with --engine ray --device cuda: GPUs per reference task, a fraction packs small encoders")
    run_.add_argument("--workers", type=int, help="local engine: training processes (not given: one per core); "
                      "Ray: CPUs per reference task (not given: one)")
    att = parser.add_argument_group("attacks")
    att.add_argument("--K", type=int, default=Lazy(*STUDY_DEFAULT, "k"),
                     help="views per image, view 1 the clean image (default: %(default)s)")
    att.add_argument("--seed", type=int, default=0, help="seed of views, halves, masks and references (default: %(default)s)")
    att.add_argument("--bootstrap", type=int, default=Lazy(*STUDY_DEFAULT, "n_bootstrap"),
                     help="bootstrap replicates per interval (default: %(default)s)")
    att.add_argument("--exposed", type=int, default=8, help="members in each row of plots/exposed.png (default: %(default)s)")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--no-progress", action="store_true", help="no stage lines or progress bars")
    parser.set_defaults(func=run)


def config_from_args(args):
    from ..audit import AuditConfig

    return AuditConfig(
        encoder=args.encoder, members=args.members, nonmembers=args.nonmembers, out=args.out, weights=args.weights,
        output=args.output, population=args.population, references=args.references,
        train_references=args.train_references, recipe=args.recipe, framework=args.framework, epochs=args.epochs,
        batch_size=args.batch_size, lr=args.lr, augmentation=args.augmentation, engine=args.engine,
        address=args.address, device=args.device, gpus_per_reference=args.gpus_per_reference, workers=args.workers,
        k=args.K, seed=args.seed, image_size=args.image_size, mean=args.mean, std=args.std,
        skip_bad=args.skip_bad_images, n_bootstrap=args.bootstrap, exposed=args.exposed)


def run(args) -> int:
    from ..audit import run_audit
    from ..streaming.shards import ShardError

    try:
        results = run_audit(config_from_args(args), progress=not args.no_progress)
    except (ValueError, TypeError, FileNotFoundError, ShardError) as exc:
        if getattr(args, "debug", False):
            raise
        print(f"lpla audit: error: {exc}", file=sys.stderr)
        return 2
    for r in results.records:
        if r.study in ("main", "references") and r.metrics:
            stat = r.params.get("statistic") if r.study == "references" else None
            name = r.attack + ("" if stat is None else f"/{stat}" + ("" if r.params.get("online", True) else " offline"))
            print(f"{r.output:<9} {name:<26} K={r.k:<2} AUC {r.auc:.3f}  TPR@1% {r.tpr_at(0.01):.3f}")
    print(f"report: {args.out}/report.md")
    return 0
