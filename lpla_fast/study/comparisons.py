"""The report's claims as comparisons: each one the difference of two AUCs with its 95% interval
and a p-value, Holm-adjusted over every comparison the report makes.

Three families of claims, all at the run's measurement points:
- "attack": per (K, output, framework), the strongest LpLA-family attack against the best
  baseline (by mean AUC over seeds);
- "defense": per (output, framework, defense), the strongest attack of the defense table on the
  defended release or encoder against the undefended one;
- "ladder": per (output, framework), each architecture of the ladder against the next narrower one.

Two configurations are paired when they were scored on the same target encoders and the same
samples (same seed, same evaluated members and non-members): then each seed's difference is
DeLong's and the mean over seeds gets a paired hierarchical bootstrap. Otherwise (different
encoders: the ladder, training-time defenses) the seed means are compared by an unpaired
bootstrap, and the comparison says so. Also here: the pooled low-FPR numbers of the
reference-calibrated attacks.
"""

from __future__ import annotations

from typing import List, Optional

import numpy as np

from .. import metrics
from .defenses import TrainingDefense
from .report_data import ReportData, distinct, record_label
from .results import AttackRecord, Comparison, EmpiricalEpsilon, PooledTPR
from .settings import parse_architecture
from .stats import family, group_by_seed, is_reference, paired_seed_difference, strongest, unpaired_seed_difference, variant

TIE_MARGIN = 0.02  # a difference whose whole interval lies within +-TIE_MARGIN is a tie
ALPHA = 0.05  # significance level of the verdicts (after Holm's adjustment)


def _best(data: ReportData, groups: List[List[AttackRecord]], keep) -> Optional[List[AttackRecord]]:
    """The group with the highest mean AUC over seeds among those `keep` accepts."""
    best, best_auc = None, -np.inf
    for g in groups:
        s = data.summary(g)
        if s is not None and keep(g[0]) and s.auc > best_auc:
            best, best_auc = g, s.auc
    return best


def _paired(data: ReportData, records_a: List[AttackRecord], records_b: List[AttackRecord]) -> bool:
    """Whether every seed of a has a seed of b that attacked the same target encoder."""
    by_seed = {r.seed: r for r in records_b if r.metrics}
    pairs = [(a, by_seed.get(a.seed)) for a in records_a if a.metrics]
    return bool(pairs) and all(b is not None and data.results.target_of(a) is data.results.target_of(b)
                               for a, b in pairs)


def compare(data: ReportData, claim: str, records_a: List[AttackRecord], records_b: List[AttackRecord], a: str,
            b: str, attack: Optional[str] = None) -> Optional[Comparison]:
    """One comparison of two configurations' AUC (paired where they can be, see the module doc)."""
    n_bootstrap, seed = max(data.stats.n_bootstrap, 200), data.stats.seed
    result, per_seed = (None, [])
    if _paired(data, records_a, records_b):
        result, per_seed = paired_seed_difference(records_a, records_b, "auc", n_bootstrap, seed)
    paired = result is not None
    if result is None:
        result = unpaired_seed_difference(records_a, records_b, "auc", n_bootstrap, seed)
    if result is None:
        return None
    scored = [r for r in records_a if r.metrics]
    first = scored[0]
    seeds = sorted(r.seed for r in scored)
    return Comparison(
        claim=claim, framework=first.framework, output=first.output, k=first.k, a=a, b=b, attack=attack,
        difference=result.difference, low=result.low, high=result.high, p_value=result.p_value,
        a_value=result.a, b_value=result.b, method=result.method, paired=paired, seeds=len(scored),
        n_members=int(first.metrics["n_members"]), n_nonmembers=int(first.metrics["n_nonmembers"]),
        per_seed=[{"seed": s, "difference": d.difference, "low": d.low, "high": d.high, "p_value": d.p_value}
                  for s, d in zip(seeds, per_seed)])


def attack_comparisons(data: ReportData) -> List[Comparison]:
    """Per (K, output, framework): the strongest LpLA-family attack against the best baseline."""
    out = []
    for k in dict.fromkeys([data.k, 1]):
        records = data.headline(k)
        groups = list(group_by_seed(records).values())
        for output in distinct(records, "output"):
            for fw in distinct(records, "framework"):
                mine = [g for g in groups if (g[0].output, g[0].framework) == (output, fw)]
                lpla = _best(data, mine, lambda r: family(r) == "lpla")
                base = _best(data, mine, lambda r: family(r) == "baseline")
                if lpla and base:
                    c = compare(data, "attack", lpla, base, record_label(lpla[0]), record_label(base[0]))
                    out += [c] if c else []
    return out


def defense_comparisons(data: ReportData) -> List[Comparison]:
    """Per (output, framework, defense): the defense table's strongest attack, defended against not."""
    defended = [r for r in data.defended() if r.metrics]
    baseline = data.undefended()
    out = []
    for output in distinct(defended, "output"):
        name = strongest(group_by_seed(r for r in defended if r.output == output), data.stats)
        for fw in distinct(defended, "framework"):
            for defense in distinct([r for r in defended if r.framework == fw], "defense"):
                mine = [r for r in defended if (r.framework, r.output, r.defense) == (fw, output, defense)
                        and variant(r) == name]
                none = [r for r in baseline if (r.framework, r.output, r.defense) == (fw, output, None)
                        and variant(r) == name and mine and r.k == mine[0].k and r.evaluated == mine[0].evaluated]
                if mine and none:
                    c = compare(data, "defense", mine, none, defense, "none", attack=data.labels.get(name, name))
                    out += [c] if c else []
    return out


def _capacity(architecture: str, order: List[str]) -> tuple:
    """Sort key of the ladder: backbones in order of first appearance, then width."""
    backbone, width = parse_architecture(architecture)
    backbones = list(dict.fromkeys(parse_architecture(a)[0] for a in order))
    return backbones.index(backbone), width or 0


def ladder_comparisons(data: ReportData) -> List[Comparison]:
    """Per (output, framework): each ladder architecture against the next narrower one (a = the wider)."""
    ladder = [r for r in data.results.records if r.study == "ladder" and r.metrics and r.defense is None]
    ks = [r.k for r in ladder]
    k = data.k if data.k in ks else max(set(ks), key=ks.count, default=None)
    ladder = [r for r in ladder if r.k == k]
    if len(distinct(ladder, "architecture")) < 2:
        return []
    out = []
    for output in distinct(ladder, "output"):
        groups = group_by_seed(r for r in ladder if r.output == output)
        archs_of = {}
        for g in groups.values():
            archs_of.setdefault(variant(g[0]), set()).add(g[0].architecture)
        widest = max(len(a) for a in archs_of.values())  # the attacks run on every step of the ladder
        name = strongest(groups, data.stats, lambda g: len(archs_of[variant(g[0])]) == widest)
        for fw in distinct(ladder, "framework"):
            steps = {g[0].architecture: g for g in groups.values()
                     if g[0].framework == fw and variant(g[0]) == name}
            archs = sorted(steps, key=lambda a: _capacity(a, distinct(ladder, "architecture")))
            for narrow, wide in zip(archs, archs[1:]):
                c = compare(data, "ladder", steps[wide], steps[narrow], wide, narrow, attack=data.labels.get(name, name))
                out += [c] if c else []
    return out


def verdict(c: Comparison) -> str:
    """"higher" / "lower" (a against b, significant after Holm), "tie" (the whole interval within
    +-TIE_MARGIN), else "undecided"."""
    if c.p_holm is not None and c.p_holm < ALPHA:
        return "higher" if c.difference > 0 else "lower"
    if -TIE_MARGIN <= c.low and c.high <= TIE_MARGIN:
        return "tie"
    return "undecided"


def comparisons(data: ReportData) -> List[Comparison]:
    """Every comparison the report makes, Holm-adjusted as one family, with its verdict."""
    family_ = attack_comparisons(data) + defense_comparisons(data) + ladder_comparisons(data)
    for c, p in zip(family_, metrics.holm([c.p_value for c in family_])):
        c.p_holm = p
        c.verdict = verdict(c)
    return family_


def pooled(data: ReportData) -> List[PooledTPR]:
    """Low-FPR numbers of every reference-calibrated headline configuration over its seeds'
    targets pooled into one evaluated set (TPR None where the pooled non-members are too few)."""
    out = []
    for k in dict.fromkeys([data.k, 1]):
        for g in group_by_seed(r for r in data.headline(k) if is_reference(r)).values():
            scored = [r for r in g if r.metrics and r.samples is not None]
            if not scored:
                continue
            scores = np.concatenate([r.samples.score for r in scored])
            members = np.concatenate([r.samples.is_member for r in scored])
            point = metrics.evaluate(scores, members, n_bootstrap=0)
            n0 = point["n_nonmembers"]
            tprs = {key: (value if metrics.supports_tpr(float(key), n0) else None)
                    for key, value in point["tpr_at_fpr"].items()}
            out.append(PooledTPR(framework=g[0].framework, output=g[0].output, k=g[0].k, variant=variant(g[0]),
                                 label=record_label(g[0]), seeds=len(scored), n_members=point["n_members"],
                                 n_nonmembers=n0, auc=point["auc"], tpr_at_fpr=tprs))
    return out


def empirical_epsilons(data: ReportData, delta: float = 1e-5) -> List[EmpiricalEpsilon]:
    """Per DP-SGD defense (`dp:<epsilon>`) and output: the epsilon the defense table's strongest
    attack proves on each seed's encoder, beside the accountant's."""
    defended = [r for r in data.defended() if r.metrics and r.samples is not None and r.defense
                and r.defense.startswith("dp:")]
    out = []
    for output in distinct(defended, "output"):
        groups = group_by_seed(r for r in defended if r.output == output)
        name = strongest(groups, data.stats)
        for g in (g for g in groups.values() if variant(g[0]) == name):
            n1, n0 = int(g[0].metrics["n_members"]), int(g[0].metrics["n_nonmembers"])
            targets = [data.results.target_of(r) for r in g]
            spent = [t.privacy["epsilon"] if t is not None and t.privacy else None for t in targets]
            out.append(EmpiricalEpsilon(
                framework=g[0].framework, output=output, defense=g[0].defense, attack=data.labels.get(name, name),
                accountant=float(TrainingDefense.parse(g[0].defense).dp_epsilon),
                per_seed=[metrics.empirical_epsilon(r.samples.score, r.samples.is_member, delta) for r in g],
                n_members=n1, n_nonmembers=n0, max_provable=metrics.max_provable_epsilon(n1, n0, delta), delta=delta,
                spent=spent))
    return out
