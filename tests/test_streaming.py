"""`lpla score` on the local engine: outputs, resumption after kill -9, input formats, bad input."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from lpla_fast import ops
from lpla_fast.attacks.calibration import LpLACalibration
from lpla_fast.streaming import ScoreConfig, ShardError, read_scores, save_bf16_npy, score_shards
from lpla_fast.testing import files_under

D = 16
K = 3


def calibration(dim=D, **kw):
    params = dict(p=2.0, log_space=True, mean_in=0.3, std_in=0.9, mean_out=0.0, std_out=1.1, ref_mean=1.3, ref_std=0.2, dim=dim)
    params.update(kw)
    return LpLACalibration(**params)


@pytest.fixture
def calib_path(tmp_path):
    path = tmp_path / "calib.json"
    calibration().save(path)
    return str(path)


def make_npy_shards(folder, n_shards=3, rows=200, shape_tail=(K, D), dtype=np.float32, seed=0):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    arrays = []
    for i in range(n_shards):
        x = rng.standard_normal((rows, *shape_tail)).astype(dtype)
        np.save(folder / f"shard-{i:02d}.npy", x)
        arrays.append(x)
    return arrays


def locations(table):
    return list(zip(table.column("shard").to_pylist(), table.column("row").to_pylist()))


def run(tmp_path, calib_path, pattern, out="out", **kw):
    kw.setdefault("batch_rows", 64)
    kw.setdefault("progress", False)
    config = ScoreConfig(embeddings=pattern, out=str(tmp_path / out), calibration=calib_path, **kw)
    return score_shards(config), config.out


def expected_scores(arrays, names, calib=None, dtype=None):
    """(shard, row) of every row in sorted order, and their scores in that order."""
    calib = calib or calibration()
    rows, scores = [], []
    for name, x in zip(names, arrays):
        t = torch.from_numpy(np.ascontiguousarray(x))
        if t.dim() == 2:
            t = t.unsqueeze(1)
        scores.append(calib.score(t if dtype is None else t.to(dtype))[1].double().numpy())
        rows += [(name, r) for r in range(len(x))]
    order = sorted(range(len(rows)), key=rows.__getitem__)
    return [rows[i] for i in order], np.concatenate(scores)[order]


# --- outputs -----------------------------------------------------------------------------


def test_scores_every_row_once_with_the_fused_op(tmp_path, calib_path):
    arrays = make_npy_shards(tmp_path / "emb")
    summary, out = run(tmp_path, calib_path, str(tmp_path / "emb" / "*.npy"))
    assert summary == {"rows": 600, "parts": 12, "bad_shards": {}, "skipped_images": [], "complete": True}
    table = read_scores(out)
    rows, scores = expected_scores(arrays, [f"shard-{i:02d}.npy" for i in range(3)])
    assert locations(table) == rows and "id" not in table.column_names  # these shards have no ids
    np.testing.assert_array_equal(table.column("score").to_numpy(), scores)
    assert os.path.exists(os.path.join(out, "_SUCCESS"))
    manifest = json.load(open(os.path.join(out, "manifest.json")))
    assert manifest["complete"] and all(e["status"] == "done" for e in manifest["shards"].values())


@pytest.mark.parametrize("characteristic", ["resultant", "multi_p", "joint"])
def test_a_calibration_of_another_characteristic_scores_every_row(tmp_path, characteristic):
    from lpla_fast.attacks import AttackerKnowledge, LpLA

    g = torch.Generator().manual_seed(1)
    views = lambda n, s: torch.randn(n, K, D, generator=g) * s  # noqa: E731
    knowledge = AttackerKnowledge(level="shadow", shadow_members=views(80, 1.1), shadow_nonmembers=views(80, 1.0),
                                  shadow_reference=views(40, 1.0), target_reference=views(40, 1.0))
    path = tmp_path / "calib.json"
    LpLA(characteristic=characteristic).fit(knowledge).calibration_.save(path)
    arrays = make_npy_shards(tmp_path / "emb", n_shards=2, rows=100)
    _, out = run(tmp_path, str(path), str(tmp_path / "emb" / "*.npy"))
    table = read_scores(out)
    expected = [LpLACalibration.load(path).score(torch.from_numpy(x))[1].numpy() for x in arrays]
    np.testing.assert_allclose(table.column("score").to_numpy(), np.concatenate(expected), rtol=1e-6)


def test_read_scores_reads_only_listed_parts(tmp_path, calib_path):
    make_npy_shards(tmp_path / "emb", n_shards=1, rows=100)
    _, out = run(tmp_path, calib_path, str(tmp_path / "emb" / "*.npy"))
    listed = read_scores(out)
    stray = pq.read_table(os.path.join(out, "scores", os.listdir(os.path.join(out, "scores"))[0]))
    pq.write_table(stray, os.path.join(out, "scores", "part-left-by-a-killed-run.parquet"))
    assert read_scores(out).equals(listed) and listed.column("row").to_pylist() == list(range(100))
    with pytest.raises(FileNotFoundError, match="no manifest.json"):
        read_scores(str(tmp_path / "emb"))


def test_norm_stat_and_written_norms(tmp_path):
    arrays = make_npy_shards(tmp_path / "emb", n_shards=1)
    config = ScoreConfig(embeddings=str(tmp_path / "emb"), out=str(tmp_path / "out"), stat="norm", p=3.0,
                         batch_rows=50, write_norms=True, progress=False)
    score_shards(config)
    table = pq.read_table(tmp_path / "out" / "scores")
    rows = table.column("row").to_numpy()
    norms = ops.lp_norm(torch.from_numpy(arrays[0]), 3.0).numpy()[rows]
    np.testing.assert_allclose(np.stack(table.column("norms").to_numpy(zero_copy_only=False)), norms, rtol=1e-6)
    np.testing.assert_allclose(table.column("score").to_numpy(), norms.mean(axis=1), rtol=1e-6)


def test_rerun_of_a_finished_job_scores_nothing_again(tmp_path, calib_path):
    make_npy_shards(tmp_path / "emb")
    _, out = run(tmp_path, calib_path, str(tmp_path / "emb" / "*.npy"))
    before = {n: os.stat(os.path.join(out, "scores", n)).st_mtime_ns for n in os.listdir(os.path.join(out, "scores"))}
    run(tmp_path, calib_path, str(tmp_path / "emb" / "*.npy"))
    after = {n: os.stat(os.path.join(out, "scores", n)).st_mtime_ns for n in os.listdir(os.path.join(out, "scores"))}
    assert before == after


def test_rerun_with_another_calibration_is_refused(tmp_path, calib_path):
    make_npy_shards(tmp_path / "emb", n_shards=1)
    run(tmp_path, calib_path, str(tmp_path / "emb" / "*.npy"))
    other = tmp_path / "other.json"
    calibration(mean_in=0.5).save(other)
    with pytest.raises(ValueError, match="calibration_sha256.*--overwrite"):
        run(tmp_path, str(other), str(tmp_path / "emb" / "*.npy"))
    summary, _ = run(tmp_path, str(other), str(tmp_path / "emb" / "*.npy"), overwrite=True)
    assert summary["complete"]


def test_pandas_sees_one_table_with_null_ids_where_a_shard_has_none(tmp_path, calib_path):
    import pandas as pd

    folder = tmp_path / "emb"
    arrays = make_npy_shards(folder, n_shards=1, rows=100)  # shard-00.npy: no ids, read first
    x = np.random.default_rng(3).standard_normal((60, K, D)).astype(np.float32)
    write_parquet(folder / "shard-01.parquet", x, [f"img-{i}" for i in range(60)])
    _, out = run(tmp_path, calib_path, str(folder / "*"))

    frame = pd.read_parquet(os.path.join(out, "scores"))
    assert list(frame.columns) == ["shard", "row", "id", "score"]
    frame = frame.sort_values(["shard", "row"])
    assert frame["id"].isna().tolist() == [True] * 100 + [False] * 60
    assert frame["id"].tolist()[100:] == [f"img-{i}" for i in range(60)]
    _, scores = expected_scores([arrays[0], x], ["shard-00.npy", "shard-01.parquet"])
    np.testing.assert_array_equal(frame["score"].to_numpy(), scores)
    schemas = {str(pq.read_schema(os.path.join(out, "scores", n))) for n in os.listdir(os.path.join(out, "scores"))}
    assert len(schemas) == 1


def test_integer_and_string_ids_are_written_as_strings(tmp_path, calib_path):
    folder = tmp_path / "emb"
    make_npy_shards(folder, n_shards=1, rows=10)
    np.save(folder / "shard-00.ids.npy", np.arange(10, dtype=np.int32))
    write_parquet(folder / "shard-01.parquet", np.ones((5, K, D), np.float32), [f"p{i}" for i in range(5)])
    _, out = run(tmp_path, calib_path, str(folder / "*"))
    table = read_scores(out)
    assert table.schema.field("id").type == pa.string()
    assert table.column("id").to_pylist() == [str(i) for i in range(10)] + [f"p{i}" for i in range(5)]


def test_a_refused_rerun_changes_nothing_on_disk(tmp_path, calib_path):
    make_npy_shards(tmp_path / "emb", n_shards=2)
    _, out = run(tmp_path, calib_path, str(tmp_path / "emb" / "*.npy"))
    before = files_under(out)
    assert "_SUCCESS" in before
    other = tmp_path / "other.json"
    calibration(mean_in=0.5).save(other)
    with pytest.raises(ValueError, match="other settings"):
        run(tmp_path, str(other), str(tmp_path / "emb" / "*.npy"))
    _bad_truncated(tmp_path / "emb")
    with pytest.raises(ShardError, match="shard-01.npy"):
        run(tmp_path, calib_path, str(tmp_path / "emb" / "*.npy"))
    assert files_under(out) == before
    assert json.load(open(os.path.join(out, "manifest.json")))["complete"]


def test_a_refused_first_run_creates_no_output_folder(tmp_path, calib_path):
    make_npy_shards(tmp_path / "emb", n_shards=2)
    _bad_truncated(tmp_path / "emb")
    with pytest.raises(ShardError):
        run(tmp_path, calib_path, str(tmp_path / "emb" / "*.npy"))
    assert not os.path.exists(tmp_path / "out")


# --- kill -9 and resume ------------------------------------------------------------------


def _cli(args, env_extra=None):
    env = dict(os.environ, **(env_extra or {}))
    return subprocess.Popen([sys.executable, "-m", "lpla_fast", "score", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _committed_parts(manifest_path):
    try:
        shards = json.load(open(manifest_path))["shards"]
    except (OSError, ValueError, KeyError):
        return 0
    return sum(len(e.get("parts", {})) for e in shards.values())


def test_kill9_mid_run_then_rerun_scores_every_row_exactly_once(tmp_path, calib_path):
    make_npy_shards(tmp_path / "emb", n_shards=3, rows=300)
    args = ["--calibration", calib_path, "--embeddings", str(tmp_path / "emb" / "*.npy"),
            "--batch-rows", "25", "--no-progress", "--out"]
    _, reference = run(tmp_path, calib_path, str(tmp_path / "emb" / "*.npy"), out="reference", batch_rows=25)

    out = str(tmp_path / "out")
    proc = _cli(args + [out], {"LPLA_SCORE_CHUNK_DELAY": "0.1"})
    deadline = time.time() + 60
    while _committed_parts(os.path.join(out, "manifest.json")) < 5 and time.time() < deadline:
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    committed = _committed_parts(os.path.join(out, "manifest.json"))
    assert 5 <= committed < 36, "the kill must land mid-run"
    assert not os.path.exists(os.path.join(out, "_SUCCESS"))

    rerun = _cli(args + [out])
    stdout, stderr = rerun.communicate(timeout=120)
    assert rerun.returncode == 0, stderr
    assert json.loads(stdout)["complete"]
    table, expected = read_scores(out), read_scores(reference)
    assert table.num_rows == 900 and len(set(locations(table))) == 900
    assert table.equals(expected)
    assert sorted(os.listdir(os.path.join(out, "scores"))) == sorted(os.listdir(os.path.join(reference, "scores")))


# --- input formats -----------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float16, "bfloat16"])
def test_half_precision_npy(tmp_path, calib_path, dtype):
    x = torch.randn(150, K, D)
    folder = tmp_path / "emb"
    folder.mkdir()
    if dtype == "bfloat16":
        x = x.bfloat16()
        save_bf16_npy(str(folder / "a.bf16.npy"), x)
        name, torch_dtype = "a.bf16.npy", torch.bfloat16
    else:
        x = x.half()
        np.save(folder / "a.npy", x.numpy())
        name, torch_dtype = "a.npy", torch.float16
    run(tmp_path, calib_path, str(folder))
    rows, scores = expected_scores([x.float().numpy()], [name], dtype=torch_dtype)
    table = read_scores(str(tmp_path / "out"))
    assert locations(table) == rows
    np.testing.assert_array_equal(table.column("score").to_numpy(), scores)


def test_npy_sidecar_ids_and_2d_shards(tmp_path, calib_path):
    arrays = make_npy_shards(tmp_path / "emb", n_shards=2, rows=70, shape_tail=(D,))
    for i in range(2):
        np.save(tmp_path / "emb" / f"shard-{i:02d}.ids.npy", np.arange(70, dtype=np.int64) + 1000 * i)
    run(tmp_path, calib_path, str(tmp_path / "emb" / "*"))
    table = read_scores(str(tmp_path / "out"))
    assert table.column("id").to_pylist() == list(range(70)) + list(range(1000, 1070))
    expected = np.concatenate([calibration().score(torch.from_numpy(a).unsqueeze(1))[1].double().numpy() for a in arrays])
    np.testing.assert_array_equal(table.column("score").to_numpy(), expected)


def write_parquet(path, x, ids, row_group_size=40):
    n, k, d = x.shape
    values = pa.array(x.reshape(-1))
    column = pa.FixedSizeListArray.from_arrays(values, d)
    if k > 1:
        column = pa.FixedSizeListArray.from_arrays(column, k)
    pq.write_table(pa.table({"id": pa.array(ids), "embedding": column}), path, row_group_size=row_group_size)


@pytest.mark.parametrize("k", [1, K])
def test_parquet_shards_read_across_row_groups(tmp_path, calib_path, k):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((230, k, D)).astype(np.float32)
    (tmp_path / "emb").mkdir()
    ids = [f"img-{i:04d}" for i in range(230)]
    write_parquet(tmp_path / "emb" / "a.parquet", x, ids)
    run(tmp_path, calib_path, str(tmp_path / "emb" / "*.parquet"), batch_rows=64)
    table = read_scores(str(tmp_path / "out"))
    assert table.column("id").to_pylist() == ids and locations(table) == [("a.parquet", r) for r in range(230)]
    np.testing.assert_array_equal(table.column("score").to_numpy(), calibration().score(torch.from_numpy(x))[1].double().numpy())


# --- bad input ---------------------------------------------------------------------------


def _bad_truncated(folder):
    data = open(folder / "shard-01.npy", "rb").read()
    open(folder / "shard-01.npy", "wb").write(data[:-100])
    return "shard-01.npy", "truncated"


def _bad_header(folder):
    open(folder / "shard-01.npy", "wb").write(b"\x93NUMPY garbage" * 10)
    return "shard-01.npy", "corrupt"


def _bad_dim(folder):
    np.save(folder / "shard-01.npy", np.ones((10, K, D + 1), np.float32))
    return "shard-01.npy", f"D={D + 1}.*D={D}"


def _bad_nan(folder):
    x = np.load(folder / "shard-01.npy")
    x[77, 1, 3] = np.nan
    np.save(folder / "shard-01.npy", x)
    return "shard-01.npy", r"NaN or Inf.*\[77\]"


def _bad_dangling_link(folder):
    os.symlink(folder / "missing.npy", folder / "shard-05.npy")
    return "shard-05.npy", "does not exist"


def _bad_parquet(folder):
    x = np.ones((50, 1, D), np.float32)
    write_parquet(folder / "shard-09.parquet", x, list(range(50)))
    data = open(folder / "shard-09.parquet", "rb").read()
    open(folder / "shard-09.parquet", "wb").write(data[: len(data) // 2])
    return "shard-09.parquet", "corrupt or truncated Parquet"


def _bad_dtype(folder):
    np.save(folder / "shard-01.npy", np.ones((10, K, D), np.int32))
    return "shard-01.npy", "dtype int32"


BAD = [_bad_truncated, _bad_header, _bad_dim, _bad_nan, _bad_dangling_link, _bad_parquet, _bad_dtype]


@pytest.mark.parametrize("make_bad", BAD, ids=lambda f: f.__name__[5:])
def test_bad_shard_is_an_error_naming_it(tmp_path, calib_path, make_bad):
    make_npy_shards(tmp_path / "emb")
    name, problem = make_bad(tmp_path / "emb")
    with pytest.raises(ShardError, match=f"{name}(.|\n)*{problem}"):
        run(tmp_path, calib_path, str(tmp_path / "emb" / "*"))
    assert not os.path.exists(tmp_path / "out" / "_SUCCESS")


@pytest.mark.parametrize("make_bad", [_bad_truncated, _bad_nan, _bad_parquet], ids=lambda f: f.__name__[5:])
def test_skip_bad_shards_records_them_and_scores_the_rest(tmp_path, calib_path, make_bad):
    arrays = make_npy_shards(tmp_path / "emb")
    name, problem = make_bad(tmp_path / "emb")
    summary, out = run(tmp_path, calib_path, str(tmp_path / "emb" / "*"), skip_bad_shards=True)
    bad_path = str(tmp_path / "emb" / name)
    assert list(summary["bad_shards"]) == [bad_path] and summary["complete"]
    manifest = json.load(open(os.path.join(out, "manifest.json")))
    assert manifest["shards"][bad_path]["status"] == "bad"
    assert manifest["shards"][bad_path]["reason"]
    good = [0, 2] if name == "shard-01.npy" else [0, 1, 2]
    rows, scores = expected_scores([arrays[i] for i in good], [f"shard-{i:02d}.npy" for i in good])
    table = read_scores(out)
    assert locations(table) == rows
    np.testing.assert_array_equal(table.column("score").to_numpy(), scores)


def test_cli_reports_a_bad_shard_and_an_empty_glob(tmp_path, calib_path):
    make_npy_shards(tmp_path / "emb", n_shards=2)
    _bad_truncated(tmp_path / "emb")
    proc = _cli(["--calibration", calib_path, "--embeddings", str(tmp_path / "emb" / "*.npy"), "--out", str(tmp_path / "o")])
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 2 and "shard-01.npy" in stderr and "truncated" in stderr and "Traceback" not in stderr
    with pytest.raises(FileNotFoundError, match="matches no"):
        run(tmp_path, calib_path, str(tmp_path / "nothing" / "*.npy"))
