"""Reference encoders of an audit: the folder format, the user's own references, and the
plan of references trained here.

A references folder holds one subfolder per reference encoder, each with
  * the encoder: a folder written by `lpla train` (config.json + model.safetensors), or a
    weights file (``*.safetensors``, ``*.pt``, ``*.pth``) for the target's external
    architecture (loaded like ``--weights``);
  * its training set over the candidates: ``members.txt`` (one candidate id per line, as
    ``scores.parquet``'s ``id`` column names them) or ``mask.json`` (``{"members": [ids]}``).
A subfolder without either is refused. `lpla audit --train-references R` writes this format
under ``OUT/references/r<i>/`` (so ``--references OUT/references`` reuses them elsewhere).

References trained here follow LiRA: R encoders of the target's architecture, freshly
initialised, reference r on the random half ``draw_reference_masks(N, R, seed)[r]`` of the N
candidates, with training seed `reference_seed(seed, r)`. The population (RMIA's known
non-members) is in no reference's training set.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import List, Optional, Sequence

import numpy as np

MEMBERS_FILE, MASK_FILE = "members.txt", "mask.json"
WEIGHT_SUFFIXES = (".safetensors", ".pt", ".pth")


def reference_seed(seed: int, r: int) -> int:
    """The training seed of reference r of an audit seeded `seed`: a function of (seed, r) only,
    so a retried or resumed reference is the same encoder."""
    return int(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, 7919, int(r)]).generate_state(1)[0] >> 1)


@dataclass
class ReferenceFolder:
    """One reference of a references folder: where its encoder is and the candidate ids it
    was trained on."""

    name: str
    folder: str
    encoder_path: str  # the folder itself (a `lpla train` folder) or its weights file
    member_ids: List[str]


def read_member_ids(folder: str) -> Optional[List[str]]:
    """The candidate ids of members.txt or mask.json in `folder`, None when it has neither."""
    path = os.path.join(folder, MEMBERS_FILE)
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            return [line.rstrip("\n") for line in f if line.strip()]
    path = os.path.join(folder, MASK_FILE)
    if os.path.isfile(path):
        try:
            with open(path, encoding="utf-8") as f:
                doc = json.load(f)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ValueError(f"{path!r} is not JSON: {exc}") from None
        if not isinstance(doc, dict) or not isinstance(doc.get("members"), list):
            raise ValueError(f"{path!r} must be an object {{\"members\": [candidate ids]}}")
        return [str(i) for i in doc["members"]]
    return None


def write_member_ids(folder: str, ids: Sequence[str]) -> None:
    from ..fileio import write_text

    os.makedirs(folder, exist_ok=True)
    write_text(os.path.join(folder, MEMBERS_FILE), "".join(f"{i}\n" for i in ids))


def scan_references(root: str, external: bool) -> List[ReferenceFolder]:
    """The references in folder `root` (format in the module docstring), checked: every one has
    an encoder and a mask, at least two exist. external: the target is an external architecture
    (weights files are accepted)."""
    if not os.path.isdir(root):
        raise ValueError(f"--references {root!r} is not a folder")
    found = []
    for name in sorted(os.listdir(root)):
        folder = os.path.join(root, name)
        if not os.path.isdir(folder):
            continue
        ids = read_member_ids(folder)
        if ids is None:
            raise ValueError(f"reference {folder!r} has no {MEMBERS_FILE} or {MASK_FILE} naming the candidates it "
                             "was trained on")
        if os.path.isfile(os.path.join(folder, "config.json")):
            path = folder
        else:
            weights = [f for f in sorted(os.listdir(folder)) if f.endswith(WEIGHT_SUFFIXES)]
            if not weights or not external:
                what = "config.json (a `lpla train` folder)" + ("" if not external else " or a weights file")
                raise ValueError(f"reference {folder!r} holds no encoder: expected {what}")
            if len(weights) > 1:
                raise ValueError(f"reference {folder!r} holds several weights files ({', '.join(weights)}); keep one")
            path = os.path.join(folder, weights[0])
        found.append(ReferenceFolder(name, folder, path, ids))
    if len(found) < 2:
        raise ValueError(f"--references {root!r} holds {len(found)} reference encoders; LiRA and RMIA need >= 2")
    return found


def masks_from_ids(references: Sequence[ReferenceFolder], candidate_names: Sequence[Sequence[str]]) -> np.ndarray:
    """(R, N) in-masks of the references over the candidates, from their member ids.
    candidate_names: per candidate, the names it may be listed by (its path, its id). Ids that
    are not candidates (data the reference also trained on) are allowed, as long as each
    reference names at least one candidate."""
    position = {name: i for i, names in enumerate(candidate_names) for name in names}
    candidate_ids = [names[0] for names in candidate_names]
    masks = np.zeros((len(references), len(candidate_names)), dtype=bool)
    for r, ref in enumerate(references):
        hits = [position[i] for i in ref.member_ids if i in position]
        if not hits:
            raise ValueError(f"reference {ref.folder!r}: none of its {len(ref.member_ids)} member ids is a candidate "
                             f"(first: {ref.member_ids[:2]}; candidate ids look like {list(candidate_ids[:2])})")
        masks[r, hits] = True
    return masks
