"""The study's outputs from synthetic results (no training): the across-seed statistics, the
correlations, report.md, report.html, the plots and the exports (Parquet scores, npz ROCs)."""

import math
import re
import zlib

import numpy as np
import pandas as pd
import pytest

from lpla_fast import metrics
from lpla_fast.study import stats
from lpla_fast.study.results import AttackRecord, EncoderRecord, Results, SampleScores
from lpla_fast.study.settings import StudyConfig

FRAMEWORKS = ("simclr", "byol")
SEEDS = (0, 1, 2)
MAIN = ("small_cnn", 32)
LADDER = (("small_cnn", 8), ("small_cnn", 32), ("resnet18", None))
# Strength of each attack's membership signal (a shift of the members' scores, in standard deviations).
GLOBAL = {"lpla": 0.3, "norm": 0.25, "encodermi-t": 0.6, "knn": 0.4}
REFERENCE = {("lira", True, "lpla"): 0.9, ("rmia", False, "encodermi"): 0.7}
DEFENSES = {"l2-normalize": 0.2, "weight-decay:5e-4": 0.5, "dp:8": 0.1}


def _quality(framework, backbone, width, seed):
    base = {"small_cnn": 0.7, "resnet18": 0.85}[backbone] + (width or 64) / 1000 + (framework == "simclr") * 0.05
    return round(base + 0.005 * seed, 4)


def _leak(strength, quality):
    """Leakage rises with feature quality (the claim, built into the synthetic data)."""
    return strength * 4 * (quality - 0.55)


def _record(framework, output, study, attack, k, strength, seed, n=60, level="shadow", params=None, p=None,
            backbone=MAIN[0], width=MAIN[1], defense=None):
    rng = np.random.default_rng(zlib.crc32(repr((framework, output, study, attack, k, seed, params, p, backbone,
                                                 width, defense)).encode()))
    is_member = np.r_[np.ones(n, bool), np.zeros(n, bool)]
    score = rng.normal(size=2 * n) + strength * is_member
    # Every attack on one target scores the same samples (paired); each seed's target its own.
    sample = 1000 * seed + np.arange(2 * n)
    return AttackRecord(framework=framework, output=output, study=study, attack=attack, level=level, k=k, p=p,
                        params=dict(params or {}, seed=seed), metrics=metrics.evaluate(score, is_member, 50, seed),
                        seed=seed, backbone=backbone, width=width, defense=defense, seconds=0.01,
                        roc={"fpr": [0.0, 1.0], "tpr": [0.0, 1.0]} if study == "main" else None,
                        samples=SampleScores(sample=sample, is_member=is_member, score=score))


def make_results():
    """Two frameworks x three seeds, a main table, reference attacks, K / p / knowledge sweeps,
    a three-step architecture ladder and two defenses, with quality rising with capacity."""
    encoders, records = [], []
    for fw in FRAMEWORKS:
        for seed in SEEDS:
            for backbone, width in LADDER:
                q = _quality(fw, backbone, width, seed)
                encoders.append(EncoderRecord(framework=fw, role="target", backbone=backbone, width=width, seed=seed,
                                              feature_quality={"backbone": {"linear_probe": q, "knn": q - 0.05},
                                                               "head": {"linear_probe": q - 0.1, "knn": q - 0.12}},
                                              members=200))
                if (backbone, width) != MAIN:
                    for output in ("backbone", "head"):
                        records += [_record(fw, output, "ladder", a, 8, _leak(s, q), seed, backbone=backbone, width=width)
                                    for a, s in GLOBAL.items()]
            encoders.append(EncoderRecord(framework=fw, role="target", backbone=MAIN[0], width=MAIN[1], seed=seed,
                                          defense="weight-decay:5e-4", members=200,
                                          feature_quality={"backbone": {"linear_probe": 0.7, "knn": 0.66}}))
            encoders.append(EncoderRecord(framework=fw, role="target", backbone=MAIN[0], width=MAIN[1], seed=seed,
                                          defense="dp:8", members=200, privacy={"epsilon": 7.9 + 0.01 * seed},
                                          feature_quality={"backbone": {"linear_probe": 0.5, "knn": 0.45}}))
            q = _quality(fw, *MAIN, seed)
            for output in ("backbone", "head"):
                for a, s in GLOBAL.items():
                    records.append(_record(fw, output, "main", a, 8, _leak(s, q), seed))
                    for k in (1, 8):
                        records.append(_record(fw, output, "k", a, k, _leak(s, q) * (0.6 if k == 1 else 1), seed))
                    records.append(_record(fw, output, "knowledge", a, 8, _leak(s, q), seed, level="audit"))
                records[-1].evaluated = "audit_halves"
                records.append(AttackRecord(framework=fw, output=output, study="k", attack="encodermi-t",
                                            level="shadow", k=1, seed=seed, backbone=MAIN[0], width=MAIN[1],
                                            skipped="needs K >= 2"))
                records = [r for r in records if not (r.study == "k" and r.attack == "encodermi-t" and r.k == 1
                                                      and r.metrics)]
                for p in (1.0, 2.0, math.inf):
                    records.append(_record(fw, output, "p", "lpla", 8, _leak(0.3, q), seed, p=p))
                for (a, online, statistic), s in REFERENCE.items():
                    for k in (1, 8):
                        records.append(_record(fw, output, "references", a, k, _leak(s, q), seed, level="reference-encoders",
                                               params={"statistic": statistic, "online": online}))
                for defense, s in DEFENSES.items():
                    for a in ("encodermi-t", "lira"):
                        params = {"statistic": "lpla", "online": True} if a == "lira" else {}
                        records.append(_record(fw, output, "defense", a, 8, s, seed, params=params, defense=defense,
                                               level="reference-encoders" if a == "lira" else "shadow"))
    config = {"study": StudyConfig(k=8, ks=(1, 8), n_bootstrap=200).to_dict()}
    return Results(command="experiment", config=config, encoders=encoders, records=records,
                   dataset={"name": "digits", "num_samples": 1797, "image_shape": [1, 16, 16], "num_classes": 10},
                   splits={"target_members": 60, "target_nonmembers": 60},
                   timings={"stages": {"train/simclr/target": 1.0}, "total": 2.0})


@pytest.fixture(scope="module")
def results():
    return make_results()


# --- grouping and naming ------------------------------------------------------------------------

def test_variants_name_the_reference_attacks_and_their_statistic(results):
    names = {stats.variant(r) for r in results.select(study="references")}
    assert names == {"lira-online/lpla", "rmia-offline/encodermi"}
    lira = results.select(study="references", attack="lira")[0]
    assert stats.is_reference(lira) and stats.family(lira) == "lpla"
    assert stats.family(results.select(study="references", attack="rmia")[0]) == "baseline"
    assert stats.family(results.select(attack="encodermi-t")[0]) == "baseline"


def test_groups_hold_the_seeds_of_one_configuration(results):
    groups = stats.group_by_seed(results.select(study="main"))
    assert len(groups) == 2 * 2 * len(GLOBAL)
    assert all(sorted(r.seed for r in g) == list(SEEDS) for g in groups.values())


def test_dedupe_keeps_the_main_table_over_the_k_sweep(results):
    kept = stats.dedupe(results.select(study="main") + results.select(study="k"))
    at_8 = [r for r in kept if r.k == 8]
    assert at_8 and all(r.study == "main" for r in at_8)
    assert any(r.study == "k" and r.k == 1 for r in kept)


# --- the across-seed summary --------------------------------------------------------------------

def test_seed_summary_is_the_mean_with_a_hierarchical_interval(results):
    group = results.select(study="main", framework="simclr", output="head", attack="encodermi-t")
    summary = stats.seed_summary(group, n_bootstrap=200, seed=0)
    assert summary.method == "seeds+samples" and summary.n_seeds == 3
    assert summary.auc == pytest.approx(np.mean([r.auc for r in group]))
    assert summary.tpr_at(0.01) == pytest.approx(np.mean([r.tpr_at(0.01) for r in group]))
    lo, hi = summary.interval["auc"]
    assert lo < summary.auc < hi
    # The interval covers the between-seed spread and each seed's sampling noise.
    assert hi - lo > np.ptp([r.auc for r in group]) / 2
    again = stats.seed_summary(group, n_bootstrap=200, seed=0)
    assert again.interval == summary.interval


def test_seed_summary_without_scores_resamples_the_seeds_and_says_so(results):
    group = [AttackRecord.from_dict(r.to_dict()) for r in
             results.select(study="main", framework="byol", output="head", attack="knn")]
    summary = stats.seed_summary(group, n_bootstrap=200)
    assert summary.method == "seeds"
    lo, hi = summary.interval["auc"]
    assert min(r.auc for r in group) <= lo <= hi <= max(r.auc for r in group)
    one = stats.seed_summary(group[:1], n_bootstrap=200)
    assert one.method == "per-seed interval" and one.interval["auc"] == tuple(group[0].metrics["ci"]["auc"])


def test_seed_summary_of_skipped_records_is_none(results):
    skipped = [r for r in results.records if r.skipped]
    assert skipped and stats.seed_summary(skipped) is None


def test_strongest_attack_is_the_highest_mean_auc(results):
    groups = stats.group_by_seed(results.select(study="main") + results.select(study="references", k=8))
    assert stats.strongest(groups, stats.SeedStats(50)) == "lira-online/lpla"
    assert stats.strongest(groups, stats.SeedStats(50), keep=lambda g: not stats.is_reference(g[0])) == "encodermi-t"


# --- correlations -------------------------------------------------------------------------------

def test_encoder_of_matches_architecture_and_training_defense(results):
    ladder = results.select(study="ladder", backbone="small_cnn", width=8)[0]
    assert stats.encoder_of(results, ladder).width == 8
    trained = results.select(study="defense", defense="weight-decay:5e-4")[0]
    assert stats.encoder_of(results, trained).defense == "weight-decay:5e-4"
    released = results.select(study="defense", defense="l2-normalize")[0]
    assert stats.encoder_of(results, released).defense is None
    assert stats.quality(stats.encoder_of(results, released), released.defense) is None


def test_correlation_runs_over_every_encoder_and_seed(results):
    rows = stats.correlation_rows(results)
    full = [r for r in rows if r["axis"] == "all" and r["output"] == "head" and r["variant"] == "encodermi-t"][0]
    assert full["n"] == len(FRAMEWORKS) * len(SEEDS) * len(LADDER)
    # Leakage was made to rise with quality: a strong positive, significant rho.
    assert full["linear_probe/auc"]["rho"] > 0.3 and full["linear_probe/auc"]["p_value"] < 0.05
    axes = {r["axis"] for r in rows if r["output"] == "head" and r["variant"] == "encodermi-t"}
    assert axes == {"all", "frameworks (small_cnn-32)", "architectures (simclr)", "architectures (byol)"}
    legacy = stats.leakage_correlation(results.encoders, results.records)
    assert legacy["head"]["encodermi-t"]["linear_probe"]["rho"] == full["linear_probe/auc"]["rho"]
    # The reference attacks (no ladder) have one point per framework and seed.
    assert legacy["head"]["lira-online/lpla"]["linear_probe"]["n"] == len(FRAMEWORKS) * len(SEEDS)


# --- report.md, report.html, plots and exports -------------------------------------------------------

@pytest.fixture(scope="module")
def written(results, tmp_path_factory):
    from lpla_fast.study.report import write_all

    out = tmp_path_factory.mktemp("outputs")
    return out, write_all(results, str(out))


def test_write_all_lists_what_it_wrote(written):
    out, files = written
    assert files["report"] == ["report.md", "report.html"]
    assert set(files["plots"]) == {"forest.png", "roc-simclr.png", "roc-byol.png", "leakage_vs_quality.png",
                                   "privacy_utility.png", "auc_vs_k.png", "auc_vs_p.png"}
    assert files["plots"][0] == "forest.png"
    for name in files["plots"]:
        assert (out / "plots" / name).stat().st_size > 1000, name
    for name in files["report"] + files["exports"]:
        assert (out / name).is_file(), name
    assert not list(out.rglob(".tmp-*"))


def test_report_puts_reference_attacks_beside_global_ones_at_both_budgets(written, results):
    text = (written[0] / "report.md").read_text()
    for heading in ("## What this run shows", "## Feature quality and leakage", "### Architecture ladder",
                    "### Correlation of feature quality with leakage", "## Attacks (K=8", "## Attacks at K=1",
                    "### Norm order p", "### Query budget K", "### Knowledge level", "## Defenses",
                    "## Definitions", "## Timings", "## Figures"):
        assert heading in text, heading
    headline = text[text.index("## Attacks (K=8"):text.index("## Attacks at K=1")]
    assert "| simclr | LiRA-online (lpla) | 3 |" in headline and "| byol | RMIA-offline (encodermi) | 3 |" in headline
    assert "TPR@1% FPR | TPR@0.1% FPR" in headline
    assert "hierarchical bootstrap over seeds, then members and non-members" in headline
    # A cell is the mean over seeds with its interval.
    group = results.select(study="main", framework="simclr", output="head", attack="encodermi-t")
    mean = np.mean([r.auc for r in group])
    row = next(line for line in headline[headline.index("### Output: head"):].splitlines()
               if line.startswith("| simclr | EncoderMI-T |"))
    assert re.search(rf"\| {mean:.3f} \[0\.\d{{3}}, 0\.\d{{3}}\] \|", row), row
    k1 = text[text.index("## Attacks at K=1"):]
    assert "n/a (needs K >= 2)" in k1 and "LiRA-online (lpla)" in k1


def test_report_findings_are_computed_from_the_numbers(written):
    text = (written[0] / "report.md").read_text()
    shows = text[text.index("## What this run shows"):text.index("## Paired comparisons")]
    assert re.search(r"\*\*LpLA against the other attacks\*\* .*: \d+ wins, \d+ losses, \d+ ties and \d+ undecided of 8",
                     shows)
    assert "**Defenses against none**" in shows and "**Architecture ladder**" in shows
    assert "Power: with 60 members and 60 non-members per target and 3 seeds" in shows
    assert "ρ between linear-probe accuracy" in shows
    # 60 non-members per target cannot support TPR at 1%: no sentence compares it.
    assert "best mean TPR at 1% FPR" not in shows
    defenses = text[text.index("## Defenses"):text.index("## Figures")]
    assert "| simclr | none | 3 |" in defenses and "| byol | weight-decay:5e-4 | 3 | 0.700 |" in defenses
    assert "| simclr | l2-normalize | 3 | — |" in defenses


def test_html_report_is_self_contained_with_every_plot(written):
    out, files = written
    page = (out / "report.html").read_text()
    assert page.startswith("<!DOCTYPE html>") and "<table>" in page and "<h2>Definitions" in page
    assert page.count('src="data:image/png;base64,') == len(files["plots"])
    assert not re.search(r"(https?:)?//[a-z0-9.-]+\.[a-z]{2,}", page, re.I)
    assert not re.search(r"<(link|script)\b", page) and 'src="plots/' not in page


def test_scores_parquet_reads_back_with_pandas(written, results):
    frame = pd.read_parquet(written[0] / "scores.parquet")
    assert len(frame) == sum(len(r.samples.score) for r in results.records if r.samples is not None and r.metrics)
    assert str(frame["framework"].dtype) == "category" and frame["is_member"].dtype == bool
    record = results.select(study="references", attack="lira", framework="byol", output="head", k=1, seed=2)[0]
    rows = frame[(frame.study == "references") & (frame.variant == "lira-online/lpla") & (frame.framework == "byol")
                 & (frame.output == "head") & (frame.k == 1) & (frame.seed == 2)]
    np.testing.assert_array_equal(rows["sample"], record.samples.sample)
    np.testing.assert_array_equal(rows["score"], record.samples.score)
    assert metrics.roc_auc(rows["score"], rows["is_member"]) == pytest.approx(record.auc)
    ladder = frame[(frame.study == "ladder") & (frame.backbone == "resnet18")]
    assert ladder["width"].isna().all() and len(ladder) > 0
    assert set(frame["defense"].dropna()) == set(DEFENSES) and frame["p"].max() == math.inf


def test_privacy_meter_npz_hold_each_headline_record(written, results):
    out, files = written
    npz = [f for f in files["exports"] if f.endswith(".npz")]
    headline = [r for r in results.records if r.study in ("main", "references") and r.metrics]
    assert len(npz) == len(headline) == len(set(npz))
    from lpla_fast.study.exports import npz_name

    record = results.select(study="main", framework="simclr", output="head", attack="knn", seed=1)[0]
    assert npz_name(record) == "simclr-small_cnn-32-head-K8-knn-seed1.npz"
    with np.load(out / "roc" / npz_name(record)) as f:
        assert set(f.files) == {"fpr", "tpr", "auc", "scores", "memberships", "sample"}
        assert float(f["auc"]) == pytest.approx(record.auc)
        np.testing.assert_array_equal(f["scores"], record.samples.score)
        np.testing.assert_array_equal(f["memberships"], record.samples.is_member.astype(np.int8))
        fpr, tpr = metrics.roc_curve(record.samples.score, record.samples.is_member)
        np.testing.assert_array_equal(f["fpr"], fpr) and np.testing.assert_array_equal(f["tpr"], tpr)


def test_results_without_scores_still_report_and_export_nothing(results, tmp_path):
    from lpla_fast.study.report import write_all

    reloaded = Results.from_dict(results.to_dict())
    files = write_all(reloaded, str(tmp_path))
    assert files["exports"] == []
    text = (tmp_path / "report.md").read_text()
    assert "bootstrap over seeds (per-sample scores not kept)" in text


def test_markdown_to_html_escapes_text_and_names_a_missing_figure(tmp_path):
    from lpla_fast.study.html import markdown_to_html

    page = markdown_to_html("# T\n\na <b> & `x<y`\n\n- one\n  - nested **bold**\n\n![gone](plots/gone.png)\n",
                            str(tmp_path))
    assert "a &lt;b&gt; &amp; <code>x&lt;y</code>" in page and "<strong>bold</strong>" in page
    assert "figure plots/gone.png is missing" in page and "<img" not in page


def test_frontier_keeps_the_points_no_other_beats_on_both_axes():
    from lpla_fast.study.plots import _frontier

    # (utility, leakage): (0.9, 0.7) and (0.8, 0.55) and (0.6, 0.5) are not dominated; (0.7, 0.6) is.
    assert _frontier([0.9, 0.7, 0.8, 0.6], [0.7, 0.6, 0.55, 0.5]) == [3, 2, 0]


# --- paired comparisons, the count rule, pooled low-FPR numbers, power ------------------------------

def test_report_opens_its_comparisons_with_the_forest_plot(written):
    text = (written[0] / "report.md").read_text()
    assert text.index("![forest](plots/forest.png)") == text.index("![")  # the first figure
    section = text[text.index("## Paired comparisons"):text.index("## Feature quality")]
    assert "Holm-adjusted over all" in section and "| p (Holm) |" in section
    for heading in ("### strongest LpLA-family attack − best baseline", "### defended − undefended",
                    "### wider − narrower architecture"):
        assert heading in section, heading
    assert "paired hierarchical bootstrap (3 seeds)" in section and "unpaired bootstrap (3 seeds)" in section


def test_comparisons_pair_what_shares_targets_and_samples(written, results):
    found = results.comparisons
    attack = [c for c in found if c.claim == "attack"]
    assert len(attack) == 8 and all(c.paired and c.method == "paired hierarchical bootstrap" for c in attack)
    assert all(len(c.per_seed) == 3 and c.per_seed[0]["seed"] == 0 for c in attack)
    # A release-time defense attacks the same encoder; a training-time one another encoder.
    defense = {c.a: c for c in found if c.claim == "defense" and c.framework == "simclr" and c.output == "head"}
    assert defense["l2-normalize"].paired and not defense["weight-decay:5e-4"].paired
    assert all(not c.paired and c.method == "unpaired bootstrap" for c in found if c.claim == "ladder")
    assert [c.p_holm for c in found] == pytest.approx(metrics.holm([c.p_value for c in found]))
    for c in found:
        assert c.low <= c.difference <= c.high and c.verdict in ("higher", "lower", "tie", "undecided")
        assert c.difference == pytest.approx(c.a_value - c.b_value)


def test_a_seed_s_paired_difference_is_delong_on_its_samples(results):
    from lpla_fast.study.report_data import record_label

    c = next(c for c in results.comparisons if c.claim == "attack")

    def group(label):
        return sorted((r for r in results.records if r.metrics and r.study in ("main", "references", "k")
                       and (r.framework, r.output, r.k) == (c.framework, c.output, c.k) and r.defense is None
                       and record_label(r) == label and r.architecture == "small_cnn-32"), key=lambda r: r.seed)

    a, b = group(c.a)[0], group(c.b)[0]
    expected = metrics.paired_delong(a.samples.score, b.samples.score, a.samples.is_member)
    assert c.per_seed[0]["difference"] == pytest.approx(expected.difference)
    assert c.per_seed[0]["p_value"] == pytest.approx(expected.p_value)


def test_tpr_cells_without_enough_nonmembers_show_the_count(written):
    text = (written[0] / "report.md").read_text()
    headline = text[text.index("## Attacks (K=8"):text.index("## Attacks at K=1")]
    row = next(line for line in headline.splitlines() if line.startswith("| simclr | EncoderMI-T |"))
    assert row.endswith("| — (n=60) | — (n=60) |"), row


def test_pooled_low_fpr_numbers_are_labelled_and_follow_the_count_rule(written, results):
    text = (written[0] / "report.md").read_text()
    assert "## Low-FPR numbers pooled over targets" in text and "(pooled)" in text
    pooled = results.pooled
    assert pooled and all(p.seeds == 3 and p.n_nonmembers == 180 for p in pooled)
    assert all(p.tpr_at_fpr["0.1"] is not None and p.tpr_at_fpr["0.01"] is None for p in pooled)
    p = next(p for p in pooled if (p.framework, p.output, p.k, p.variant) == ("simclr", "head", 8, "lira-online/lpla"))
    group = [r for r in results.records if r.study == "references" and (r.framework, r.output, r.k) == ("simclr", "head", 8)
             and r.attack == "lira"]
    scores = np.concatenate([r.samples.score for r in group])
    members = np.concatenate([r.samples.is_member for r in group])
    assert p.tpr_at_fpr["0.1"] == pytest.approx(metrics.tpr_at_fpr(scores, members, 0.1))


def test_power_analysis_reads_the_variance_components_of_the_comparisons(results):
    from lpla_fast.study import power

    pw = results.power
    assert pw.seeds == 3 and pw.n_members == 60 and pw.comparisons == 8
    assert pw.detectable == pytest.approx(power.detectable_difference(pw.within, pw.between, 3))
    for plan in pw.plans:
        assert plan["detectable"] <= pw.target + 1e-12
    # More members per target shrink the within-seed part: never more seeds needed.
    assert [p["seeds"] for p in pw.plans] == sorted((p["seeds"] for p in pw.plans), reverse=True)


def test_comparisons_round_trip_through_results_json(written, results, tmp_path):
    from lpla_fast.study.results import load_results

    results.save(str(tmp_path / "results.json"))
    back = load_results(str(tmp_path), scores=False)
    assert back.comparisons == results.comparisons and back.pooled == results.pooled and back.power == results.power
    assert type(back.comparisons[0]).__name__ == "Comparison"


def test_scores_parquet_reads_back_onto_the_records(written, results):
    from lpla_fast.study.results import load_results

    out = written[0]
    results.save(str(out / "results.json"))
    back = load_results(str(out))
    scored = [r for r in results.records if r.metrics]
    assert sum(r.samples is not None for r in back.records) == len(scored)
    mine = next(r for r in back.records if r.study == "references" and r.metrics)
    theirs = next(r for r in results.records if r.study == "references" and r.metrics)
    np.testing.assert_array_equal(mine.samples.score, theirs.samples.score)


def test_dp_sgd_defenses_show_the_empirical_epsilon_beside_the_accountants(written, results):
    found = [e for e in results.empirical_epsilon if e.defense == "dp:8"]
    assert {(e.framework, e.output) for e in found} == {(fw, o) for fw in FRAMEWORKS for o in ("backbone", "head")}
    e = next(e for e in found if (e.framework, e.output) == ("simclr", "head"))
    assert e.accountant == 8.0 and len(e.per_seed) == 3 and e.max_provable == pytest.approx(metrics.max_provable_epsilon(60, 60))
    assert e.spent == pytest.approx([7.90, 7.91, 7.92])  # each seed's encoder, as its accountant spent
    record = next(r for r in results.records if (r.framework, r.output, r.defense, r.seed) == ("simclr", "head", "dp:8", 0)
                  and results_label(r) == e.attack)
    assert e.per_seed[0] == pytest.approx(metrics.empirical_epsilon(record.samples.score, record.samples.is_member))
    text = (written[0] / "report.md").read_text()
    defenses = text[text.index("## Defenses"):text.index("## Figures")]
    assert "accountant's ε" in defenses and "no attack can prove more than ε" in defenses
    assert re.search(r"\| simclr \| dp:8 \| 3 \| .* \| 8 \(spent 7\.90, 7\.91, 7\.92\) \| \d+\.\d\d, ", defenses)


def results_label(record):
    from lpla_fast.study.report_data import record_label

    return record_label(record)


def test_the_ladder_table_shows_the_strongest_attack_the_ladder_ran():
    # The strongest global attack of the main table was not run along the ladder: the ladder table
    # takes the strongest of those it ran, so no ladder row is left without its number.
    from lpla_fast.study.report import ReportData, _tradeoff

    results = make_results()
    for fw in FRAMEWORKS:
        for seed in SEEDS:
            for output in ("backbone", "head"):
                results.records.append(_record(fw, output, "main", "encodermi-s", 8, 3.0, seed))
    assert "encodermi-s" not in {r.attack for r in results.records if r.study == "ladder"}
    data = ReportData(results)
    assert data.strongest_global["head"] == "encodermi-s"
    table = _tradeoff(data)
    head = table[table.index("### Architecture ladder: head output"):]
    header = next(line for line in head.splitlines() if line.startswith("| architecture"))
    assert "EncoderMI-S" not in header
    rows = [line for line in head.splitlines() if line.startswith("| `")]
    assert rows and all(line.split(" | ")[5] != "—" for line in rows)
