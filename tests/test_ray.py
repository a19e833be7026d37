"""`lpla score --engine ray` on a real local Ray cluster: same outputs as the local engine, same resume."""

import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lpla_fast.attacks.calibration import LpLACalibration
from lpla_fast.streaming import ScoreConfig, read_scores, score_shards

ray = pytest.importorskip("ray")

D, K = 8, 2


@pytest.fixture(scope="module")
def ray_cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture
def inputs(tmp_path):
    rng = np.random.default_rng(0)
    folder = tmp_path / "emb"
    folder.mkdir()
    for i in range(2):
        np.save(folder / f"a{i}.npy", rng.standard_normal((150, K, D)).astype(np.float32))
    x = rng.standard_normal((90, K, D)).astype(np.float16)
    column = pa.FixedSizeListArray.from_arrays(pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), D), K)
    pq.write_table(pa.table({"id": [f"p{i}" for i in range(90)], "embedding": column}), folder / "b.parquet", row_group_size=32)
    calib = tmp_path / "calib.json"
    LpLACalibration(p=2.0, log_space=False, mean_in=0.2, std_in=1.0, mean_out=-0.1, std_out=1.3,
                    ref_mean=4.0, ref_std=0.5, dim=D).save(calib)
    return folder, str(calib)


def score(tmp_path, inputs, out, engine, pattern="*", **kw):
    folder, calib = inputs
    config = ScoreConfig(embeddings=str(folder / pattern), out=str(tmp_path / out), calibration=calib,
                         batch_rows=40, engine=engine, progress=False, write_norms=True, **kw)
    return score_shards(config)


def parts(out):
    folder = os.path.join(out, "scores")
    return {name: pq.read_table(os.path.join(folder, name)) for name in sorted(os.listdir(folder))}


def test_ray_output_equals_the_local_engine_row_for_row(ray_cluster, tmp_path, inputs):
    local = score(tmp_path, inputs, "local", "local")
    remote = score(tmp_path, inputs, "ray", "ray")
    assert remote == local and remote["rows"] == 390
    local_parts, ray_parts = parts(tmp_path / "local"), parts(tmp_path / "ray")
    assert list(local_parts) == list(ray_parts)
    for name in local_parts:
        assert ray_parts[name].equals(local_parts[name]), name
    table = read_scores(str(tmp_path / "ray"))
    rows = list(zip(table.column("shard").to_pylist(), table.column("row").to_pylist()))
    assert len(rows) == len(set(rows)) == 390
    assert table.column("id").null_count == 300  # the .npy shards have no ids, b.parquet has 90


def test_ray_rerun_skips_committed_shards_and_records_bad_ones(ray_cluster, tmp_path, inputs):
    folder, _ = inputs
    score(tmp_path, inputs, "out", "local", pattern="a*.npy")
    committed = {n: os.stat(tmp_path / "out" / "scores" / n).st_mtime_ns for n in os.listdir(tmp_path / "out" / "scores")}
    bad = np.ones((50, K, D), np.float32)
    bad[7, 0, 0] = np.nan
    np.save(folder / "c.npy", bad)

    summary = score(tmp_path, inputs, "out", "ray", pattern="*.npy", skip_bad_shards=True)
    assert summary["complete"] and list(summary["bad_shards"]) == [str(folder / "c.npy")]
    assert "NaN" in summary["bad_shards"][str(folder / "c.npy")]
    for name, mtime in committed.items():
        assert os.stat(tmp_path / "out" / "scores" / name).st_mtime_ns == mtime, f"{name} was scored again"
    table = read_scores(str(tmp_path / "out"))
    assert table.num_rows == 300 and len(set(zip(table.column("shard").to_pylist(), table.column("row").to_pylist()))) == 300
    manifest = json.load(open(tmp_path / "out" / "manifest.json"))
    assert manifest["shards"][str(folder / "c.npy")]["status"] == "bad"


def test_ray_image_job_equals_the_local_engine_row_for_row(ray_cluster, tmp_path):
    import io
    import tarfile

    import torch
    from PIL import Image

    from lpla_fast.encoders import TrainConfig, build_encoder, save_encoder

    torch.manual_seed(0)
    encoder = build_encoder(TrainConfig(framework="simclr", backbone="small_cnn", width=4, image_size=8, proj_dim=8,
                                        augmentation="natural"))
    save_encoder(encoder, str(tmp_path / "encoder"))
    rng = np.random.default_rng(1)
    (tmp_path / "img").mkdir()
    for name in ("a", "b"):
        np.save(tmp_path / "img" / f"{name}.npy", rng.integers(0, 256, (80, 8, 8, 3), dtype=np.uint8))
    with tarfile.open(tmp_path / "img" / "c.tar", "w") as tar:  # one bad image among 40 (--skip-bad-images)
        for i in range(40):
            buf = io.BytesIO()
            Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(buf, format="PNG")
            data = buf.getvalue()[:20] if i == 33 else buf.getvalue()
            info = tarfile.TarInfo(f"s{i:03d}.png")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    LpLACalibration(p=2.0, log_space=True, mean_in=0.1, std_in=1.0, mean_out=0.0, std_out=1.2, dim=16).save(tmp_path / "c.json")

    def job(out, engine):
        return score_shards(ScoreConfig(images=str(tmp_path / "img"), encoder=str(tmp_path / "encoder"), out=str(tmp_path / out),
                                        calibration=str(tmp_path / "c.json"), K=3, batch_rows=32, engine=engine,
                                        workers=0, progress=False, write_norms=True, write_embeddings=True,
                                        skip_bad_images=True))

    summary, local = job("ray", "ray"), job("local", "local")
    assert local.pop("threads")  # the local engine's own thread choice; Ray workers keep theirs
    assert summary == local
    assert summary["rows"] == 199 and [s["row"] for s in summary["skipped_images"]] == [33]
    local_parts, ray_parts = parts(tmp_path / "local"), parts(tmp_path / "ray")
    assert list(local_parts) == list(ray_parts) and len(local_parts) == 8
    for name in local_parts:
        assert ray_parts[name].equals(local_parts[name]), name
    for name in sorted(os.listdir(tmp_path / "local" / "embeddings")):
        np.testing.assert_array_equal(np.load(tmp_path / "local" / "embeddings" / name), np.load(tmp_path / "ray" / "embeddings" / name))
