"""The main job end to end (`lpla experiment --quick`) and `lpla attack` on real files."""

import json
import math
import shutil

import numpy as np
import pytest
import torch

from lpla_fast.attacks.calibration import LpLACalibration
from lpla_fast.cli import main
from lpla_fast.encoders import head_views
from lpla_fast.study import (RESULTS_VERSION, AuditSplit, ExperimentConfig, Results, StudyConfig, load_results,
                             run_experiment)

PLOTS = ("forest.png", "roc-simclr.png", "roc-byol.png", "leakage_vs_quality.png", "auc_vs_k.png", "auc_vs_p.png")


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("quick") / "run"
    assert main(["experiment", "--quick", "--out", str(out), "--no-progress"]) == 0
    return out


def test_quick_experiment_writes_every_output(quick_run):
    for name in ("config.json", "splits.json", "results.json", "report.md", "calibration-simclr.json",
                 "calibration-simclr-head.json", "calibration-byol.json", "calibration-byol-head.json"):
        assert (quick_run / name).is_file(), name
    for name in PLOTS:
        assert (quick_run / "plots" / name).stat().st_size > 1000, name
    for framework in ("simclr", "byol"):
        for model in ("seed0", "seed1", "seed2", "seed3", "shadow", "shadow-complement"):
            assert (quick_run / "encoders" / f"{framework}-small_cnn-8" / model / "model.safetensors").is_file()
    assert (quick_run / "encoders" / "simclr-small_cnn-4" / "seed0" / "model.safetensors").is_file()
    assert (quick_run / "encoders" / "simclr-small_cnn-8-epochs0.5" / "seed0" / "model.safetensors").is_file()


def test_results_hold_every_study_with_intervals(quick_run):
    results = load_results(str(quick_run))
    assert results.version == RESULTS_VERSION and results.experiment == ExperimentConfig.quick()
    assert {r.study for r in results.records} == {"main", "references", "p", "k", "knowledge", "characteristic",
                                                     "ladder", "defense"}
    main_records = results.select(study="main")
    # 2 frameworks x 2 seeds x 2 outputs x 6 attacks, every one scored.
    assert len(main_records) == 48 and all(r.metrics for r in main_records)
    assert {r.seed for r in main_records} == {0, 1}
    for r in main_records:
        m = r.metrics
        assert 0 <= r.auc <= 1 and m["ci"]["auc"][0] <= r.auc <= m["ci"]["auc"][1]
        assert set(m["tpr_at_fpr"]) == {"0.001", "0.01", "0.1"}
        assert len(r.roc["fpr"]) == len(r.roc["tpr"]) > 2
        assert r.backbone == "small_cnn" and r.width == 8 and r.defense is None
    assert {r.p for r in results.select(study="p")} == {1.0, 2.0, math.inf}
    assert {r.k for r in results.select(study="k")} == {1, 2, 4}
    # EncoderMI cannot work with one view, nor at the reference level: recorded, not hidden.
    skipped = {(r.attack, r.study) for r in results.records if r.skipped}
    assert ("encodermi-t", "k") in skipped and ("encodermi-t", "knowledge") in skipped
    headline = [("target", 0), ("target", 1), ("reference", 2), ("reference", 3), ("shadow", 0), ("shadow", 1)]
    assert [(e.framework, e.role, e.seed) for e in results.encoders] == [
        ("simclr", role, seed) for role, seed in headline] + [("byol", role, seed) for role, seed in headline] + [
        ("simclr", "target", 0), ("simclr", "target", 0)]
    for target in results.targets():
        assert 0 <= target.feature_quality["backbone"]["linear_probe"] <= 1
        assert target.epochs in (1, 2) and target.audit_split is not None
    assert [(e.width, e.defense) for e in results.targets()][-2:] == [(4, None), (8, "epochs:0.5")]
    assert results.timings["total"] > 0 and "train" in results.timings["stages"]
    assert ExperimentConfig.from_dict(json.loads((quick_run / "config.json").read_text())) == ExperimentConfig.quick()


def test_reference_ladder_and_defense_tables(quick_run):
    results = load_results(str(quick_run))
    # Reference-calibrated attacks at K = 1 and K = 4, for every statistic, with 2 references each.
    refs = results.select(study="references", framework="simclr", output="head", seed=0)
    assert {(r.attack, r.params["statistic"], r.params["online"], r.k) for r in refs} == {
        (a, s, o, k) for a, o in (("lira", True), ("lira", False), ("rmia", True)) for s in ("lpla", "encodermi")
        for k in (1, 4)}
    assert all(r.metrics for r in refs if r.k == 4)
    assert all("K >= 2" in r.skipped for r in refs if r.params["statistic"] == "encodermi" and r.k == 1)
    # LpLA's characteristics at K = 1 and K = 4; those that compare views need K >= 2.
    chars = results.select(study="characteristic", framework="byol", output="backbone", seed=1)
    assert {(r.params["characteristic"], r.k, r.skipped is None) for r in chars} == {
        ("view", 1, True), ("view", 4, True), ("mean_spread", 1, False), ("mean_spread", 4, True),
        ("resultant", 1, False), ("resultant", 4, True), ("multi_p", 1, True), ("multi_p", 4, True),
        ("joint", 1, True), ("joint", 4, True), ("select", 1, True), ("select", 4, True), ("budget", 1, True),
        ("budget", 4, True)}
    # The ladder: width 4 and the headline's width 8, held-out halves at the audit level.
    ladder = results.select(study="ladder", framework="simclr", attack="lpla", k=4, output="head")
    assert {r.width for r in ladder} == {4, 8} and all(r.evaluated == "audit_halves" for r in ladder)
    # Defenses: undefended, two release-time ones (on the headline targets), one training-time.
    defended = {r.defense for r in results.select(study="defense", attack="lpla", k=4, output="head")}
    assert defended == {None, "normalize", "noise:0.5", "epochs:0.5"}
    normalized = results.select(study="defense", defense="normalize", attack="norm", k=4, output="head")
    assert all(abs(r.auc - 0.5) < 0.25 for r in normalized)  # every norm is 1 (up to rounding): chance
    target = results.targets()[0]
    assert set(target.defended_quality) == {"normalize", "noise:0.5"}


def test_report_has_the_tables_and_definitions(quick_run):
    text = (quick_run / "report.md").read_text()
    for heading in ("## Feature quality and leakage", "## Attacks (K=4", "### Norm order p", "### Query budget K",
                    "### Knowledge level", "## Definitions", "## Timings"):
        assert heading in text, heading
    assert "TPR@0.1% FPR" in text and "our own definition" in text
    # The comparisons come first, headed by the forest plot; 40 non-members support no TPR at 0.1 %.
    assert text.index("## Paired comparisons") < text.index("## Attacks (K=4")
    assert text.index("![forest](plots/forest.png)") == text.index("![")
    assert "DeLong" in text and "p (Holm)" in text and "Power: with 40 members" in text
    headline = text[text.index("## Attacks (K=4"):]
    assert "| — (n=40) | — (n=40) |" in headline


def test_results_hold_the_comparisons_typed(quick_run):
    from lpla_fast.study.results import Comparison

    results = load_results(str(quick_run))
    attack = [c for c in results.comparisons if c.claim == "attack"]
    # 2 frameworks x 2 outputs x (K = 4 and K = 1), each on the same targets and samples.
    assert len(attack) == 8 and all(isinstance(c, Comparison) and c.paired for c in attack)
    assert all(len(c.per_seed) == 2 for c in attack)
    assert {c.claim for c in results.comparisons} == {"attack", "defense", "ladder"}
    assert all(c.p_holm is not None and c.p_holm >= c.p_value for c in results.comparisons)
    assert results.power is not None and results.power.seeds == 2 and results.pooled


def test_saved_calibration_scores_like_the_attack(quick_run):
    calibration = LpLACalibration.load(quick_run / "calibration-simclr.json")
    assert calibration.meta["knowledge"] == "shadow" and calibration.dim == 32
    norms, scores = calibration.score(torch.randn(5, 4, 32))
    assert norms.shape == (5, 4) and scores.shape == (5,)


def test_rerun_reuses_finished_encoders(quick_run, tmp_path):
    shutil.copytree(quick_run / "encoders", tmp_path / "encoders")
    config = ExperimentConfig.quick(frameworks=("simclr",), outputs=("backbone",), save_embeddings=True,
                                    study=StudyConfig(attacks=("lpla",), k=2, ks=(2,), ps=(2.0,), levels=("shadow",),
                                                      sweep_attacks=("lpla",), n_bootstrap=0, reference_ks=(2,)))
    results = run_experiment(config, str(tmp_path), progress=False)
    assert all(e.reused for e in results.encoders)
    assert results.records[0].metrics["ci"] is None
    members = np.load(tmp_path / "embeddings" / "simclr-small_cnn-8" / "seed0-target_members-backbone.npy")
    assert members.shape == (40, 2, 32)


def test_head_views_equal_querying_the_head():
    from lpla_fast.encoders import TrainConfig, query_views, train_encoder

    images = torch.rand(12, 3, 16, 16)
    encoder = train_encoder(images, TrainConfig(framework="simclr", width=8, epochs=0, device="cpu"), progress=False)
    backbone = query_views(encoder, images, K=3, seed=5)
    head = query_views(encoder, images, K=3, seed=5, output="head")
    torch.testing.assert_close(head_views(encoder, backbone), head, rtol=1e-4, atol=1e-5)


def test_a_targets_references_leave_out_its_complement():
    from lpla_fast.study.groups import reference_models

    assert reference_models(0, 4) == [2, 3] and reference_models(3, 4) == [0, 1]
    assert reference_models(1, 8) == [2, 3, 4, 5, 6, 7] and reference_models(4, 5) == [0, 1, 2, 3]
    assert ExperimentConfig(seeds=4, references=2).pool_models == 4
    assert ExperimentConfig(seeds=2, references=3).pool_models == 6 and ExperimentConfig(seeds=3).pool_models == 3


def test_audit_split_is_disjoint_and_covers_both_sets():
    split = AuditSplit.draw(41, 30, seed=3)
    members = np.concatenate([split.bank, split.calibration_members, split.eval_members])
    assert np.array_equal(np.sort(members), np.arange(41))
    assert np.array_equal(np.sort(np.concatenate([split.calibration_nonmembers, split.eval_nonmembers])),
                          np.arange(30))
    assert len(split.eval_members) == 21 and len(split.eval_nonmembers) == 15


def test_results_round_trip_and_the_loader_refuses_other_files(quick_run, tmp_path):
    results = load_results(str(quick_run))
    again = Results.from_dict(json.loads(json.dumps(results.to_dict())))
    assert again == results
    # A version-2 file (before the comparisons) still loads, without them.
    v2 = {k: v for k, v in json.loads((quick_run / "results.json").read_text()).items()
          if k not in ("comparisons", "pooled", "power", "empirical_epsilon")}
    (tmp_path / "v2.json").write_text(json.dumps(dict(v2, version=2)))
    older = load_results(str(tmp_path / "v2.json"))
    assert older.comparisons == [] and older.power is None and len(older.records) == len(results.records)
    old = dict(json.loads((quick_run / "results.json").read_text()), version=1)
    (tmp_path / "old.json").write_text(json.dumps(old))
    with pytest.raises(ValueError, match="results version 1"):
        load_results(str(tmp_path / "old.json"))
    (tmp_path / "other.json").write_text(json.dumps({"schema": "something else"}))
    with pytest.raises(ValueError, match="not an lpla_fast results file"):
        load_results(str(tmp_path / "other.json"))
    with pytest.raises(FileNotFoundError, match="no results file"):
        load_results(str(tmp_path / "missing"))


def test_attack_metadata_lives_on_the_classes():
    from lpla_fast.attacks import ATTACKS, attack_class
    from lpla_fast.attacks.base import LEVELS

    for name in ATTACKS:
        cls = attack_class(name)
        assert cls.label and set(cls.levels) <= set(LEVELS) and isinstance(cls.takes_p, bool)
    assert attack_class("lpla").levels == LEVELS and attack_class("lpla").takes_p
    assert attack_class("encodermi-t").label == "EncoderMI-T" and "reference" not in attack_class("knn").levels


def test_config_round_trips_with_infinite_p():
    config = ExperimentConfig(frameworks=("moco",), study=StudyConfig(ps=(1.5, math.inf)))
    assert ExperimentConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config


@pytest.mark.parametrize("kwargs, message", [
    ({"frameworks": ("dino2",)}, "unknown framework"),
    ({"frameworks": ()}, "frameworks is empty"),
    ({"outputs": ("logits",)}, "outputs must be"),
    ({"study": {"attacks": ("lira",)}}, "unknown attack"),
    ({"study": {"ks": (0, 2)}}, "query budgets"),
    ({"study": {"ps": (-1.0,)}}, "p must be in"),
])
def test_bad_config_is_refused(kwargs, message):
    if "study" in kwargs:
        with pytest.raises(ValueError, match=message):
            StudyConfig(**kwargs["study"])
    else:
        with pytest.raises(ValueError, match=message):
            ExperimentConfig(**kwargs)


# --- lpla attack ------------------------------------------------------------------------------------

def _views(rng, n, scale, k=4, d=16):
    return (rng.normal(size=(n, k, d)) * scale).astype(np.float32)


@pytest.fixture()
def embedding_files(tmp_path):
    """Members' embeddings are 1.4x larger: a norm signal LpLA must find."""
    rng = np.random.default_rng(0)
    arrays = {"members": _views(rng, 60, 1.4), "nonmembers": _views(rng, 60, 1.0),
              "shadow-members": _views(rng, 60, 1.4), "shadow-nonmembers": _views(rng, 60, 1.0),
              "reference": _views(rng, 60, 1.0), "shadow-reference": _views(rng, 60, 1.0)}
    paths = {}
    for name, array in arrays.items():
        paths[name] = tmp_path / f"{name}.npy"
        np.save(paths[name], array)
    return paths


def _attack_args(paths, out, **replaced):
    args = ["attack", "--out", str(out), "--bootstrap", "50", "--no-progress"]
    for name, path in {**paths, **replaced}.items():
        args += [f"--{name}", str(path)]
    return args


def test_attack_on_embedding_files(embedding_files, tmp_path):
    out = tmp_path / "attack"
    assert main(_attack_args(embedding_files, out)) == 0
    for name in ("results.json", "report.md", "calibration.json", "plots/roc-target.png", "plots/auc_vs_k.png",
                 "plots/auc_vs_p.png"):
        assert (out / name).is_file(), name
    results = load_results(str(out))
    assert results.command == "attack" and results.encoders == []
    # These files' members differ by norm level alone: the per-view characteristic sees it, and
    # so does the default, which chooses what it models from the shadow's members and non-members.
    lpla = results.select(study="main", attack="lpla")[0]
    view = [r for r in results.select(study="characteristic", k=4) if r.params["characteristic"] == "view"][0]
    assert lpla.k == 4 and view.auc > 0.85 and results.select(study="main", attack="norm")[0].auc > 0.85
    assert lpla.auc > 0.85
    # The saved calibration reproduces the attack's scores through the fused op.
    calibration = LpLACalibration.load(out / "calibration.json")
    members = torch.from_numpy(np.load(embedding_files["members"]))
    assert calibration.characteristic in ("view", "mean_spread", "multi_p", "joint")
    assert lpla.params["characteristic"] == "auto"
    assert len(calibration.score(members)[1]) == len(members)


def test_attack_without_shadow_runs_at_the_reference_level(embedding_files, tmp_path):
    files = {k: v for k, v in embedding_files.items() if k in ("members", "nonmembers", "reference")}
    out = tmp_path / "reference"
    assert main(_attack_args(files, out) + ["--level", "reference", "--attacks", "lpla", "norm"]) == 0
    results = load_results(str(out))
    assert {r.level for r in results.select(study="main")} == {"reference"}


def _bad_file(tmp_path, name, array):
    path = tmp_path / name
    np.save(path, array)
    return path


@pytest.mark.parametrize("flag, make, message", [
    ("shadow-members", lambda: np.ones((20, 4, 8), np.float32), "D=8"),
    ("members", lambda: np.ones((20, 0, 16), np.float32), "K=0"),
    ("members", lambda: np.ones((0, 4, 16), np.float32), "empty"),
    ("nonmembers", lambda: np.full((20, 4, 16), np.nan, np.float32), "NaN"),
    ("members", lambda: np.ones((20, 4, 16), np.int64), "floating point"),
    ("members", lambda: np.array([{"a": 1}], dtype=object), "not a plain numeric"),
])
def test_attack_bad_input_gives_a_clear_error(embedding_files, tmp_path, capsys, flag, make, message):
    bad = _bad_file(tmp_path, "bad.npy", make())
    assert main(_attack_args(embedding_files, tmp_path / "out", **{flag: bad})) == 2
    assert message in capsys.readouterr().err


def test_attack_missing_inputs_are_named(embedding_files, tmp_path, capsys):
    assert main(_attack_args(embedding_files, tmp_path / "out", members=tmp_path / "nope.npy")) == 2
    assert "--members: no such file" in capsys.readouterr().err
    files = {k: v for k, v in embedding_files.items() if k != "nonmembers"}
    assert main(_attack_args(files, tmp_path / "out")) == 2
    assert "--nonmembers is required" in capsys.readouterr().err
    files = {k: v for k, v in embedding_files.items() if k in ("members", "nonmembers")}
    assert main(_attack_args(files, tmp_path / "out")) == 2
    assert "--shadow-members" in capsys.readouterr().err


def test_attack_on_an_encoder_checkpoint(quick_run, tmp_path, capsys):
    out = tmp_path / "from-encoder"
    encoders = quick_run / "encoders" / "simclr-small_cnn-8"
    args = ["attack", "--encoder", str(encoders / "seed0"), "--shadow-encoder", str(encoders / "shadow"),
            "--shadow-complement", str(encoders / "shadow-complement"), "--splits", str(quick_run / "splits.json"),
            "--k", "4", "--ks", "4", "--ps", "2", "--attacks", "lpla", "norm", "--bootstrap", "0",
            "--out", str(out), "--no-progress"]
    lone = [a for a in args if a != "--shadow-encoder" and a != str(encoders / "shadow")]
    assert main(lone[:-3] + ["--out", str(tmp_path / "refused"), "--no-progress"]) == 2
    assert "--shadow-complement pairs with --shadow-encoder" in capsys.readouterr().err
    assert not (tmp_path / "refused").exists()
    assert main(args) == 0
    attacked = load_results(str(out))
    experiment = load_results(str(quick_run))
    # Same encoders, same splits, same view seeds: the experiment's LpLA numbers again.
    def lpla_auc(results):
        return results.select(study="main", attack="lpla", output="backbone", seed=0)[0].auc
    assert lpla_auc(attacked) == pytest.approx(lpla_auc(experiment))


def test_a_refused_experiment_leaves_nothing_on_disk(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["experiment", "--dataset", "cifar10", "--out", str(out), "--no-progress"]) == 2
    assert "--data-root" in capsys.readouterr().err and not out.exists()
    assert main(["experiment", "--quick", "--train-defenses", "dp:8", "--out", str(out), "--no-progress"]) == 2
    assert "per-sample terms" in capsys.readouterr().err and not out.exists()
