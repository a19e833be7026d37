"""Images/s of `query_views` (batched views, many images x K per forward pass) against a naive
loop that augments and embeds one image's K views at a time.

    pytest bench/bench_views.py --benchmark-only -s

Encoder: the default digits small CNN (width 32, 16x16 inputs), untrained (speed does not
depend on the weights); 512 digits, K = 8 views each, CPU.
"""

from __future__ import annotations

import pytest
import torch

from lpla_fast.augment import augment
from lpla_fast.data import load_dataset
from lpla_fast.encoders import TrainConfig, build_encoder, query_views

N_IMAGES, K = 512, 8


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    encoder = build_encoder(TrainConfig()).eval()
    images = load_dataset("digits").images[:N_IMAGES]
    return encoder, images


def naive_views(encoder, images, k, seed=0):
    """One image at a time: K augmented copies, one forward pass each image."""
    gen = torch.Generator().manual_seed(seed)
    rows = []
    with torch.inference_mode():
        for image in images:
            views = torch.cat([image[None], augment(image[None].expand(k - 1, -1, -1, -1), "digits", gen)])
            rows.append(encoder.embed(views))
    return torch.stack(rows)


def _report(benchmark, name):
    seconds = benchmark.stats.stats.mean
    benchmark.extra_info["images_per_s"] = N_IMAGES / seconds
    print(f"\n{name}: {N_IMAGES / seconds:,.0f} images/s ({N_IMAGES * K / seconds:,.0f} views/s)")


def test_query_views(benchmark, setup):
    encoder, images = setup
    out = benchmark(query_views, encoder, images, K)
    assert out.shape == (N_IMAGES, K, encoder.embed_dim())
    _report(benchmark, "query_views")


def test_naive_loop(benchmark, setup):
    encoder, images = setup
    out = benchmark.pedantic(naive_views, args=(encoder, images, K), rounds=2, iterations=1)
    assert out.shape == (N_IMAGES, K, encoder.embed_dim())
    _report(benchmark, "naive per-sample loop")
