"""`lpla embed`: write the (N, K, D) float32 view embeddings of one split to a .npy file, or of
every image of an image source to .npy shards.

With --split, the dataset and splits come from the run folder written by `lpla train` (run.json,
splits.json); --splits takes the splits from another run, so that a shadow encoder can embed the
target's splits and vice versa.

With --images SOURCE (the sources of `lpla score --images`), --out is a folder: the job of
`lpla score --images --write-embeddings --stat norm` runs (resumable, --engine ray too) and
OUT/embeddings/ holds one (n, K, D) .npy shard per chunk, with an .ids.npy naming each row;
`lpla score --embeddings OUT/embeddings` then gives the scores of the one-step job.
"""

from __future__ import annotations

import argparse

from ..fileio import replace_atomically
from ..splits import SPLIT_NAMES
from . import ENGINES, OUTPUTS, SCORE_DEFAULT, Auto, Lazy, add_no_progress


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("embed", help="embed K views of each image of a split",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", "--encoder", dest="checkpoint", required=True, help="run folder written by `lpla train`")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--split", choices=SPLIT_NAMES, help="which split to embed")
    source.add_argument("--images", help="image source (as for `lpla score --images`); --out is then a folder")
    p.add_argument("--K", type=int, default=Lazy(*SCORE_DEFAULT, "K"), help="views per image (default: %(default)s)")
    p.add_argument("--out", required=True, help="output .npy file (a folder with --images)")
    p.add_argument("--output", choices=OUTPUTS, default=Lazy(*SCORE_DEFAULT, "output"), metavar="OUTPUT",
                   help="released representation, of %(choices)s: the backbone embedding or the projection head's "
                        "(default: %(default)s)")
    p.add_argument("--seed", "--view-seed", dest="seed", type=int, default=Lazy(*SCORE_DEFAULT, "view_seed"),
                   help="seed of the random views (default: %(default)s)")
    p.add_argument("--policy", default="default", help="view policy (default: the training one)")
    p.add_argument("--no-clean", action="store_true", help="do not make view 1 the unaugmented image")
    p.add_argument("--splits", default=None, help="splits.json to use instead of the run folder's")
    p.add_argument("--data-root", default=None, help="override the data root recorded in run.json")
    p.add_argument("--batch-size", type=int, default=Lazy(*SCORE_DEFAULT, "forward_batch"),
                   help="views per forward pass (default: %(default)s)")
    p.add_argument("--device", default=Lazy(*SCORE_DEFAULT, "device"), help="cpu or cuda[:i] (default: %(default)s)")
    images = p.add_argument_group("with --images")
    images.add_argument("--batch-rows", type=int,
                        default=Auto("{}", Lazy("lpla_fast.streaming.config", "DEFAULT_IMAGE_BATCH_ROWS")),
                        help="images per chunk and per shard written (default: %(default)s)")
    images.add_argument("--workers", type=int, default=None,
                        help="processes that decode images and draw views (0: a reader thread; not given: chosen by "
                             "the job from the cores and the costs of the first chunk, with torch's threads)")
    images.add_argument("--engine", choices=ENGINES, metavar="ENGINE", default=Lazy(*SCORE_DEFAULT, "engine"),
                        help="%(choices)s (default: %(default)s)")
    images.add_argument("--address", help="Ray cluster address for --engine ray")
    images.add_argument("--skip-bad-shards", action="store_true", help="record bad shards in the manifest and go on")
    images.add_argument("--skip-bad-images", action="store_true",
                        help="leave out each image that cannot be read or decoded, embed the others, and record it "
                             "in the manifest")
    images.add_argument("--overwrite", action="store_true", help="discard a previous job's outputs in --out")
    add_no_progress(images)
    p.set_defaults(func=run)


def run(args) -> int:
    if args.images is not None:
        return run_images(args)
    import json
    import os

    import numpy as np

    from ..data import load_dataset
    from ..encoders import load_encoder, query_views
    from ..splits import Splits
    from .train import RUN_FILE, SPLITS_FILE

    run_path = os.path.join(args.checkpoint, RUN_FILE)
    if not os.path.isfile(run_path):
        raise SystemExit(f"lpla embed: {run_path} is missing; --checkpoint must be a folder written by `lpla train`")
    with open(run_path) as f:
        info = json.load(f)
    splits = Splits.from_json(args.splits or os.path.join(args.checkpoint, SPLITS_FILE))
    encoder = load_encoder(args.checkpoint, device=args.device or "cpu")
    data = load_dataset(info["dataset"], args.data_root or info.get("data_root"), info["image_size"])
    if splits.num_samples != len(data):
        raise SystemExit(f"lpla embed: the splits cover {splits.num_samples} samples but "
                         f"{info['dataset']} has {len(data)}")
    images = data.images[splits[args.split]]
    views = query_views(encoder, images, args.K, policy=args.policy, seed=args.seed,
                        include_clean=not args.no_clean, output=args.output, batch_size=args.batch_size)
    out_dir = os.path.dirname(os.path.abspath(args.out))
    os.makedirs(out_dir, exist_ok=True)
    array = views.numpy().astype(np.float32, copy=False)
    replace_atomically(args.out, lambda tmp: np.save(tmp, array))
    print(json.dumps({"out": args.out, "split": args.split, "shape": list(views.shape)}))
    return 0


def run_images(args) -> int:
    import sys

    from ..streaming import ScoreConfig
    from .score import run_job

    if args.policy != "default" or args.no_clean or args.splits or args.data_root:
        print("lpla embed: error: --images takes the encoder's view policy with view 1 the clean image "
              "(no --policy, --no-clean, --splits, --data-root)", file=sys.stderr)
        return 2
    try:
        config = ScoreConfig(out=args.out, images=args.images, encoder=args.checkpoint, output=args.output, K=args.K,
                             view_seed=args.seed, stat="norm", write_embeddings=True, batch_rows=args.batch_rows,
                             workers=args.workers, forward_batch=args.batch_size, device=args.device or "cpu", engine=args.engine,
                             address=args.address, skip_bad_shards=args.skip_bad_shards,
                             skip_bad_images=args.skip_bad_images, overwrite=args.overwrite,
                             progress=not args.no_progress)
    except ValueError as exc:
        print(f"lpla embed: error: {exc}", file=sys.stderr)
        return 2
    return run_job(config, "lpla embed")
