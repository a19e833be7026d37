"""`lpla train`: train a target or shadow encoder on its member split of a dataset.

Writes to --out: the checkpoint (config.json, model.safetensors, training_state.pt), splits.json,
run.json (dataset and role, read back by `lpla embed`) and quality.json (linear-probe and kNN
accuracy on the probe split). Rerunning with the same --out resumes an unfinished run.
"""

from __future__ import annotations

import argparse

from ..fileio import write_json
from ..splits import ROLES
from . import BACKBONES, DATASETS, FRAMEWORKS, OUTPUTS, POLICIES, TRAIN_DEFAULT, Lazy, add_no_progress

RUN_FILE, SPLITS_FILE, QUALITY_FILE = "run.json", "splits.json", "quality.json"


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("train", help="train a contrastive encoder on a member split",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--framework", choices=FRAMEWORKS, metavar="NAME", default=Lazy(*TRAIN_DEFAULT, "framework"),
                   help="%(choices)s (default: %(default)s)")
    p.add_argument("--backbone", choices=BACKBONES, metavar="NAME", default=Lazy(*TRAIN_DEFAULT, "backbone"),
                   help="%(choices)s (default: %(default)s)")
    p.add_argument("--dataset", choices=DATASETS, metavar="NAME", default=Lazy(*TRAIN_DEFAULT, "dataset"),
                   help="%(choices)s (default: %(default)s)")
    p.add_argument("--role", choices=ROLES, default="target",
                   help="train on the target_members or the shadow_members split (default: %(default)s)")
    p.add_argument("--epochs", type=int, default=Lazy(*TRAIN_DEFAULT, "epochs"),
                   help="training epochs (default: %(default)s)")
    p.add_argument("--out", required=True, help="run folder (created; resumed when it holds a checkpoint)")
    p.add_argument("--seed", type=int, default=0, help="training seed: weights, shuffles, views (default: %(default)s)")
    p.add_argument("--split-seed", type=int, default=0,
                   help="seed of the data splits; keep it equal for a target and its shadows (default: %(default)s)")
    p.add_argument("--device", default=Lazy(*TRAIN_DEFAULT, "device"), help="cpu, cuda, cuda:N or auto (default: %(default)s)")
    p.add_argument("--data-root", default=None, help="folder of the file-based datasets")
    p.add_argument("--image-size", type=int, default=None, help="input side (default: the dataset's)")
    p.add_argument("--width", type=int, default=None, help="backbone width (default: the backbone's)")
    p.add_argument("--batch-size", type=int, default=Lazy(*TRAIN_DEFAULT, "batch_size"),
                   help="batch size (default: %(default)s)")
    p.add_argument("--lr", type=float, default=Lazy(*TRAIN_DEFAULT, "lr"), help="Adam learning rate (default: %(default)s)")
    p.add_argument("--augmentation", choices=POLICIES, metavar="POLICY",
                   help="view policy, of %(choices)s (default: the dataset's own)")
    p.add_argument("--amp", action="store_true", help="bf16 autocast on CUDA")
    add_no_progress(p)
    p.set_defaults(func=run)


def run(args) -> int:
    import json
    import os
    import time

    from ..augment import policy_for_dataset
    from ..data import load_dataset
    from ..encoders import TrainConfig, feature_quality, train_encoder
    from ..splits import SplitSizes, make_splits

    data = load_dataset(args.dataset, args.data_root, args.image_size)
    splits = make_splits(len(data), SplitSizes().fitted_to(len(data)), seed=args.split_seed)
    overrides = {k: v for k, v in {"epochs": args.epochs, "width": args.width, "batch_size": args.batch_size,
                                   "lr": args.lr}.items() if v is not None}
    config = TrainConfig(framework=args.framework, backbone=args.backbone, image_size=data.images.shape[-1],
                         augmentation=args.augmentation or policy_for_dataset(args.dataset), seed=args.seed,
                         device=args.device, amp=args.amp, dataset=args.dataset, **overrides)
    os.makedirs(args.out, exist_ok=True)
    splits.to_json(os.path.join(args.out, SPLITS_FILE))
    write_json(os.path.join(args.out, RUN_FILE), {
        "dataset": args.dataset, "data_root": args.data_root, "image_size": config.image_size,
        "role": args.role, "split_seed": args.split_seed})
    members = splits[f"{args.role}_members"]
    start = time.perf_counter()
    encoder = train_encoder(data.images[members], config, checkpoint_dir=args.out, progress=not args.no_progress)
    seconds = time.perf_counter() - start
    quality = {output: feature_quality(encoder, data.images[splits.probe_train], data.labels[splits.probe_train],
                                       data.images[splits.probe_test], data.labels[splits.probe_test], output)
               for output in OUTPUTS}
    quality["train_seconds"] = seconds
    quality["members"] = int(len(members))
    write_json(os.path.join(args.out, QUALITY_FILE), quality, allow_nan=True)
    print(json.dumps({"out": args.out, "train_seconds": round(seconds, 2),
                      "linear_probe": quality["backbone"]["linear_probe"], "knn": quality["backbone"]["knn"]}))
    return 0

