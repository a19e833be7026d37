"""`lpla score --images` and `lpla embed --images`: the four sources, views equal to query_views,
the fused tail, embed-then-score equal to the one-step job, bad images, resumption."""

import io
import json
import os
import subprocess
import sys
import tarfile

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from lpla_fast import ops
from lpla_fast.attacks.calibration import LpLACalibration
from lpla_fast.encoders import TrainConfig, build_encoder, load_encoder, query_views, save_encoder
from lpla_fast.encoders.pooling import pooled_lpla_score
from lpla_fast.streaming import ScoreConfig, ShardError, read_scores, score_shards
from lpla_fast.streaming.images import to_float_images
from lpla_fast.testing import files_under, png_bytes, random_images, write_image_folder

S = 16  # image side
K = 3


@pytest.fixture(scope="module")
def encoder_dir(tmp_path_factory):
    torch.manual_seed(0)
    encoder = build_encoder(TrainConfig(framework="simclr", backbone="small_cnn", width=8, image_size=S,
                                        proj_dim=16, augmentation="natural"))
    folder = tmp_path_factory.mktemp("encoder")
    save_encoder(encoder, str(folder))
    return str(folder)


def calibration_for(encoder_dir, output="backbone", **kw):
    encoder = load_encoder(encoder_dir)
    params = dict(p=2.0, log_space=True, mean_in=0.2, std_in=1.0, mean_out=0.0, std_out=1.2, ref_mean=-1.0,
                  ref_std=0.5, dim=encoder.embed_dim(output))
    params.update(kw)
    return LpLACalibration(**params)


@pytest.fixture
def calib_path(tmp_path, encoder_dir):
    path = tmp_path / "calib.json"
    calibration_for(encoder_dir).save(path)
    return str(path)




def write_tar(path, images, prefix="s"):
    with tarfile.open(path, "w") as tar:
        for i, image in enumerate(images):
            for name, data in ((f"{prefix}{i:05d}.png", png_bytes(image)), (f"{prefix}{i:05d}.cls", b"0")):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))



def write_parquet_images(path, images, with_paths=True):
    if with_paths:
        column = pa.array([{"bytes": png_bytes(im), "path": f"p/{i}.png"} for i, im in enumerate(images)])
    else:
        column = pa.array([png_bytes(im) for im in images], pa.binary())
    pq.write_table(pa.table({"image": column}), path, row_group_size=25)


def score(tmp_path, encoder_dir, images, out="out", calib=None, **kw):
    kw.setdefault("batch_rows", 32)
    kw.setdefault("progress", False)
    kw.setdefault("workers", 0)
    config = ScoreConfig(images=str(images), encoder=encoder_dir, out=str(tmp_path / out), calibration=calib,
                         K=K, **kw)
    return score_shards(config), config.out


def expected(encoder_dir, images, calib, output="backbone", seed=0):
    """Scores of query_views' embeddings of the same images, K and seed."""
    encoder = load_encoder(encoder_dir)
    views = query_views(encoder, to_float_images(images), K, seed=seed, output=output)
    return views, calib.score(views)[1].double().numpy()


# --- sources -------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["npy", "folder", "parquet", "tar"])
def test_every_source_scores_like_query_views(tmp_path, encoder_dir, calib_path, layout):
    images = random_images(70)
    src = tmp_path / "src"
    src.mkdir()
    if layout == "npy":
        np.save(src / "a.npy", images)
    elif layout == "folder":
        write_image_folder(src, images)
        order = sorted(range(70), key=lambda i: f"class{i % 2}/img{i:04d}.png")
        images = images[order]
    elif layout == "parquet":
        write_parquet_images(src / "a.parquet", images)
    else:
        write_tar(src / "a.tar", images)
    summary, out = score(tmp_path, encoder_dir, src, calib=calib_path, write_norms=True)
    assert summary["complete"] and summary["rows"] == 70
    table = read_scores(out)
    assert table.column("row").to_pylist() == list(range(70))
    _, scores = expected(encoder_dir, images, LpLACalibration.load(calib_path))
    np.testing.assert_allclose(table.column("score").to_numpy(), scores, rtol=1e-4, atol=1e-4)
    paths = table.column("path").to_pylist()
    if layout == "npy":
        assert paths == [None] * 70
    elif layout == "folder":
        assert paths == sorted(f"class{i % 2}/img{i:04d}.png" for i in range(70))
    elif layout == "parquet":
        assert paths == [f"p/{i}.png" for i in range(70)]
    else:
        assert paths == [f"s{i:05d}.png" for i in range(70)]


@pytest.mark.parametrize("output", ["backbone", "head"])
def test_convolutions_in_both_layouts_score_as_query_views(tmp_path, output, job_plans):
    """On a CPU the job runs each convolution in its own layout (`set_conv_layouts`): the small
    CNN of width 32 at 16 x 16 runs its first three channels-last and its last, over 4 x 4 maps of
    128 channels, contiguous. The scores stay those of query_views' contiguous forward pass, to
    float precision."""
    torch.manual_seed(1)
    encoder = build_encoder(TrainConfig(framework="simclr", backbone="small_cnn", width=32, image_size=16,
                                        proj_dim=16, augmentation="natural"))
    folder = str(tmp_path / "encoder")
    save_encoder(encoder, folder)
    calib = calibration_for(folder, output)
    calib.save(tmp_path / "calib.json")
    images = random_images(40, seed=4)
    np.save(tmp_path / "a.npy", images)
    summary, out = score(tmp_path, folder, tmp_path / "a.npy", calib=str(tmp_path / "calib.json"), output=output)
    assert summary["complete"] and summary["rows"] == 40
    convs = [m for m in job_plans[0].scorer.encoder.backbone.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.weight.is_contiguous(memory_format=torch.channels_last) for c in convs] == [True, True, True, False]
    _, scores = expected(folder, images, calib, output=output)
    np.testing.assert_allclose(read_scores(out).column("score").to_numpy(), scores, rtol=1e-4, atol=1e-4)


def test_view_one_is_the_clean_image_and_views_follow_the_seed(tmp_path, encoder_dir):
    images = random_images(40)
    np.save(tmp_path / "a.npy", images)
    _, out0 = score(tmp_path, encoder_dir, tmp_path / "a.npy", out="s0", stat="norm", write_norms=True)
    _, out1 = score(tmp_path, encoder_dir, tmp_path / "a.npy", out="s1", stat="norm", write_norms=True, view_seed=1)
    n0 = np.stack(read_scores(out0).column("norms").to_numpy(zero_copy_only=False))
    n1 = np.stack(read_scores(out1).column("norms").to_numpy(zero_copy_only=False))
    np.testing.assert_array_equal(n0[:, 0], n1[:, 0])  # the clean view does not depend on the seed
    assert not np.allclose(n0[:, 1:], n1[:, 1:])
    encoder = load_encoder(encoder_dir)
    clean = encoder.embed(to_float_images(images)).detach()
    np.testing.assert_allclose(n0[:, 0], ops.lp_norm(clean, 2.0).numpy(), rtol=1e-4)


def test_head_output_scores_the_projection(tmp_path, encoder_dir):
    images = random_images(64, seed=2)
    np.save(tmp_path / "a.npy", images)
    calib = calibration_for(encoder_dir, "head", log_space=False, ref_mean=1.0)
    calib.save(tmp_path / "head.json")
    _, out = score(tmp_path, encoder_dir, tmp_path / "a.npy", calib=str(tmp_path / "head.json"), output="head")
    _, scores = expected(encoder_dir, images, calib, output="head")
    np.testing.assert_allclose(read_scores(out).column("score").to_numpy(), scores, rtol=1e-4, atol=1e-4)


def test_calibration_of_another_dimension_is_refused_before_any_write(tmp_path, encoder_dir):
    np.save(tmp_path / "a.npy", random_images(10))
    calibration_for(encoder_dir, dim=7).save(tmp_path / "c.json")
    with pytest.raises(ValueError, match="D=32.*D=7"):
        score(tmp_path, encoder_dir, tmp_path / "a.npy", calib=str(tmp_path / "c.json"))
    assert not os.path.exists(tmp_path / "out")


# --- the fused tail ------------------------------------------------------------------------


def test_pooled_lpla_score_equals_pool_then_score():
    fmap = torch.randn(4 * 3, 8, 5, 5)
    calib = LpLACalibration(p=3.0, log_space=True, mean_in=0.1, std_in=1.0, mean_out=0.0, std_out=1.1)
    pooled, norms, scores = pooled_lpla_score(fmap, 3, 3.0, *calib.kernel_params(), calib.log_space)
    torch.testing.assert_close(pooled, fmap.mean(dim=(2, 3)))
    n2, s2 = calib.score(pooled.view(4, 3, 8))
    torch.testing.assert_close(norms, n2)
    torch.testing.assert_close(scores, s2)
    with pytest.raises(ValueError, match="K=5"):
        pooled_lpla_score(fmap, 5, 3.0, *calib.kernel_params(), True)


@pytest.mark.parametrize("backbone", ["small_cnn", "resnet18"])
def test_backbones_pool_through_the_op_without_autograd_and_torch_with_it(backbone):
    from lpla_fast.encoders import make_backbone
    from lpla_fast.encoders.pooling import GlobalAvgPool, split_tail

    net = make_backbone(backbone, image_size=S).eval()
    feature_map, pool = split_tail(net)
    assert isinstance(pool, GlobalAvgPool)
    x = torch.rand(2, 3, S, S)
    with torch.no_grad():
        fmap = feature_map(x)
        torch.testing.assert_close(net(x), fmap.mean(dim=(2, 3)))
    out = net(x)
    out.sum().backward()  # training path: torch's mean, with gradients
    assert all(p.grad is not None for p in net.parameters() if p.requires_grad)


# --- embed then score ----------------------------------------------------------------------


def _cli(*args):
    result = subprocess.run([sys.executable, "-m", "lpla_fast", *args], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return result


def test_embed_then_score_equals_the_one_step_job(tmp_path, encoder_dir, calib_path):
    src = tmp_path / "src"
    src.mkdir()
    np.save(src / "a.npy", random_images(50, seed=4))
    write_tar(src / "b.tar", random_images(40, seed=5))
    common = ["--images", str(src), "--K", str(K), "--view-seed", "3", "--batch-rows", "32", "--no-progress"]
    _cli("score", "--calibration", calib_path, "--encoder", encoder_dir, "--out", str(tmp_path / "one"), *common,
         "--write-embeddings")
    _cli("embed", "--checkpoint", encoder_dir, "--out", str(tmp_path / "emb"), *common)
    _cli("score", "--calibration", calib_path, "--embeddings", str(tmp_path / "emb" / "embeddings"),
         "--out", str(tmp_path / "two"), "--no-progress")
    one, two = read_scores(str(tmp_path / "one")), read_scores(str(tmp_path / "two"))
    assert one.num_rows == two.num_rows == 90
    # The embedding files are named after the parts, so they sort like them: same row order.
    # The one-step job's fused tail takes the norms of the pooled rows before they are rounded
    # to float32, the two-step job of the float32 rows it wrote: equal to float precision.
    np.testing.assert_allclose(one.column("score").to_numpy(), two.column("score").to_numpy(), rtol=1e-6, atol=1e-6)
    assert two.column("id").to_pylist()[:2] == ["a.npy:0", "a.npy:1"] and two.column("id").to_pylist()[50] == "s00000.png"
    kept = sorted(os.listdir(tmp_path / "one" / "embeddings"))
    assert kept == sorted(os.listdir(tmp_path / "emb" / "embeddings"))


# --- bad input and resumption --------------------------------------------------------------


def test_corrupt_image_is_a_bad_shard(tmp_path, encoder_dir, calib_path):
    src = tmp_path / "src"
    src.mkdir()
    np.save(src / "a.npy", random_images(40))
    write_tar(src / "b.tar", random_images(40))
    with tarfile.open(src / "c.tar", "w") as tar:
        data = png_bytes(random_images(1)[0])[:30]  # a truncated PNG
        info = tarfile.TarInfo("x00001.png")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    with pytest.raises(ShardError, match="c.tar.*row 0 .x00001.png. cannot be decoded"):
        score(tmp_path, encoder_dir, src, calib=calib_path)
    summary, out = score(tmp_path, encoder_dir, src, calib=calib_path, skip_bad_shards=True, workers=1)
    assert summary["complete"] and list(summary["bad_shards"]) == [str(src / "c.tar")] and summary["rows"] == 80
    assert read_scores(out).num_rows == 80


@pytest.mark.parametrize("problem", ["dtype", "shape", "column"])
def test_malformed_image_shards_are_named(tmp_path, encoder_dir, calib_path, problem):
    src = tmp_path / "src"
    src.mkdir()
    if problem == "dtype":
        np.save(src / "a.npy", np.zeros((4, S, S, 3), np.float32))
        match = "a.npy.*uint8"
    elif problem == "shape":
        np.save(src / "a.npy", np.zeros((4, S, S), np.uint8))
        match = "a.npy.*N, H, W, C"
    else:
        pq.write_table(pa.table({"img": [b"x"]}), src / "a.parquet")
        match = "a.parquet.*no column 'image'"
    with pytest.raises(ShardError, match=match):
        score(tmp_path, encoder_dir, src, calib=calib_path)


def test_workers_and_resumption_give_the_same_output(tmp_path, encoder_dir, calib_path):
    src = tmp_path / "src"
    src.mkdir()
    np.save(src / "a.npy", random_images(100, seed=7))
    _, reference = score(tmp_path, encoder_dir, src, out="ref", calib=calib_path)
    _, out = score(tmp_path, encoder_dir, src, out="out", calib=calib_path, workers=2)
    assert read_scores(out).equals(read_scores(reference))
    _reopen_first_chunk(out, str(src / "a.npy"))
    summary, _ = score(tmp_path, encoder_dir, src, out="out", calib=calib_path)
    assert summary["complete"]
    assert read_scores(out).equals(read_scores(reference))


def _files_digest(algorithm, folder):
    data = b"".join(open(os.path.join(folder, name), "rb").read() for name in ("config.json", "model.safetensors"))
    if algorithm == "blake3":
        import blake3

        return blake3.blake3(data).hexdigest()
    import hashlib

    return hashlib.sha256(data).hexdigest()


def _reopen_first_chunk(out, shard):
    """The manifest of a finished job edited as if the run had stopped before its first chunk."""
    path = os.path.join(out, "manifest.json")
    manifest = json.load(open(path))
    entry = manifest["shards"][shard]
    first = sorted(entry["parts"], key=int)[0]
    os.unlink(os.path.join(out, "scores", entry["parts"][first][1]))
    del entry["parts"][first]
    entry["status"], manifest["complete"] = "pending", False
    json.dump(manifest, open(path, "w"))
    return manifest


def test_a_resumed_job_refuses_an_encoder_that_changed_before_any_write(tmp_path, encoder_dir, calib_path):
    import shutil

    encoder = str(tmp_path / "encoder")
    shutil.copytree(encoder_dir, encoder)
    np.save(tmp_path / "a.npy", random_images(40, seed=3))
    _, out = score(tmp_path, encoder, tmp_path / "a.npy", calib=calib_path)
    recorded = json.load(open(os.path.join(out, "manifest.json")))["job"]
    assert recorded["encoder_blake3"] == _files_digest("blake3", encoder) and "encoder_sha256" not in recorded
    _reopen_first_chunk(out, str(tmp_path / "a.npy"))
    retrained = load_encoder(encoder)
    with torch.no_grad():
        next(retrained.backbone.parameters()).add_(1e-3)
    save_encoder(retrained, encoder)
    before = files_under(out)
    with pytest.raises(ValueError, match="other settings.*encoder_blake3.*--overwrite"):
        score(tmp_path, encoder, tmp_path / "a.npy", calib=calib_path)
    assert files_under(out) == before


def test_a_job_recorded_with_sha256_resumes_with_sha256(tmp_path, encoder_dir, calib_path, monkeypatch):
    """Jobs of earlier releases (and of hosts without the blake3 package) named their encoder by
    SHA-256: they resume, and keep that hash."""
    np.save(tmp_path / "a.npy", random_images(70, seed=4))
    _, reference = score(tmp_path, encoder_dir, tmp_path / "a.npy", out="reference", calib=calib_path)
    _, out = score(tmp_path, encoder_dir, tmp_path / "a.npy", calib=calib_path)
    manifest = _reopen_first_chunk(out, str(tmp_path / "a.npy"))
    del manifest["job"]["encoder_blake3"]
    manifest["job"]["encoder_sha256"] = _files_digest("sha256", encoder_dir)
    json.dump(manifest, open(os.path.join(out, "manifest.json"), "w"))
    summary, _ = score(tmp_path, encoder_dir, tmp_path / "a.npy", calib=calib_path)
    assert summary["complete"] and read_scores(out).equals(read_scores(reference))
    job = json.load(open(os.path.join(out, "manifest.json")))["job"]
    assert job["encoder_sha256"] == _files_digest("sha256", encoder_dir) and "encoder_blake3" not in job
    # without the blake3 package a new job records SHA-256, and a BLAKE3 job is refused with the fix
    monkeypatch.setitem(sys.modules, "blake3", None)
    _, out = score(tmp_path, encoder_dir, tmp_path / "a.npy", out="plain-hash", calib=calib_path)
    assert "encoder_sha256" in json.load(open(os.path.join(out, "manifest.json")))["job"]
    before = files_under(reference)
    with pytest.raises(ValueError, match="BLAKE3.*pip install blake3.*--overwrite"):
        score(tmp_path, encoder_dir, tmp_path / "a.npy", out="reference", calib=calib_path)
    assert files_under(reference) == before


def test_cli_refuses_bad_image_flags_with_one_line(tmp_path, encoder_dir, calib_path, capsys):
    from lpla_fast.cli import main

    np.save(tmp_path / "a.npy", random_images(8))
    base = ["score", "--calibration", calib_path, "--images", str(tmp_path / "a.npy"), "--out", str(tmp_path / "o")]
    assert main(base) == 2 and "--images needs --encoder" in capsys.readouterr().err
    assert main(base + ["--encoder", encoder_dir, "--batch-rows", "50"]) == 2
    assert "multiple of 32" in capsys.readouterr().err
    assert main(base + ["--encoder", str(tmp_path / "nothing")]) == 2
    assert "--encoder" in capsys.readouterr().err and not os.path.exists(tmp_path / "o")


def test_kill9_mid_run_then_rerun_scores_every_image_exactly_once(tmp_path, encoder_dir, calib_path):
    import signal
    import time

    src = tmp_path / "src"
    src.mkdir()
    np.save(src / "a.npy", random_images(320, seed=8))
    write_tar(src / "b.tar", random_images(64, seed=9))
    _, reference = score(tmp_path, encoder_dir, src, out="reference", calib=calib_path)
    out = tmp_path / "out"
    args = [sys.executable, "-m", "lpla_fast", "score", "--calibration", calib_path, "--encoder", encoder_dir,
            "--images", str(src), "--K", str(K), "--batch-rows", "32", "--no-progress", "--out", str(out)]
    proc = subprocess.Popen(args, env=dict(os.environ, LPLA_SCORE_CHUNK_DELAY="0.3"), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)

    def committed():
        try:
            shards = json.load(open(out / "manifest.json"))["shards"]
        except (OSError, ValueError, KeyError):
            return 0
        return sum(len(e.get("parts", {})) for e in shards.values())

    deadline = time.time() + 120
    while committed() < 3 and time.time() < deadline:
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert 3 <= committed() < 12, "the kill must land mid-run"
    assert not os.path.exists(out / "_SUCCESS")
    rerun = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    table = read_scores(str(out))
    assert table.num_rows == 384 and len(set(zip(table.column("shard").to_pylist(), table.column("row").to_pylist()))) == 384
    assert table.equals(read_scores(reference))


# --- one bad image is a bad row (--skip-bad-images) ----------------------------------------


def _cli_run(*args):
    return subprocess.run([sys.executable, "-m", "lpla_fast", *args], capture_output=True, text=True, timeout=300)


def test_a_folder_with_one_empty_png_scores_the_others_with_skip_bad_images(tmp_path, encoder_dir, calib_path):
    write_image_folder(tmp_path / "src", random_images(40, seed=12))
    (tmp_path / "src" / "class1" / "empty.png").write_bytes(b"")
    base = ["score", "--calibration", calib_path, "--encoder", encoder_dir, "--images", str(tmp_path / "src"),
            "--K", str(K), "--batch-rows", "32", "--no-progress"]
    refused = _cli_run(*base, "--out", str(tmp_path / "refused"))
    assert refused.returncode != 0 and "empty.png" in refused.stderr and "--skip-bad-images" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
    done = _cli_run(*base, "--out", str(tmp_path / "out"), "--skip-bad-images")
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["rows"] == 40 and summary["complete"] and not summary["bad_shards"]
    [skip] = summary["skipped_images"]
    assert skip["path"] == os.path.join("class1", "empty.png") and "cannot be decoded" in skip["reason"]
    table = read_scores(str(tmp_path / "out"))
    assert table.num_rows == 40 and os.path.join("class1", "empty.png") not in table.column("path").to_pylist()
    manifest = json.load(open(tmp_path / "out" / "manifest.json"))
    [entry] = manifest["shards"].values()
    assert entry["status"] == "done" and list(entry["skipped"].values()) == [[skip["path"], skip["reason"]]]


def jpeg_bytes(image):
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG")
    return buf.getvalue()


def test_a_truncated_jpeg_in_a_tar_and_a_corrupt_parquet_cell_are_left_out_alone(tmp_path, encoder_dir, calib_path):
    src = tmp_path / "src"
    src.mkdir()
    images = random_images(40, seed=13)
    with tarfile.open(src / "a.tar", "w") as tar:
        for i, image in enumerate(images):
            name, data = (f"s{i:05d}.jpg", jpeg_bytes(image)[:200]) if i == 13 else (f"s{i:05d}.png", png_bytes(image))
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    cells = [png_bytes(im) for im in images]
    cells[5] = b"not an image"
    pq.write_table(pa.table({"image": pa.array(cells, pa.binary())}), src / "b.parquet", row_group_size=25)
    done = _cli_run("score", "--calibration", calib_path, "--encoder", encoder_dir, "--images", str(src), "--K", str(K),
                    "--batch-rows", "32", "--no-progress", "--out", str(tmp_path / "out"), "--skip-bad-images")
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["rows"] == 78
    assert [(os.path.basename(s["shard"]), s["row"], s["path"]) for s in summary["skipped_images"]] == [
        ("a.tar", 13, "s00013.jpg"), ("b.parquet", 5, None)]
    # The other images keep their rows and their views: the scores of the shard with the bad
    # image's pixels as zeros, without its row.
    table = read_scores(str(tmp_path / "out"))
    calib = LpLACalibration.load(calib_path)
    for shard, bad in (("a.tar", 13), ("b.parquet", 5)):
        rows = table.filter(pa.compute.equal(table.column("shard").cast(pa.string()), shard))
        keep = np.arange(40) != bad
        assert rows.column("row").to_pylist() == np.flatnonzero(keep).tolist()
        zeroed = images.copy()
        zeroed[bad] = 0
        _, scores = expected(encoder_dir, zeroed, calib)
        np.testing.assert_allclose(rows.column("score").to_numpy(), scores[keep], rtol=1e-4, atol=1e-4)


def test_skipped_images_resume_exactly_once(tmp_path, encoder_dir, calib_path):
    write_image_folder(tmp_path / "src", random_images(70, seed=14))
    (tmp_path / "src" / "class0" / "img0003.png").write_bytes(b"\x89PNG broken")
    _, reference = score(tmp_path, encoder_dir, tmp_path / "src", out="ref", calib=calib_path, skip_bad_images=True)
    _, out = score(tmp_path, encoder_dir, tmp_path / "src", out="out", calib=calib_path, skip_bad_images=True)
    manifest = json.load(open(os.path.join(out, "manifest.json")))
    [entry] = manifest["shards"].values()
    os.unlink(os.path.join(out, "scores", entry["parts"]["0"][1]))  # the chunk that holds the bad image
    del entry["parts"]["0"], entry["skipped"]
    entry["status"], manifest["complete"] = "pending", False
    json.dump(manifest, open(os.path.join(out, "manifest.json"), "w"))
    summary, _ = score(tmp_path, encoder_dir, tmp_path / "src", out="out", calib=calib_path, skip_bad_images=True)
    assert summary["complete"] and summary["rows"] == 70 and len(summary["skipped_images"]) == 1
    assert read_scores(out).equals(read_scores(reference))


def test_embed_with_skip_bad_images_writes_the_good_images_only(tmp_path, encoder_dir):
    write_image_folder(tmp_path / "src", random_images(20, seed=15))
    (tmp_path / "src" / "class0" / "empty.png").write_bytes(b"")
    done = _cli_run("embed", "--checkpoint", encoder_dir, "--images", str(tmp_path / "src"), "--K", str(K),
                    "--out", str(tmp_path / "emb"), "--no-progress", "--skip-bad-images")
    assert done.returncode == 0, done.stderr
    folder = tmp_path / "emb" / "embeddings"
    [ids] = [np.load(folder / n) for n in os.listdir(folder) if n.endswith(".ids.npy")]
    [views] = [np.load(folder / n) for n in os.listdir(folder) if n.endswith(".npy") and not n.endswith(".ids.npy")]
    assert len(ids) == len(views) == 20 and os.path.join("class0", "empty.png") not in ids.tolist()


def test_skip_bad_images_is_refused_for_embeddings(tmp_path):
    with pytest.raises(ValueError, match="--skip-bad-images is for --images"):
        ScoreConfig(embeddings=str(tmp_path), out=str(tmp_path / "o"), stat="norm", skip_bad_images=True)
