"""plots/exposed.png: the members the strongest attack finds most exposed, beside the least.

The strongest attack is the main or reference table's record with the highest AUC; its
per-sample scores rank the members it evaluated. The sheet shows the top N (highest scores) in
its first row(s) and the N lowest below, each with its score and id, images read from the cache.
"""

from __future__ import annotations

import os
from typing import List, Optional

import numpy as np

from ..study.report_data import record_label

AUDIT_STUDIES = ("main", "references")  # the tables an audit reports per candidate (scores.parquet too)


def strongest(records) -> Optional[object]:
    """The record of the main or reference table with the highest AUC (None if none ran)."""
    ran = [r for r in records if r.study in AUDIT_STUDIES and r.metrics and r.samples is not None]
    return max(ran, key=lambda r: r.auc) if ran else None


def _name(record) -> str:
    return f"{record_label(record)}, K={record.k}"


def write_contact_sheet(records, pool, path: str, n: int = 8) -> Optional[str]:
    """Draw the sheet into `path`; returns a one-line Markdown caption, None when no attack ran."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    record = strongest(records)
    if record is None:
        return None
    s = record.samples
    members = np.flatnonzero(s.is_member)
    order = members[np.argsort(-s.score[members], kind="stable")]
    n = min(n, len(order) // 2 or 1)
    rows = [("most exposed", order[:n]), ("least exposed", order[::-1][:n])]
    ids: List[str] = pool.ids()
    fig, axes = plt.subplots(2, n, figsize=(1.6 * n, 4.0), squeeze=False)
    for row, (title, picks) in enumerate(rows):
        images = pool.images(s.sample[picks])
        for col, (image, i) in enumerate(zip(images, picks)):
            ax = axes[row][col]
            shown = image.transpose(1, 2, 0)
            ax.imshow(shown[..., 0] if shown.shape[-1] == 1 else shown, cmap="gray" if shown.shape[-1] == 1 else None)
            label = os.path.basename(ids[int(s.sample[i])])[-14:]
            ax.set_title(f"{s.score[i]:.3g}\n{label}", fontsize=7)
            ax.axis("off")
        axes[row][0].text(-0.1, 0.5, title, transform=axes[row][0].transAxes, rotation=90, ha="right",
                          va="center", fontsize=8)
    fig.suptitle(f"members ranked by {_name(record)}, AUC {record.auc:.3f}", fontsize=9)
    fig.tight_layout()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return (f"Members ranked by the strongest attack, {_name(record)} (AUC {record.auc:.3f}): the {n} with the "
            f"highest scores (top row) and the {n} with the lowest (bottom row), with their scores and ids.")
