"""Reference-calibrated attacks (LiRA, RMIA) and LpLA's characteristics, on synthetic
embeddings whose answer is known.

The world: candidate i has its own norm level b_i ~ N(0, LEVEL_SPREAD^2), the same under
every encoder. Under an encoder that trained on it, its views' log-norms shift by DELTA:
log ||z_ik||_2 = b_i + DELTA * member + SIGMA * eps_ik, independently per view and encoder.
The per-sample spread of levels (2.0) dwarfs the membership shift (0.3), so one global
threshold is near chance: its AUC is Phi(DELTA / sqrt(2 (LEVEL_SPREAD^2 + SIGMA^2 / K))).
Knowing b_i, the best test compares the view-mean log-norm with b_i, and the Bayes-optimal
AUC is Phi(DELTA sqrt(K) / (SIGMA sqrt(2))). Members' views also agree more (a smaller
angular noise, on top of a per-sample baseline), so the view-agreement statistics carry a
signal too.
"""

import json
import math

import numpy as np
import pytest
import torch
from scipy.stats import multivariate_normal, norm

from lpla_fast.attacks import (REFERENCE_ATTACKS, REFERENCE_LEVEL, STATISTICS, AttackerKnowledge, LiRA, LpLA,
                               ReferenceKnowledge, RMIA, attack_from_dict, draw_reference_masks, make_attack,
                               view_norm_stats)
from lpla_fast.metrics import roc_auc, tpr_at_fpr

D, K = 8, 2
DELTA, SIGMA, LEVEL_SPREAD = 0.3, 0.3, 2.0
BAYES_AUC = norm.cdf(DELTA * math.sqrt(K) / (SIGMA * math.sqrt(2)))  # 0.841
GLOBAL_AUC = norm.cdf(DELTA / math.sqrt(2 * (LEVEL_SPREAD ** 2 + SIGMA ** 2 / K)))  # 0.542


class World:
    """Candidates and a population; every encoder's views of them, seeded per encoder."""

    def __init__(self, n=2000, m=600, k=K, seed=0, level_spread=LEVEL_SPREAD):
        rng = np.random.default_rng(seed)
        self.n, self.m, self.k = n, m, k
        self.level = rng.normal(0.0, level_spread, size=n + m)
        self.agreement = rng.uniform(0.4, 1.0, size=n + m)  # per-sample angular noise
        self.centre = rng.normal(size=(n + m, D))

    def views(self, member: np.ndarray, encoder: int, rows: slice) -> torch.Tensor:
        rng = np.random.default_rng(1000 + encoder)
        member = member.astype(np.float64)
        level, agreement, centre = self.level[rows], self.agreement[rows], self.centre[rows]
        log_norm = level[:, None] + DELTA * member[:, None] + SIGMA * rng.normal(size=(len(level), self.k))
        noise = (agreement - 0.25 * member)[:, None, None] * rng.normal(size=(len(level), self.k, D))
        direction = centre[:, None, :] + noise
        direction /= np.linalg.norm(direction, axis=-1, keepdims=True)
        return torch.from_numpy(direction * np.exp(log_norm)[..., None])

    def knowledge(self, R, seed=0, population=True):
        masks = draw_reference_masks(self.n, R, seed)
        cand, pop = slice(0, self.n), slice(self.n, self.n + self.m)
        refs = [self.views(masks[r], r, cand) for r in range(R)]
        pops = [self.views(np.zeros(self.m, bool), r, pop) for r in range(R)] if population else None
        target_pop = self.views(np.zeros(self.m, bool), 99, pop) if population else None
        return ReferenceKnowledge(refs, masks, pops, target_pop)

    def target(self, seed=7):
        member = np.random.default_rng(seed).random(self.n) < 0.5
        return self.views(member, 99, slice(0, self.n)), member


@pytest.fixture(scope="module")
def world():
    w = World()
    knowledge = w.knowledge(R=8)
    views, member = w.target()
    return w, knowledge, views, member


def test_masks_are_balanced_halves():
    masks = draw_reference_masks(101, 8, seed=3)
    assert masks.shape == (8, 101) and masks.dtype == bool
    assert (masks.sum(axis=0) == 4).all()  # every candidate in exactly R/2 references
    assert set(masks.sum(axis=1)) <= {50, 51}
    np.testing.assert_array_equal(masks, draw_reference_masks(101, 8, seed=3))
    assert not np.array_equal(masks, draw_reference_masks(101, 8, seed=4))
    odd = draw_reference_masks(100, 5, seed=0)
    assert set(odd.sum(axis=0)) <= {2, 3} and (odd.sum(axis=1) == 50).all()
    with pytest.raises(ValueError, match="R"):
        draw_reference_masks(100, 1, seed=0)


def test_online_lira_recovers_the_bayes_optimal_auc_where_a_global_threshold_is_blind(world):
    w, knowledge, views, member = world
    # Global LpLA, calibrated on reference encoder 0 as a shadow encoder: near chance.
    shadow = AttackerKnowledge(level="shadow", shadow_members=knowledge.reference_views[0][knowledge.in_mask[0]],
                               shadow_nonmembers=knowledge.reference_views[0][~knowledge.in_mask[0]])
    global_auc = roc_auc(LpLA(characteristic="view", standardize=False).fit(shadow).score(views), member)
    assert global_auc == pytest.approx(GLOBAL_AUC, abs=0.04)
    attack = make_attack("lira", statistic="lpla", online=True).fit(knowledge)
    auc = roc_auc(attack.score(views), member)
    # Estimating each candidate's in and out means from R/2 = 4 encoders each costs a few
    # points against the Bayes optimum (about Phi(1 / sqrt(1 + 2/R)) = 0.81 for the offline test).
    assert auc == pytest.approx(BAYES_AUC, abs=0.06)
    assert auc > global_auc + 0.2
    assert tpr_at_fpr(attack.score(views), member, 0.01) > 5 * 0.01


def test_offline_lira_and_rmia_orderings(world):
    w, knowledge, views, member = world
    online = roc_auc(LiRA(online=True).fit(knowledge).score(views), member)
    offline_attack = LiRA(online=False).fit(knowledge)
    assert offline_attack.direction_[0] > 0  # larger norms for members, learned
    offline = roc_auc(offline_attack.score(views), member)
    # One-sided test of x - mu_out: Phi(DELTA / sqrt(2 SIGMA^2 / K (1 + 2/R))).
    expected_offline = norm.cdf(DELTA / math.sqrt(2 * SIGMA ** 2 / K * (1 + 2 / 8)))
    assert offline == pytest.approx(expected_offline, abs=0.04)
    assert offline <= online + 0.03  # online has the in-side too; here equal variances, so about equal
    rmia_online = roc_auc(RMIA(online=True).fit(knowledge).score(views), member)
    rmia_offline_attack = RMIA(online=False).fit(knowledge)
    rmia_offline = roc_auc(rmia_offline_attack.score(views), member)
    assert 0.0 <= rmia_offline_attack.a_ <= 1.0
    # RMIA's Phi-likelihood is a monotone but cruder use of the same signal.
    assert online - 0.06 <= rmia_online <= online + 0.02
    assert rmia_offline <= rmia_online + 0.02
    assert rmia_offline > 0.7


def test_offline_direction_is_learned_not_assumed():
    w = World(n=600, m=200)
    knowledge = w.knowledge(R=4)
    flipped = ReferenceKnowledge(knowledge.reference_views, ~knowledge.in_mask, knowledge.population_views,
                                 knowledge.target_population_views)
    views, member = w.target()
    # With the labels swapped, members lie on the other side: the direction follows.
    assert LiRA(online=False).fit(flipped).direction_[0] < 0
    assert roc_auc(LiRA(online=False).fit(flipped).score(views), ~member) > 0.7
    assert roc_auc(RMIA(online=False).fit(flipped).score(views), ~member) > 0.65


def test_standardization_removes_each_encoders_norm_scale():
    w = World(n=600, m=300)
    knowledge = w.knowledge(R=8)
    scales = [1.0, 3.0, 0.3, 2.0, 0.5, 4.0, 1.5, 0.7]
    scaled = ReferenceKnowledge([v * s for v, s in zip(knowledge.reference_views, scales)], knowledge.in_mask,
                                [v * s for v, s in zip(knowledge.population_views, scales)],
                                knowledge.target_population_views * 10.0)
    views, member = w.target()
    assert roc_auc(LiRA(standardize=True).fit(scaled).score(views * 10.0), member) > 0.75
    assert LiRA().fit(scaled).standardized_  # "auto": on, since the knowledge holds a population
    assert roc_auc(LiRA(standardize=False).fit(scaled).score(views * 10.0), member) < 0.65


def test_per_sample_variances_with_many_references():
    w = World(n=300, m=100)
    knowledge = w.knowledge(R=16, population=False)
    views, member = w.target()
    auto = LiRA(views="per-view").fit(knowledge)
    assert auto.cov_in_.shape == (300, K, K)  # 8 observations a side: own variances
    fixed = LiRA(views="per-view", fixed_variance=True).fit(knowledge)
    assert fixed.cov_in_.shape == (K, K)
    offline = LiRA(views="per-view", online=False).fit(knowledge)
    assert offline.cov_out_.shape == (300, K, K)
    for attack in (auto, fixed, offline):
        assert roc_auc(attack.score(views), member) > 0.75
    # A candidate's own covariance is its in-side deviations' (ddof=1), diagonal for views.
    obs = np.log(np.stack([np.linalg.norm(v.numpy(), axis=-1) for v in knowledge.reference_views]))
    own = obs[knowledge.in_mask[:, 0], 0]
    np.testing.assert_allclose(np.diag(auto.cov_in_[0]), own.var(axis=0, ddof=1) + 1e-12, rtol=1e-9)
    assert auto.cov_in_[0][0, 1] == 0.0


@pytest.mark.parametrize("attack", ["lira-online", "lira-offline", "rmia-online", "rmia-offline"])
@pytest.mark.parametrize("statistic", list(STATISTICS))
def test_every_statistic_works_through_every_attack_and_round_trips(attack, statistic):
    w = World(n=300, m=200, k=3)
    knowledge = w.knowledge(R=4)
    views, member = w.target()
    name, mode = attack.split("-")
    fitted = make_attack(name, statistic=statistic, online=mode == "online", neighbours=5).fit(knowledge)
    scores = fitted.score(views)
    assert scores.shape == (300,) and scores.dtype == np.float64 and np.isfinite(scores).all()
    if statistic in ("lpla", "mean_spread", "multi_p", "encodermi", "resultant"):
        assert roc_auc(scores, member) > 0.6
    reloaded = attack_from_dict(json.loads(json.dumps(fitted.to_dict())))
    np.testing.assert_array_equal(reloaded.score(views), scores)
    assert reloaded.get_params() == fitted.get_params()
    assert fitted.predict(views).dtype == bool


def test_reference_attacks_carry_their_tags():
    for name in REFERENCE_ATTACKS:
        attack = make_attack(name)
        assert attack.levels == ("reference-encoders",) == (REFERENCE_LEVEL,) and attack.takes_p and attack.label
    assert make_attack("lira", statistic="encodermi").min_views == 2
    assert World(n=20, m=10).knowledge(R=2).level == REFERENCE_LEVEL


def test_bad_reference_knowledge_gives_clear_errors():
    w = World(n=40, m=30)
    full = w.knowledge(R=4)
    refs, mask = full.reference_views, full.in_mask
    with pytest.raises(ValueError, match=r"R >= 2"):
        ReferenceKnowledge(refs[:1], mask[:1])
    with pytest.raises(ValueError, match=r"in_mask must be \(R, N\) = \(4, 40\)"):
        ReferenceKnowledge(refs, mask[:, :30])
    with pytest.raises(ValueError, match="boolean"):
        ReferenceKnowledge(refs, mask.astype(float))
    with pytest.raises(ValueError, match="same"):
        ReferenceKnowledge([refs[0], refs[1][:30], refs[2], refs[3]], mask)
    with pytest.raises(ValueError, match="same"):
        ReferenceKnowledge([refs[0], refs[1][:, :1], refs[2], refs[3]], mask)
    with pytest.raises(ValueError, match="same"):
        ReferenceKnowledge([refs[0], refs[1][..., :4], refs[2], refs[3]], mask)
    with pytest.raises(ValueError, match="both or neither"):
        ReferenceKnowledge(refs, mask, full.population_views)
    with pytest.raises(ValueError, match="one array per reference"):
        ReferenceKnowledge(refs, mask, full.population_views[:3], full.target_population_views)
    with pytest.raises(ValueError, match="M=1"):
        ReferenceKnowledge(refs, mask, [v[:1] for v in full.population_views], full.target_population_views[:1])
    with pytest.raises(ValueError, match=r"\(K, D\)"):
        ReferenceKnowledge(refs, mask, [v[:, :1] for v in full.population_views],
                           full.target_population_views[:, :1])
    never_out = mask.copy()
    never_out[:, 5] = True
    with pytest.raises(ValueError, match=r"out of .* 1 candidates never are \(first: \[5\]\)"):
        LiRA(online=False).fit(ReferenceKnowledge(refs, never_out))
    never_in = mask.copy()
    never_in[:, 7] = False
    with pytest.raises(ValueError, match=r"in at least .*first: \[7\]"):
        LiRA(online=True).fit(ReferenceKnowledge(refs, never_in))
    LiRA(online=False).fit(ReferenceKnowledge(refs, never_in))  # offline needs only the out side
    bare = ReferenceKnowledge(refs, mask)
    pair = ReferenceKnowledge(refs[:2], draw_reference_masks(40, 2, seed=0))
    with pytest.raises(ValueError, match="no variance can be estimated"):
        LiRA().fit(pair)  # one encoder a side: RMIA works, LiRA's Gaussians cannot
    with pytest.raises(ValueError, match="population_views"):
        RMIA().fit(bare)
    with pytest.raises(ValueError, match="neighbour bank"):
        LiRA(statistic="knn").fit(bare)
    with pytest.raises(ValueError, match="standardize=True"):
        LiRA(standardize=True).fit(bare)
    assert not LiRA().fit(bare).standardized_
    with pytest.raises(TypeError, match="ReferenceKnowledge"):
        LiRA().fit(AttackerKnowledge(level="reference", target_reference=refs[0]))
    with pytest.raises(ValueError, match="K >= 2"):
        LiRA(statistic="encodermi").fit(bare.first_views(1))
    attack = LiRA().fit(bare)
    views, _ = w.target()
    with pytest.raises(ValueError, match="40 candidates"):
        attack.score(views[:39])
    with pytest.raises(ValueError, match="D=4"):
        attack.score(views[..., :4])
    with pytest.raises(ValueError, match="statistic must be one of"):
        make_attack("rmia", statistic="loss")
    with pytest.raises(ValueError, match="offline_a"):
        RMIA(offline_a=2.0)
    with pytest.raises(ValueError, match="offline_a"):
        RMIA(offline_a=True)
    with pytest.raises(RuntimeError, match="not fitted"):
        LiRA().score(views)


# --- LpLA's characteristics against independent float64 computations -------------------------

def numpy_characteristic(views: np.ndarray, characteristic: str, p: float = 2.0) -> np.ndarray:
    def norms(x, q):
        a = np.abs(x)
        return a.max(axis=-1) if math.isinf(q) else (a ** q).sum(axis=-1) ** (1 / q)

    logs = np.log(norms(views, p))
    if characteristic == "mean_spread":
        return np.stack([logs.mean(axis=1), logs.std(axis=1, ddof=1)], axis=1)
    if characteristic == "resultant":
        return (norms(views.mean(axis=1), p) / norms(views, p).mean(axis=1))[:, None]
    return np.stack([np.log(norms(views, q)).mean(axis=1) for q in (1.0, 2.0, math.inf)], axis=1)


@pytest.mark.parametrize("p", [1.0, 2.0, 3.0, math.inf])
@pytest.mark.parametrize("log", [False, True])
def test_view_norm_stats_against_numpy(p, log):
    views = torch.randn(50, 5, 7, dtype=torch.float64)
    norms, mean, std, mean_view_norm = view_norm_stats(views, p, log)
    x = views.numpy()
    ref = np.abs(x).max(-1) if math.isinf(p) else (np.abs(x) ** p).sum(-1) ** (1 / p)
    stat = np.log(ref) if log else ref
    mv = views.mean(dim=1).numpy()
    ref_mvn = np.abs(mv).max(-1) if math.isinf(p) else (np.abs(mv) ** p).sum(-1) ** (1 / p)
    for got, want in ((norms, ref), (mean, stat.mean(1)), (std, stat.std(1, ddof=1)), (mean_view_norm, ref_mvn)):
        assert got.dtype == torch.float64
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-10, atol=1e-12)
    single = view_norm_stats(views[:, :1].float(), p, log)
    assert single[2].dtype == torch.float32 and (single[2] == 0).all()


@pytest.mark.parametrize("characteristic", ["mean_spread", "resultant", "multi_p"])
def test_lpla_characteristics_match_an_independent_gaussian_computation(characteristic):
    w = World(n=400, m=400, k=4)
    knowledge = w.knowledge(R=2)
    sm, sn = (knowledge.reference_views[0][m] for m in (knowledge.in_mask[0], ~knowledge.in_mask[0]))
    shadow_ref, target_ref = knowledge.population_views[0], knowledge.target_population_views
    attack = LpLA(characteristic=characteristic).fit(AttackerKnowledge(
        level="shadow", shadow_members=sm, shadow_nonmembers=sn, shadow_reference=shadow_ref,
        target_reference=target_ref))
    views, member = w.target()

    def standardized(x, ref):
        c, r = numpy_characteristic(x.numpy(), characteristic), numpy_characteristic(ref.numpy(), characteristic)
        return (c - r.mean(0)) / r.std(0, ddof=1)

    t_in, t_out = standardized(sm, shadow_ref), standardized(sn, shadow_ref)
    x = standardized(views, target_ref)
    ridge = 1e-12 * np.eye(x.shape[1])
    expected = (multivariate_normal(t_in.mean(0), np.cov(t_in.T, ddof=1).reshape(x.shape[1], -1) + ridge).logpdf(x)
                - multivariate_normal(t_out.mean(0), np.cov(t_out.T, ddof=1).reshape(x.shape[1], -1) + ridge).logpdf(x))
    np.testing.assert_allclose(attack.score(views), expected, rtol=1e-6, atol=1e-6)
    reloaded = attack_from_dict(json.loads(json.dumps(attack.to_dict())))
    np.testing.assert_array_equal(reloaded.score(views), attack.score(views))
    # Reference-only: a two-sided (Mahalanobis) anomaly score that runs and flags about reference_fpr.
    reference_only = LpLA(characteristic=characteristic).fit(AttackerKnowledge(level="reference",
                                                                                 target_reference=target_ref))
    assert 0.03 < reference_only.predict(target_ref).mean() < 0.2


@pytest.mark.parametrize("characteristic", ["view", "mean_spread", "resultant", "multi_p", "joint", "auto", "budget"])
def test_lpla_characteristics_find_the_signal_when_levels_do_not_hide_it(characteristic):
    w = World(n=600, m=400, k=4, level_spread=0.1)  # norms shift by DELTA, views agree more
    knowledge = w.knowledge(R=2)
    shadow = AttackerKnowledge(
        level="shadow", shadow_members=knowledge.reference_views[0][knowledge.in_mask[0]],
        shadow_nonmembers=knowledge.reference_views[0][~knowledge.in_mask[0]],
        shadow_reference=knowledge.population_views[0], target_reference=knowledge.target_population_views)
    views, member = w.target()
    assert roc_auc(LpLA(characteristic=characteristic).fit(shadow).score(views), member) > 0.7


def test_lpla_characteristic_errors():
    with pytest.raises(ValueError, match="characteristic must be one of"):
        LpLA(characteristic="median")
    with pytest.raises(ValueError, match="one-dimensional"):
        LpLA(characteristic="multi_p", density="kde")
    assert LpLA(characteristic="resultant").min_views == 2
    views = torch.randn(20, 1, D)
    with pytest.raises(ValueError, match="K >= 2"):
        LpLA(characteristic="mean_spread", standardize=False).fit(
            AttackerKnowledge(level="shadow", shadow_members=views, shadow_nonmembers=views))
    resultant_kde = LpLA(characteristic="resultant", density="kde", standardize=False).fit(
        AttackerKnowledge(level="shadow", shadow_members=torch.randn(50, 3, D),
                          shadow_nonmembers=torch.randn(50, 3, D)))
    assert resultant_kde.score(torch.randn(10, 3, D)).shape == (10,)


# --- LiRA and RMIA against direct float64 computations of their formulas ---------------------

def mean_log_norm(views) -> np.ndarray:
    return np.log(np.linalg.norm(views.numpy(), axis=-1)).mean(axis=1)


def test_lira_matches_its_formula():
    w = World(n=200, m=150)
    knowledge = w.knowledge(R=4)
    views, _ = w.target()
    s = np.stack([mean_log_norm(v) for v in knowledge.reference_views])  # (R, N)
    mask, x = knowledge.in_mask, mean_log_norm(views)

    def side(sel):
        mu = np.array([s[sel[:, i], i].mean() for i in range(s.shape[1])])
        sq = sum(((s[sel[:, i], i] - mu[i]) ** 2).sum() for i in range(s.shape[1]))
        return mu, math.sqrt(sq / (sel.sum(axis=0) - 1).sum() + 1e-12)

    (mu_in, sd_in), (mu_out, sd_out) = side(mask), side(~mask)
    online = LiRA(online=True, standardize=False).fit(knowledge).score(views)
    np.testing.assert_allclose(online, norm.logpdf(x, mu_in, sd_in) - norm.logpdf(x, mu_out, sd_out), rtol=1e-9)
    offline = LiRA(online=False, standardize=False).fit(knowledge).score(views)
    np.testing.assert_allclose(offline, (x - mu_out) / sd_out, rtol=1e-9)


@pytest.mark.parametrize("online, a", [(True, None), (False, 0.3), (False, 1.0)])
def test_rmia_matches_its_formula(online, a):
    w = World(n=200, m=150)
    knowledge = w.knowledge(R=4)
    views, _ = w.target()

    def standardized(values, population):
        return (values - population.mean()) / population.std(ddof=1)

    pops = [mean_log_norm(v) for v in knowledge.population_views]
    target_pop = mean_log_norm(knowledge.target_population_views)
    lx = np.stack([norm.cdf(standardized(mean_log_norm(v), p)) for v, p in zip(knowledge.reference_views, pops)])
    lz = np.stack([norm.cdf(standardized(p, p)) for p in pops])
    mask = knowledge.in_mask
    if online:
        prior_x, prior_z = lx.mean(axis=0), lz.mean(axis=0)
    else:
        prior_x = (1 + a) / 2 * (lx * ~mask).sum(axis=0) / (~mask).sum(axis=0) + (1 - a) / 2
        prior_z = (1 + a) / 2 * lz.mean(axis=0) + (1 - a) / 2
    ratio_x = norm.cdf(standardized(mean_log_norm(views), target_pop)) / prior_x
    ratio_z = norm.cdf(standardized(target_pop, target_pop)) / prior_z
    expected = (ratio_x[:, None] / ratio_z[None, :] > 1.0).mean(axis=1)
    attack = RMIA(online=online, offline_a="auto" if a is None else a).fit(knowledge)
    assert attack.direction_[0] == pytest.approx(1.0)
    np.testing.assert_array_equal(attack.score(views), expected)


def test_two_references_take_lira_s_fixed_variance_from_the_population():
    from lpla_fast.attacks import LiRA, ReferenceKnowledge
    from lpla_fast.metrics import roc_auc

    g = torch.Generator().manual_seed(5)
    levels = torch.rand(200, generator=g) * 2 + 1  # each candidate's own norm level
    member = torch.zeros(2, 200, dtype=torch.bool)
    member[0, :100] = True
    member[1] = ~member[0]  # one reference on each side of every candidate: no per-side variance

    def encoder_views(in_mask):
        scale = levels * (1 + 0.2 * in_mask.float()) * torch.exp(0.02 * torch.randn(200, generator=g))
        return torch.nn.functional.normalize(torch.randn(200, 2, 8, generator=g), dim=-1) * scale[:, None, None]

    population = [torch.randn(60, 2, 8, generator=g) for _ in range(2)]
    knowledge = ReferenceKnowledge([encoder_views(member[0]), encoder_views(member[1])], member, population,
                                   torch.randn(60, 2, 8, generator=g))
    target_in = torch.rand(200, generator=g) < 0.5
    attack = LiRA(statistic="lpla", online=True).fit(knowledge)
    scores = attack.score(encoder_views(target_in))
    assert roc_auc(scores, target_in.numpy()) > 0.9
