"""The report's "What this run shows": sentences computed from the numbers, never written in
advance. It opens with the verdict of the paired comparisons (`study.comparisons`): wins,
losses, ties and undecided."""

from __future__ import annotations

from typing import List

from .. import metrics
from .comparisons import TIE_MARGIN
from .stats import group_by_seed, is_reference, variant


def _count(found, verdict: str) -> int:
    return sum(c.verdict == verdict for c in found)


def verdict_sentences(data) -> List[str]:
    """The run's verdict, from its comparisons (`study.comparisons`): wins, losses, ties."""
    found = data.results.comparisons
    if not found:
        return []
    out = []
    attacks = [c for c in found if c.claim == "attack"]
    if attacks:
        wins = [f"{c.framework} {c.output} K={c.k} ({c.difference:+.3f})" for c in attacks if c.verdict == "higher"]
        losses = [f"{c.framework} {c.output} K={c.k} ({c.difference:+.3f})" for c in attacks if c.verdict == "lower"]
        out.append(f"**LpLA against the other attacks** (the strongest LpLA-family attack against the best baseline, "
                   f"per framework × K × output): {_count(attacks, 'higher')} wins, {_count(attacks, 'lower')} losses, "
                   f"{_count(attacks, 'tie')} ties and {_count(attacks, 'undecided')} undecided of {len(attacks)}"
                   + (f"; wins: {', '.join(wins)}" if wins else "") + (f"; losses: {', '.join(losses)}" if losses else "")
                   + ".")
    defenses = [c for c in found if c.claim == "defense"]
    if defenses:
        helps = [f"{c.framework} {c.output} `{c.a}` ({c.difference:+.3f})" for c in defenses if c.verdict == "lower"]
        out.append(f"**Defenses against none**: {_count(defenses, 'lower')} lower the leakage, "
                   f"{_count(defenses, 'higher')} raise it, {_count(defenses, 'tie')} change it by less than "
                   f"{TIE_MARGIN:g} and {_count(defenses, 'undecided')} are undecided of {len(defenses)}"
                   + (f"; lower: {', '.join(helps)}" if helps else "") + ".")
    ladder = [c for c in found if c.claim == "ladder"]
    if ladder:
        out.append(f"**Architecture ladder** (each step against the next narrower, unpaired: different encoders): "
                   f"the wider leaks more in {_count(ladder, 'higher')}, less in {_count(ladder, 'lower')}, a tie in "
                   f"{_count(ladder, 'tie')} and undecided in {_count(ladder, 'undecided')} of {len(ladder)}.")
    return out


def _tpr_sentences(data) -> List[str]:
    out = []
    for output in data.outputs:
        groups = [g for g in group_by_seed(data.headline(data.k)).values() if g[0].output == output]
        counts = [r.metrics["n_nonmembers"] for g in groups for r in g if r.metrics]
        if not counts or not metrics.supports_tpr(0.01, min(counts)):
            continue  # too few non-members per target for TPR at 1% (the pooled table has them)
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


def power_sentence(data) -> str:
    """What this run can detect (`study.power`)."""
    pw = data.results.power
    if pw is None:
        return ("Power: not computed (it needs paired attack comparisons over at least two seeds, with the "
                "per-sample scores).")
    plans = "; ".join(f"{p['members']} members and {p['seeds']} seeds" for p in pw.plans[:4])
    return (f"Power: with {pw.n_members} members and {pw.n_nonmembers} non-members per target and {pw.seeds} seeds, "
            f"the smallest paired AUC difference this run detects with {pw.power:.0%} power (two-sided α = "
            f"{pw.alpha:g}, before the Holm adjustment) is **{pw.detectable:.3f}**. Variance components over its "
            f"{pw.comparisons} paired attack comparisons: within a seed {pw.within:.2e} (DeLong, at these sizes), "
            f"between seeds {pw.between:.2e}. Detecting {pw.target:g} needs, e.g., {plans} (see Definitions).")


def section(data) -> str:
    from .stats import correlation_rows

    verdict = verdict_sentences(data)
    lines = [f"- {s}" for s in verdict]
    if verdict:
        lines.append(f"- {power_sentence(data)}")
    lines += [f"- {s}" for s in _tpr_sentences(data)]
    corr = correlation_sentence(data, correlation_rows(data.results))
    lines += [f"- {corr}"] if corr else []
    lines += [f"- {s}" for s in _defense_sentences(data)]
    if not lines:
        return ""
    return "\n".join(["## What this run shows", "",
                      "The verdict first: every claim is a paired comparison (see Paired comparisons), significant "
                      f"after Holm's adjustment at 5 %, a tie when its interval lies within ±{TIE_MARGIN:g}, else "
                      "undecided. Then sentences computed from the tables below.", ""] + lines) + "\n"
