"""`lpla export-images`: write the built-in data's splits as image folders, so that the commands
that take image sources (`lpla audit`, `lpla score --images`) can be tried on them.

The splits are the ones `lpla train --split-seed S` draws (--seed S), or a splits.json written by
`lpla train` or `lpla experiment` (--splits). OUT gets one image folder per split:
OUT/members/<index>.png (the target's members), OUT/nonmembers/<index>.png (the target's
non-members), and OUT/<split>/<index>.png for the other non-empty splits (shadow_members,
shadow_nonmembers, reference, probe_train, probe_test); <index> is the sample's index in the
dataset, zero-padded, so a row of any output maps back to it, and a folder read in path order
(as every image source reads one) holds its split in the splits' own order: an audit of the
folders draws the same held-out halves and views as `lpla attack --splits` does. OUT/labels.csv
gives each file's class, OUT/splits.json the splits, OUT/export.json the dataset, image size
and counts.

Pixels: the images the encoders train on (float in [0, 1], at --image-size, default the
dataset's own: 16 for digits, 28 for mnist5k), written as 8-bit grayscale PNG: round(255 x).
MNIST-5k at 28x28 is stored in 8 bits already, so its PNGs hold its exact values. The digits
are 4-bit (0..16) 8x8 images upsampled to 16x16 by an antialiased bilinear resize: the PNG
holds those values rounded to the nearest 1/255 (an error of at most 1/510).

OUT must not exist or be empty: the folders are written to a temporary folder beside it and
renamed into place when complete, so a refused or interrupted export leaves OUT as it was.
"""

from __future__ import annotations

import argparse
import os
import sys

from . import Choices

SHIPPED_DATASETS = Choices("lpla_fast.data", "SHIPPED_DATASETS")
EXPORT_FORMATS = ("png",)
# Folder of each split in OUT: the target's members and non-members under the names an audit uses.
SPLIT_FOLDERS = {"target_members": "members", "target_nonmembers": "nonmembers"}
EXPORT_FILE = "export.json"
LABELS_FILE = "labels.csv"


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("export-images", help="write the built-in data's splits as image folders",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", choices=SHIPPED_DATASETS, metavar="NAME", default="digits",
                   help="a dataset the package ships: %(choices)s (default: %(default)s)")
    splits = p.add_mutually_exclusive_group()
    splits.add_argument("--splits", help="splits.json written by `lpla train` or `lpla experiment`")
    splits.add_argument("--seed", type=int, default=0,
                        help="draw the splits `lpla train --split-seed SEED` draws (default: %(default)s)")
    p.add_argument("--out", required=True, help="output folder (must not exist or be empty)")
    p.add_argument("--format", choices=EXPORT_FORMATS, default="png", help="image file format (default: %(default)s)")
    p.add_argument("--image-size", type=int, default=None, help="image side (default: the dataset's own)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args) -> int:
    import json

    try:
        summary = export_images(args.dataset, args.out, splits=args.splits, seed=args.seed,
                                image_size=args.image_size, progress=not args.no_progress)
    except (ValueError, FileNotFoundError) as exc:
        print(f"lpla export-images: error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=1))
    return 0


def export_images(dataset: str, out: str, splits=None, seed=None, image_size=None, progress: bool = True) -> dict:
    """Write the splits of a built-in dataset as image folders in `out` (see the module).

    splits: a `Splits`, a path to a splits.json, or None to draw them with `seed` (default 0)
    as `lpla train` does. Returns the summary written to OUT/export.json.
    """
    import shutil
    import tempfile

    import torch

    from ..data import load_dataset
    from ..fileio import write_json
    from ..splits import SPLIT_NAMES, Splits, SplitSizes, make_splits

    if dataset not in SHIPPED_DATASETS:
        raise ValueError(f"--dataset must be one of {', '.join(SHIPPED_DATASETS)}, got {dataset!r}")
    if os.path.exists(out) and (not os.path.isdir(out) or os.listdir(out)):
        raise ValueError(f"--out {out!r} exists and is not an empty folder; give a new or empty one")
    data = load_dataset(dataset, image_size=image_size)
    if isinstance(splits, str):
        splits = Splits.from_json(splits)
    elif splits is None:
        splits = make_splits(len(data), SplitSizes().fitted_to(len(data)), seed=0 if seed is None else seed)
    if splits.num_samples != len(data):
        raise ValueError(f"the splits cover {splits.num_samples} samples but {dataset} has {len(data)}")
    pixels = data.images.mul(255).round_().to(torch.uint8).numpy()  # (N, 3, S, S)
    parent = os.path.dirname(os.path.abspath(out))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(dir=parent, prefix=".tmp-export-")
    try:
        counts = _write_folders(tmp, pixels, data.labels.numpy(), splits, SPLIT_NAMES, progress)
        splits.to_json(os.path.join(tmp, "splits.json"))
        summary = {"dataset": dataset, "image_size": int(pixels.shape[-1]), "format": "png", "seed": splits.seed,
                   "splits": counts, "out": out}
        write_json(os.path.join(tmp, EXPORT_FILE), summary)
        os.replace(tmp, out)  # over an empty folder too: rename(2) replaces an empty directory
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return summary


def _write_folders(root, pixels, labels, splits, names, progress) -> dict:
    from PIL import Image
    from tqdm.auto import tqdm

    digits = len(str(len(pixels) - 1))
    todo = [(name, int(i)) for name in names for i in splits[name]]
    counts, rows = {}, ["path,index,label"]
    for name, index in tqdm(todo, disable=not progress, desc="export-images", unit="images"):
        split = SPLIT_FOLDERS.get(name, name)
        # No class subfolders: path order is then the split's (ascending index) order.
        os.makedirs(os.path.join(root, split), exist_ok=True)
        path = f"{split}/{index:0{digits}d}.png"
        image = pixels[index]
        # The built-in datasets are gray (three equal channels): one 8-bit channel holds them.
        picture = Image.fromarray(image[0]) if (image == image[:1]).all() else Image.fromarray(image.transpose(1, 2, 0))
        picture.save(os.path.join(root, path))
        rows.append(f"{path},{index},{int(labels[index])}")
        counts[split] = counts.get(split, 0) + 1
    with open(os.path.join(root, LABELS_FILE), "w") as f:
        f.write("\n".join(rows) + "\n")
    return counts
