"""The image cache (`streaming.cache`): every source decoded once into a memory-mapped uint8
array; training, view queries and training jobs read from it with the float path's results."""

import io
import json
import os
import pickle
import tarfile

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from lpla_fast.encoders import CacheRows, TrainConfig, build_encoder, query_views, train_encoder
from lpla_fast.encoders.parallel import TrainJob, train_encoders
from lpla_fast.streaming import ShardError
from lpla_fast.streaming.cache import build_image_cache, open_image_cache
from lpla_fast.testing import png_bytes, random_images, write_image_folder

S = 16





def write_tar(path, blobs):
    with tarfile.open(path, "w") as tar:
        for i, data in enumerate(blobs):
            info = tarfile.TarInfo(f"s{i:05d}.png")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def nchw(images):
    return images.transpose(0, 3, 1, 2)


# --- building and opening ------------------------------------------------------------------


def test_every_source_kind_is_cached_in_source_order_with_ids(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    a, b, c = random_images(5, 1), random_images(4, 2), random_images(3, 3)
    np.save(src / "a.npy", a)
    write_tar(src / "b.tar", [png_bytes(im) for im in b])
    pq.write_table(pa.table({"image": [png_bytes(im) for im in c]}), src / "c.parquet")
    cache = build_image_cache(str(src), str(tmp_path / "cache"), S, progress=False)
    assert isinstance(cache.images, np.memmap) and cache.images.dtype == np.uint8
    np.testing.assert_array_equal(cache.images, nchw(np.concatenate([a, b, c])))
    assert cache.ids[:2] == ["a.npy:0", "a.npy:1"] and cache.ids[5] == "b.tar:s00000.png" and cache.ids[-1] == "c.parquet:2"
    assert len(cache) == 12 and cache.image_size == S and cache.channels == 3 and cache.skipped == []


def test_image_folder_ids_are_relative_paths_and_images_are_resized(tmp_path):
    images = random_images(6, size=20)
    write_image_folder(tmp_path / "src", images)
    cache = build_image_cache(str(tmp_path / "src"), str(tmp_path / "cache"), S, progress=False)
    assert cache.images.shape == (6, 3, S, S)
    assert cache.ids[0] == os.path.join("class0", "img0000.png") and cache.ids[1] == os.path.join("class0", "img0002.png")


def test_identical_images_have_identical_hashes(tmp_path):
    images = random_images(4)
    images[3] = images[1]
    np.save(tmp_path / "a.npy", images)
    cache = build_image_cache(str(tmp_path / "a.npy"), str(tmp_path / "cache"), S, progress=False)
    assert cache.hashes[3] == cache.hashes[1] and len(set(cache.hashes)) == 3


def test_one_channel_is_the_luminance_and_keeps_grayscale_values(tmp_path):
    from PIL import Image

    rgb = random_images(4)
    np.save(tmp_path / "rgb.npy", rgb)
    cache = build_image_cache(str(tmp_path / "rgb.npy"), str(tmp_path / "c1"), S, channels=1, progress=False)
    expected = np.stack([np.asarray(Image.fromarray(im).convert("L")) for im in rgb])
    np.testing.assert_array_equal(cache.images[:, 0], expected)
    gray = random_images(4, seed=5)[..., :1]
    np.save(tmp_path / "gray.npy", gray)
    cache = build_image_cache(str(tmp_path / "gray.npy"), str(tmp_path / "c2"), S, channels=1, progress=False)
    np.testing.assert_array_equal(cache.images[:, 0], gray[..., 0])


def test_a_rebuild_of_the_same_source_reuses_the_cache_and_a_changed_source_rebuilds(tmp_path):
    np.save(tmp_path / "a.npy", random_images(10))
    folder = str(tmp_path / "cache")
    build_image_cache(str(tmp_path / "a.npy"), folder, S, progress=False)
    stamp = os.stat(os.path.join(folder, "images.npy")).st_mtime_ns
    again = build_image_cache(str(tmp_path / "a.npy"), folder, S, progress=False)
    assert os.stat(os.path.join(folder, "images.npy")).st_mtime_ns == stamp and len(again) == 10
    np.save(tmp_path / "a.npy", random_images(12))
    assert len(build_image_cache(str(tmp_path / "a.npy"), folder, S, progress=False)) == 12
    meta = json.load(open(os.path.join(folder, "meta.json")))
    assert meta["count"] == 12 and meta["image_size"] == S and meta["channels"] == 3 and meta["version"] == 1


def test_a_folder_of_other_files_is_refused_and_left_alone(tmp_path):
    np.save(tmp_path / "a.npy", random_images(3))
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    with pytest.raises(ValueError, match="holds other files"):
        build_image_cache(str(tmp_path / "a.npy"), str(tmp_path / "mine"), S, progress=False)
    assert os.listdir(tmp_path / "mine") == ["notes.txt"]


def test_an_empty_source_is_a_clear_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no images"):
        build_image_cache(str(tmp_path / "empty"), str(tmp_path / "cache"), S, progress=False)


def test_a_folder_without_meta_is_no_cache(tmp_path):
    with pytest.raises(FileNotFoundError, match="no complete image cache"):
        open_image_cache(str(tmp_path))


def test_a_bad_image_stops_the_build_naming_it_or_is_skipped_and_recorded(tmp_path):
    images = random_images(7)
    write_image_folder(tmp_path / "src", images)
    (tmp_path / "src" / "class1" / "broken.png").write_bytes(b"")
    with pytest.raises(ShardError, match="broken.png"):
        build_image_cache(str(tmp_path / "src"), str(tmp_path / "cache"), S, progress=False)
    assert not os.path.exists(tmp_path / "cache" / "meta.json")
    cache = build_image_cache(str(tmp_path / "src"), str(tmp_path / "cache"), S, skip_bad=True, chunk_rows=3,
                              progress=False)
    assert len(cache) == 7 and "broken.png" not in " ".join(cache.ids)
    assert [s["id"] for s in cache.skipped] == [os.path.join("class1", "broken.png")]
    assert "cannot be decoded" in cache.skipped[0]["reason"]
    order = sorted(range(7), key=lambda i: (i % 2, i))  # the folder's sorted paths
    np.testing.assert_array_equal(np.load(tmp_path / "cache" / "images.npy"), nchw(images[order]))
    # reusing a cache that left an image out needs the same permission
    with pytest.raises(ValueError, match="broken.png"):
        build_image_cache(str(tmp_path / "src"), str(tmp_path / "cache"), S, progress=False)


# --- training and views from the cache ------------------------------------------------------


def small_config(**kw):
    params = dict(framework="simclr", backbone="small_cnn", width=8, image_size=S, proj_dim=16, epochs=2,
                  batch_size=16, device="cpu", seed=3)
    params.update(kw)
    return TrainConfig(**params)


@pytest.fixture(scope="module")
def pixels():
    return np.ascontiguousarray(nchw(random_images(60, seed=11)))


def assert_same_weights(a, b):
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(x, y), name


def test_training_on_uint8_rows_equals_training_on_their_floats(tmp_path, pixels):
    rows = np.arange(5, 55, 2)[::-1].copy()
    floats = torch.from_numpy(pixels[rows]).float() / 255
    expected = train_encoder(floats, small_config(), progress=False)
    np.save(tmp_path / "images.npy", pixels)
    memmap = np.load(tmp_path / "images.npy", mmap_mode="r")
    assert_same_weights(train_encoder(memmap, small_config(), progress=False, rows=rows), expected)
    assert_same_weights(train_encoder(CacheRows(str(tmp_path), rows), small_config(), progress=False), expected)
    assert_same_weights(train_encoder(torch.from_numpy(pixels[rows]), small_config(), progress=False), expected)


def test_uint8_training_checks_its_input(pixels):
    with pytest.raises(ValueError, match="image_size"):
        train_encoder(pixels, small_config(image_size=8), progress=False)
    with pytest.raises(ValueError, match="rows must lie"):
        train_encoder(pixels, small_config(), progress=False, rows=[0, 60])
    with pytest.raises(ValueError, match="uint8"):
        train_encoder(pixels.astype(np.int16), small_config(), progress=False)


def test_views_of_uint8_rows_equal_views_of_their_floats(tmp_path, pixels):
    torch.manual_seed(0)
    encoder = build_encoder(small_config())
    rows = np.array([7, 3, 59, 0, 12] * 10)
    floats = torch.from_numpy(pixels[rows]).float() / 255
    expected = query_views(encoder, floats, 3, seed=5, batch_size=64)
    np.save(tmp_path / "images.npy", pixels)
    memmap = np.load(tmp_path / "images.npy", mmap_mode="r")
    assert torch.equal(query_views(encoder, memmap, 3, seed=5, batch_size=64, rows=rows), expected)
    assert torch.equal(query_views(encoder, CacheRows(str(tmp_path), rows), 3, seed=5, batch_size=64), expected)
    all_floats = torch.from_numpy(pixels).float() / 255
    assert torch.equal(query_views(encoder, pixels, 3, seed=5), query_views(encoder, all_floats, 3, seed=5))


def test_a_train_job_carries_cache_rows_not_pixels_and_trains_the_same_in_worker_processes(tmp_path, pixels):
    np.save(tmp_path / "images.npy", pixels)
    members = [np.arange(0, 40), np.arange(20, 60)]
    jobs = [TrainJob(CacheRows(str(tmp_path), m), small_config(seed=i, epochs=1), str(tmp_path / f"enc{i}"))
            for i, m in enumerate(members)]
    assert len(pickle.dumps(jobs[0])) < 4096
    trained = train_encoders(jobs, workers=2, progress=False)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the workers: the float path at the same thread count
    try:
        for (encoder, _), m, i in zip(trained, members, range(2)):
            floats = torch.from_numpy(pixels[m]).float() / 255
            expected = train_encoder(floats, small_config(seed=i, epochs=1), progress=False)
            assert_same_weights(encoder, expected)
    finally:
        torch.set_num_threads(threads)


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads RssFile from /proc")
def test_rows_read_from_the_cache_do_not_stay_resident(tmp_path):
    import re

    from lpla_fast.encoders.pixels import float_batch

    def resident_file_mb():
        return int(re.search(r"RssFile:\s+(\d+)", open("/proc/self/status").read()).group(1)) / 1024

    np.save(tmp_path / "images.npy", np.ones((1600, 3, 64, 64), np.uint8))  # 19.7 MB
    memmap = np.load(tmp_path / "images.npy", mmap_mode="r")
    before = resident_file_mb()
    for start in range(0, 1600, 200):
        float_batch(memmap, np.arange(1600)[::-1], slice(start, start + 200))
    assert resident_file_mb() - before < 5
