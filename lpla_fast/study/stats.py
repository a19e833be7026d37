"""Statistics across encoders: the rank correlation of feature quality with leakage."""

from __future__ import annotations

from typing import List

import numpy as np

from .results import AttackRecord, EncoderRecord

QUALITY_METRICS = ("linear_probe", "knn")


def leakage_correlation(encoders: List[EncoderRecord], records: List[AttackRecord]) -> dict:
    """Spearman rank correlation between the targets' feature quality (backbone output) and the
    main table's attack AUC, over every target encoder (framework, backbone, seed) with both.

    Returns {output: {attack: {quality_metric: {"rho", "p_value", "n", "frameworks"}}}}; rho is
    None when it is undefined (fewer than 3 encoders or a constant column).
    """
    from scipy.stats import spearmanr

    quality = {(e.framework, e.backbone, e.seed): e.feature_quality["backbone"] for e in encoders
               if e.role == "target" and "backbone" in e.feature_quality}

    def key(r: AttackRecord):
        return r.framework, r.backbone, r.seed

    out: dict = {}
    main = [r for r in records if r.study == "main" and r.metrics]
    for output in sorted({r.output for r in main}):
        for attack in sorted({r.attack for r in main if r.output == output}):
            rows = [r for r in main if r.output == output and r.attack == attack and key(r) in quality]
            for metric in QUALITY_METRICS:
                x = [quality[key(r)][metric] for r in rows]
                y = [r.auc for r in rows]
                rho = p_value = None
                if len(rows) >= 3 and np.ptp(x) > 0 and np.ptp(y) > 0:
                    result = spearmanr(x, y)
                    rho, p_value = float(result.statistic), float(result.pvalue)
                out.setdefault(output, {}).setdefault(attack, {})[metric] = {
                    "rho": rho, "p_value": p_value, "n": len(rows), "frameworks": [r.framework for r in rows]}
    return out
