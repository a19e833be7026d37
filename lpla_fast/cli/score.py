"""`lpla score`: stream sharded embeddings through the fused LpLA (or Lp-norm) op into Parquet."""

from __future__ import annotations

import json
import sys


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "score",
        help="score sharded embeddings with a saved LpLA calibration (resumable)",
        description=(
            "Score every row of .npy / Parquet embedding shards with the fused LpLA op (or plain "
            "Lp-norms) and write ids and scores to OUT/scores/part-*.parquet. Interrupted jobs "
            "resume from OUT/manifest.json when rerun with the same command."
        ),
    )
    parser.add_argument("--calibration", help="LpLA calibration JSON saved by `lpla attack` (needed for --stat lpla)")
    parser.add_argument("--embeddings", required=True, help="glob (quote it) or folder of .npy / .parquet shards")
    parser.add_argument("--out", required=True, help="output folder (scores/, manifest.json, _SUCCESS)")
    parser.add_argument("--batch-rows", type=int, default=None, help="rows per chunk and per output part (default 131072)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:i] (default cpu)")
    parser.add_argument("--engine", choices=("local", "ray"), default="local")
    parser.add_argument("--address", help="Ray cluster address for --engine ray (default: start a local one)")
    parser.add_argument("--stat", choices=("lpla", "norm"), default="lpla", help="LpLA score (default) or plain Lp-norm (the mean over the K views)")
    parser.add_argument("--p", type=float, help="p of the Lp-norm for --stat norm (default: the calibration's, else 2)")
    parser.add_argument("--skip-bad-shards", action="store_true", help="record bad shards in the manifest and go on")
    parser.add_argument("--write-norms", action="store_true", help="also write the per-view norms")
    parser.add_argument("--overwrite", action="store_true", help="discard a previous job's outputs in --out")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def run(args) -> int:
    from ..streaming import ScoreConfig, ShardError, score_shards
    from ..streaming.job import DEFAULT_BATCH_ROWS

    try:
        config = ScoreConfig(
            embeddings=args.embeddings,
            out=args.out,
            calibration=args.calibration,
            stat=args.stat,
            p=args.p,
            batch_rows=args.batch_rows or DEFAULT_BATCH_ROWS,
            device=args.device,
            engine=args.engine,
            address=args.address,
            skip_bad_shards=args.skip_bad_shards,
            write_norms=args.write_norms,
            overwrite=args.overwrite,
            progress=not args.no_progress,
        )
        summary = score_shards(config)
    except (ShardError, ValueError, FileNotFoundError) as exc:
        print(f"lpla score: error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=1))
    if summary["bad_shards"]:
        print(f"lpla score: {len(summary['bad_shards'])} bad shards skipped (see {args.out}/manifest.json)", file=sys.stderr)
    return 0
