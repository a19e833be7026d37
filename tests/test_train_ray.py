"""Reference encoders trained as Ray tasks (`train_encoders(engine="ray")`) on a real local
multi-node cluster: a worker process or a whole node killed mid-training, the job completes with
the same encoders, and a rerun trains nothing."""

import os
import shutil
import socket
import tempfile
import threading
import time

import numpy as np
import pytest
import torch

ray = pytest.importorskip("ray")
psutil = pytest.importorskip("psutil")

from ray.cluster_utils import Cluster  # noqa: E402

from lpla_fast.encoders import TrainConfig  # noqa: E402
from lpla_fast.encoders.parallel import TrainJob, train_encoders  # noqa: E402
from lpla_fast.encoders.jobs import epochs_done  # noqa: E402

EPOCHS = 8


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def cluster():
    """A head without CPUs (tasks run on the workers) and two 1-CPU worker nodes, in a temp dir
    of its own (short: Ray's sockets live there) and on a free port."""
    temp = tempfile.mkdtemp(prefix="lrt", dir="/tmp")
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "temp_dir": temp, "gcs_server_port": _free_port(),
                                                        "include_dashboard": False})
    nodes = [c.add_node(num_cpus=1) for _ in range(2)]
    ray.init(address=c.address, include_dashboard=False, log_to_driver=False)
    yield c, nodes
    ray.shutdown()
    c.shutdown()
    shutil.rmtree(temp, ignore_errors=True)


def _jobs(root, n=2):
    images = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (48, 3, 16, 16), dtype=np.uint8).copy())
    jobs = []
    for r in range(n):
        config = TrainConfig(width=8, epochs=EPOCHS, batch_size=16, checkpoint_every=1, seed=100 + r, device="cpu")
        jobs.append(TrainJob(images[r * 8:r * 8 + 40].numpy(), config, os.path.join(root, f"r{r}"), name=f"r{r}"))
    return jobs


def _kill_when(folder: str, kill, timeout: float = 300.0) -> dict:
    """In a thread: once `folder` holds 2 finished epochs (of EPOCHS), call kill(); the record says
    at which epoch it struck."""
    record = {}

    def watch():
        deadline = time.time() + timeout
        while time.time() < deadline:
            done = epochs_done(folder) if os.path.isfile(os.path.join(folder, "config.json")) else 0
            if done >= 2:
                record["epoch"] = done
                record["killed"] = kill()
                return
            time.sleep(0.05)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    record["thread"] = thread
    return record


def _same_weights(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def _train_task_pids(node) -> list:
    """Worker processes of this cluster node (descendants of its raylet) running a training task."""
    raylet = psutil.Process(node.all_processes["raylet"][0].process.pid)
    return [p.pid for p in raylet.children(recursive=True)
            if any("_train_task" in part for part in (p.cmdline() or []))]


@pytest.mark.slow  # about a minute: two rounds of training on a 2-node cluster
def test_a_killed_worker_is_retried_and_gives_the_same_encoders(cluster, tmp_path):
    c, nodes = cluster
    clean = train_encoders(_jobs(str(tmp_path / "clean")), engine="ray", progress=False)

    def kill_worker():
        for node in nodes:
            for pid in _train_task_pids(node):
                os.kill(pid, 9)  # a process of this test's own cluster, by its id
                return pid
        return None

    watch = _kill_when(str(tmp_path / "killed" / "r0"), kill_worker)
    killed = train_encoders(_jobs(str(tmp_path / "killed")), engine="ray", progress=False)
    watch["thread"].join()
    assert watch.get("killed") and watch["epoch"] < EPOCHS  # it struck mid-training
    for (a, _), (b, info) in zip(clean, killed):
        assert len(b.history_) == EPOCHS
        assert _same_weights(a, b)


@pytest.mark.slow
def test_a_lost_node_is_retried_and_a_rerun_trains_nothing(cluster, tmp_path):
    c, nodes = cluster
    root = str(tmp_path / "refs")

    def kill_node():
        c.remove_node(nodes[0], allow_graceful=False)
        return True

    watch = _kill_when(os.path.join(root, "r0"), kill_node)
    first = train_encoders(_jobs(root), engine="ray", progress=False)
    watch["thread"].join()
    assert watch.get("killed")
    assert all(len(e.history_) == EPOCHS for e, _ in first)
    stamps = [os.stat(os.path.join(root, f"r{r}", "model.safetensors")).st_mtime_ns for r in range(2)]
    lines = []
    again = train_encoders(_jobs(root), engine="ray", progress=False, say=lines.append)
    assert [info["reused"] for _, info in again] == [True, True]
    assert all("reused" in line for line in lines)
    assert [os.stat(os.path.join(root, f"r{r}", "model.safetensors")).st_mtime_ns for r in range(2)] == stamps
    assert all(_same_weights(a, b) for (a, _), (b, _) in zip(first, again))
