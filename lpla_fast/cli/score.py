"""`lpla score`: stream sharded embeddings, or images through an encoder, into the fused LpLA (or
Lp-norm) op and Parquet."""

from __future__ import annotations

import json
import sys

from . import ENGINES, OUTPUTS, SCORE_DEFAULT, STATS, Auto, Lazy, add_no_progress

STREAMING = "lpla_fast.streaming.config"


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "score",
        help="score sharded embeddings or images with a saved LpLA calibration (resumable)",
        description=(
            "Score every row of .npy / Parquet embedding shards, or every image of an image source "
            "embedded by --encoder in K views, with the fused LpLA op (or plain Lp-norms), and write "
            "sample locations and scores to OUT/scores/part-*.parquet. Interrupted jobs resume from "
            "OUT/manifest.json when rerun with the same command."
        ),
    )
    parser.add_argument("--calibration", help="LpLA calibration JSON saved by `lpla attack` (needed for --stat lpla)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--embeddings", help="glob (quote it) or folder of .npy / .parquet embedding shards")
    source.add_argument("--images", help="image source: an ImageFolder tree, or a glob / folder of uint8 .npy "
                                         "(N, H, W, C), Parquet (an 'image' bytes column) or WebDataset .tar shards")
    parser.add_argument("--out", required=True, help="output folder (scores/, manifest.json, _SUCCESS)")
    add_image_arguments(parser)
    parser.add_argument("--write-embeddings", action="store_true",
                        help="with --images: also keep the (n, K, D) view embeddings in OUT/embeddings/")
    parser.add_argument("--batch-rows", type=int,
                        default=Auto("{}; {} images with --images", Lazy(STREAMING, "DEFAULT_BATCH_ROWS"),
                                     Lazy(STREAMING, "DEFAULT_IMAGE_BATCH_ROWS")),
                        help="rows per chunk and per output part (default: %(default)s)")
    parser.add_argument("--device", default=Lazy(*SCORE_DEFAULT, "device"), help="cpu or cuda[:i] (default: %(default)s)")
    parser.add_argument("--engine", choices=ENGINES, metavar="ENGINE", default=Lazy(*SCORE_DEFAULT, "engine"),
                        help="%(choices)s (default: %(default)s)")
    parser.add_argument("--address", help="Ray cluster address for --engine ray (default: start a local one)")
    parser.add_argument("--stat", choices=STATS, metavar="STAT", default=Lazy(*SCORE_DEFAULT, "stat"),
                        help="%(choices)s: the LpLA score or the plain Lp-norm, the mean over the K views "
                             "(default: %(default)s)")
    parser.add_argument("--p", type=float, default=Auto("the calibration's, else {}", Lazy(STREAMING, "DEFAULT_P")),
                        help="p of the Lp-norm for --stat norm (default: %(default)s)")
    parser.add_argument("--skip-bad-shards", action="store_true", help="record bad shards in the manifest and go on")
    parser.add_argument("--skip-bad-images", action="store_true",
                        help="with --images: leave out each image that cannot be read or decoded, score the others, "
                             "and record its path and the reason in the manifest and the summary")
    parser.add_argument("--write-norms", action="store_true", help="also write the per-view norms")
    parser.add_argument("--overwrite", action="store_true", help="discard a previous job's outputs in --out")
    add_no_progress(parser)
    parser.set_defaults(func=run)


def add_image_arguments(parser) -> None:
    """The flags of an image job, shared by `lpla score` and `lpla embed`."""
    parser.add_argument("--encoder", help="with --images: encoder folder (written by `lpla train`)")
    parser.add_argument("--output", choices=OUTPUTS, metavar="OUTPUT", default=Lazy(*SCORE_DEFAULT, "output"),
                        help="with --images: released representation, of %(choices)s (default: %(default)s)")
    parser.add_argument("--K", type=int, default=Lazy(*SCORE_DEFAULT, "K"),
                        help="with --images: views per image, view 1 the clean image (default: %(default)s)")
    parser.add_argument("--view-seed", type=int, default=Lazy(*SCORE_DEFAULT, "view_seed"),
                        help="with --images: seed of the random views (default: %(default)s)")
    parser.add_argument("--workers", type=int, default=None,
                        help="with --images: processes that decode images and draw views (0: a reader thread; not "
                             "given: chosen by the job from the cores and the costs of the first chunk, with torch's "
                             "threads)")
    parser.add_argument("--forward-batch", type=int, default=Lazy(*SCORE_DEFAULT, "forward_batch"),
                        help="with --images: views per forward pass, whole blocks of 32 images (default: %(default)s)")


def run(args) -> int:
    from ..streaming import ScoreConfig

    try:
        config = ScoreConfig(
            embeddings=args.embeddings,
            images=args.images,
            encoder=args.encoder,
            output=args.output,
            K=args.K,
            view_seed=args.view_seed,
            workers=args.workers,
            forward_batch=args.forward_batch,
            write_embeddings=args.write_embeddings,
            out=args.out,
            calibration=args.calibration,
            stat=args.stat,
            p=args.p,
            batch_rows=args.batch_rows,
            device=args.device,
            engine=args.engine,
            address=args.address,
            skip_bad_shards=args.skip_bad_shards,
            skip_bad_images=args.skip_bad_images,
            write_norms=args.write_norms,
            overwrite=args.overwrite,
            progress=not args.no_progress,
        )
    except ValueError as exc:
        print(f"lpla score: error: {exc}", file=sys.stderr)
        return 2
    return run_job(config, "lpla score")


def run_job(config, command: str) -> int:
    """Run a job, print its summary; a refused job is one line on stderr and exit status 2."""
    from ..streaming import ShardError, score_shards

    try:
        summary = score_shards(config)
    except (ShardError, ValueError, FileNotFoundError) as exc:
        print(f"{command}: error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=1))
    if summary["bad_shards"]:
        print(f"{command}: {len(summary['bad_shards'])} bad shards skipped (see {config.out}/manifest.json)", file=sys.stderr)
    if summary["skipped_images"]:
        print(f"{command}: {len(summary['skipped_images'])} bad images left out (see {config.out}/manifest.json)",
              file=sys.stderr)
    return 0
