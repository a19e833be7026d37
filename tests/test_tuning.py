"""The image job's thread settings: `choose_threads` on given cores and costs, the cores a process
may use, and a job that tunes itself writing what a job with fixed settings writes."""

import io
import tarfile
import threading

import numpy as np
import pytest
import torch

from lpla_fast.attacks.calibration import LpLACalibration
from lpla_fast.encoders import TrainConfig, build_encoder, save_encoder
from lpla_fast.streaming import ScoreConfig, read_scores, score_shards
from lpla_fast.streaming.tuning import available_cores, cgroup_cpu_quota, choose_threads, user_set_threads

S = 16


# --- the decision ----------------------------------------------------------------------------


def test_light_decoding_gives_the_forward_pass_every_core_and_decodes_in_a_thread():
    plan = choose_threads(2, forward_s=0.4, decode_s=0.002)
    assert (plan.torch_threads, plan.workers, plan.pin_memory) == (2, 0, False)
    assert "light" in plan.reason


def test_decoding_up_to_the_forward_pass_is_light():
    plan = choose_threads(2, forward_s=0.001, decode_s=0.001)
    assert (plan.torch_threads, plan.workers) == (2, 0)
    assert "light" in plan.reason


def test_heavy_decoding_gets_cores_of_its_own():
    # 4 cores; forward 1 ms per image on all 4, decoding 4 ms: two decoders and two threads balance
    plan = choose_threads(4, forward_s=0.001, decode_s=0.004)
    assert (plan.torch_threads, plan.workers) == (2, 2)
    assert "heavy" in plan.reason


def test_heavy_decoding_that_one_decoder_balances_stays_in_the_reader_thread():
    # 2 cores: one decoder at most, and the reader thread leaves the forward pass every core
    plan = choose_threads(2, forward_s=0.001, decode_s=0.002)
    assert (plan.torch_threads, plan.workers) == (2, 0)
    assert "heavy" in plan.reason and "reader thread" in plan.reason


def test_heavy_decoding_on_many_cores_balances_decoders_and_forward_pass():
    # 16 cores; the forward pass takes 1 ms per image on all 16 (16 ms of CPU), decoding 8 ms:
    # n decoders give n / 8 ms, the forward pass on the rest (16 - n) / 16 ms: balanced at n = 5.
    plan = choose_threads(16, forward_s=0.001, decode_s=0.008)
    assert (plan.torch_threads, plan.workers) == (11, 5)


def test_decoders_always_leave_the_forward_pass_a_core():
    plan = choose_threads(4, forward_s=1e-6, decode_s=1.0)
    assert (plan.torch_threads, plan.workers) == (1, 3)


def test_one_core_decodes_in_a_thread():
    plan = choose_threads(1, forward_s=0.01, decode_s=0.01)
    assert (plan.torch_threads, plan.workers) == (1, 0)


def test_unmeasured_costs_decode_in_a_thread_beside_every_core():
    plan = choose_threads(8)
    assert (plan.torch_threads, plan.workers) == (8, 0)


def test_cuda_feeds_the_gpu_from_every_core_but_one_in_pinned_memory():
    plan = choose_threads(8, device="cuda")
    assert (plan.torch_threads, plan.workers, plan.pin_memory) == (1, 7, True)


def test_user_settings_win():
    plan = choose_threads(2, forward_s=0.001, decode_s=0.002, workers=0)
    assert (plan.torch_threads, plan.workers) == (2, 0)
    assert "--workers 0" in plan.reason
    kept = choose_threads(4, forward_s=0.001, decode_s=0.004, keep_threads=True)
    assert kept.torch_threads is None and kept.workers == 2
    assert "torch's threads as set" in kept.describe()


def test_user_set_threads_reads_the_openmp_and_mkl_variables():
    assert not user_set_threads({})
    assert user_set_threads({"OMP_NUM_THREADS": "3"})
    assert user_set_threads({"MKL_NUM_THREADS": "1"})
    assert not user_set_threads({"OMP_NUM_THREADS": ""})


# --- the machine -------------------------------------------------------------------------------


def test_cgroup_quota_v2_and_v1(tmp_path):
    (tmp_path / "v2").mkdir()
    (tmp_path / "v2" / "cpu.max").write_text("150000 100000\n")
    assert cgroup_cpu_quota(str(tmp_path / "v2")) == 1.5
    (tmp_path / "v2" / "cpu.max").write_text("max 100000\n")
    assert cgroup_cpu_quota(str(tmp_path / "v2")) is None
    (tmp_path / "v1" / "cpu").mkdir(parents=True)
    (tmp_path / "v1" / "cpu" / "cpu.cfs_quota_us").write_text("300000\n")
    (tmp_path / "v1" / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert cgroup_cpu_quota(str(tmp_path / "v1")) == 3.0
    (tmp_path / "v1" / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    assert cgroup_cpu_quota(str(tmp_path / "v1")) is None
    assert cgroup_cpu_quota(str(tmp_path / "none")) is None


def test_available_cores_is_at_most_the_affinity():
    import os

    assert 1 <= available_cores() <= len(os.sched_getaffinity(0))


# --- the job -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def job_inputs(tmp_path_factory):
    from PIL import Image

    root = tmp_path_factory.mktemp("tuning")
    torch.manual_seed(0)
    encoder = build_encoder(TrainConfig(framework="simclr", backbone="small_cnn", width=8, image_size=S,
                                        proj_dim=16, augmentation="natural"))
    save_encoder(encoder, str(root / "encoder"))
    LpLACalibration(p=2.0, log_space=True, mean_in=0.2, std_in=1.0, mean_out=0.0, std_out=1.2, ref_mean=-1.0,
                    ref_std=0.5, dim=encoder.feature_dim).save(root / "calib.json")
    images = np.random.default_rng(0).integers(0, 256, (100, S, S, 3), dtype=np.uint8)
    (root / "src").mkdir()
    with tarfile.open(root / "src" / "a.tar", "w") as tar:
        for i, image in enumerate(images):
            buf = io.BytesIO()
            Image.fromarray(image).save(buf, format="PNG")
            info = tarfile.TarInfo(f"s{i:05d}.png")
            info.size = len(buf.getvalue())
            tar.addfile(info, io.BytesIO(buf.getvalue()))
    return root


def _job(root, out, **kw):
    config = ScoreConfig(images=str(root / "src"), encoder=str(root / "encoder"), out=str(root / out),
                         calibration=str(root / "calib.json"), K=3, batch_rows=32, progress=False, write_norms=True,
                         overwrite=True, **kw)
    return score_shards(config), config.out


def test_a_job_that_tunes_itself_writes_what_fixed_settings_write(job_inputs):
    threads = torch.get_num_threads()
    summary, out = _job(job_inputs, "auto")
    assert summary["complete"] and summary["rows"] == 100
    assert "forward pass on" in summary["threads"]
    assert torch.get_num_threads() == threads  # the job leaves torch's setting as it found it
    _, fixed = _job(job_inputs, "fixed", workers=0)
    a, b = read_scores(out), read_scores(fixed)
    assert a.column("row").to_pylist() == list(range(100))
    # equal up to the order of float sums, which may follow the number of threads
    np.testing.assert_allclose(a.column("score").to_numpy(), b.column("score").to_numpy(), rtol=1e-5, atol=1e-5)


def test_the_chosen_settings_are_one_stage_line(job_inputs, capsys):
    config = ScoreConfig(images=str(job_inputs / "src"), encoder=str(job_inputs / "encoder"),
                         out=str(job_inputs / "line"), calibration=str(job_inputs / "calib.json"), K=3, batch_rows=32,
                         overwrite=True, progress=True)
    score_shards(config)
    lines = [line for line in capsys.readouterr().err.splitlines() if "threads:" in line]
    assert len(lines) == 1 and lines[0].startswith("[lpla score] threads: forward pass on")


def test_omp_num_threads_in_the_environment_keeps_torchs_threads(job_inputs, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    summary, _ = _job(job_inputs, "kept")
    assert summary["threads"].startswith("forward pass on torch's threads as set")


# --- the first chunk is measured in the running pipeline ---------------------------------------


def _spy_loads(monkeypatch, on_load=None):
    """Record (thread name, first row) of every chunk this process decodes (worker processes
    decode in their own memory, unrecorded); `on_load(thread name)` runs before each."""
    from lpla_fast.streaming.sources import ImageSource

    loads, load = [], ImageSource.load

    def spy(self, shard, start, stop):
        name = threading.current_thread().name
        loads.append((name, start))
        if on_load is not None:
            on_load(name)
        return load(self, shard, start, stop)

    monkeypatch.setattr(ImageSource, "load", spy)
    return loads


@pytest.mark.skipif(available_cores() < 2, reason="one core: the job decodes in a thread without measuring")
def test_the_first_chunk_is_scored_while_the_reader_thread_decodes_the_next(job_inputs, monkeypatch):
    from lpla_fast.streaming.scorer import EncoderScorer

    reading = threading.Event()
    loads = _spy_loads(monkeypatch, lambda name: reading.set() if name == "lpla-reader" else None)
    scored, score_chunk = [], EncoderScorer.score_chunk

    def waits_for_the_reader(self, chunk, device="cpu"):
        if not scored:  # the first chunk: the reader thread must decode meanwhile
            scored.append(reading.wait(timeout=30))
        return score_chunk(self, chunk, device)

    monkeypatch.setattr(EncoderScorer, "score_chunk", waits_for_the_reader)
    summary, out = _job(job_inputs, "overlap")
    assert scored == [True]
    assert loads[0] == ("MainThread", 0) and loads[1] == ("lpla-reader", 32)
    assert summary["rows"] == 100 and read_scores(out).column("row").to_pylist() == list(range(100))


@pytest.mark.skipif(available_cores() < 2, reason="one core: the job decodes in a thread without measuring")
def test_heavy_decoding_found_mid_job_moves_the_rest_to_worker_processes_scoring_every_row_once(job_inputs,
                                                                                                 monkeypatch):
    from lpla_fast.streaming import tuning

    monkeypatch.setattr(tuning, "LIGHT_DECODING", -1.0)  # any decoding counts as heavy
    # as on a 4-core machine whose decoding needs two decoders
    monkeypatch.setattr(tuning, "available_cores", lambda: 4)
    monkeypatch.setattr(tuning, "_decoders", lambda cores, forward_s, decode_s: 2)
    loads = _spy_loads(monkeypatch)
    summary, out = _job(job_inputs, "switch")
    assert "2 worker processes" in summary["threads"] and "heavy" in summary["threads"]
    # chunk 0 decoded to be timed, then the reader thread read one or two chunks before it stopped
    assert loads[0] == ("MainThread", 0)
    assert [start for _, start in loads[1:]] in ([32], [32, 64]) and {n for n, _ in loads[1:]} == {"lpla-reader"}
    table = read_scores(out)
    assert summary["complete"] and summary["rows"] == 100 and summary["parts"] == 4
    assert table.column("row").to_pylist() == list(range(100))  # every row once, in order
    _, fixed = _job(job_inputs, "switch-fixed", workers=0)
    np.testing.assert_allclose(table.column("score").to_numpy(), read_scores(fixed).column("score").to_numpy(),
                               rtol=1e-5, atol=1e-5)
