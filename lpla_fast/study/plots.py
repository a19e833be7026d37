"""PNG figures of an experiment or attack run, drawn from its Results.

Matplotlib's object-oriented API with the Agg canvas: no pyplot, no global backend change,
so it is safe inside other programs and on machines without a display.
"""

from __future__ import annotations

import math
import os
from typing import List

import numpy as np

from ..fileio import replace_atomically
from .report import attack_label, distinct
from .results import AttackRecord, Results


def _figure(rows: int, cols: int, width: float = 4.6, height: float = 3.8):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width * cols, height * rows), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, cols, squeeze=False)
    return fig, axes


def _save(fig, folder: str, name: str, saved: List[str]) -> None:
    replace_atomically(os.path.join(folder, name), lambda tmp: fig.savefig(tmp, dpi=110))
    saved.append(name)


def _scored(results: Results, study: str) -> List[AttackRecord]:
    return [r for r in results.select(study=study) if r.metrics]


def make_plots(results: Results, folder: str) -> List[str]:
    """Write every figure that the results support into `folder`; returns their file names:
    roc-<framework>.png, leakage_vs_quality.png, auc_vs_k.png, auc_vs_p.png."""
    os.makedirs(folder, exist_ok=True)
    saved: List[str] = []
    main = _scored(results, "main")
    for fw in distinct(main, "framework"):
        roc_plot([r for r in main if r.framework == fw], fw, folder, saved)
    if any(e.feature_quality for e in results.targets()):
        quality_plot(results, folder, saved)
    sweep_plot(_scored(results, "k"), "k", "query budget K (views per sample)", "auc_vs_k.png", folder, saved)
    sweep_plot(_scored(results, "p"), "p", "norm order p", "auc_vs_p.png", folder, saved)
    return saved


def roc_plot(records: List[AttackRecord], framework: str, folder: str, saved: List[str]) -> None:
    """ROC curves of every attack, one panel per output, on log-log axes."""
    outputs = distinct(records, "output")
    fig, axes = _figure(1, len(outputs))
    for ax, output in zip(axes[0], outputs):
        n_out = 1
        for r in records:
            if r.output != output or r.roc is None:
                continue
            fpr, tpr = np.asarray(r.roc["fpr"]), np.asarray(r.roc["tpr"])
            n_out = max(n_out, r.metrics["n_nonmembers"])
            keep = fpr > 0  # log axes cannot show FPR = 0
            ax.step(fpr[keep], np.maximum(tpr[keep], 1e-4), where="post",
                    label=f"{attack_label(r.attack)} (AUC {r.auc:.3f})")
        lo = 1.0 / n_out
        ax.plot([lo, 1], [lo, 1], color="0.6", linestyle=":", label="chance")
        ax.set(xscale="log", yscale="log", xlim=(lo, 1), ylim=(min(lo, 1e-2), 1.02),
               xlabel="false positive rate", ylabel="true positive rate", title=f"{framework}: {output} output")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    _save(fig, folder, f"roc-{framework}.png", saved)


def quality_plot(results: Results, folder: str, saved: List[str], attack: str = "lpla") -> None:
    """Attack AUC (with 95% interval) against linear-probe accuracy, one point per target encoder."""
    main = [r for r in _scored(results, "main") if r.attack == attack]
    if not main:
        main = _scored(results, "main")
        attack = main[0].attack if main else attack
        main = [r for r in main if r.attack == attack]
    outputs = distinct(main, "output")
    if not outputs:
        return
    fig, axes = _figure(1, len(outputs))
    corr = results.correlation
    for ax, output in zip(axes[0], outputs):
        for r in (r for r in main if r.output == output):
            target = results.target_of(r)
            if target is None or not target.feature_quality:
                continue
            quality = target.feature_quality
            x = (quality.get("backbone") or quality[output])["linear_probe"]
            m = r.metrics
            ci = (m.get("ci") or {}).get("auc") or [m["auc"], m["auc"]]
            ax.errorbar([x], [m["auc"]], yerr=[[m["auc"] - ci[0]], [ci[1] - m["auc"]]], fmt="o", capsize=3)
            ax.annotate(r.framework, (x, m["auc"]), textcoords="offset points", xytext=(5, 4), fontsize=8)
        entry = corr.get(output, {}).get(attack, {}).get("linear_probe", {})
        rho = entry.get("rho")
        ax.axhline(0.5, color="0.6", linestyle=":")
        ax.set(xlabel="linear-probe accuracy (backbone)", ylabel=f"{attack_label(attack)} AUC",
               title=f"{output} output: Spearman ρ = " + ("n/a" if rho is None else f"{rho:+.2f}"))
        ax.grid(True, alpha=0.3)
    _save(fig, folder, "leakage_vs_quality.png", saved)


def sweep_plot(records: List[AttackRecord], key: str, xlabel: str, name: str, folder: str, saved: List[str]) -> None:
    """AUC against a swept parameter: a panel per (output, attack), a line per framework."""
    if not records:
        return
    outputs, attacks = distinct(records, "output"), distinct(records, "attack")
    fig, axes = _figure(len(outputs), len(attacks), width=3.8, height=3.2)
    values = sorted({float(getattr(r, key)) for r in records})
    # K on a log2 axis at its value; p as evenly spaced categories (inf has no position).
    positions = {v: (v if key == "k" else i) for i, v in enumerate(values)}
    for i, output in enumerate(outputs):
        for j, attack in enumerate(attacks):
            ax = axes[i][j]
            frameworks = distinct(records, "framework")
            for n, fw in enumerate(frameworks):
                rows = [r for r in records if r.output == output and r.attack == attack and r.framework == fw]
                if not rows:
                    continue
                # Dodge the frameworks sideways a little so their intervals do not hide each other.
                dodge = 0.06 * (n - (len(frameworks) - 1) / 2)
                xs = [positions[float(getattr(r, key))] * 2 ** dodge if key == "k"
                      else positions[float(getattr(r, key))] + dodge for r in rows]
                aucs = [r.auc for r in rows]
                cis = [(r.metrics.get("ci") or {}).get("auc") or [a, a] for r, a in zip(rows, aucs)]
                ax.errorbar(xs, aucs, yerr=[[a - c[0] for a, c in zip(aucs, cis)], [c[1] - a for a, c in zip(aucs, cis)]],
                            marker="o", capsize=2, label=fw)
            if key == "k":
                ax.set_xscale("log", base=2)
            ax.set_xticks(list(positions.values()), [_tick(v) for v in positions])
            ax.axhline(0.5, color="0.6", linestyle=":")
            ax.set(xlabel=xlabel, ylabel="AUC", title=f"{attack_label(attack)}, {output}")
            ax.grid(True, alpha=0.3)
            ax.legend(fontsize=7)
    _save(fig, folder, name, saved)


def _tick(value: float) -> str:
    return "∞" if math.isinf(value) else f"{value:g}"
