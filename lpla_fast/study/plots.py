"""PNG figures of an experiment or attack run, drawn from its Results.

Matplotlib's object-oriented API with the Agg canvas: no pyplot, no global backend change,
so it is safe inside other programs and on machines without a display. Every value plotted
over seeds is the mean with its across-seed 95% interval (`stats.SeedStats`).
"""

from __future__ import annotations

import math
import os
from typing import Dict, List, Optional

import numpy as np

from .. import metrics
from ..fileio import replace_atomically
from .report_data import ReportData, distinct, record_label
from .results import AttackRecord, Comparison, Results
from .stats import SeedStats, dedupe, encoder_of, group_by_seed, is_reference, quality, variant

MARKERS = "osD^vP*Xh<>"


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


def _yerr(mean: float, interval) -> list:
    lo, hi = interval or (mean, mean)
    return [[max(mean - lo, 0.0)], [max(hi - mean, 0.0)]]


def make_plots(results: Results, folder: str, stats: Optional[SeedStats] = None) -> List[str]:
    """Write every figure that the results support into `folder`; returns their file names:
    forest.png (first: the report's comparisons), roc-<framework>.png, leakage_vs_quality.png,
    privacy_utility.png, auc_vs_k.png, auc_vs_p.png."""
    os.makedirs(folder, exist_ok=True)
    data = ReportData(results, stats)
    saved: List[str] = []
    if results.comparisons:
        forest_plot(results.comparisons, folder, saved)
    headline = [r for r in data.headline(data.k) if r.metrics]
    for fw in distinct(headline, "framework"):
        roc_plot([r for r in headline if r.framework == fw], fw, folder, saved, data)
    if any(e.feature_quality for e in results.targets()):
        quality_plot(data, folder, saved)
    frontier_plot(data, folder, saved)
    base = [r for r in results.records if r.metrics and r.defense is None and data.at_main(r)]
    sweep_plot(data, dedupe(r for r in base if r.study in ("k", "references")), "k",
               "query budget K (views per sample)", "auc_vs_k.png", folder, saved)
    sweep_plot(data, [r for r in base if r.study == "p"], "p", "norm order p", "auc_vs_p.png", folder, saved)
    return saved


def _curve(record: AttackRecord):
    """The full ROC from the per-sample scores, else the thinned one of results.json."""
    if record.samples is not None:
        return metrics.roc_curve(record.samples.score, record.samples.is_member)
    if record.roc is not None:
        return np.asarray(record.roc["fpr"]), np.asarray(record.roc["tpr"])
    return None


# The families a ROC panel shows one curve of (its strongest attack), by attack name.
ROC_FAMILIES = (("LpLA", ("lpla", "norm")), ("EncoderMI", ("encodermi",)), ("kNN", ("knn",)), ("LiRA", ("lira",)),
                ("RMIA", ("rmia",)))


def _roc_family(record: AttackRecord) -> Optional[str]:
    name = record.attack
    return next((fam for fam, prefixes in ROC_FAMILIES if any(name.startswith(p) for p in prefixes)), None)


def roc_plot(records: List[AttackRecord], framework: str, folder: str, saved: List[str],
             data: Optional[ReportData] = None) -> None:
    """ROC curves on log-log axes, one panel per output, of at most the strongest attack of each
    family (LpLA, EncoderMI, kNN, LiRA, RMIA; by mean AUC over seeds; global solid,
    reference-calibrated dashed) and chance; one seed (the first) per attack. Each curve stops at
    FPR = 1/n, n its non-members: below that the data says nothing."""
    outputs = distinct(records, "output")
    fig, axes = _figure(1, len(outputs))
    for ax, output in zip(axes[0], outputs):
        n_out, seed = 1, min(r.seed for r in records)
        best: Dict[str, tuple] = {}
        for g in group_by_seed(r for r in records if r.output == output).values():
            fam = _roc_family(g[0])
            summary = data.summary(g) if data is not None else None
            auc = summary.auc if summary is not None else float(np.mean([r.auc for r in g if r.metrics] or [0]))
            if fam is not None and (fam not in best or auc > best[fam][0]):
                best[fam] = (auc, g)
        for fam, _ in ROC_FAMILIES:
            if fam not in best:
                continue
            r = next((r for r in best[fam][1] if r.seed == seed and r.metrics), None)
            curve = _curve(r) if r is not None else None
            if curve is None:
                continue
            fpr, tpr = curve
            n = r.metrics["n_nonmembers"]
            n_out = max(n_out, n)
            keep = fpr >= 1.0 / n - 1e-12  # log axes cannot show FPR = 0; below 1/n nothing was measured
            ax.step(fpr[keep], np.maximum(tpr[keep], 1e-4), where="post", linestyle="--" if is_reference(r) else "-",
                    label=f"{record_label(r)} (AUC {r.auc:.3f})")
        lo = 1.0 / n_out
        ax.plot([lo, 1], [lo, 1], color="0.6", linestyle=":", label="chance")
        ax.set(xscale="log", yscale="log", xlim=(lo, 1), ylim=(min(lo, 1e-2), 1.02), xlabel="false positive rate",
               ylabel="true positive rate", title=f"{framework}: {output} output (seed {seed}; FPR from 1/{n_out})")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    _save(fig, folder, f"roc-{framework}.png", saved)


def forest_plot(comparisons: List[Comparison], folder: str, saved: List[str]) -> None:
    """Each comparison's difference (a - b) with its 95% interval, a line at 0 and the tie band
    +-TIE_MARGIN shaded; filled markers where significant after Holm's adjustment."""
    from .comparisons import TIE_MARGIN

    n = len(comparisons)
    fig, axes = _figure(1, 1, width=9.0, height=max(2.5, 0.24 * n + 1.2))
    ax = axes[0][0]
    ax.axvspan(-TIE_MARGIN, TIE_MARGIN, color="0.85", label=f"tie band ±{TIE_MARGIN:g}")
    ax.axvline(0.0, color="0.3", linewidth=1)
    colours = {"attack": "C0", "defense": "C3", "ladder": "C2"}
    labels = []
    for i, c in enumerate(comparisons):
        y = n - 1 - i
        significant = c.verdict in ("higher", "lower")
        ax.errorbar([c.difference], [y], xerr=[[c.difference - c.low], [c.high - c.difference]], fmt="o",
                    color=colours.get(c.claim, "C7"), capsize=2, markersize=4,
                    markerfacecolor=colours.get(c.claim, "C7") if significant else "white")
        what = f"{c.a} − {c.b}" if c.claim == "attack" else f"{c.attack}: {c.a} − {c.b}"
        labels.append(f"{c.claim}: {c.framework} {c.output} K={c.k}: {what}" + ("" if c.paired else " (unpaired)"))
    ax.set_yticks(range(n - 1, -1, -1), labels, fontsize=6)
    ax.set_ylim(-0.8, n - 0.2)
    ax.set(xlabel="AUC a − b, 95% interval (filled: significant, Holm)",
           title="Paired comparisons of the report")
    ax.grid(True, axis="x", alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    _save(fig, folder, "forest.png", saved)


def _widest(groups: Dict[tuple, List[AttackRecord]], data: ReportData) -> Optional[str]:
    """The attack run on the most (framework, architecture) configurations; among those, the
    strongest (highest mean AUC): the one leakage can be compared with across all encoders."""
    configs: Dict[str, set] = {}
    aucs: Dict[str, list] = {}
    for g in groups.values():
        s = data.summary(g)
        if s is not None:
            configs.setdefault(variant(g[0]), set()).add((g[0].framework, g[0].architecture))
            aucs.setdefault(variant(g[0]), []).append(s.auc)
    return max(configs, key=lambda v: (len(configs[v]), np.mean(aucs[v]))) if configs else None


def quality_plot(data: ReportData, folder: str, saved: List[str]) -> None:
    """Leakage (AUC, TPR at the lowest FPR the data supports) of one attack against linear-probe accuracy: a small point per
    (encoder, seed), a large one per configuration at its seed means with across-seed intervals;
    colour = architecture, marker = framework."""
    points = dedupe(r for r in data.results.records if r.study in ("main", "references", "ladder") and r.metrics
                    and r.defense is None and r.k == data.k)
    outputs = distinct(points, "output")
    if not outputs:
        return
    colours = {a: f"C{i % 10}" for i, a in enumerate(distinct(points, "architecture"))}
    markers = {f: MARKERS[i % len(MARKERS)] for i, f in enumerate(distinct(points, "framework"))}
    panels = _panels(points)
    fig, axes = _figure(len(outputs), len(panels))
    for row, output in enumerate(outputs):
        groups = group_by_seed(r for r in points if r.output == output)
        name = _widest(groups, data)
        for col, (metric, ylabel) in enumerate(panels):
            ax = axes[row][col]
            for g in (g for g in groups.values() if variant(g[0]) == name):
                qs = [quality(encoder_of(data.results, r)) for r in g]
                xs = [q["linear_probe"] for q in qs if q]
                ys = [r.auc if metric == "auc" else r.tpr_at(float(metric)) for r, q in zip(g, qs) if q]
                if not xs:
                    continue
                style = dict(color=colours[g[0].architecture], marker=markers[g[0].framework])
                ax.scatter(xs, ys, s=12, alpha=0.4, **style)
                s = data.summary(g)
                ax.errorbar([np.mean(xs)], [s.mean[metric]], yerr=_yerr(s.mean[metric], s.interval.get(metric)),
                            xerr=[[np.std(xs)], [np.std(xs)]], capsize=3, markersize=7, linestyle="none", **style)
            if metric == "auc":
                ax.axhline(0.5, color="0.6", linestyle=":")
            ax.set(xlabel="linear-probe accuracy (backbone)", ylabel=f"{data.labels.get(name, name)} {ylabel}",
                   title=f"{output} output")
            ax.grid(True, alpha=0.3)
    _legend(fig, axes[0][0], colours, markers)
    _save(fig, folder, "leakage_vs_quality.png", saved)


def _panels(records: List[AttackRecord]) -> List[tuple]:
    """(metric, label) of each column: AUC, then TPR at the lowest FPR of 1% and 10% that every
    record's non-members support (`metrics.min_negatives`); AUC alone where neither is."""
    n = min((r.metrics["n_nonmembers"] for r in records if r.metrics), default=0)
    low = next((fpr for fpr in (0.01, 0.1) if metrics.supports_tpr(fpr, n)), None)
    return [("auc", "AUC")] + ([(f"{low:g}", f"TPR at {low:.0%} FPR")] if low else [])


def _legend(fig, ax, colours: dict, markers: dict) -> None:
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color=c, marker="o", linestyle="none", label=str(a)) for a, c in colours.items()]
    handles += [Line2D([], [], color="0.3", marker=m, linestyle="none", label=f) for f, m in markers.items()]
    ax.legend(handles=handles, fontsize=7, loc="best")


def _frontier(xs: List[float], ys: List[float]) -> List[int]:
    """Indices of the points no other point beats on both utility (x, higher) and leakage (y, lower)."""
    keep = [i for i in range(len(xs)) if not any(xs[j] >= xs[i] and ys[j] <= ys[i] and (xs[j], ys[j]) != (xs[i], ys[i])
                                                  for j in range(len(xs)))]
    return sorted(keep, key=lambda i: xs[i])


def frontier_plot(data: ReportData, folder: str, saved: List[str]) -> None:
    """Privacy-utility frontier of the defenses: probe accuracy against the strongest attack's
    AUC and TPR at the lowest FPR the data supports (`_panels`), a point per (framework, defense) at its seed means, the undefended
    release included; the non-dominated points are joined and ringed."""
    defended = [r for r in data.defended() if r.metrics]
    if not defended:
        return
    outputs = distinct(defended, "output")
    panels = _panels(defended + data.undefended())
    fig, axes = _figure(len(outputs), len(panels))
    for row, output in enumerate(outputs):
        name = data.strongest.get(output)
        pool = [r for r in defended + data.undefended() if r.output == output and variant(r) == name]
        groups = list(group_by_seed(pool).values())
        missing = 0
        for col, (metric, ylabel) in enumerate(panels):
            ax, xs, ys, labels = axes[row][col], [], [], []
            for g in groups:
                qs = [q for r in g if (q := quality(encoder_of(data.results, r), r.defense))]
                if not qs:
                    missing += col == 0
                    continue
                s = data.summary(g)
                xs.append(float(np.mean([q["linear_probe"] for q in qs])))
                ys.append(s.mean[metric])
                labels.append(f"{g[0].framework}: {g[0].defense or 'none'}")
                ax.errorbar([xs[-1]], [ys[-1]], yerr=_yerr(ys[-1], s.interval.get(metric)), marker="o", capsize=3,
                            color="0.45" if g[0].defense else "C3")
                ax.annotate(labels[-1], (xs[-1], ys[-1]), textcoords="offset points", xytext=(4, 3), fontsize=6)
            front = _frontier(xs, ys)
            if front:
                ax.plot([xs[i] for i in front], [ys[i] for i in front], color="C0", linewidth=1.5, label="frontier")
                ax.scatter([xs[i] for i in front], [ys[i] for i in front], s=90, facecolors="none", edgecolors="C0")
                ax.legend(fontsize=7)
            note = f"; {missing} without a probe measurement not shown" if missing else ""
            ax.set(xlabel="linear-probe accuracy (utility)", ylabel=f"{data.labels.get(name, name)} {ylabel}",
                   title=f"{output} output{note}")
            ax.title.set_fontsize(8)
            ax.grid(True, alpha=0.3)
    _save(fig, folder, "privacy_utility.png", saved)


def sweep_plot(data: ReportData, records: List[AttackRecord], key: str, xlabel: str, name: str, folder: str,
               saved: List[str]) -> None:
    """Mean AUC over seeds (with its interval) against a swept parameter: a panel per (output,
    attack), a line per framework."""
    if not records:
        return
    outputs, attacks = distinct(records, "output"), list(dict.fromkeys(variant(r) for r in records))
    fig, axes = _figure(len(outputs), len(attacks), width=3.8, height=3.2)
    values = sorted({float(getattr(r, key)) for r in records})
    # K on a log2 axis at its value; p as evenly spaced categories (inf has no position).
    positions = {v: (v if key == "k" else i) for i, v in enumerate(values)}
    frameworks = distinct(records, "framework")
    groups = group_by_seed(records)
    for i, output in enumerate(outputs):
        for j, attack in enumerate(attacks):
            ax = axes[i][j]
            for n, fw in enumerate(frameworks):
                rows = [g for g in groups.values() if (g[0].output, variant(g[0]), g[0].framework) == (output, attack, fw)]
                rows.sort(key=lambda g: float(getattr(g[0], key)))
                if not rows:
                    continue
                # Dodge the frameworks sideways a little so their intervals do not hide each other.
                dodge = 0.06 * (n - (len(frameworks) - 1) / 2)
                xs = [positions[float(getattr(g[0], key))] * 2 ** dodge if key == "k"
                      else positions[float(getattr(g[0], key))] + dodge for g in rows]
                summaries = [data.summary(g) for g in rows]
                aucs = [s.auc for s in summaries]
                errs = np.array([_yerr(s.auc, s.interval.get("auc")) for s in summaries])[:, :, 0].T
                ax.errorbar(xs, aucs, yerr=errs, marker="o", capsize=2, label=fw)
            if key == "k":
                ax.set_xscale("log", base=2)
                ax.set_xlim(values[0] / 1.5, values[-1] * 1.5)
            else:
                ax.set_xlim(-0.5, len(values) - 0.5)
            ax.set_xticks(list(positions.values()), [_tick(v) for v in positions])
            ax.axhline(0.5, color="0.6", linestyle=":")
            ax.set(xlabel=xlabel, ylabel="AUC (mean over seeds)", title=f"{data.labels.get(attack, attack)}, {output}")
            ax.title.set_fontsize(8)
            ax.grid(True, alpha=0.3)
            ax.legend(fontsize=7)
    _save(fig, folder, name, saved)


def _tick(value: float) -> str:
    return "∞" if math.isinf(value) else f"{value:g}"
