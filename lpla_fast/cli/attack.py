"""`lpla attack`: attack existing embeddings or an existing encoder, and save the LpLA calibration."""

from __future__ import annotations

import os
import sys

from . import ATTACKS, DATASETS, LEVELS, OUTPUTS, STUDY_DEFAULT, Auto, Lazy, add_no_progress, parse_p

VIEW_FLAGS = (("members", "--members"), ("nonmembers", "--nonmembers"), ("target_reference", "--reference"),
              ("shadow_members", "--shadow-members"), ("shadow_nonmembers", "--shadow-nonmembers"),
              ("shadow_reference", "--shadow-reference"))


def study_default(name: str) -> Auto:
    """StudyConfig's default of `name`: shown by --help; the runner gets None and StudyConfig decides."""
    return Auto("{}", Lazy(*STUDY_DEFAULT, name))


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "attack",
        help="attack existing embeddings (.npy) or an encoder checkpoint; saves the LpLA calibration",
        description=(
            "Run the membership-inference attacks and sweeps on existing (N, K, D) view embeddings "
            "(--members/--nonmembers of the target, --shadow-members/--shadow-nonmembers of a shadow "
            "encoder, optionally --reference/--shadow-reference known non-members), or on an encoder "
            "checkpoint plus a splits file (--encoder, --shadow-encoder, --splits, --dataset). Writes "
            "results.json, report.md, plots/ and calibration.json (the fitted LpLA calibration, for "
            "`lpla score --calibration`) to --out."
        ),
    )
    parser.add_argument("--out", required=True, help="output folder")
    files = parser.add_argument_group("embedding files: (N, K, D) or (N, D) float .npy arrays")
    for _, flag in VIEW_FLAGS:
        files.add_argument(flag, metavar="NPY")
    enc = parser.add_argument_group("encoder checkpoints (folders written by `lpla train` or `lpla experiment`)")
    enc.add_argument("--encoder", metavar="DIR", help="the target encoder")
    enc.add_argument("--shadow-encoder", metavar="DIR", help="the shadow encoder (trained on shadow_members)")
    enc.add_argument("--shadow-complement", metavar="DIR",
                     help="a second shadow encoder, trained on the shadow_nonmembers split (its non-members: "
                          "shadow_members), pooled with the first, as `lpla experiment` trains them")
    enc.add_argument("--splits", metavar="JSON", help="splits.json naming the member / non-member / reference samples")
    enc.add_argument("--dataset", choices=DATASETS, metavar="NAME", default="digits",
                     help="dataset the splits index, of %(choices)s (default: %(default)s)")
    enc.add_argument("--data-root", help="folder of the file-based datasets")
    enc.add_argument("--image-size", type=int, help="image side (default: the encoder's)")
    enc.add_argument("--outputs", nargs="+", choices=OUTPUTS, default=["backbone"], metavar="OUTPUT",
                     help="representations attacked, of %(choices)s (default: %(default)s)")
    enc.add_argument("--device", default="cpu", help="device for the queries (default: %(default)s)")
    study = parser.add_argument_group("attacks")
    study.add_argument("--attacks", nargs="+", choices=ATTACKS, metavar="NAME", default=study_default("attacks"),
                       help="attacks, of %(choices)s (default: %(default)s)")
    study.add_argument("--level", choices=LEVELS, metavar="LEVEL", default=study_default("level"),
                       help="knowledge level of the main table, of %(choices)s (default: %(default)s)")
    study.add_argument("--k", type=int, default=study_default("k"),
                       help="query budget of the main table, at most the files' K (default: %(default)s)")
    study.add_argument("--ks", nargs="+", type=int, default=study_default("ks"),
                       help="K sweep, up to the files' K (default: %(default)s)")
    study.add_argument("--ps", nargs="+", type=parse_p, default=study_default("ps"), help="p sweep (default: %(default)s)")
    study.add_argument("--bootstrap", type=int, default=study_default("n_bootstrap"),
                       help="bootstrap replicates per interval (default: %(default)s)")
    study.add_argument("--seed", type=int, default=0, help="seed of views, audit halves and bootstrap (default: %(default)s)")
    study.add_argument("--label", help="name of the target in the report (default: target, or the encoder's framework)")
    add_no_progress(parser)
    parser.set_defaults(func=run)


def load_views_file(path: str, flag: str):
    """A validated (N, K, D) float tensor from an .npy file (never unpickled)."""
    import numpy as np

    from ..validation import as_views

    if not os.path.isfile(path):
        raise FileNotFoundError(f"{flag}: no such file {path!r}")
    try:
        array = np.load(path, allow_pickle=False)
    except ValueError as exc:
        raise ValueError(f"{flag}: {path!r} is not a plain numeric .npy array ({exc})") from exc
    if array.dtype.kind not in "f":
        raise ValueError(f"{flag}: {path!r} holds dtype {array.dtype}; embeddings must be floating point")
    return as_views(array, f"{flag} ({os.path.basename(path)})")


def build_study(args):
    from dataclasses import replace

    from ..study import StudyConfig

    overrides = {name: getattr(args, arg) for name, arg in (("attacks", "attacks"), ("level", "level"), ("k", "k"),
                                                            ("ks", "ks"), ("ps", "ps"), ("n_bootstrap", "bootstrap"))
                 if getattr(args, arg) is not None}
    # No reference encoders here: the reference attacks' budgets must not raise the K queried.
    return replace(StudyConfig(seed=args.seed, reference_ks=()), **overrides)


def _views_from_files(args):
    from ..study import ViewSet

    given = {field: getattr(args, flag[2:].replace("-", "_")) for field, flag in VIEW_FLAGS}
    for field, flag in VIEW_FLAGS[:2]:
        if not given[field]:
            raise ValueError(f"{flag} is required (or attack an encoder with --encoder and --splits)")
    if bool(given["shadow_members"]) != bool(given["shadow_nonmembers"]):
        raise ValueError("--shadow-members and --shadow-nonmembers go together")
    tensors = {field: load_views_file(given[field], flag) for field, flag in VIEW_FLAGS if given[field]}
    inputs = {flag: given[field] for field, flag in VIEW_FLAGS}
    return {"embeddings": ViewSet(**tensors)}, inputs


def _views_from_encoders(args, study):
    from ..attacks import LabelledEncoder
    from ..data import load_dataset
    from ..encoders import load_encoder, query_split_views
    from ..splits import Splits
    from ..study import ViewSet
    from ..study.groups import SHADOWS

    if not args.splits:
        raise ValueError("--encoder needs --splits (a splits.json naming the samples)")
    splits = Splits.from_json(args.splits)
    target = load_encoder(args.encoder, device=args.device)
    if args.shadow_complement and not args.shadow_encoder:
        raise ValueError("--shadow-complement pairs with --shadow-encoder (the shadow trained on shadow_members)")
    shadow = load_encoder(args.shadow_encoder, device=args.device) if args.shadow_encoder else None
    complement = load_encoder(args.shadow_complement, device=args.device) if args.shadow_complement else None
    data = load_dataset(args.dataset, args.data_root, args.image_size or target.config.image_size)
    if splits.num_samples and splits.num_samples != len(data):
        raise ValueError(f"--splits indexes {splits.num_samples} samples but dataset {args.dataset!r} has {len(data)}")
    k = study.max_k
    names = ("target_members", "target_nonmembers", "reference")
    t = query_split_views(target, data.images, splits, names, tuple(args.outputs), k, seed=args.seed)
    shadow_splits = ("shadow_members", "shadow_nonmembers", "reference")
    s, c = (None if e is None else query_split_views(e, data.images, splits, shadow_splits, tuple(args.outputs), k,
                                                     seed=args.seed) for e in (shadow, complement))
    has_reference = len(splits.reference) > 0
    views = {}
    _, member_split, nonmember_split = SHADOWS[1]  # the complement: trained on shadow_nonmembers
    for o in args.outputs:
        more = () if c is None else (LabelledEncoder(c[o][member_split], c[o][nonmember_split],
                                                     c[o]["reference"] if has_reference else None),)
        views[o] = ViewSet(members=t[o]["target_members"], nonmembers=t[o]["target_nonmembers"],
                           target_reference=t[o]["reference"] if has_reference else None,
                           shadow_members=s[o]["shadow_members"] if s else None,
                           shadow_nonmembers=s[o]["shadow_nonmembers"] if s else None,
                           shadow_reference=s[o]["reference"] if s and has_reference else None, more_shadows=more)
    inputs = {"--encoder": args.encoder, "--shadow-encoder": args.shadow_encoder,
              "--shadow-complement": args.shadow_complement, "--splits": args.splits, "--dataset": args.dataset}
    return views, inputs, target.config.framework


def run(args) -> int:
    from ..study import run_attacks

    try:
        study = build_study(args)
        if args.encoder:
            if any(getattr(args, flag[2:].replace("-", "_")) for _, flag in VIEW_FLAGS):
                raise ValueError("give either embedding files (--members ...) or --encoder, not both")
            views, inputs, framework = _views_from_encoders(args, study)
            label = args.label or framework
        else:
            views, inputs = _views_from_files(args)
            label = args.label or "target"
        if study.level == "shadow" and not next(iter(views.values())).has_shadow:
            raise ValueError("the shadow knowledge level needs --shadow-members and --shadow-nonmembers "
                             "(or --shadow-encoder); pass --level reference or --level audit otherwise")
        results = run_attacks(views, study, args.out, label=label, inputs=inputs, progress=not args.no_progress)
    except (ValueError, TypeError, FileNotFoundError) as exc:
        print(f"lpla attack: error: {exc}", file=sys.stderr)
        return 2
    for r in results.select(study="main"):
        auc = f"AUC {r.auc:.3f}" if r.metrics else f"skipped: {r.skipped}"
        print(f"{r.output:<10} {r.attack:<12} {auc}")
    saved = ", ".join(results.calibration_files.values()) or "none (no LpLA in --attacks)"
    print(f"report: {args.out}/report.md; LpLA calibration: {saved}")
    return 0
