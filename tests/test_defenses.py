import copy
import math

import numpy as np
import pytest
import torch

from lpla_fast import metrics
from lpla_fast.attacks import AttackerKnowledge, LpLA
from lpla_fast.data import load_dataset
from lpla_fast.encoders import TrainConfig, load_encoder, query_views, save_encoder, train_encoder
from lpla_fast.encoders.dp import build_dp_encoder, train_encoder_dp
from lpla_fast.study.defenses import (RELEASE_DEFENSES, ReleaseDefense, TrainingDefense, defend_split_views,
                                      defended_quality, parse_defense, release_scale)


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def views(n=50, k=4, d=16, scale=1.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    return scale * torch.randn(n, k, d, generator=g)


# --- release-time --------------------------------------------------------------------------------

def test_normalization_makes_every_norm_equal():
    out = parse_defense("normalize").apply(views(scale=3.0))
    assert torch.allclose(torch.linalg.vector_norm(out, dim=-1), torch.ones(50, 4), atol=1e-6)


@pytest.mark.parametrize("characteristic", ["view", "mean_spread", "multi_p"])
def test_normalization_sends_lpla_to_chance(characteristic):
    # Members differ from non-members by their norm level alone (same direction distribution).
    def split(seed, members):
        return views(200, 4, 16, 1.4 if members else 1.0, seed)

    shadow_m, shadow_n, shadow_r, target_r = split(1, True), split(2, False), split(3, False), split(4, False)
    target_m, target_n = split(5, True), split(6, False)

    def auc(defense):
        d = (lambda v: v) if defense is None else (lambda v: defense.apply(v))
        attack = LpLA(characteristic=characteristic).fit(AttackerKnowledge(
            level="shadow", shadow_members=d(shadow_m), shadow_nonmembers=d(shadow_n),
            shadow_reference=d(shadow_r), target_reference=d(target_r)))
        scores = np.concatenate([attack.score(d(target_m)), attack.score(d(target_n))])
        return metrics.roc_auc(scores, np.r_[np.ones(200, bool), np.zeros(200, bool)])

    assert auc(None) > 0.95
    assert abs(auc(ReleaseDefense("normalize")) - 0.5) < 0.08


def test_noise_has_the_asked_scale_and_is_seeded():
    v = views(400, 4, 64)
    defense = parse_defense("noise:0.5").calibrated(v)
    out = defense.apply(v, seed=3)
    typical = float(torch.linalg.vector_norm(v, dim=-1).median())
    noise_norm = torch.linalg.vector_norm(out - v, dim=-1)
    assert float(noise_norm.mean()) == pytest.approx(0.5 * typical, rel=0.05)
    assert torch.equal(out, defense.apply(v, seed=3))
    assert not torch.equal(out, defense.apply(v, seed=4))


def test_noise_is_a_function_of_sample_id_and_view():
    v = views(20, 6, 8)
    defense = ReleaseDefense("noise", 0.2).calibrated(v)
    ids = np.arange(100, 120)
    full = defense.apply(v, 0, ids)
    # the same samples in another order, and fewer views of them: the same noise per (id, view)
    order = np.arange(20)[::-1].copy()
    assert torch.allclose(defense.apply(v[order], 0, ids[order]), full[order])
    assert torch.allclose(defense.apply(v[:, :2], 0, ids), full[:, :2])


def test_noise_and_quantize_need_the_encoders_scale():
    for spec in ("noise:0.1", "quantize:4"):
        with pytest.raises(ValueError, match="calibrated"):
            parse_defense(spec).apply(views())


@pytest.mark.parametrize("bits", [1, 3, 8])
def test_quantization_has_at_most_2_to_the_bits_levels(bits):
    v = views(100, 4, 16)
    defense = ReleaseDefense("quantize", bits).calibrated(v[:50])
    out = defense.apply(v)
    assert out.unique().numel() <= 2 ** bits
    scale = release_scale(v[:50])
    assert float(out.min()) >= scale.low and float(out.max()) <= scale.high
    inside = (v >= scale.low) & (v <= scale.high)
    width = (scale.high - scale.low) / 2 ** bits
    assert float((out - v)[inside].abs().max()) <= width / 2 + 1e-5
    per_vector = ReleaseDefense("quantize_vector", bits).apply(v)
    assert max(row.unique().numel() for row in per_vector.reshape(-1, 16)) <= 2 ** bits


def test_truncation_keeps_d_dimensions():
    v = views(10, 3, 16)
    first = parse_defense("truncate:5").apply(v)
    assert first.shape == (10, 3, 5) and torch.equal(first, v[..., :5])
    subset = parse_defense("truncate_random:5").apply(v, seed=7)
    assert subset.shape == (10, 3, 5)
    columns = [next(j for j in range(16) if torch.equal(v[..., j], subset[..., i])) for i in range(5)]
    assert columns == sorted(columns) and columns != list(range(5))
    assert torch.equal(subset, parse_defense("truncate_random:5").apply(v, seed=7))
    with pytest.raises(ValueError, match="keeps 32 dimensions but the embeddings have 16"):
        parse_defense("truncate:32").apply(v)


@pytest.mark.parametrize("spec, message", [
    ("nosie:0.1", "unknown defense 'nosie'"),
    ("noise", "needs a parameter, e.g. noise:0.1"),
    ("noise:-1", "must be a finite number > 0"),
    ("noise:abc", "must be a number"),
    ("normalize:2", "takes no parameter"),
    ("quantize:0", r"integer in \[1, 16\]"),
    ("quantize:2.5", r"integer in \[1, 16\]"),
    ("truncate:0", "integer >= 1"),
    ("epochs:1.5", r"number in \(0, 1\]"),
    ("members:0.5", ">= 1"),
    ("", "a string 'name' or 'name:param'"),
])
def test_bad_defenses_are_clear_errors(spec, message):
    with pytest.raises(ValueError, match=message):
        parse_defense(spec)


def test_specs_round_trip_and_have_labels():
    for spec in ("normalize", "noise:0.1", "quantize:4", "quantize_vector:8", "truncate:32",
                 "truncate_random:16", "epochs:0.25", "weight_decay:0.0005", "members:2", "dp:8"):
        defense = parse_defense(spec)
        assert defense.spec == spec and parse_defense(defense.spec) == defense and defense.label
    assert set(RELEASE_DEFENSES) == {"normalize", "noise", "quantize", "quantize_vector", "truncate",
                                     "truncate_random"}


def test_defend_split_views_calibrates_each_output_and_uses_dataset_ids():
    target = {"backbone": {"reference": views(30, 2, 8), "target_members": views(20, 2, 8, seed=1)}}
    splits = {"reference": np.arange(100, 130), "target_members": np.arange(20)}
    out = defend_split_views(target, parse_defense("noise:0.3"), splits, seed=5)
    defense = parse_defense("noise:0.3").calibrated(target["backbone"]["reference"])
    assert torch.equal(out["backbone"]["target_members"],
                       defense.apply(target["backbone"]["target_members"], 5, np.arange(20)))
    with pytest.raises(ValueError, match="calibrates on the 'reference' split"):
        defend_split_views({"head": {"target_members": views()}}, parse_defense("noise:0.3"), splits, 5)


def test_defended_quality_measures_probes_on_released_embeddings(digits):
    encoder = train_encoder(digits.images[:64], TrainConfig(width=4, epochs=2, batch_size=32), progress=False)
    train, test = digits.subset(range(200, 500)), digits.subset(range(500, 800))
    plain = defended_quality(encoder, parse_defense("truncate:16"), train, test)  # 16 = all dims
    one_dim = defended_quality(encoder, parse_defense("truncate:1"), (train.images, train.labels), test)
    assert set(plain) == {"linear_probe", "knn", "chance"}
    assert plain["linear_probe"] > one_dim["linear_probe"]
    noisy = defended_quality(encoder, parse_defense("noise:0.2"), train, test)
    assert 0 <= noisy["knn"] <= 1


# --- training-time -----------------------------------------------------------------------------------

def test_training_defenses_map_to_train_configs():
    config = TrainConfig(epochs=300)
    assert parse_defense("epochs:0.25").train_config(config).epochs == 75
    assert parse_defense("weight_decay:5e-4").train_config(config).weight_decay == 5e-4
    members = parse_defense("members:2")
    assert members.members_factor == 2 and members.train_config(config) == config
    dp = parse_defense("dp:8")
    assert isinstance(dp, TrainingDefense) and dp.dp_epsilon == 8 and dp.train_config(config).norm == "group"
    assert config.epochs == 300 and config.norm == "batch"  # unchanged


# --- DP-SGD ------------------------------------------------------------------------------------------------

def dp_config(framework, **changes):
    return TrainConfig(**dict(dict(framework=framework, width=4, epochs=2, batch_size=32, norm="group"), **changes))


def test_dp_sgd_trains_reports_a_finite_epsilon_and_gives_a_usable_encoder(tmp_path, digits):
    encoder = train_encoder_dp(digits.images[:64], dp_config("simsiam"), noise_multiplier=1.0, max_grad_norm=1.0)
    privacy = encoder.privacy_
    assert privacy["guarantee"] and 0 < privacy["epsilon"] < math.inf and privacy["steps"] == 4
    assert privacy["sample_rate"] == 0.5 and privacy["delta"] == pytest.approx(0.1 / 64)
    z = query_views(encoder, digits.images[:5], K=2)
    assert z.shape == (5, 2, 16) and torch.isfinite(z).all()
    save_encoder(encoder, str(tmp_path))
    loaded = load_encoder(str(tmp_path))
    assert torch.allclose(query_views(loaded, digits.images[:5], K=2), z)
    assert loaded.privacy_ == privacy  # what the accountant spent travels with the encoder


@pytest.mark.parametrize("n", [64, 40])  # 40 members in batches of 32: sampled at 1/2, not 32/40
def test_dp_sgd_reaches_a_target_epsilon(digits, n):
    encoder = train_encoder_dp(digits.images[:n], dp_config("byol", epochs=1), target_epsilon=4.0)
    assert encoder.privacy_["epsilon"] == pytest.approx(4.0, rel=0.05)
    assert encoder.privacy_["noise_multiplier"] > 0


def test_the_epsilon_the_accountant_spent_reaches_the_study(tmp_path, digits):
    """train_encoders (what the study's EncoderRecords come from) reports each DP-SGD encoder's
    spent epsilon, also when it reuses the finished folder; plain encoders report none."""
    from lpla_fast.encoders.parallel import TrainJob, train_encoders

    jobs = [TrainJob(digits.images[:64], dp_config("byol", epochs=1), str(tmp_path / "dp"), dp_epsilon=4.0),
            TrainJob(digits.images[:64], dp_config("byol", epochs=1), str(tmp_path / "plain"))]
    (_, dp), (_, plain) = train_encoders(jobs, workers=1, progress=False)
    assert dp["privacy"]["epsilon"] == pytest.approx(4.0, rel=0.05) and plain["privacy"] is None
    (_, again), _ = train_encoders(jobs, workers=1, progress=False)
    assert again["reused"] and again["privacy"] == dp["privacy"]


@pytest.mark.parametrize("framework, reason", [("simclr", "negatives"), ("moco", "queue"),
                                               ("barlowtwins", "cross-correlation")])
def test_dp_sgd_refuses_coupled_losses_unless_told(digits, framework, reason):
    with pytest.raises(ValueError, match=f"couples the samples of a batch.*{reason}.*dp_unsafe_ok=True"):
        train_encoder_dp(digits.images[:64], dp_config(framework), noise_multiplier=1.0)
    if framework == "simclr":
        with pytest.warns(UserWarning, match="no guarantee"):
            encoder = train_encoder_dp(digits.images[:64], dp_config(framework, epochs=1), noise_multiplier=1.0,
                                       dp_unsafe_ok=True)
        assert encoder.privacy_["guarantee"] is False


def test_dp_sgd_refuses_batchnorm_unclear_noise_and_unsupported_backbones(digits):
    with pytest.raises(ValueError, match="norm='group'"):
        train_encoder_dp(digits.images[:64], dp_config("simsiam", norm="batch"), noise_multiplier=1.0)
    with pytest.raises(ValueError, match="exactly one of noise_multiplier and target_epsilon"):
        train_encoder_dp(digits.images[:64], dp_config("simsiam"))
    with pytest.raises(ValueError, match="cannot train backbone 'resnet18': torchvision's residual blocks add in place"):
        build_dp_encoder(dp_config("simsiam", backbone="resnet18", width=None, image_size=32))


@pytest.mark.filterwarnings("ignore:Full backward hook is firing")
@pytest.mark.parametrize("framework, decomposes", [("simsiam", True), ("byol", True), ("simclr", False)])
def test_per_sample_gradients_are_each_samples_own_only_for_decomposable_losses(framework, decomposes):
    """What Opacus clips for sample i is the gradient of sample i's loss alone exactly when the
    loss is a sum of per-sample terms (GroupNorm; BYOL / SimSiam), not under NT-Xent."""
    from opacus import GradSampleModule

    torch.manual_seed(0)
    encoder = build_dp_encoder(dp_config(framework)).train()
    alone = copy.deepcopy(encoder)
    v0, v1 = torch.rand(4, 3, 16, 16), torch.rand(4, 3, 16, 16)
    GradSampleModule(encoder)
    encoder.training_loss(v0, v1).backward()
    named = [(n, p) for n, p in encoder.named_parameters() if p.requires_grad]
    alone_params = dict(alone.named_parameters())
    matches = []
    for i in range(4):
        grads = torch.autograd.grad(alone.training_loss(v0[i:i + 1], v1[i:i + 1]),
                                    [alone_params[n] for n, _ in named], allow_unused=True)
        matches.append(all(torch.allclose(p.grad_sample[i], torch.zeros_like(p) if g is None else g, atol=1e-5)
                           for (_, p), g in zip(named, grads)))
    assert all(matches) == decomposes
