"""report.md of an experiment or attack run, rendered from its Results (results.json)."""

from __future__ import annotations

from typing import Dict, Iterable, List, Optional

from ..attacks import ATTACKS, attack_class
from ..fileio import write_text
from .results import AttackRecord, Results


def attack_label(name: str) -> str:
    """The name reports and plots print for an attack (its class's `label`)."""
    return attack_class(name).label if name in ATTACKS else name

DEFINITIONS = """\
## Definitions (ours where the paper is silent)

The paper ("When Better Features Mean Greater Risks", ASIA CCS 2025) is known here only from its
abstract: LpLA infers membership from the distribution of the p-norm of feature vectors, without
labels or gradients. Everything more specific is our own definition, and each choice is a parameter:

- **Query**: the attacker sends K views of a sample (view 1 the unaugmented image, the others
  random augmentations of the training policy) and receives K embeddings z_1..z_K, either the
  backbone output (the released representation) or the projection-head output.
- **LpLA (ours)**: statistic t_k = log ||z_k||_p, standardized with the same encoder's reference
  non-members; Gaussian member and non-member densities of t fitted on labelled data (the shadow
  encoder's members and non-members, or the audit calibration sets); score = sum over the K views of
  log p_in(t_k) - log p_out(t_k) (views taken as independent given membership). With reference
  non-members only, the side on which members lie cannot be learned, so the score is two-sided
  (distance from the non-members' centre).
- **Norm threshold**: the mean view norm alone (an ablation of LpLA), direction and threshold learned.
- **EncoderMI** (Liu et al., CCS 2021): the pairwise cosine similarities of the K views; -T thresholds
  their mean, -V is an MLP on the sorted vector, -S a DeepSets classifier; trained on labelled data.
  It needs K >= 2.
- **kNN (FAISS)**: similarity of the view-mean embedding to its k nearest neighbours in a bank
  (reference non-members at the shadow level; the known training samples at the audit level), its
  direction learned on labelled data.
- **Knowledge levels**: `reference` (known non-members queried on the target), `shadow` (a shadow
  encoder of the same recipe trained on disjoint data), `audit` (the auditor knows the training set).
  The audit level halves the target's members and non-members (seeded): it calibrates on the first
  halves (one quarter of the members as the kNN bank, one quarter as labelled members) and is
  evaluated on the second halves. The knowledge sweep evaluates every level on those same second
  halves, so its numbers are comparable across levels but differ from the main table, which
  evaluates all members and non-members.
- **Metrics**: ROC AUC (ties count one half); best balanced accuracy over thresholds; TPR at a
  target FPR = the largest TPR whose FPR is <= the target (step interpolation, conservative: with
  fewer than 1/FPR non-members it is the TPR before the first false positive); 95% intervals from a
  stratified percentile bootstrap.
- **Feature quality**: linear-probe (logistic regression on frozen, standardized features) and
  cosine-kNN accuracy on a labelled probe split disjoint from all others.
- **Trade-off**: Spearman rank correlation between the target encoders' linear-probe (or kNN)
  accuracy and an attack's AUC across frameworks. With n frameworks it rests on n points only (n = 5
  by default): a weak test whatever its value.
"""


def write_report(results: Results, path: str) -> None:
    write_text(path, render_report(results))


def render_report(results: Results) -> str:
    parts = [_header(results), _tradeoff(results), _main_tables(results), _sweeps(results),
             DEFINITIONS, _timings(results), _files(results)]
    return "\n".join(p for p in parts if p)


# --- formatting helpers ---------------------------------------------------------------------------

def _num(x: Optional[float], digits: int = 3) -> str:
    return "—" if x is None else f"{x:.{digits}f}"


def _with_ci(value: Optional[float], ci: Optional[List[float]]) -> str:
    if value is None:
        return "—"
    return f"{value:.3f}" if not ci else f"{value:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]"


def _metric(record: AttackRecord, name: str) -> str:
    """A metric with its CI: name "auc", "balanced_accuracy" or an FPR key like "0.01"."""
    m = record.metrics
    if not m:
        return f"n/a ({record.skipped})" if record.skipped else "—"
    ci = m.get("ci") or {}
    if name in ("auc", "balanced_accuracy"):
        return _with_ci(m[name], ci.get(name))
    return _with_ci(m["tpr_at_fpr"][name], (ci.get("tpr_at_fpr") or {}).get(name))


def _table(header: Iterable[str], rows: Iterable[Iterable[str]]) -> str:
    header = list(header)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _p_label(p) -> str:
    return "∞" if p in ("inf", float("inf")) else f"{float(p):g}"


def _find(records: List[AttackRecord], **keys) -> Optional[AttackRecord]:
    for r in records:
        if all(getattr(r, k) == v for k, v in keys.items()):
            return r
    return None


def distinct(records: List[AttackRecord], key: str) -> List:
    """The values of one record attribute, in order of first appearance."""
    seen = []
    for r in records:
        if getattr(r, key) not in seen:
            seen.append(getattr(r, key))
    return seen


# --- sections -------------------------------------------------------------------------------------

def _header(results: Results) -> str:
    study = results.study
    env = results.environment
    lines = ["# Membership leakage of contrastive encoders", "",
             f"Made by `lpla {results.command}` on {results.created} "
             f"(lpla_fast {env.get('lpla_fast', '?')}).", "", "## Setup", ""]
    if results.command == "experiment":
        c, ds = results.config, results.dataset
        targets = results.targets()
        train = targets[0].train_config
        lines += [
            f"- Data: `{ds['name']}`, {ds['num_samples']} images of shape {tuple(ds['image_shape'])}; splits "
            + ", ".join(f"{k} {v}" for k, v in results.splits.items()) + f" (seed {c['seed']}).",
            f"- Encoders: backbone `{train['backbone']}` (width {train['width'] or 'default'}), "
            f"{train['epochs']} epochs, batch {train['batch_size']}, lr {train['lr']}, augmentation "
            f"`{train['augmentation']}`; frameworks {', '.join(e.framework for e in targets)}; shadow framework "
            f"{c.get('shadow_framework') or 'same as the target'}.",
        ]
    else:
        lines += ["- Inputs: " + ", ".join(f"{k} `{v}`" for k, v in results.inputs.items() if v) + "."]
    ps = ", ".join(_p_label(p) for p in study.ps)
    lines += [
        f"- Attacks: {', '.join(attack_label(a) for a in study.attacks)}; main table at K={study.k} "
        f"views, knowledge level `{study.level}`, p=2 (the attacks' default).",
        f"- Sweeps: p in {{{ps}}}, K in {{{', '.join(map(str, study.ks))}}}, knowledge "
        f"{{{', '.join(study.levels)}}}; attacks {', '.join(attack_label(a) for a in study.sweep_attacks)}.",
        f"- Confidence intervals: {study.n_bootstrap} bootstrap replicates (95%).",
        f"- Device: {env.get('device', '?')}; total time {results.timings.get('total', 0):.0f} s.",
    ]
    return "\n".join(lines) + "\n"


def _tradeoff(results: Results) -> str:
    targets = [e for e in results.targets() if e.feature_quality]
    if not targets:
        return ""
    main = results.select(study="main")
    outputs = distinct(main, "output")
    header = ["framework", "linear probe", "kNN acc."] + [f"LpLA AUC ({o})" for o in outputs] \
        + [f"EncoderMI-T AUC ({o})" for o in outputs]
    rows = []
    for target in targets:
        q = target.feature_quality
        b = q.get("backbone") or next(iter(q.values()))
        row = [target.framework, _num(b["linear_probe"]), _num(b["knn"])]
        for attack in ("lpla", "encodermi-t"):
            for o in outputs:
                r = _find(main, framework=target.framework, backbone=target.backbone, seed=target.seed, output=o,
                          attack=attack)
                row.append(_metric(r, "auc") if r else "—")
        rows.append(row)
    lines = ["## Feature quality and leakage (the paper's claim)", "",
             "Feature quality of each target encoder (backbone output, probe split) beside the AUC of "
             "the attacks in the main table.", "", _table(header, rows), ""]
    corr = results.correlation
    corr_rows = []
    for o in outputs:
        for attack, by_metric in corr.get(o, {}).items():
            lp, kn = by_metric["linear_probe"], by_metric["knn"]
            corr_rows.append([attack_label(attack), o, _num(lp["rho"]), _num(lp["p_value"]),
                              _num(kn["rho"]), _num(kn["p_value"]), lp["n"]])
    if corr_rows and max(row[-1] for row in corr_rows) < 3:
        lines += [f"A rank correlation between feature quality and leakage needs at least 3 frameworks; this run "
                  f"has {max(row[-1] for row in corr_rows)}.", ""]
    elif corr_rows:
        lines += ["Spearman rank correlation between feature quality and attack AUC across frameworks:", "",
                  _table(["attack", "output", "ρ (linear probe)", "p", "ρ (kNN acc.)", "p", "frameworks"],
                         corr_rows), "", _claim_sentence(corr, outputs), ""]
    return "\n".join(lines)


def _claim_sentence(corr: dict, outputs: List[str]) -> str:
    """What the LpLA correlation says about the paper's claim, in words, whatever it is."""
    sentences = []
    for o in outputs:
        entry = corr.get(o, {}).get("lpla", {}).get("linear_probe")
        if not entry:
            continue
        rho, p, n = entry["rho"], entry["p_value"], entry["n"]
        if rho is None:
            verdict = f"is undefined ({n} frameworks, or no spread in one of the two columns)"
        elif rho > 0 and p is not None and p < 0.05:
            verdict = f"is {rho:+.2f} (p = {p:.3f}): consistent with the claim"
        elif rho > 0:
            verdict = f"is {rho:+.2f} (p = {p:.3f}): the same direction as the claim, not significant"
        elif rho == 0:
            verdict = "is 0: no support for the claim"
        else:
            verdict = f"is {rho:+.2f} (p = {p:.3f}): the opposite direction to the claim"
        sentences.append(f"On the {o} output, ρ between linear-probe accuracy and LpLA AUC {verdict}.")
    if not sentences:
        return ""
    return ("The paper claims that frameworks with better features leak more. " + " ".join(sentences)
            + " With this few frameworks a rank correlation is weak evidence either way; the per-framework "
              "AUC intervals above show how much of the spread is noise.")


def _main_tables(results: Results) -> str:
    main = results.select(study="main")
    if not main:
        return ""
    study = results.study
    lines = [f"## Attacks (K={study.k}, knowledge `{study.level}`)", "",
             "AUC, TPR at 1% and 0.1% FPR and the best balanced accuracy, each with its 95% bootstrap "
             "interval, on all target members and non-members.", ""]
    for o in distinct(main, "output"):
        rows = [[r.framework, attack_label(r.attack), _metric(r, "auc"),
                 _metric(r, "0.01"), _metric(r, "0.001"), _metric(r, "balanced_accuracy")]
                for r in main if r.output == o]
        n = next((r.metrics for r in main if r.output == o and r.metrics), None)
        count = f" ({n['n_members']} members, {n['n_nonmembers']} non-members)" if n else ""
        lines += [f"### Output: {o}{count}", "",
                  _table(["framework", "attack", "AUC", "TPR@1% FPR", "TPR@0.1% FPR", "balanced acc."], rows), ""]
    return "\n".join(lines)


def _sweep_table(records: List[AttackRecord], column_key: str, column_label) -> str:
    columns = distinct(records, column_key)
    rows = []
    for fw in distinct(records, "framework"):
        for o in distinct(records, "output"):
            for attack in distinct(records, "attack"):
                cells = [_find(records, framework=fw, output=o, attack=attack, **{column_key: c}) for c in columns]
                if not any(cells):
                    continue
                rows.append([fw, o, attack_label(attack)] + [_metric(c, "auc") if c else "—" for c in cells])
    return _table(["framework", "output", "attack"] + [column_label(c) for c in columns], rows)


def _sweeps(results: Results) -> str:
    study = results.study
    lines = ["## Sweeps (AUC with 95% interval)", ""]
    p_records = results.select(study="p")
    if p_records:
        lines += [f"### Norm order p (K={study.k}, knowledge `{study.level}`)", "",
                  _sweep_table(p_records, "p", lambda p: f"p={_p_label(p)}"), ""]
    k_records = results.select(study="k")
    if k_records:
        lines += [f"### Query budget K (knowledge `{study.level}`; K=1 is the clean image alone)", "",
                  _sweep_table(k_records, "k", lambda k: f"K={k}"), ""]
    kn_records = results.select(study="knowledge")
    if kn_records:
        n = next((r.metrics for r in kn_records if r.metrics), None)
        count = f"{n['n_members']} members and {n['n_nonmembers']} non-members, " if n else ""
        lines += [f"### Knowledge level (K={study.k}; every level evaluated on the same held-out halves: "
                  f"{count}see Definitions)", "",
                  _sweep_table(kn_records, "level", lambda lvl: lvl), ""]
    return "\n".join(lines) if len(lines) > 2 else ""


def _timings(results: Results) -> str:
    timings = results.timings
    if not timings:
        return ""
    groups: Dict[str, float] = {}
    for stage, seconds in timings.get("stages", {}).items():
        group = stage.split("/")[0]
        groups[group] = groups.get(group, 0.0) + seconds
    rows = [[stage, f"{seconds:.1f}"] for stage, seconds in groups.items()]
    rows.append(["**total**", f"**{timings['total']:.1f}**"])
    training = [f"{e.framework} {e.role} {e.seconds:.0f} s" + (" (reused)" if e.reused else "")
                for e in results.encoders]
    env = results.environment
    load = env.get("load_average")
    load_note = f" Load average at the end (1, 5, 15 min): {', '.join(f'{x:.1f}' for x in load)}." if load else ""
    return "\n".join(["## Timings", "",
                      f"Seconds per stage on {env.get('cpu_count', '?')} CPUs ({env.get('torch_threads', '?')} torch "
                      f"threads), device {env.get('device', '?')}.{load_note}", "", _table(["stage", "seconds"], rows), "",
                      ("Training per encoder: " + "; ".join(training) + ".\n") if training else ""])


def _files(results: Results) -> str:
    files = ["`results.json`: every number above and more (ROC curves, timings, config)"]
    if results.command == "experiment":
        files += ["`config.json`, `splits.json`: what made this run",
                  "`encoders/<framework>/<role>/`: the trained encoders (reused by a rerun)"]
    for name in results.calibration_files.values():
        files.append(f"`{name}`: the fitted LpLA calibration, for `lpla score --calibration`")
    files += [f"`plots/{name}`" for name in results.plots]
    return "## Files\n\n" + "\n".join(f"- {f}" for f in files) + "\n"
