"""Quiet means quiet: with --no-progress (progress=False) no bar and no stage line is written;
a command prints its result and nothing else."""

import json
import os
import subprocess
import sys

import pytest

from lpla_fast.cli import main
from lpla_fast.data import load_dataset
from lpla_fast.encoders import TrainConfig
from lpla_fast.encoders.parallel import TrainJob, train_encoders


def test_train_with_no_progress_prints_only_its_result(tmp_path, capfd):
    out = tmp_path / "encoder"
    assert main(["train", "--epochs", "1", "--width", "4", "--batch-size", "64", "--out", str(out),
                 "--no-progress"]) == 0
    stdout, stderr = capfd.readouterr()
    assert stderr == ""
    assert json.loads(stdout)["out"] == str(out) and stdout.count("\n") == 1


def test_training_in_worker_processes_without_progress_draws_no_bar(tmp_path, capfd):
    images = load_dataset("digits").images
    jobs = [TrainJob(images[i * 32:(i + 1) * 32], TrainConfig(width=4, epochs=1, batch_size=16, seed=i),
                     str(tmp_path / f"enc{i}"), name=f"enc{i}") for i in range(2)]
    lines = []
    train_encoders(jobs, workers=2, progress=False, say=lines.append)
    assert capfd.readouterr() == ("", "")
    assert len(lines) == 2  # the stage lines go to `say`, which the caller silences (study.log.Stages)


@pytest.mark.slow
def test_a_quick_experiment_with_no_progress_prints_only_its_summary(tmp_path):
    out = tmp_path / "run"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.getcwd(), os.environ.get("PYTHONPATH", "")]))
    done = subprocess.run([sys.executable, "-m", "lpla_fast", "experiment", "--preset", "quick", "--frameworks",
                           "simclr", "--outputs", "backbone", "--ladder", "--release-defenses", "--train-defenses",
                           "--references", "0", "--workers", "2", "--epochs", "1", "--bootstrap", "10",
                           "--no-progress", "--out", str(out)], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    assert done.stdout.splitlines()[-1].startswith(f"report: {out}/report.md")
