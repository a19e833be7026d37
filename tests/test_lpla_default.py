"""LpLA's default characteristic, on synthetic view embeddings whose answer is known.

Two worlds (`lpla_fast.testing.membership_views`): in one, membership moves only the norm
level (members' view norms are larger, every view's direction is random: no agreement signal),
so the Bayes-optimal score is the mean view log-norm; in the other, membership moves only the
views' agreement (members' views point closer together, norms drawn alike), which the
resultant length measures. The default must see both. The attacker holds a shadow encoder's
members and non-members; the target's norms are 3x the shadow's (standardization removes that).
"""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.stats import norm

from lpla_fast.attacks import CHARACTERISTICS, AttackerKnowledge, LpLA, attack_from_dict, make_attack
from lpla_fast.attacks.calibration import VERSION, LpLACalibration
from lpla_fast.attacks.statistics import characteristic_columns, norm_characteristic
from lpla_fast.metrics import roc_auc
from lpla_fast.testing import membership_views, random_views

N = 3000  # per class, for fitting and for evaluation: an AUC's standard error is then about 0.007
NORM_ONLY = dict(level_shift=0.4, level_spread=0.3, view_sigma=0.5)
AGREEMENT_ONLY = dict(level_spread=0.3, view_sigma=0.5, angle_in=0.6, angle_out=0.8)
DATA = Path(__file__).parent / "data"


def world(k, signal, n=N, level="shadow", seed=0):
    """(knowledge, target members, target non-members) of one world."""
    def views(member, s, scale=1.0):
        return membership_views(np.full(n, member), k, seed=seed + s, scale=scale, **signal)

    if level == "shadow":
        knowledge = AttackerKnowledge(level="shadow", shadow_members=views(True, 1), shadow_nonmembers=views(False, 2),
                                      shadow_reference=views(False, 3), target_reference=views(False, 4, 3.0))
    elif level == "audit":
        knowledge = AttackerKnowledge(level="audit", calibration_members=views(True, 1, 3.0),
                                      calibration_nonmembers=views(False, 2, 3.0),
                                      target_reference=views(False, 4, 3.0))
    else:
        knowledge = AttackerKnowledge(level="reference", target_reference=views(False, 4, 3.0))
    return knowledge, views(True, 5, 3.0), views(False, 6, 3.0)


def auc(scores_members, scores_nonmembers):
    labels = np.r_[np.ones(len(scores_members), bool), np.zeros(len(scores_nonmembers), bool)]
    return roc_auc(np.r_[scores_members, scores_nonmembers], labels)


def attack_auc(attack, members, nonmembers):
    return auc(attack.score(members), attack.score(nonmembers))


def mean_log_norm(views):
    return torch.log(views.norm(dim=-1)).mean(dim=1).numpy()


@pytest.mark.parametrize("k", [1, 8])
def test_default_reaches_the_bayes_auc_where_membership_moves_only_the_norm_level(k):
    knowledge, members, nonmembers = world(k, NORM_ONLY)
    # The true likelihood ratio is monotone in the mean view log-norm; on these very samples:
    bayes = auc(mean_log_norm(members), mean_log_norm(nonmembers))
    analytic = norm.cdf(0.4 / math.sqrt(2 * (0.3 ** 2 + 0.5 ** 2 / k)))  # 0.686 (K = 1), 0.792 (K = 8)
    assert bayes == pytest.approx(analytic, abs=0.025)
    default = make_attack("lpla").fit(knowledge)
    assert attack_auc(default, members, nonmembers) == pytest.approx(bayes, abs=0.02)
    if k >= 2:  # what the earlier default (the resultant length) saw here: nothing
        assert attack_auc(LpLA(characteristic="budget").fit(knowledge), members, nonmembers) < 0.53


@pytest.mark.parametrize("k", [2, 8])
def test_default_matches_the_resultant_length_where_membership_moves_only_agreement(k):
    knowledge, members, nonmembers = world(k, AGREEMENT_ONLY)
    resultant = attack_auc(LpLA(characteristic="resultant").fit(knowledge), members, nonmembers)
    assert resultant > 0.7
    assert attack_auc(make_attack("lpla").fit(knowledge), members, nonmembers) == pytest.approx(resultant, abs=0.02)
    # The norm level alone sees nothing here.
    assert attack_auc(LpLA(characteristic="view").fit(knowledge), members, nonmembers) < 0.53


def test_default_records_what_it_chose_and_reloads_with_it():
    knowledge, members, _ = world(4, NORM_ONLY, n=300)
    attack = make_attack("lpla").fit(knowledge)
    assert attack.characteristic == "auto" and attack.chosen_ == "joint"
    assert attack.columns_ == ["mean", "std", "resultant", "mean@p=1", "mean@p=inf"]
    # The linear score's weights: here the level carries the signal, with a positive sign.
    assert list(attack.weights_) == attack.columns_ and attack.weights_["mean"] > 0
    state = json.loads(json.dumps(attack.to_dict()))
    assert state["state"]["characteristic"] == "joint" and state["state"]["weights"] == attack.weights_
    reloaded = attack_from_dict(state)
    assert reloaded.chosen_ == "joint" and reloaded.columns_ == attack.columns_
    np.testing.assert_array_equal(reloaded.score(members), attack.score(members))
    assert attack.calibration_.characteristic == "joint"


@pytest.mark.parametrize("k", [1, 4])
def test_select_cross_validates_what_exists_at_the_budget_and_records_it(k):
    knowledge, members, nonmembers = world(k, AGREEMENT_ONLY if k > 1 else NORM_ONLY, n=400)
    attack = LpLA(characteristic="select").fit(knowledge)
    # Spread and the resultant length need K >= 2 views.
    assert set(attack.selection_) == (set(CHARACTERISTICS) if k > 1 else {"view", "multi_p", "joint"})
    assert attack.chosen_ == max(attack.selection_, key=attack.selection_.get)
    if k > 1:  # agreement carries the signal: the resultant length or the joint vector wins
        assert attack.chosen_ in ("resultant", "joint")
    reloaded = attack_from_dict(json.loads(json.dumps(attack.to_dict())))
    assert reloaded.selection_ == attack.selection_
    np.testing.assert_array_equal(reloaded.score(members), attack.score(members))


def test_budget_is_the_earlier_default():
    for k, expected in ((1, "multi_p"), (2, "resultant")):
        knowledge, _, _ = world(k, NORM_ONLY, n=100)
        assert LpLA(characteristic="budget").fit(knowledge).chosen_ == expected


@pytest.mark.parametrize("k", [1, 8])
def test_default_at_the_audit_level(k):
    knowledge, members, nonmembers = world(k, NORM_ONLY, n=1500, level="audit")
    bayes = auc(mean_log_norm(members), mean_log_norm(nonmembers))
    assert attack_auc(make_attack("lpla").fit(knowledge), members, nonmembers) == pytest.approx(bayes, abs=0.03)


@pytest.mark.parametrize("k", [1, 8])
def test_default_with_reference_only_knowledge_is_a_two_sided_score_over_the_joint_vector(k):
    knowledge, members, nonmembers = world(k, NORM_ONLY, n=1500, level="reference")
    attack = make_attack("lpla").fit(knowledge)
    assert attack.chosen_ == "joint" and attack.selection_ is None  # no labels to choose by
    g = attack.gaussians_
    assert len(g["mean_in"]) == len(characteristic_columns("joint", 2.0, k))
    np.testing.assert_allclose(g["mean_in"], g["mean_out"])  # same centre, wider: atypical = member
    assert 0.07 < attack.predict(knowledge.target_reference).mean() < 0.13  # reference_fpr = 0.1
    # Members sit off the non-members' centre, so the two-sided score finds them (less well
    # than a one-sided one could: the side is not known).
    assert attack_auc(attack, members, nonmembers) > 0.53


def test_joint_characteristic_columns():
    assert characteristic_columns("joint", 2.0, 8) == ("mean", "std", "resultant", "mean@p=1", "mean@p=inf")
    assert characteristic_columns("joint", 2.0, 1) == ("mean", "mean@p=1", "mean@p=inf")
    assert characteristic_columns("joint", 3.0, 2) == ("mean", "std", "resultant", "mean@p=1", "mean@p=2",
                                                       "mean@p=inf")
    views = random_views(30, 4, 12, dtype=torch.float64, seed=1)
    joint = norm_characteristic(views, "joint", 2.0, log=True)
    np.testing.assert_allclose(joint[:, :2], norm_characteristic(views, "mean_spread", 2.0, log=True), rtol=1e-12)
    np.testing.assert_allclose(joint[:, 2:3], norm_characteristic(views, "resultant", 2.0, log=True), rtol=1e-12)
    np.testing.assert_allclose(joint[:, 3:], norm_characteristic(views, "multi_p", 2.0, log=True)[:, [0, 2]],
                               rtol=1e-12)


# --- the saved calibration ---------------------------------------------------------------

@pytest.mark.parametrize("k", [1, 4])
def test_a_joint_calibration_scores_like_the_attack_and_refuses_another_budget(tmp_path, k):
    knowledge, members, _ = world(k, NORM_ONLY, n=300)
    attack = LpLA(characteristic="joint").fit(knowledge)
    attack.calibration_.save(tmp_path / "c.json")
    saved = json.loads((tmp_path / "c.json").read_text())
    assert saved["version"] == VERSION == 3 and saved["characteristic"] == "joint"
    assert saved["meta"]["columns"] == attack.columns_ and len(saved["ref_center"]) == len(attack.columns_)
    loaded = LpLACalibration.load(tmp_path / "c.json")
    norms, scores = loaded.score(members)
    assert norms.shape == (300, k)
    np.testing.assert_allclose(scores.double().numpy(), attack.score(members), rtol=1e-6, atol=1e-6)
    other = torch.cat([members, members], dim=1) if k == 1 else members[:, :1]
    with pytest.raises(ValueError, match="query budget"):
        loaded.score(other)


@pytest.mark.parametrize("characteristic", ["view", "resultant"])
def test_version_2_calibration_files_still_load_and_score_as_before(characteristic):
    """Files written by the previous release (version 2), with the scores it gave."""
    d = json.loads((DATA / f"calibration-v2-{characteristic}.json").read_text())
    assert d["version"] == 2
    expected = d["meta"]["scores_of_random_views_20_4_12_scale_2_seed_5"]
    calibration = LpLACalibration.from_dict(d)
    assert calibration.characteristic == characteristic
    _, scores = calibration.score(random_views(20, 4, 12, scale=2.0, seed=5))
    np.testing.assert_allclose(scores.double().numpy(), expected, rtol=1e-6, atol=1e-7)
    version_1 = {k: v for k, v in d.items() if k not in ("characteristic", "gaussians", "ref_center", "ref_scale")}
    if characteristic == "view":  # version 1 knew only the per-view characteristic
        _, scores = LpLACalibration.from_dict(dict(version_1, version=1)).score(random_views(20, 4, 12, scale=2.0,
                                                                                            seed=5))
        np.testing.assert_allclose(scores.double().numpy(), expected, rtol=1e-6, atol=1e-7)
