"""More than one shadow encoder (`AttackerKnowledge.more_shadows`): pooled, each by its own reference.

The world of the first test is the one the study's complementary shadow pair is for: membership
moves only the views' agreement, but the draw of the shadow's two splits put a higher norm level
in its member split. One shadow encoder cannot tell that level from membership and weighs it; its
complement (trained on the other split, so its members carry the lower level) cancels it.
"""

import math

import numpy as np
import pytest

from lpla_fast.attacks import ATTACKS, AttackerKnowledge, LabelledEncoder, LpLA, make_attack
from lpla_fast.metrics import roc_auc
from lpla_fast.testing import membership_views

N = 3000
AGREEMENT_ONLY = dict(level_spread=0.3, view_sigma=0.5, angle_in=0.6, angle_out=0.8)
DRAW = 0.3  # the log-norm level the shadow's member split holds above its non-member split


def views(member, seed, k=8, n=N, scale=1.0, **signal):
    return membership_views(np.full(n, member), k, seed=seed, scale=scale, **dict(AGREEMENT_ONLY, **signal))


def drawn_pair(k=8, n=N):
    """(first shadow's knowledge fields, its complement, target reference, members, non-members)."""
    first = dict(shadow_members=views(True, 1, k, n, level_shift=DRAW), shadow_nonmembers=views(False, 2, k, n),
                 shadow_reference=views(False, 3, k, n))
    complement = LabelledEncoder(views(True, 11, k, n), views(False, 12, k, n, scale=math.exp(DRAW)),
                                 views(False, 13, k, n))
    return first, complement, views(False, 4, k, n, 3.0), views(True, 5, k, n, 3.0), views(False, 6, k, n, 3.0)


def auc(attack, members, nonmembers):
    labels = np.r_[np.ones(len(members), bool), np.zeros(len(nonmembers), bool)]
    return roc_auc(np.r_[attack.score(members), attack.score(nonmembers)], labels)


def test_the_complement_shadow_cancels_what_the_split_draw_put_in_the_norm_level():
    first, complement, target_reference, members, nonmembers = drawn_pair()
    one = AttackerKnowledge(level="shadow", target_reference=target_reference, **first)
    pair = AttackerKnowledge(level="shadow", target_reference=target_reference, more_shadows=(complement,), **first)
    resultant = auc(LpLA(characteristic="resultant").fit(one), members, nonmembers)
    assert resultant > 0.8
    alone = make_attack("lpla").fit(one)
    pooled = make_attack("lpla").fit(pair)
    # One shadow weighs the drawn level (0.78 here); the pair sees agreement alone, as the resultant does.
    assert auc(alone, members, nonmembers) < resultant - 0.03
    assert auc(pooled, members, nonmembers) == pytest.approx(resultant, abs=0.01)
    # The weight on the level (at p = 2, 1 and inf together): 0.88 alone, 0.00 pooled.
    def level(attack):
        return sum(w for column, w in attack.weights_.items() if column.startswith("mean"))

    assert level(alone) > 0.5 and abs(level(pooled)) < 0.1


@pytest.mark.parametrize("name", ATTACKS)
def test_every_shadow_attack_pools_a_copy_of_its_shadow_as_the_same_data(name):
    # A second shadow identical to the first doubles every labelled sample: a direction and
    # threshold learned from the pool are those of the one shadow (LpLA: the same means).
    first, _, target_reference, members, nonmembers = drawn_pair(k=4, n=200)
    one = AttackerKnowledge(level="shadow", target_reference=target_reference, **first)
    copy = LabelledEncoder(first["shadow_members"], first["shadow_nonmembers"], first["shadow_reference"])
    twice = AttackerKnowledge(level="shadow", target_reference=target_reference, more_shadows=(copy,), **first)
    a, b = make_attack(name).fit(one), make_attack(name).fit(twice)
    assert auc(b, members, nonmembers) > 0.5
    if name in ("norm", "knn", "encodermi-t"):
        assert b.sign_ == a.sign_ and b.threshold_ == pytest.approx(a.threshold_)
    if name == "lpla":
        np.testing.assert_allclose(b.gaussians_["mean_in"], a.gaussians_["mean_in"], rtol=1e-12)
        np.testing.assert_allclose(b.gaussians_["mean_out"], a.gaussians_["mean_out"], rtol=1e-12)


def test_each_shadow_is_standardized_with_its_own_reference():
    # The complement's encoder has 5x the norms: standardized by its own reference it pools with
    # the first; standardized by the first's it would put every one of its samples far off.
    first, complement, target_reference, members, nonmembers = drawn_pair(n=600)
    scaled = LabelledEncoder(*(5.0 * t for t in (complement.members, complement.nonmembers, complement.reference)))
    plain = AttackerKnowledge(level="shadow", target_reference=target_reference, more_shadows=(complement,), **first)
    rescaled = AttackerKnowledge(level="shadow", target_reference=target_reference, more_shadows=(scaled,), **first)
    a, b = make_attack("lpla").fit(plain), make_attack("lpla").fit(rescaled)
    np.testing.assert_allclose(b.gaussians_["mean_in"], a.gaussians_["mean_in"], atol=1e-9)
    np.testing.assert_allclose(b.score(members), a.score(members), rtol=1e-9, atol=1e-9)


def test_select_cross_validates_over_every_shadow():
    first, complement, target_reference, members, nonmembers = drawn_pair(n=300)
    pair = AttackerKnowledge(level="shadow", target_reference=target_reference, more_shadows=(complement,), **first)
    attack = LpLA(characteristic="select").fit(pair)
    assert set(attack.selection_) == {"view", "mean_spread", "resultant", "multi_p", "joint"}
    # Pooled, the drawn level cancels: the level alone has nothing held out.
    assert attack.selection_["view"] < 0.56 and attack.chosen_ in ("resultant", "joint")


def test_first_views_and_the_study_views_cut_every_shadow():
    first, complement, target_reference, _, _ = drawn_pair(n=20)
    knowledge = AttackerKnowledge(level="shadow", target_reference=target_reference, more_shadows=(complement,),
                                  **first).first_views(3)
    assert [tuple(t.shape) for t in (knowledge.more_shadows[0].members, knowledge.more_shadows[0].reference)] == \
        [(20, 3, 16), (20, 3, 16)]
    members, nonmembers = knowledge.labelled_sets("lpla")
    assert members.shape == (40, 3, 16) and nonmembers.shape == (40, 3, 16)


@pytest.mark.parametrize("change, message", [
    (lambda f, c: dict(more_shadows=((c.members, c.nonmembers),)), "must be a LabelledEncoder"),
    (lambda f, c: dict(more_shadows=(c,), shadow_members=None), "pass shadow_members and shadow_nonmembers"),
    (lambda f, c: dict(more_shadows=(LabelledEncoder(c.members, c.nonmembers),)),
     "shadow_reference is given and the other is not"),
    (lambda f, c: dict(more_shadows=(LabelledEncoder(c.members[:, :2], c.nonmembers, c.reference),)),
     r"more_shadows\[0\].members has K=2"),
    (lambda f, c: dict(more_shadows=(LabelledEncoder(c.members, c.nonmembers[..., :8], c.reference),)),
     r"more_shadows\[0\].nonmembers has D=8"),
    (lambda f, c: dict(more_shadows=(LabelledEncoder(c.members, c.nonmembers.clone().fill_(math.nan), c.reference),)),
     r"more_shadows\[0\].nonmembers"),
])
def test_bad_shadows_are_refused_by_name(change, message):
    first, complement, target_reference, _, _ = drawn_pair(k=4, n=20)
    fields = dict(first, target_reference=target_reference, **change(first, complement))
    with pytest.raises((ValueError, TypeError), match=message):
        AttackerKnowledge(level="shadow", **fields)



def test_the_study_fits_encodermi_once_per_configuration_with_the_same_records(monkeypatch):
    from lpla_fast.attacks import EncoderMISet
    from lpla_fast.study import StudyConfig, ViewSet
    from lpla_fast.study.attack_stage import ShadowFits, attack_target
    from lpla_fast.study.plan import plan_jobs

    first, complement, target_reference, members, nonmembers = drawn_pair(k=4, n=60)
    study = StudyConfig(attacks=("encodermi-v", "encodermi-s", "lpla"), k=4, ks=(2, 4), ps=(2.0,), n_bootstrap=0,
                        sweep_attacks=("lpla", "encodermi-s"))
    targets = [ViewSet(members=members[s::2], nonmembers=nonmembers[s::2], target_reference=target_reference,
                       more_shadows=(complement,), **first) for s in range(2)]
    jobs = plan_jobs(study, 4)
    fitted = []
    original = EncoderMISet.fit
    monkeypatch.setattr(EncoderMISet, "fit", lambda self, knowledge: fitted.append(1) or original(self, knowledge))

    def records(fits):
        fitted.clear()
        out = [attack_target(v, study, jobs, progress=False, fits=fits, framework="simclr", output="head", seed=s)
               for s, v in enumerate(targets)]
        return [(r.attack, r.study, r.level, r.k, r.auc) for stage in out for r in stage.records], len(fitted)

    fresh, fresh_fits = records(None)
    shared, shared_fits = records(ShadowFits())
    assert shared == fresh  # the same numbers, every record
    # EncoderMI-S per target: the main table (shadow, K = 4), the K sweep (K = 2, 4), the knowledge sweep
    # (shadow and audit): 5 fits. Shared, the shadow fits are made once for both targets (K = 4 and K = 2);
    # the audit level's calibration halves are each target's own.
    assert (fresh_fits, shared_fits) == (10, 4)
