"""The report's "What this run shows": sentences computed from the numbers, never written in
advance. Each one states the measured values with their intervals and what follows from them
(an overlap of intervals is "no detectable difference")."""

from __future__ import annotations

from typing import List, Optional

from .stats import SeedSummary, family, group_by_seed, is_reference, variant


def _interval(s: SeedSummary, metric: str = "auc"):
    return s.interval.get(metric) or (s.mean[metric], s.mean[metric])


def _show(label: str, s: SeedSummary, metric: str = "auc") -> str:
    lo, hi = _interval(s, metric)
    return f"{label} {s.mean[metric]:.3f} [{lo:.3f}, {hi:.3f}]"


def compare(a: SeedSummary, b: SeedSummary, metric: str = "auc") -> str:
    """"higher" / "lower" when a's interval lies wholly above / below b's, else "overlaps"."""
    (alo, ahi), (blo, bhi) = _interval(a, metric), _interval(b, metric)
    return "higher" if alo > bhi else "lower" if ahi < blo else "overlaps"


def _best(data, groups, keep) -> Optional[tuple]:
    """(label, summary) of the best group by mean AUC among those `keep` accepts."""
    best = None
    for g in groups:
        s = data.summary(g)
        if s is not None and keep(g[0]) and (best is None or s.auc > best[1].auc):
            best = (data.labels[variant(g[0])], s)
    return best


def family_rows(data) -> List[list]:
    """Per (K, output, framework): the strongest LpLA-family attack against the best baseline."""
    rows = []
    for k in dict.fromkeys([data.k, 1]):
        records = data.headline(k)
        for output in dict.fromkeys(r.output for r in records):
            for fw in dict.fromkeys(r.framework for r in records):
                groups = [g for g in group_by_seed(records).values() if (g[0].output, g[0].framework) == (output, fw)]
                lpla = _best(data, groups, lambda r: family(r) == "lpla")
                base = _best(data, groups, lambda r: family(r) == "baseline")
                if lpla and base:
                    rows.append([k, output, fw, lpla, base])
    return rows


def _attack_sentences(data) -> List[str]:
    rows = family_rows(data)
    if not rows:
        return []
    sentences, verdicts = [], {"higher": 0, "overlaps": 0, "lower": 0}
    clear = [row for row in rows if max(_interval(row[3][1])[0], _interval(row[4][1])[0]) > 0.5]
    for k, output, fw, (lname, ls), (bname, bs) in clear:
        verdict = compare(ls, bs)
        verdicts[verdict] += 1
        word = {"higher": "above", "lower": "below", "overlaps": "overlapping"}[verdict]
        sentences.append(f"K={k}, {output}, {fw}: {_show(lname, ls)} against {_show(bname, bs)}: {word}.")
    head = (f"**LpLA against the other attacks.** In {len(clear)} of {len(rows)} (K, output, framework) points "
            f"some attack's interval lies above chance. There the strongest LpLA-family attack (LpLA, the norm "
            f"threshold, LiRA / RMIA over a norm statistic) lies above the best baseline (EncoderMI, kNN, and "
            f"LiRA / RMIA over them) in {verdicts['higher']}, overlaps it in {verdicts['overlaps']} and lies below it "
            f"in {verdicts['lower']}")
    return [head + (":" if clear else ".")] + [f"  - {s}" for s in sentences]


def _tpr_sentences(data) -> List[str]:
    out = []
    for output in data.outputs:
        groups = [g for g in group_by_seed(data.headline(data.k)).values() if g[0].output == output]
        ref = _best_tpr(data, groups, True)
        glob = _best_tpr(data, groups, False)
        if not (ref and glob):
            continue
        ratio = ref[1] / glob[1] if glob[1] > 0 else float("inf")
        out.append(f"On the {output} output at K={data.k}, the best mean TPR at 1% FPR of a reference-calibrated "
                   f"attack ({ref[0]}, {ref[1]:.3f}) is {ratio:.1f}× the best global attack's ({glob[0]}, "
                   f"{glob[1]:.3f}) (averaged over frameworks).")
    return out


def _best_tpr(data, groups, reference: bool):
    by_variant = {}
    for g in groups:
        s = data.summary(g)
        if s is not None and is_reference(g[0]) == reference:
            by_variant.setdefault(variant(g[0]), []).append(s.tpr_at(0.01))
    if not by_variant:
        return None
    name = max(by_variant, key=lambda v: sum(by_variant[v]) / len(by_variant[v]))
    return data.labels[name], sum(by_variant[name]) / len(by_variant[name])


def correlation_sentence(data, rows: List[dict]) -> str:
    """What ρ(linear probe, AUC) over all points says about "better features leak more"."""
    sentences = []
    for output in data.outputs:
        name = data.strongest.get(output)
        row = next((r for r in rows if (r["output"], r["variant"], r["axis"]) == (output, name, "all")), None)
        if row is None:
            continue
        rho, p, n = row["linear_probe/auc"]["rho"], row["linear_probe/auc"]["p_value"], row["n"]
        if rho is None:
            verdict = f"is undefined ({n} points, or no spread in one of the two columns)"
        elif p < 0.05:
            verdict = (f"is {rho:+.2f} (p = {p:.3f}, {n} points): " +
                       ("consistent with the claim" if rho > 0 else "the opposite of the claim, significantly"))
        else:
            verdict = f"is {rho:+.2f} (p = {p:.3f}, {n} points): not significant"
        sentences.append(f"On the {output} output, ρ between linear-probe accuracy and the AUC of the strongest "
                         f"attack ({data.labels[name]}) {verdict}.")
    if not sentences:
        return ""
    return "The paper claims that encoders with better features leak more. " + " ".join(sentences)


def _defense_sentences(data) -> List[str]:
    defended = [r for r in data.defended() + data.undefended() if r.metrics]
    out = []
    for output in dict.fromkeys(r.output for r in defended):
        name = data.strongest.get(output)
        groups = [g for g in group_by_seed(defended).values() if g[0].output == output and variant(g[0]) == name]
        if not groups:
            continue
        by_defense = {}
        for g in groups:
            by_defense.setdefault(g[0].defense, []).append(data.summary(g).auc)
        best = min((d for d in by_defense if d), key=lambda d: sum(by_defense[d]) / len(by_defense[d]), default=None)
        if best is None:
            continue
        mean = sum(by_defense[best]) / len(by_defense[best])
        out.append(f"Against {data.labels[name]} on the {output} output, `{best}` lowers the AUC most "
                   f"(to {mean:.3f}, averaged over frameworks); its utility cost is in the defense table.")
    return out


def section(data) -> str:
    from .stats import correlation_rows

    lines = _attack_sentences(data)
    lines += [f"- {s}" for s in _tpr_sentences(data)]
    corr = correlation_sentence(data, correlation_rows(data.results))
    lines += [f"- {corr}"] if corr else []
    lines += [f"- {s}" for s in _defense_sentences(data)]
    if not lines:
        return ""
    if lines and not lines[0].startswith("- "):
        lines[0] = "- " + lines[0]
    return "\n".join(["## What this run shows", "",
                      "Computed from the tables below (means over seeds, 95% intervals); overlapping intervals "
                      "are no detectable difference.", ""] + lines) + "\n"
