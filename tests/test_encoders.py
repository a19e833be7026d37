import json
import os

import numpy as np
import pytest
import torch

from lpla_fast.cli import main as lpla_main
from lpla_fast.data import load_dataset
from lpla_fast.encoders import (BACKBONES, FRAMEWORKS, Encoder, TrainConfig, build_encoder,
                                feature_quality, load_encoder, load_pretrained, make_backbone, query_views,
                                save_encoder, train_encoder)


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def tiny_config(**changes):
    base = dict(width=4, epochs=2, batch_size=32, queue_size=32, checkpoint_every=1, lr=3e-3)
    base.update(changes)
    return TrainConfig(**base)


@pytest.fixture(scope="module")
def tiny_encoder(digits):
    return train_encoder(digits.images[:64], tiny_config(), progress=False)


@pytest.mark.parametrize("framework", [f for f in FRAMEWORKS if f != "moco"])
def test_each_framework_trains_and_its_loss_goes_down(digits, framework):
    encoder = train_encoder(digits.images[:96], tiny_config(framework=framework, epochs=3), progress=False)
    assert isinstance(encoder, Encoder) and not encoder.training
    assert len(encoder.history_) == 3 and all(np.isfinite(encoder.history_))
    assert encoder.history_[-1] < encoder.history_[0]


def test_moco_trains_and_moves_its_momentum_encoder(digits):
    # MoCo's loss is measured against its queue, which starts as random vectors (easy
    # negatives) and fills with real keys, so over a few steps it rises; the slow test below
    # checks that it then falls.
    config = tiny_config(framework="moco", epochs=2)
    with torch.random.fork_rng():
        torch.manual_seed(config.seed)
        initial = build_encoder(config)
    encoder = train_encoder(digits.images[:96], config, progress=False)
    assert all(np.isfinite(encoder.history_))
    key = "features.0.weight"
    moved = encoder.backbone_momentum.state_dict()[key] - initial.backbone_momentum.state_dict()[key]
    assert moved.abs().max() > 0
    assert not torch.equal(encoder.backbone.state_dict()[key], initial.backbone.state_dict()[key])


@pytest.mark.slow
def test_moco_loss_goes_down_once_its_queue_is_full(digits):
    encoder = train_encoder(digits.images[:200], TrainConfig(framework="moco", epochs=30), progress=False)
    assert encoder.history_[-1] < encoder.history_[3]


def test_training_is_seeded(digits):
    a = train_encoder(digits.images[:64], tiny_config(epochs=1), progress=False)
    b = train_encoder(digits.images[:64], tiny_config(epochs=1), progress=False)
    assert a.history_ == b.history_
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_checkpoint_round_trip(tmp_path, digits, tiny_encoder):
    save_encoder(tiny_encoder, str(tmp_path))
    loaded = load_encoder(str(tmp_path))
    x = digits.images[:10]
    for output in ("backbone", "head"):
        assert torch.equal(loaded.embed(x, output), tiny_encoder.embed(x, output))
    assert loaded.config == tiny_encoder.config and loaded.history_ == tiny_encoder.history_


def test_resume_continues_exactly_where_it_stopped(tmp_path, digits):
    images = digits.images[:64]
    full = train_encoder(images, tiny_config(epochs=3), progress=False)
    train_encoder(images, tiny_config(epochs=2), checkpoint_dir=str(tmp_path), progress=False)
    resumed = train_encoder(images, tiny_config(epochs=3), checkpoint_dir=str(tmp_path), progress=False)
    assert resumed.history_ == pytest.approx(full.history_, rel=1e-5)
    for key, value in full.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[key], value, rtol=1e-5, atol=1e-6)
    # A finished checkpoint is returned without training again.
    again = train_encoder(images, tiny_config(epochs=3), checkpoint_dir=str(tmp_path), progress=False)
    assert again.history_ == resumed.history_


def test_resume_with_another_config_is_refused(tmp_path, digits):
    train_encoder(digits.images[:64], tiny_config(epochs=1), checkpoint_dir=str(tmp_path), progress=False)
    with pytest.raises(ValueError, match="different config.*lr"):
        train_encoder(digits.images[:64], tiny_config(epochs=2, lr=0.1), checkpoint_dir=str(tmp_path),
                      progress=False)


def test_corrupt_checkpoint_is_a_clear_error(tmp_path, tiny_encoder):
    save_encoder(tiny_encoder, str(tmp_path))
    model = tmp_path / "model.safetensors"
    model.write_bytes(model.read_bytes()[:100])
    with pytest.raises(ValueError, match="corrupt or truncated"):
        load_encoder(str(tmp_path))
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="corrupt"):
        load_encoder(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="config.json is missing"):
        load_encoder(str(tmp_path / "nowhere"))


def test_unknown_framework_or_backbone_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown framework 'dino'"):
        TrainConfig(framework="dino")
    with pytest.raises(ValueError, match="unknown backbone 'vgg'"):
        TrainConfig(backbone="vgg")
    with pytest.raises(ValueError, match="unknown backbone"):
        make_backbone("vgg")


@pytest.mark.parametrize("backbone,width,dim", [("small_cnn", 4, 16), ("deep_cnn", 4, 16), ("resnet18", None, 512),
                                                ("resnet50", None, 2048), ("vit_small", 16, 16)])
def test_feature_shapes(backbone, width, dim):
    if backbone == "deep_cnn":
        convs = [m for m in make_backbone("deep_cnn", 4).modules() if isinstance(m, torch.nn.Conv2d)]
        assert len(convs) == 8 and [c.stride[0] for c in convs] == [1, 1, 2, 1, 2, 1, 1, 1]
    assert backbone in BACKBONES
    torch.manual_seed(0)
    encoder = build_encoder(TrainConfig(backbone=backbone, width=width, image_size=16)).eval()
    x = torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        assert encoder.embed(x).shape == (2, dim) and encoder.embed_dim() == dim
        assert encoder.embed(x, "head").shape == (2, 64) and encoder.embed_dim("head") == 64


def test_query_views_is_reproducible_and_seeded(digits, tiny_encoder):
    x = digits.images[:40]
    a = query_views(tiny_encoder, x, K=5, seed=1)
    assert a.shape == (40, 5, 16) and a.dtype == torch.float32 and a.device.type == "cpu"
    assert torch.equal(a, query_views(tiny_encoder, x, K=5, seed=1))
    assert not torch.allclose(a[:, 1:], query_views(tiny_encoder, x, K=5, seed=2)[:, 1:])
    # The batch size changes how many views go through one forward pass, not which views.
    torch.testing.assert_close(a, query_views(tiny_encoder, x, K=5, seed=1, batch_size=8), rtol=1e-4, atol=1e-5)


def test_query_views_clean_view_and_head_output(digits, tiny_encoder):
    x = digits.images[:10]
    views = query_views(tiny_encoder, x, K=3, output="head")
    assert views.shape == (10, 3, 64)
    with torch.no_grad():
        torch.testing.assert_close(views[:, 0], tiny_encoder.embed(x, "head"), rtol=1e-4, atol=1e-5)
    no_clean = query_views(tiny_encoder, x, K=1, include_clean=False)
    assert not torch.allclose(no_clean[:, 0], tiny_encoder.embed(x).detach())
    with pytest.raises(ValueError, match="K .* >= 1"):
        query_views(tiny_encoder, x, K=0)
    with pytest.raises(ValueError, match="output must be"):
        query_views(tiny_encoder, x, K=1, output="logits")


def test_feature_quality_reports_accuracies(digits, tiny_encoder):
    q = feature_quality(tiny_encoder, digits.images[:300], digits.labels[:300], digits.images[300:500],
                        digits.labels[300:500])
    assert set(q) == {"linear_probe", "knn", "chance"}
    assert 0.0 <= q["knn"] <= 1.0 and q["linear_probe"] > q["chance"]


def test_load_pretrained_from_lightning_style_checkpoint(tmp_path, digits, tiny_encoder):
    nested = {"state_dict": {f"backbone.{k}": v for k, v in tiny_encoder.backbone.state_dict().items()}}
    nested["state_dict"]["projection_head.layers.0.weight"] = torch.zeros(3, 3)
    torch.save(nested, tmp_path / "last.ckpt")
    loaded = load_pretrained(str(tmp_path / "last.ckpt"), backbone="small_cnn", width=4, image_size=16)
    x = digits.images[:5]
    with torch.no_grad():
        torch.testing.assert_close(loaded.embed(x), tiny_encoder.embed(x))
    assert query_views(loaded, x, K=2, policy="digits").shape == (5, 2, 16)


def test_load_pretrained_refuses_pickled_modules_unless_trusted(tmp_path, tiny_encoder):
    torch.save(tiny_encoder.backbone, tmp_path / "module.pt")
    with pytest.raises(ValueError, match="trust_pickle=True"):
        load_pretrained(str(tmp_path / "module.pt"), image_size=16)
    loaded = load_pretrained(str(tmp_path / "module.pt"), image_size=16, trust_pickle=True)
    assert loaded.embed_dim() == 16
    assert load_pretrained(tiny_encoder, image_size=16).backbone is tiny_encoder.backbone
    with pytest.raises(ValueError, match="weights missing"):
        load_pretrained({"model": {"conv.weight": torch.zeros(1)}}, backbone="small_cnn", width=4)


def test_cli_train_then_embed(tmp_path):
    run = tmp_path / "target"
    assert lpla_main(["train", "--dataset", "digits", "--role", "target", "--epochs", "1", "--width", "4",
                      "--out", str(run), "--no-progress"]) == 0
    for name in ("config.json", "model.safetensors", "training_state.pt", "splits.json", "quality.json"):
        assert (run / name).is_file(), name
    quality = json.loads((run / "quality.json").read_text())
    assert 0.0 <= quality["backbone"]["linear_probe"] <= 1.0
    out = tmp_path / "views.npy"
    assert lpla_main(["embed", "--checkpoint", str(run), "--split", "target_nonmembers", "--K", "3",
                      "--out", str(out), "--output", "head"]) == 0
    views = np.load(out)
    assert views.shape == (200, 3, 64) and views.dtype == np.float32
    assert not os.path.exists(f"{out}.tmp.npy")
