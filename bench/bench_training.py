"""Seconds per training epoch of the default digits recipe in channels-last layout against the
contiguous layout, one CPU thread, as `lpla experiment` trains (one thread per encoder process):
what `training.train_memory_format` chooses by.

    pytest bench/bench_training.py --benchmark-only -s

Encoders: the default small CNN (width 32) under SimCLR and BYOL, and ResNet-18 under SimCLR, on
128 digits (16 x 16), batch 128, the digits augmentation. Each round trains the contiguous layout
(in pytest-benchmark's setup hook, timed by hand) and then channels-last (timed by
pytest-benchmark), so on a shared machine both see the same load; the ratio is of the best rounds.
"""

from __future__ import annotations

import dataclasses
import time

import pytest
import torch

import lpla_fast.encoders.training as training
from lpla_fast.data import load_dataset
from lpla_fast.encoders import TrainConfig

ROUNDS = 5
CASES = {"small_cnn-32 simclr": ("simclr", "small_cnn", 32, 20), "small_cnn-32 byol": ("byol", "small_cnn", 32, 20),
         "resnet18 simclr": ("simclr", "resnet18", None, 1)}  # (framework, backbone, width, epochs per round)


@pytest.fixture(scope="module")
def images():
    return load_dataset("digits").images[:128]


@pytest.mark.parametrize("case", list(CASES))
def test_channels_last_against_contiguous(benchmark, images, monkeypatch, case):
    framework, backbone, width, epochs = CASES[case]
    config = dataclasses.replace(TrainConfig(), framework=framework, backbone=backbone, width=width, epochs=epochs)
    layout = {"format": torch.channels_last}
    monkeypatch.setattr(training, "train_memory_format", lambda device, backbone: layout["format"])

    def train(memory_format):
        layout["format"] = memory_format
        training.train_encoder(images, config, progress=False)

    contiguous = []

    def before_round():
        t0 = time.perf_counter()
        train(torch.contiguous_format)
        contiguous.append(time.perf_counter() - t0)

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train(torch.channels_last)  # warm-up: the layers' first-call set-up
        benchmark.pedantic(train, args=(torch.channels_last,), setup=before_round, rounds=ROUNDS)
    finally:
        torch.set_num_threads(threads)
    last, plain = benchmark.stats.stats.min / epochs, min(contiguous) / epochs
    benchmark.extra_info.update(channels_last_s_per_epoch=last, contiguous_s_per_epoch=plain, speedup=plain / last)
    print(f"\n{case}: channels-last {last:.3f} s/epoch, contiguous {plain:.3f} s/epoch: {plain / last:.2f}x")
