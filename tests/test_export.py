"""`lpla export-images`: the built-in data's splits as image folders whose PNGs decode back to
the dataset's pixels and whose names carry the dataset index."""

import json
import os

import numpy as np
import pytest

from lpla_fast.cli import main
from lpla_fast.cli.export_images import export_images
from lpla_fast.data import load_dataset
from lpla_fast.splits import SPLIT_NAMES, SplitSizes, Splits, make_splits
from lpla_fast.streaming.cache import build_image_cache
from lpla_fast.streaming.images import decode_image


def exported(folder):
    """{dataset index: (class, path)} of the PNGs folder/<index>.png, their classes read from the
    export's labels.csv; in the order of the folder's sorted file names."""
    root, split = os.path.split(str(folder))
    with open(os.path.join(root, "labels.csv")) as f:
        labels = {path: (int(index), int(label)) for path, index, label in (line.split(",") for line in f.read().split()[1:])}
    found = {}
    for name in sorted(os.listdir(folder)):
        index, label = labels[f"{split}/{name}"]
        assert int(name[:-4]) == index
        found[index] = (label, os.path.join(folder, name))
    return found


def test_digits_export_follows_lpla_train_splits_and_decodes_to_the_quantized_pixels(tmp_path, capsys):
    assert main(["export-images", "--dataset", "digits", "--seed", "3", "--out", str(tmp_path / "out"),
                 "--no-progress"]) == 0
    summary = json.loads(capsys.readouterr().out)
    data = load_dataset("digits")
    splits = make_splits(len(data), SplitSizes().fitted_to(len(data)), seed=3)
    assert summary["splits"]["members"] == len(splits.target_members) and summary["image_size"] == 16
    assert Splits.from_json(str(tmp_path / "out" / "splits.json")).target_members.tolist() == splits.target_members.tolist()
    expected = np.round(data.images.numpy() * 255).astype(np.uint8)
    for name, folder in (("target_members", "members"), ("target_nonmembers", "nonmembers"), ("probe_test", "probe_test")):
        found = exported(tmp_path / "out" / folder)
        assert list(found) == splits[name].tolist()  # path order is the split's order
        for index, (label, path) in list(found.items())[:40]:
            assert label == int(data.labels[index])
            with open(path, "rb") as f:
                np.testing.assert_array_equal(decode_image(f.read(), 16).transpose(2, 0, 1), expected[index])
    # the quantization is the nearest 1/255: at most 1/510 from the float pixels
    assert np.abs(expected / 255.0 - data.images.numpy()).max() <= 1 / 510 + 1e-7


def test_mnist5k_pngs_hold_its_exact_8_bit_values(tmp_path):
    data = load_dataset("mnist5k")
    values = data.images.numpy() * 255
    assert np.abs(values - np.round(values)).max() < 1e-3  # stored in 8 bits: a lossless round trip
    sizes = SplitSizes(target_members=30, target_nonmembers=30, shadow_members=0, shadow_nonmembers=0, reference=0,
                       probe_train=0, probe_test=0)
    splits = make_splits(len(data), sizes, seed=1)
    summary = export_images("mnist5k", str(tmp_path / "out"), splits=splits, progress=False)
    assert summary["splits"] == {"members": 30, "nonmembers": 30}
    for index, (label, path) in exported(tmp_path / "out" / "nonmembers").items():
        with open(path, "rb") as f:
            np.testing.assert_array_equal(decode_image(f.read(), 28)[..., 0], np.round(values[index, 0]).astype(np.uint8))


def test_a_splits_file_is_used_as_given_and_the_folders_feed_the_image_cache(tmp_path):
    data = load_dataset("digits")
    sizes = SplitSizes(**{name: 10 for name in SPLIT_NAMES})
    make_splits(len(data), sizes, seed=5).to_json(str(tmp_path / "splits.json"))
    export_images("digits", str(tmp_path / "out"), splits=str(tmp_path / "splits.json"), progress=False)
    cache = build_image_cache(str(tmp_path / "out" / "members"), str(tmp_path / "cache"), 16, progress=False)
    indices = [int(os.path.basename(i)[:-4]) for i in cache.ids]
    assert sorted(indices) == Splits.from_json(str(tmp_path / "splits.json")).target_members.tolist()
    expected = np.round(data.images.numpy()[indices] * 255).astype(np.uint8)
    np.testing.assert_array_equal(cache.images, expected)


def test_a_non_empty_folder_is_refused_and_left_alone(tmp_path, capsys):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    assert main(["export-images", "--out", str(tmp_path / "out"), "--no-progress"]) == 2
    assert "not an empty folder" in capsys.readouterr().err
    assert os.listdir(tmp_path / "out") == ["keep.txt"]
    assert [n for n in os.listdir(tmp_path) if n.startswith(".tmp")] == []


def test_an_empty_folder_is_filled(tmp_path):
    (tmp_path / "out").mkdir()
    sizes = SplitSizes(target_members=4, target_nonmembers=4, shadow_members=0, shadow_nonmembers=0, reference=0,
                       probe_train=0, probe_test=0)
    export_images("digits", str(tmp_path / "out"), splits=make_splits(1797, sizes), progress=False)
    assert sorted(os.listdir(tmp_path / "out")) == ["export.json", "labels.csv", "members", "nonmembers", "splits.json"]


def test_splits_of_another_dataset_size_are_refused(tmp_path):
    with pytest.raises(ValueError, match="cover 100 samples"):
        export_images("digits", str(tmp_path / "out"), splits=make_splits(100, SplitSizes().fitted_to(100)),
                      progress=False)
    assert not os.path.exists(tmp_path / "out")
