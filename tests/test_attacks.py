"""Attacks on synthetic embeddings whose answer is known.

Norm setup: every view embedding is a random direction scaled so that log ||z||_2 is
N(mu, sigma^2), independently per view, with mu = shift for members and 0 for
non-members. For K views the likelihood-ratio score is monotone in the mean of the K
log-norms, so the optimal AUC is Phi(shift * sqrt(K) / (sigma * sqrt(2))).
"""

import json
import math

import numpy as np
import pytest
import torch
from scipy.stats import norm

from lpla_fast.attacks import ATTACKS, AttackerKnowledge, LpLA, attack_from_dict, make_attack
from lpla_fast.attacks.knn import build_index, gpu_available, neighbour_similarity
from lpla_fast.attacks.calibration import LpLACalibration
from lpla_fast.metrics import evaluate, roc_auc

D = 16
SIGMA = 0.5


def norm_views(n, k, mu, scale=1.0, seed=0, sigma=SIGMA):
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(n, k, D, generator=g, dtype=torch.float64)
    u = u / u.norm(dim=-1, keepdim=True)
    log_norm = mu + sigma * torch.randn(n, k, 1, generator=g, dtype=torch.float64)
    return (u * torch.exp(log_norm) * scale).float()


def norm_world(k, shift, n=1500, target_scale=3.0):
    """Shadow knowledge and target members / non-members; the target's norms are 3x larger."""
    knowledge = AttackerKnowledge(
        level="shadow",
        shadow_members=norm_views(n, k, shift, seed=1),
        shadow_nonmembers=norm_views(n, k, 0.0, seed=2),
        shadow_reference=norm_views(n, k, 0.0, seed=3),
        target_reference=norm_views(n, k, 0.0, target_scale, seed=4),
    )
    return knowledge, norm_views(n, k, shift, target_scale, seed=5), norm_views(n, k, 0.0, target_scale, seed=6)


def auc_of(attack, members, nonmembers):
    scores = np.concatenate([attack.score(members), attack.score(nonmembers)])
    labels = np.r_[np.ones(len(members), bool), np.zeros(len(nonmembers), bool)]
    return roc_auc(scores, labels)


def analytic_auc(shift, k):
    return norm.cdf(abs(shift) * math.sqrt(k) / (SIGMA * math.sqrt(2)))


# --- LpLA -------------------------------------------------------------------------------

@pytest.mark.parametrize("k", [1, 4])
def test_lpla_auc_matches_the_analytic_auc(k):
    knowledge, members, nonmembers = norm_world(k, shift=0.3)
    attack = LpLA(characteristic="view").fit(knowledge)
    assert auc_of(attack, members, nonmembers) == pytest.approx(analytic_auc(0.3, k), abs=0.03)


def test_lpla_learns_the_direction_when_the_shift_is_flipped():
    knowledge, members, nonmembers = norm_world(4, shift=-0.3)
    assert auc_of(LpLA(characteristic="view").fit(knowledge), members, nonmembers) == pytest.approx(analytic_auc(0.3, 4), abs=0.03)


def test_lpla_without_signal_has_auc_one_half_within_its_interval():
    knowledge, members, nonmembers = norm_world(4, shift=0.0, n=800)
    attack = LpLA(characteristic="view").fit(knowledge)
    scores = np.concatenate([attack.score(members), attack.score(nonmembers)])
    result = evaluate(scores, np.r_[np.ones(800), np.zeros(800)], n_bootstrap=500, seed=0)
    assert result["auc"] == pytest.approx(0.5, abs=0.04)
    lo, hi = result["ci"]["auc"]
    assert lo <= 0.5 <= hi


def test_standardization_transfers_the_shadow_threshold_to_a_target_with_another_scale():
    knowledge, members, nonmembers = norm_world(4, shift=0.3)
    optimal = norm.cdf(0.3 * math.sqrt(4) / (2 * SIGMA))  # best balanced accuracy, equal variances

    def accuracy(attack):
        return (attack.predict(members).mean() + (~attack.predict(nonmembers)).mean()) / 2

    assert accuracy(LpLA(characteristic="view", standardize=True).fit(knowledge)) == pytest.approx(optimal, abs=0.04)
    assert accuracy(LpLA(characteristic="view", standardize=False).fit(knowledge)) < 0.55  # the 3x scale breaks the threshold


@pytest.mark.parametrize(
    "params",
    [dict(p=1.0), dict(p=math.inf), dict(p=3.5), dict(statistic="norm"), dict(density="kde"),
     dict(aggregation="mean"), dict(density="kde", aggregation="mean")],
)
def test_lpla_variants_find_the_signal(params):
    knowledge, members, nonmembers = norm_world(4, shift=0.3, n=600)
    assert auc_of(LpLA(characteristic="view", **params).fit(knowledge), members, nonmembers) > 0.7


def test_lpla_scores_go_through_the_saved_calibration(tmp_path):
    knowledge, members, _ = norm_world(4, shift=0.3, n=300)
    attack = LpLA(characteristic="view").fit(knowledge)
    assert isinstance(attack.calibration_, LpLACalibration)
    attack.calibration_.save(tmp_path / "calibration.json")
    reloaded = LpLACalibration.load(tmp_path / "calibration.json")
    np.testing.assert_array_equal(reloaded.score(members)[1].double().numpy(), attack.score(members))


def test_lpla_mean_aggregation_calibration_round_trips(tmp_path):
    knowledge, members, _ = norm_world(4, shift=0.3, n=300)
    attack = LpLA(characteristic="view", aggregation="mean").fit(knowledge)
    attack.calibration_.save(tmp_path / "calibration.json")
    reloaded = LpLACalibration.load(tmp_path / "calibration.json")
    assert reloaded.aggregation == "mean"
    np.testing.assert_allclose(reloaded.score(members)[1].double().numpy(), attack.score(members), rtol=1e-6)


@pytest.mark.parametrize("shift", [0.6, -0.6])
@pytest.mark.parametrize("density", ["gaussian", "kde"])
def test_lpla_reference_only_is_two_sided(shift, density):
    knowledge, members, nonmembers = norm_world(4, shift=shift, n=600)
    reference_only = AttackerKnowledge(level="reference", target_reference=knowledge.target_reference)
    attack = LpLA(characteristic="view", density=density).fit(reference_only)
    assert attack.mode_ == "reference"
    assert auc_of(attack, members, nonmembers) > 0.7
    # About reference_fpr of the known non-members are flagged.
    assert nonmembers.shape[0] * 0.05 < attack.predict(nonmembers).sum() < nonmembers.shape[0] * 0.2


def test_lpla_audit_mode_calibrates_on_the_target_itself():
    _, members, nonmembers = norm_world(4, shift=0.3, n=600)
    knowledge = AttackerKnowledge(level="audit", calibration_members=norm_views(600, 4, 0.3, 3.0, seed=11),
                                  calibration_nonmembers=norm_views(600, 4, 0.0, 3.0, seed=12))
    attack = LpLA(characteristic="view").fit(knowledge)
    assert attack.mode_ == "audit"
    assert auc_of(attack, members, nonmembers) == pytest.approx(analytic_auc(0.3, 4), abs=0.04)


# --- EncoderMI ---------------------------------------------------------------------------

def similar_views(n, k, noise, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, D, generator=g) + noise * torch.randn(n, k, D, generator=g)


def similarity_world(member_noise=0.5, nonmember_noise=0.8, n=300, k=4, level="shadow"):
    sets = dict(shadow_members=similar_views(n, k, member_noise, 1),
                shadow_nonmembers=similar_views(n, k, nonmember_noise, 2),
                shadow_reference=similar_views(n, k, nonmember_noise, 3),
                target_reference=similar_views(n, k, nonmember_noise, 4))
    knowledge = AttackerKnowledge(level=level, **sets)
    return knowledge, similar_views(n, k, member_noise, 5), similar_views(n, k, nonmember_noise, 6)


@pytest.mark.parametrize("name", ["encodermi-t", "encodermi-v", "encodermi-s"])
def test_encodermi_separates_views_built_to_be_more_similar(name):
    knowledge, members, nonmembers = similarity_world()
    assert auc_of(make_attack(name).fit(knowledge), members, nonmembers) > 0.85


def test_encodermi_threshold_learns_the_direction():
    knowledge, members, nonmembers = similarity_world(member_noise=0.8, nonmember_noise=0.5)
    attack = make_attack("encodermi-t").fit(knowledge)
    assert attack.sign_ == -1.0
    assert auc_of(attack, members, nonmembers) > 0.85


def test_encodermi_needs_two_views_and_labelled_data():
    knowledge, members, _ = similarity_world(k=1, n=50)
    with pytest.raises(ValueError, match="K >= 2"):
        make_attack("encodermi-t").fit(knowledge)
    knowledge, members, _ = similarity_world(n=50)
    with pytest.raises(ValueError, match="reference"):
        make_attack("encodermi-v").fit(AttackerKnowledge(level="reference",
                                                         target_reference=knowledge.target_reference))
    attack = make_attack("encodermi-v").fit(knowledge)
    with pytest.raises(ValueError, match="same K"):
        attack.score(members[:, :3])
    with pytest.raises(ValueError, match="K >= 2"):
        attack.score(members[:, :1])


# --- nearest neighbours (FAISS) -------------------------------------------------------

def brute_force_similarity(bank, queries, k, metric):
    if metric == "cosine":
        sims = queries @ bank.T
    else:
        sims = -np.sqrt(((queries[:, None, :] - bank[None, :, :]) ** 2).sum(-1))
    return np.sort(sims, axis=1)[:, ::-1][:, :k].mean(axis=1)


@pytest.mark.parametrize("metric", ["cosine", "l2"])
@pytest.mark.parametrize("index", ["flat", "ivf"])
def test_faiss_neighbours_match_brute_force(metric, index):
    rng = np.random.default_rng(0)
    bank = rng.normal(size=(500, D)).astype(np.float32)
    queries = rng.normal(size=(60, D)).astype(np.float32)
    if metric == "cosine":
        bank /= np.linalg.norm(bank, axis=1, keepdims=True)
        queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    built = build_index(bank, metric, index, nlist=8, nprobe=8, use_gpu=False)  # nprobe == nlist: exact
    got = neighbour_similarity(built, queries, 5, metric)
    np.testing.assert_allclose(got, brute_force_similarity(bank, queries, 5, metric), rtol=1e-4, atol=1e-4)


def test_knn_audit_mode_flags_samples_near_the_training_set():
    rng = np.random.default_rng(0)
    training = torch.from_numpy(rng.normal(size=(400, 1, D)).astype(np.float32))

    def near_training(rows, seed):  # members: fresh views of training samples
        g = torch.Generator().manual_seed(seed)
        return training[rows] + 0.3 * torch.randn(len(rows), 2, D, generator=g)

    def far(n, seed):
        return torch.randn(n, 2, D, generator=torch.Generator().manual_seed(seed))

    knowledge = AttackerKnowledge(level="audit", target_training=training[:300],
                                  calibration_members=near_training(np.arange(0, 100), 1),
                                  calibration_nonmembers=far(100, 2))
    attack = make_attack("knn", k=1, metric="l2").fit(knowledge)
    assert attack.sign_ == 1.0  # nearer = member, learned
    assert auc_of(attack, near_training(np.arange(100, 300), 3), far(200, 4)) > 0.95


def test_knn_shadow_mode_runs_with_an_ivf_index():
    knowledge, members, nonmembers = similarity_world(n=200)
    attack = make_attack("knn", index="ivf", nlist=4, nprobe=2).fit(knowledge)
    assert attack.score(members).shape == (200,)


# --- every attack -----------------------------------------------------------------------

@pytest.mark.parametrize("name", ATTACKS)
def test_saved_state_round_trips_to_identical_scores(name):
    knowledge, members, _ = similarity_world(n=120)
    attack = make_attack(name).fit(knowledge)
    reloaded = attack_from_dict(json.loads(json.dumps(attack.to_dict())))
    np.testing.assert_array_equal(reloaded.score(members), attack.score(members))
    assert reloaded.threshold_ == attack.threshold_


def test_norm_threshold_learns_the_direction():
    for shift in (0.3, -0.3):
        knowledge, members, nonmembers = norm_world(4, shift=shift, n=600)
        attack = make_attack("norm").fit(knowledge)
        assert attack.sign_ == math.copysign(1.0, shift)
        assert auc_of(attack, members, nonmembers) > 0.75


def test_lpla_needs_what_it_uses():
    knowledge, _, _ = norm_world(2, shift=0.3, n=50)
    without_reference = AttackerKnowledge(level="shadow", shadow_members=knowledge.shadow_members,
                                          shadow_nonmembers=knowledge.shadow_nonmembers)
    with pytest.raises(ValueError, match="shadow_reference, target_reference"):
        LpLA(characteristic="view").fit(without_reference)
    LpLA(characteristic="view", standardize=False).fit(without_reference)


def test_bad_input_gives_clear_errors():
    good = norm_views(20, 2, 0.0)
    with pytest.raises(ValueError, match="embedding dimension differs"):
        AttackerKnowledge(level="shadow", shadow_members=good, shadow_nonmembers=good,
                          target_reference=torch.randn(20, 2, D + 1))
    with pytest.raises(ValueError, match="K=0"):
        AttackerKnowledge(level="shadow", shadow_members=torch.empty(20, 0, D), shadow_nonmembers=good)
    with pytest.raises(ValueError, match="shadow_members is empty"):
        AttackerKnowledge(level="shadow", shadow_members=torch.empty(0, 2, D), shadow_nonmembers=good)
    nan = good.clone()
    nan[3, 1, 0] = float("nan")
    with pytest.raises(ValueError, match="shadow_nonmembers contains NaN"):
        AttackerKnowledge(level="shadow", shadow_members=good, shadow_nonmembers=nan)
    attack = LpLA(characteristic="view", standardize=False).fit(AttackerKnowledge(level="shadow", shadow_members=good,
                                                            shadow_nonmembers=norm_views(20, 2, 0.1)))
    with pytest.raises(ValueError, match="D=17"):
        attack.score(torch.randn(5, 2, D + 1))
    with pytest.raises(ValueError, match="NaN"):
        attack.score(nan)
    with pytest.raises(ValueError, match="K=0"):
        attack.score(torch.empty(5, 0, D))
    with pytest.raises(ValueError, match="p must be"):
        LpLA(characteristic="view", p=0)
    with pytest.raises(ValueError, match="unknown attack"):
        make_attack("lira-typo")
    with pytest.raises(ValueError, match="level"):
        AttackerKnowledge(level="oracle")


@pytest.mark.cuda
@pytest.mark.skipif(not gpu_available(), reason="faiss has no GPU support here or sees no GPU")
def test_faiss_gpu_index_matches_the_cpu_index():
    rng = np.random.default_rng(0)
    bank = rng.normal(size=(500, D)).astype(np.float32)
    queries = rng.normal(size=(60, D)).astype(np.float32)
    cpu = neighbour_similarity(build_index(bank, "l2", "flat", use_gpu=False), queries, 5, "l2")
    gpu = neighbour_similarity(build_index(bank, "l2", "flat", use_gpu=True), queries, 5, "l2")
    np.testing.assert_allclose(gpu, cpu, rtol=1e-4, atol=1e-4)


def test_first_views_cuts_every_array_to_the_query_budget():
    knowledge, _, _ = norm_world(4, shift=0.3, n=50)
    cut = knowledge.first_views(2)
    assert cut.shadow_members.shape[1] == 2 and cut.target_reference.shape[1] == 2
    assert cut.target_training is None and cut.level == "shadow"


@pytest.mark.parametrize("characteristic", ["mean_spread", "resultant", "multi_p", "joint"])
def test_a_saved_calibration_of_any_characteristic_scores_like_the_attack(tmp_path, characteristic):
    from lpla_fast.attacks.calibration import LpLACalibration

    g = torch.Generator().manual_seed(3)
    views = lambda n, scale: torch.randn(n, 4, 12, generator=g) * scale  # noqa: E731
    knowledge = AttackerKnowledge(level="shadow", shadow_members=views(60, 1.2), shadow_nonmembers=views(60, 1.0),
                                  shadow_reference=views(50, 1.0), target_reference=views(50, 2.0))
    attack = LpLA(characteristic=characteristic).fit(knowledge)
    attack.calibration_.save(tmp_path / "c.json")
    loaded = LpLACalibration.load(tmp_path / "c.json")
    target = views(30, 2.0)
    norms, scores = loaded.score(target)
    assert norms.shape == (30, 4) and loaded.characteristic == characteristic
    np.testing.assert_allclose(scores.double().numpy(), attack.score(target), rtol=1e-5, atol=1e-6)
