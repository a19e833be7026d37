"""What a client hits first: a single clean query (K = 1), and errors of the operating system
(a full disk) reported as one line instead of a traceback."""

import os
import shutil
import subprocess
import sys
import uuid

import numpy as np
import pytest
import torch

from lpla_fast.cli import main as lpla_main
from lpla_fast.data import load_dataset
from lpla_fast.encoders import TrainConfig, load_pretrained, query_views, train_encoder
from lpla_fast.fileio import describe_os_error, write_bytes


@pytest.fixture(scope="module")
def encoder():
    images = load_dataset("digits").images[:64]
    return train_encoder(images, TrainConfig(framework="simclr", width=4, epochs=1, batch_size=32), progress=False)


@pytest.mark.parametrize("include_clean", [True, False])
def test_a_single_query_works_from_python(encoder, include_clean):
    x = load_dataset("digits").images[:40]
    views = query_views(encoder, x, K=1, include_clean=include_clean)
    assert views.shape == (40, 1, encoder.embed_dim())
    with torch.no_grad():
        clean = encoder.embed(x)
    assert torch.allclose(views[:, 0], clean, atol=1e-5) == include_clean
    # The single clean query is view 1 of any larger budget.
    if include_clean:
        torch.testing.assert_close(views[:, 0], query_views(encoder, x, K=4)[:, 0])


def test_a_single_query_works_on_a_loaded_encoder(encoder):
    loaded = load_pretrained(encoder.backbone, image_size=16)
    x = load_dataset("digits").images[:8]
    assert query_views(loaded, x, K=1).shape == (8, 1, loaded.embed_dim())
    assert query_views(loaded, x, K=1, include_clean=False, policy="digits").shape == (8, 1, loaded.embed_dim())


@pytest.mark.parametrize("no_clean", [False, True])
def test_a_single_query_works_from_the_command_line(tmp_path, no_clean):
    run = tmp_path / "t"
    assert lpla_main(["train", "--framework", "simclr", "--backbone", "small_cnn", "--dataset", "digits",
                      "--epochs", "1", "--width", "4", "--out", str(run), "--no-progress"]) == 0
    out = tmp_path / "e.npy"
    args = ["embed", "--checkpoint", str(run), "--split", "target_members", "--K", "1", "--out", str(out)]
    assert lpla_main(args + (["--no-clean"] if no_clean else [])) == 0
    views = np.load(out)
    assert views.shape[1] == 1 and np.isfinite(views).all()


# --- errors of the operating system ----------------------------------------------------------

def test_a_failed_write_names_the_file_and_the_cause(tmp_path):
    target = tmp_path / "no-such-folder-as-a-file"
    target.write_text("")
    with pytest.raises(OSError) as info:
        write_bytes(str(target / "x.json"), b"{}")
    assert str(target) in describe_os_error(info.value)


@pytest.fixture
def full_disk(tmp_path):
    """A 64 KiB tmpfs: only where this test may mount one (root on Linux); skipped otherwise."""
    if sys.platform != "linux" or os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a small tmpfs needs root on Linux")
    mnt = tmp_path / f"full-{uuid.uuid4().hex[:6]}"
    mnt.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)], capture_output=True)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {made.stderr.decode().strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def _lpla(*args):
    return subprocess.run([sys.executable, "-m", "lpla_fast", *args], capture_output=True, text=True, timeout=300)


def test_a_full_disk_is_one_line_not_a_traceback(tmp_path, full_disk):
    from lpla_fast.attacks.calibration import LpLACalibration

    calib = tmp_path / "calib.json"
    LpLACalibration(p=2.0, log_space=True, mean_in=0.3, std_in=0.9, mean_out=0.0, std_out=1.1,
                    ref_mean=1.3, ref_std=0.2, dim=8).save(calib)
    shards = tmp_path / "shards"
    shards.mkdir()
    np.save(shards / "s.npy", np.random.default_rng(0).standard_normal((20000, 2, 8)).astype(np.float32))
    out = full_disk / "out"
    args = ("score", "--calibration", str(calib), "--embeddings", str(shards), "--out", str(out),
            "--batch-rows", "4096", "--no-progress")
    done = _lpla(*args)
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert "Traceback" not in done.stderr, done.stderr
    assert lines[-1].startswith("lpla score: error: no space left on device writing " + str(out)), done.stderr
    assert not (out / "_SUCCESS").exists()
    debug = _lpla(*args, "--debug")
    assert debug.returncode != 0 and "Traceback" in debug.stderr and "No space left" in debug.stderr
