"""Training many encoders in worker processes gives the encoders training them here gives.

Workers train at one thread; torch's CPU reductions split work by thread, so the comparison
trains here at one thread too (at two threads BYOL drifts by ~1e-3 after two epochs: the last
bits of a sum, amplified by training)."""

import torch

from lpla_fast.data import load_dataset
from lpla_fast.encoders import TrainConfig, train_encoder
from lpla_fast.encoders.parallel import TrainJob, train_encoders


def _jobs(tmp_path):
    images = load_dataset("digits").images
    return [TrainJob(images[i * 48:(i + 1) * 48], TrainConfig(framework=fw, width=4, epochs=2, batch_size=16,
                                                                 seed=i, checkpoint_every=1),
                     str(tmp_path / f"enc{i}"), name=f"enc{i}")
            for i, fw in enumerate(("simclr", "byol", "barlowtwins"))]


def test_workers_train_what_the_parent_would_and_a_rerun_reuses(tmp_path):
    jobs = _jobs(tmp_path)
    lines = []
    trained = train_encoders(jobs, workers=2, progress=False, say=lines.append)
    assert len(trained) == 3 and len(lines) == 3 and all("trained" in line for line in lines)
    for job, (encoder, info) in zip(jobs, trained):
        assert info["epochs"] == 2 and not info["reused"] and encoder.config == job.config
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            here = train_encoder(job.images, job.config, progress=False)
        finally:
            torch.set_num_threads(threads)
        for a, b in zip(encoder.state_dict().values(), here.state_dict().values()):
            torch.testing.assert_close(a.float(), b.float(), rtol=1e-6, atol=1e-6)
    again = train_encoders(jobs, workers=2, progress=False)
    assert all(info["reused"] for _, info in again)


def test_a_worker_error_reaches_the_caller(tmp_path):
    import pytest

    bad = TrainJob(torch.rand(1, 3, 16, 16), TrainConfig(width=4, epochs=1), str(tmp_path / "bad"))
    good = _jobs(tmp_path)[0]
    with pytest.raises(ValueError, match="at least 2 images"):
        train_encoders([good, bad], workers=2, progress=False)
