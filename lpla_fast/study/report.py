"""report.md of an experiment or attack run, rendered from its Results (results.json).

Every number is a mean over the seeds of one configuration with a 95% interval (`stats`); the
sections answer the study's two questions (do better features leak more; does LpLA beat the
other attacks), then show the sweeps and the defenses. `write_all` writes every output of a run.
"""

from __future__ import annotations

import os
from typing import Dict, Iterable, List, Optional

from .. import metrics
from ..fileio import write_text
from . import comparisons, exports, findings, html, plots, power
from .definitions import DEFINITIONS
from .report_data import ReportData, distinct, n_bootstrap, record_label, study_value
from .results import AttackRecord, Results
from .stats import (SeedStats, SeedSummary, correlation_rows, dedupe, encoder_of, group_by_seed, is_reference, quality,
                    strongest, variant)

FPR_COLUMNS = (("0.01", "TPR@1% FPR"), ("0.001", "TPR@0.1% FPR"))
METHODS = {"seeds+samples": "hierarchical bootstrap over seeds, then members and non-members",
           "seeds": "bootstrap over seeds (per-sample scores not kept)",
           "samples": "one seed: bootstrap over members and non-members",
           "per-seed interval": "one seed: its own bootstrap interval", "none": "one seed: no interval"}


# --- formatting helpers ---------------------------------------------------------------------------

def _num(x: Optional[float], digits: int = 3) -> str:
    return "—" if x is None else f"{x:.{digits}f}"


def _cell(summary: Optional[SeedSummary], metric: str = "auc") -> str:
    """Mean over seeds [95% interval]."""
    if summary is None:
        return "—"
    ci = summary.interval.get(metric)
    value = summary.mean[metric]
    return f"{value:.3f}" if not ci else f"{value:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]"


def _rate_cell(summary: Optional[SeedSummary], records: List[AttackRecord], metric: str) -> str:
    """A TPR cell under the count rule (`metrics.min_negatives`): "—" with the evaluated
    non-members where they are too few for this FPR."""
    counts = [r.metrics["n_nonmembers"] for r in records if r.metrics]
    if counts and not metrics.supports_tpr(float(metric), min(counts)):
        return f"— (n={min(counts)})"
    return _cell(summary, metric)


def _table(header: Iterable[str], rows: Iterable[Iterable[str]]) -> str:
    header = list(header)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _p_label(p) -> str:
    return "∞" if p in ("inf", float("inf")) else f"{float(p):g}"


def _intervals_note(summaries: Iterable[Optional[SeedSummary]]) -> str:
    methods = sorted({s.method for s in summaries if s is not None})
    return "Intervals: " + "; ".join(METHODS.get(m, m) for m in methods) + "." if methods else ""


# --- sections -------------------------------------------------------------------------------------

def _header(data: ReportData) -> str:
    results, env = data.results, data.results.environment
    lines = ["# Membership leakage of contrastive encoders", "",
             f"Made by `lpla {results.command}` on {results.created} (lpla_fast {env.get('lpla_fast', '?')}).",
             "", "## Setup", ""]
    if results.dataset:
        ds = results.dataset
        lines.append(f"- Data: `{ds['name']}`, {ds['num_samples']} images of shape {tuple(ds['image_shape'])}; "
                     "splits " + ", ".join(f"{k} {v}" for k, v in results.splits.items()) + ".")
    targets = results.targets()
    if targets:
        archs = distinct(targets, "architecture")
        seeds = sorted({e.seed for e in targets})
        train = targets[0].train_config
        recipe = (f"; {train['epochs']} epochs, batch {train['batch_size']}, lr {train['lr']}, augmentation "
                  f"`{train['augmentation']}`") if train else ""
        lines.append(f"- Encoders: frameworks {', '.join(distinct(targets, 'framework'))}; architectures "
                     f"{', '.join(f'`{a}`' for a in archs)} (main: `{data.architecture}`){recipe}; "
                     f"{len(seeds)} seed(s) per configuration ({', '.join(map(str, seeds))}).")
    elif results.inputs:
        lines.append("- Inputs: " + ", ".join(f"{k} `{v}`" for k, v in results.inputs.items() if v) + ".")
    studies = distinct(results.records, "study")
    level = study_value(results, "level", "shadow")
    refs = ", reference encoders for LiRA / RMIA" if any(map(is_reference, results.records)) else ""
    lines += [f"- Attacks: {', '.join(dict.fromkeys(data.labels.values()))}; headline at K={data.k}, knowledge "
              f"`{level}` for the global attacks{refs}.",
              f"- Studies in this run: {', '.join(studies)}.",
              f"- Intervals: 95%, {data.stats.n_bootstrap} bootstrap replicates over seeds and samples.",
              f"- Device: {env.get('device', '?')}; total time {results.timings.get('total', 0):.0f} s."]
    return "\n".join(lines) + "\n"


def _attack_rows(data: ReportData, records: List[AttackRecord], output: str) -> List[List[str]]:
    groups = group_by_seed(r for r in records if r.output == output)
    ordered = sorted(groups.values(), key=lambda g: (is_reference(g[0])))
    rows = []
    for fw in distinct(records, "framework"):
        for g in (g for g in ordered if g[0].framework == fw):
            s = data.summary(g)
            if s is None:
                rows.append([fw, record_label(g[0]), "0", f"n/a ({g[0].skipped})", "—", "—"])
                continue
            rows.append([fw, record_label(g[0]), str(s.n_seeds), _cell(s)] + [_rate_cell(s, g, m) for m, _ in FPR_COLUMNS])
    return rows


def _headline(data: ReportData, k: Optional[int], title: str) -> str:
    records = data.headline(k)
    if not records:
        return ""
    refs = (" first, then the attacks calibrated per sample with reference encoders (LiRA, RMIA)"
            if any(map(is_reference, records)) else "")
    lines = [title, "", f"Each cell: the mean over seeds [95% interval]. Global attacks (one threshold for every "
                        f"sample){refs}.", ""]
    for output in distinct(records, "output"):
        rows = _attack_rows(data, records, output)
        n = next((r.metrics for r in records if r.output == output and r.metrics), None)
        count = f" ({n['n_members']} members, {n['n_nonmembers']} non-members per seed)" if n else ""
        lines += [f"### Output: {output}{count}", "",
                  _table(["framework", "attack", "seeds", "AUC"] + [c for _, c in FPR_COLUMNS], rows), ""]
    summaries = [data.summary(g) for g in group_by_seed(records).values()]
    return "\n".join(lines + [_intervals_note(summaries), ""])


def _quality_cell(data: ReportData, records: List[AttackRecord], metric: str) -> str:
    values = [q[metric] for r in records if (q := quality(encoder_of(data.results, r), r.defense))]
    return _num(sum(values) / len(values)) if values else "—"


def _tradeoff(data: ReportData) -> str:
    points = dedupe(r for r in data.results.records if r.study in ("main", "references", "ladder")
                    and r.k == data.k and r.defense is None and r.metrics)
    if not points or not any(e.feature_quality for e in data.results.targets()):
        return ""
    lines = ["## Feature quality and leakage (the paper's claim)", "",
             "Feature quality of each target configuration (backbone output, probe split; mean over seeds) beside "
             f"the leakage of the strongest global and reference-calibrated attacks at K={data.k}.", ""]
    ladder = len(distinct(points, "architecture")) > 1
    headline = group_by_seed(data.headline(data.k))
    for output in data.outputs:
        if ladder:  # the strongest of the attacks the ladder ran, so that every row has its number
            ran = {variant(r) for r in points if r.study == "ladder" and r.output == output}
            chosen = [v for v in (strongest(headline, data.stats, lambda g, ref=ref: g[0].output == output and
                                            is_reference(g[0]) == ref and variant(g[0]) in ran)
                                  for ref in (False, True)) if v]
        else:
            chosen = [v for v in (data.strongest_global.get(output), data.strongest_reference.get(output)) if v]
        header = ["architecture", "framework", "seeds", "linear probe", "kNN acc."]
        for v in chosen:
            header += [f"{data.labels[v]} AUC", "TPR@1% FPR"]
        rows = []
        mine = [r for r in points if r.output == output]
        for arch in distinct(mine, "architecture"):
            for fw in distinct(mine, "framework"):
                cell = [r for r in mine if r.architecture == arch and r.framework == fw]
                if not cell:
                    continue
                row = [f"`{arch}`", fw, str(len({r.seed for r in cell})), _quality_cell(data, cell, "linear_probe"),
                       _quality_cell(data, cell, "knn")]
                for v in chosen:
                    g = [r for r in cell if variant(r) == v]
                    s = data.summary(g)
                    row += [_cell(s), _rate_cell(s, g, "0.01")]
                rows.append(row)
        title = "Architecture ladder" if ladder else "Quality beside leakage"
        lines += [f"### {title}: {output} output", "", _table(header, rows), ""]
    lines += [_correlations(data)]
    return "\n".join(lines)


def _correlations(data: ReportData) -> str:
    rows = correlation_rows(data.results)
    if not rows:
        return ""
    shown = {v for o in data.outputs for v in (data.strongest_global.get(o), data.strongest_reference.get(o), "lpla")}
    table = []
    for row in rows:
        if row["axis"] != "all" and row["variant"] not in shown:
            continue
        cells = []
        for key in ("linear_probe/auc", "knn/auc", "linear_probe/tpr_1"):
            rho, p = row[key]["rho"], row[key]["p_value"]
            cells.append("—" if rho is None else f"{rho:+.2f} (p={p:.3f})")
        table.append([row["output"], data.labels.get(row["variant"], row["variant"]), row["axis"], row["n"]] + cells)
    return "\n".join([
        "### Correlation of feature quality with leakage", "",
        "Spearman's ρ (p-value) over (encoder, seed) points: `all` pools every framework, architecture and seed; "
        "`frameworks` holds the main architecture fixed; `architectures (f)` holds framework f fixed. "
        "Points of one configuration under different seeds are separate training runs.", "",
        _table(["output", "attack", "axis", "points", "ρ probe–AUC", "ρ kNN–AUC", "ρ probe–TPR@1%"], table), "",
        findings.correlation_sentence(data, rows), ""])


def _sweep(data: ReportData, records: List[AttackRecord], key: str, label) -> str:
    columns = sorted(distinct(records, key), key=lambda v: (isinstance(v, str), v))
    groups = group_by_seed(records)
    rows = []
    for fw in distinct(records, "framework"):
        for o in distinct(records, "output"):
            for v in dict.fromkeys(variant(r) for r in records):
                cells = {getattr(g[0], key): data.summary(g) for g in groups.values()
                         if (g[0].framework, g[0].output, variant(g[0])) == (fw, o, v)}
                if cells:
                    rows.append([fw, o, data.labels[v]] + [_cell(cells.get(c)) for c in columns])
    return _table(["framework", "output", "attack"] + [label(c) for c in columns], rows)


def _sweeps(data: ReportData) -> str:
    results, k, level = data.results, data.k, study_value(data.results, "level", "shadow")
    base = [r for r in results.records if r.defense is None and data.at_main(r)]
    lines = ["## Sweeps (AUC: mean over seeds [95% interval])", ""]
    p_records = [r for r in base if r.study == "p"]
    if p_records:
        lines += [f"### Norm order p (K={k}, knowledge `{level}`)", "",
                  _sweep(data, p_records, "p", lambda p: f"p={_p_label(p)}"), ""]
    k_records = dedupe(r for r in base if r.study in ("k", "references"))
    if k_records:
        lines += ["### Query budget K (K=1 is the clean image alone)", "",
                  _sweep(data, k_records, "k", lambda kk: f"K={kk}"), ""]
    ch_records = [r for r in base if r.study == "characteristic"]
    if ch_records:  # which "distribution characteristic" of the view norms carries membership
        lines += [f"### LpLA's characteristic (knowledge `{level}`; `auto`, the default, is chosen from it)", "",
                  _sweep(data, ch_records, "k", lambda kk: f"K={kk}"), ""]
    kn_records = [r for r in base if r.study == "knowledge"]
    if kn_records:
        n = next((r.metrics for r in kn_records if r.metrics), None)
        count = f"{n['n_members']} members and {n['n_nonmembers']} non-members, " if n else ""
        lines += [f"### Knowledge level (K={k}; every level evaluated on the same held-out halves: "
                  f"{count}see Definitions)", "", _sweep(data, kn_records, "level", str), ""]
    return "\n".join(lines) if len(lines) > 2 else ""


def _defenses(data: ReportData) -> str:
    defended = data.defended()
    if not defended:
        return ""
    lines = ["## Defenses and their utility cost", "",
             "Each defense against the strongest attacks it was tested with, beside the undefended release "
             "(`none`), all on the audit level's held-out halves (so `none` differs from the main table). Probe "
             "accuracy is measured on what is released (— where the run did not measure it).", ""]
    baseline = data.undefended()
    for output in distinct(defended, "output"):
        mine = [r for r in defended if r.output == output]
        groups = group_by_seed(mine)
        chosen = [v for v in dict.fromkeys(
            [strongest(groups, data.stats, lambda g: not is_reference(g[0])),
             strongest(groups, data.stats, lambda g: is_reference(g[0]))]) if v]
        header = ["framework", "defense", "seeds", "linear probe"]
        for v in chosen:
            header += [f"{data.labels[v]} AUC", "TPR@1% FPR"]
        dp = any(e.output == output for e in data.results.empirical_epsilon)
        header += ["accountant's ε", "empirical ε ≥ (per seed)"] if dp else []
        rows = []
        for fw in distinct(mine, "framework"):
            for defense in [None] + distinct([r for r in mine if r.framework == fw and r.defense], "defense"):
                pool = [r for r in (baseline if defense is None else mine) if r.framework == fw and
                        r.output == output and r.defense == defense]
                if not pool:
                    continue
                row = [fw, defense or "none", str(len({r.seed for r in pool})),
                       _quality_cell(data, pool, "linear_probe")]
                for v in chosen:
                    g = [r for r in pool if variant(r) == v]
                    s = data.summary(g)
                    row += [_cell(s), _rate_cell(s, g, "0.01")]
                row += _epsilon_cells(data, fw, output, defense) if dp else []
                rows.append(row)
        lines += [f"### Output: {output}", "", _table(header, rows), ""]
        if dp:
            e = next(e for e in data.results.empirical_epsilon if e.output == output)
            lines += [f"Empirical ε: the lower bound that {e.attack} proves on each DP-SGD encoder (Clopper–Pearson "
                      f"95 % bounds on TPR and FPR, δ = {e.delta:g}; see Definitions). With {e.n_members} members and "
                      f"{e.n_nonmembers} non-members no attack can prove more than ε = {e.max_provable:.2f}.", ""]
    return "\n".join(lines)


def _epsilon_cells(data: ReportData, framework: str, output: str, defense: Optional[str]) -> List[str]:
    e = next((e for e in data.results.empirical_epsilon
              if (e.framework, e.output, e.defense) == (framework, output, defense)), None)
    if e is None:
        return ["—", "—"]
    spent = [x for x in e.spent if x is not None]
    accountant = f"{e.accountant:g}" + (f" (spent {', '.join(f'{x:.2f}' for x in spent)})" if spent else "")
    return [accountant, ", ".join(f"{x:.2f}" for x in e.per_seed)]


VERDICT_WORDS = {"attack": {"higher": "LpLA family wins", "lower": "baseline wins", "tie": "tie",
                            "undecided": "undecided"},
                 "defense": {"higher": "leaks more", "lower": "leaks less", "tie": "tie", "undecided": "undecided"},
                 "ladder": {"higher": "wider leaks more", "lower": "wider leaks less", "tie": "tie",
                            "undecided": "undecided"}}
CLAIMS = {"attack": "strongest LpLA-family attack − best baseline",
          "defense": "defended − undefended (the defense table's strongest attack)",
          "ladder": "wider − narrower architecture (the ladder's strongest attack)"}


def _p(p: Optional[float]) -> str:
    return "—" if p is None else ("<0.001" if p < 0.001 else f"{p:.3f}")


def _comparisons(data: ReportData) -> str:
    found = data.results.comparisons
    if not found:
        return ""
    lines = ["## Paired comparisons", ""]
    if "forest.png" in data.results.plots:
        lines += ["![forest](plots/forest.png)", ""]
    lines += [f"Every claim of this report as a difference a − b of AUC (means over seeds) with its 95 % interval, "
              f"its p-value and the p-value Holm-adjusted over all {len(found)} comparisons. Verdict: significant "
              f"after Holm at {comparisons.ALPHA:g}, else a tie when the whole interval lies within "
              f"±{comparisons.TIE_MARGIN:g}, else undecided. Paired (same targets, same samples): DeLong per seed, a "
              f"paired hierarchical bootstrap across seeds; unpaired (different encoders): the difference of the seed "
              f"means, each side bootstrapped on its own.", ""]
    for claim in ("attack", "defense", "ladder"):
        mine = [c for c in found if c.claim == claim]
        if not mine:
            continue
        rows = [[c.framework, c.output, str(c.k)] + ([c.attack] if claim != "attack" else [])
                + [f"{c.a} − {c.b}", f"{c.a_value:.3f} − {c.b_value:.3f}",
                   f"{c.difference:+.3f} [{c.low:+.3f}, {c.high:+.3f}]", _p(c.p_value), _p(c.p_holm),
                   f"{c.method} ({c.seeds} seed{'s' if c.seeds > 1 else ''})", VERDICT_WORDS[claim][c.verdict]]
                for c in mine]
        header = ["framework", "output", "K"] + (["attack"] if claim != "attack" else []) + [
            "a − b", "AUC a − AUC b", "difference [95%]", "p", "p (Holm)", "method", "verdict"]
        lines += [f"### {CLAIMS[claim]}", "", _table(header, rows), ""]
    lines += [findings.power_sentence(data), ""]
    return "\n".join(lines)


def _pooled(data: ReportData) -> str:
    """Low-FPR numbers of the strongest reference-calibrated attack per framework and K, pooled over
    targets (every attack's are in results.json)."""
    pooled = data.results.pooled
    if not pooled:
        return ""
    keys = sorted({key for p in pooled for key in p.tpr_at_fpr}, key=float, reverse=True)
    lines = ["## Low-FPR numbers pooled over targets", "",
             "The reference-calibrated attacks' scores are comparable across targets (LiRA pools over many), so "
             "every seed's target is pooled into one evaluated set. TPR at an FPR α is shown only where the set "
             "holds at least ⌈10/α⌉ non-members (else — and the count). Labelled pooled: not a per-target mean.", ""]
    for output in distinct(pooled, "output"):
        best = {}  # per (framework, K): the attack with the highest pooled AUC
        for p in (p for p in pooled if p.output == output):
            if (p.framework, p.k) not in best or p.auc > best[(p.framework, p.k)].auc:
                best[(p.framework, p.k)] = p
        rows = [[p.framework, f"K={p.k}", p.label, str(p.seeds), f"{p.n_members} / {p.n_nonmembers}", f"{p.auc:.3f}"]
                + [f"{p.tpr_at_fpr[key]:.3f}" if p.tpr_at_fpr.get(key) is not None else f"— (n={p.n_nonmembers})"
                   for key in keys]
                for p in best.values()]
        lines += [f"### Output: {output} (pooled)", "",
                  _table(["framework", "K", "attack", "seeds", "members / non-members", "pooled AUC"]
                         + [f"pooled TPR@{float(key):.1%} FPR".replace(".0%", "%") for key in keys], rows), ""]
    return "\n".join(lines)


def _figures(results: Results) -> str:
    if not results.plots:
        return ""
    names = [name for name in results.plots if name != "forest.png"]  # shown with the comparisons
    return "## Figures\n\n" + "\n\n".join(f"![{name}](plots/{name})" for name in names) + "\n" if names else ""


def _timings(results: Results) -> str:
    timings = results.timings
    if not timings:
        return ""
    groups: Dict[str, float] = {}
    for stage, seconds in timings.get("stages", {}).items():
        groups[stage.split("/")[0]] = groups.get(stage.split("/")[0], 0.0) + seconds
    rows = [[stage, f"{seconds:.1f}"] for stage, seconds in groups.items()]
    rows.append(["**total**", f"**{timings['total']:.1f}**"])
    training = [f"{e.framework} {e.role} {e.architecture} seed {e.seed} {e.seconds:.0f} s" + (" (reused)" if e.reused
                else "") for e in results.encoders]
    env = results.environment
    load = env.get("load_average")
    load_note = f" Load average at the end (1, 5, 15 min): {', '.join(f'{x:.1f}' for x in load)}." if load else ""
    return "\n".join(["## Timings", "",
                      f"Seconds per stage on {env.get('cpu_count', '?')} CPUs ({env.get('torch_threads', '?')} torch "
                      f"threads), device {env.get('device', '?')}.{load_note}", "", _table(["stage", "seconds"], rows),
                      "", ("Training per encoder: " + "; ".join(training) + ".\n") if training else ""])


def _files(results: Results) -> str:
    files = ["`results.json`: every number above and more (ROC curves, timings, config)",
             "`report.html`: this report with its figures, in one self-contained file",
             "`scores.parquet`: every per-sample score with its membership label (long format, pandas)",
             "`roc/*.npz`: per headline attack, `fpr`, `tpr`, `auc`, `scores`, `memberships` (ML Privacy Meter's layout)"]
    if results.command == "experiment":
        files += ["`config.json`, `splits.json`: what made this run",
                  "`encoders/`: the trained encoders (reused by a rerun)"]
    for name in results.calibration_files.values():
        files.append(f"`{name}`: the fitted LpLA calibration, for `lpla score --calibration`")
    files += [f"`plots/{name}`" for name in results.plots]
    return "## Files\n\n" + "\n".join(f"- {f}" for f in files) + "\n"


def render_report(results: Results, stats: Optional[SeedStats] = None) -> str:
    """The report's Markdown; `stats` shares the across-seed summaries with the plots."""
    data = ReportData(results, stats)
    refs = " and reference encoders" if any(map(is_reference, results.records)) else ""
    level = study_value(results, "level", "shadow")
    parts = [_header(data), findings.section(data), _comparisons(data), _tradeoff(data),
             _headline(data, data.k, f"## Attacks (K={data.k}, knowledge `{level}`{refs})"),
             _headline(data, 1, "## Attacks at K=1 (one query: the clean image)") if data.k != 1 else "",
             _pooled(data), _sweeps(data), _defenses(data), _figures(results), DEFINITIONS, _timings(results), _files(results)]
    return "\n".join(p for p in parts if p)


def write_report(results: Results, path: str, stats: Optional[SeedStats] = None) -> None:
    write_text(path, render_report(results, stats))


def analyse(results: Results, stats: SeedStats) -> None:
    """The comparisons, pooled low-FPR numbers, power and empirical epsilons of a run, into its
    Results. They need the per-sample scores: results read back without them keep what they hold."""
    if results.comparisons and not any(r.samples is not None for r in results.records):
        return
    data = ReportData(results, stats)
    results.comparisons = comparisons.comparisons(data)
    results.pooled = comparisons.pooled(data)
    results.power = power.analyse(results.comparisons)
    results.empirical_epsilon = comparisons.empirical_epsilons(data)


def write_all(results: Results, out_dir: str, appendix: str = "", scores_table_of=exports.scores_table
              ) -> Dict[str, List[str]]:
    """Every output of a run beside its results.json: plots/*.png, report.md, report.html,
    scores.parquet and roc/*.npz. Sets `results.plots` and the comparisons (`analyse`). Returns {"plots", "report", "exports"}:
    the written paths (plots as names inside plots/, the others relative to out_dir).
    appendix: Markdown sections a caller adds after the report's own; scores_table_of: what builds
    scores.parquet's table from the records (`lpla audit` adds each candidate's id and path)."""
    stats = SeedStats(n_bootstrap=n_bootstrap(results), seed=study_value(results, "seed", 0))
    analyse(results, stats)
    results.plots = plots.make_plots(results, os.path.join(out_dir, "plots"), stats)
    text = render_report(results, stats) + (f"\n{appendix}" if appendix else "")
    write_text(os.path.join(out_dir, "report.md"), text)
    html.write_html(text, os.path.join(out_dir, "report.html"), out_dir)
    written = exports.write_exports(results, out_dir, scores_table_of)
    return {"plots": list(results.plots), "report": ["report.md", "report.html"],
            "exports": [os.path.relpath(p, out_dir) for p in written]}
