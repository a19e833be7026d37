"""An encoder made ready for inference (`encoders.inference`): the folded model computes what the
model did, in float64 to rounding and in float32 to about 1e-6; what cannot be proven
foldable is left alone; each convolution gets the layout its input's shape calls for and computes
the same; weights moved into huge pages keep their values, strides and sharing."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from lpla_fast.encoders import make_backbone
from lpla_fast.encoders.inference import (fold_batch_norms, place_in_huge_pages, set_conv_layouts,
                                          transparent_huge_pages)


def randomize_batch_norms(model: nn.Module, seed: int = 0) -> nn.Module:
    """Running statistics and affine parameters far from their initial values, so that a
    wrong fold shows."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                c = m.num_features
                if m.track_running_stats:
                    m.running_mean.copy_(torch.randn(c, generator=gen))
                    m.running_var.copy_(torch.rand(c, generator=gen) * 2 + 0.1)
                if m.affine:
                    m.weight.copy_(torch.randn(c, generator=gen))
                    m.bias.copy_(torch.randn(c, generator=gen))
    return model.eval()


def batch_norms(model: nn.Module) -> int:
    return sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())


@pytest.mark.parametrize("in_place", [False, True], ids=["new weights", "in place"])
@pytest.mark.parametrize("name, pairs", [("small_cnn", 4), ("deep_cnn", 8), ("resnet18", 20), ("resnet50", 53)])
def test_backbones_fold_every_batch_norm_and_compute_the_same(name, pairs, in_place):
    model = randomize_batch_norms(make_backbone(name, image_size=16)).double()
    folded = copy.deepcopy(model)
    memory = {n: p.data_ptr() for n, p in folded.named_parameters()}
    assert fold_batch_norms(folded, in_place=in_place) == pairs
    assert batch_norms(folded) == 0
    weights = [n for n in memory if n.endswith("weight")]
    kept = [n for n, p in folded.named_parameters() if n in weights and memory[n] == p.data_ptr()]
    # the BatchNorms' weights are gone; in place, the convolutions' stay where they were
    assert len(kept) == len(weights) - (pairs if in_place else 2 * pairs)
    x = torch.rand(3, 3, 16, 16, dtype=torch.float64)
    with torch.inference_mode():
        expected, got = model(x), folded(x)
        torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(folded.feature_map(x), model.feature_map(x), rtol=1e-10, atol=1e-10)


def test_float32_moves_by_rounding_only():
    model = randomize_batch_norms(make_backbone("resnet18", image_size=16))
    folded = copy.deepcopy(model)
    fold_batch_norms(folded)
    x = torch.rand(8, 3, 16, 16)
    with torch.inference_mode():
        expected, got = model(x), folded(x)
    assert folded.conv1.weight.dtype == torch.float32
    assert ((got - expected).abs().max() / expected.abs().max()).item() < 1e-5


@settings(max_examples=40, deadline=None)
@given(channels=st.lists(st.integers(1, 6), min_size=2, max_size=4), bias=st.booleans(), affine=st.booleans(),
       groups=st.booleans(), kernel=st.sampled_from([1, 3]), seed=st.integers(0, 2**16), in_place=st.booleans())
def test_random_sequentials_fold_exactly(channels, bias, affine, groups, kernel, seed, in_place):
    """Random stacks of conv, BatchNorm (affine or not) and ReLU, with and without conv bias and
    groups: folded equals unfolded in float64."""
    torch.manual_seed(seed)
    layers = []
    for c_in, c_out in zip(channels[:-1], channels[1:]):
        g = c_in if groups and c_out % c_in == 0 else 1
        layers += [nn.Conv2d(c_in, c_out, kernel, padding=kernel // 2, bias=bias, groups=g),
                   nn.BatchNorm2d(c_out, affine=affine), nn.ReLU()]
    model = randomize_batch_norms(nn.Sequential(*layers), seed).double()
    folded = copy.deepcopy(model)
    assert fold_batch_norms(folded, in_place=in_place) == len(channels) - 1
    x = torch.randn(2, channels[0], 5, 5, dtype=torch.float64)
    with torch.inference_mode():
        torch.testing.assert_close(folded(x), model(x), rtol=1e-10, atol=1e-10)


class OwnForward(nn.Sequential):
    """A Sequential whose forward is not torch's: it reads the conv's output twice."""

    def forward(self, x):
        y = self[0](x)
        return self[1](y) + y


class WeightStandardized(nn.Conv2d):
    """A conv subclass that computes from its weight differently (scaling it would be wrong)."""

    def forward(self, x):
        w = (self.weight - self.weight.mean(dim=(1, 2, 3), keepdim=True))
        return self._conv_forward(x, w, self.bias)


def _unfoldable():
    shared = nn.Conv2d(2, 2, 3, padding=1)
    hooked = nn.Sequential(nn.Conv2d(2, 2, 3, padding=1), nn.BatchNorm2d(2))
    hooked[0].register_forward_hook(lambda m, i, o: o * 2)
    return {
        "own forward": OwnForward(nn.Conv2d(2, 2, 3, padding=1), nn.BatchNorm2d(2)),
        "conv subclass": nn.Sequential(WeightStandardized(2, 2, 3, padding=1), nn.BatchNorm2d(2)),
        "batch statistics": nn.Sequential(nn.Conv2d(2, 2, 3, padding=1), nn.BatchNorm2d(2, track_running_stats=False)),
        "conv used twice": nn.Sequential(shared, nn.BatchNorm2d(2), shared),
        "BatchNorm first": nn.Sequential(nn.BatchNorm2d(2), nn.Conv2d(2, 2, 3, padding=1)),
        "a forward hook": hooked,
        "something between": nn.Sequential(nn.Conv2d(2, 2, 3, padding=1), nn.ReLU(), nn.BatchNorm2d(2)),
    }


@pytest.mark.parametrize("case", list(_unfoldable()))
def test_what_cannot_be_proven_foldable_is_left_alone(case):
    model = randomize_batch_norms(_unfoldable()[case]).double()
    before = copy.deepcopy(model)
    assert fold_batch_norms(model) == 0
    assert batch_norms(model) == batch_norms(before) > 0
    x = torch.randn(2, 2, 5, 5, dtype=torch.float64)
    with torch.inference_mode():
        torch.testing.assert_close(model(x), before(x), rtol=0, atol=0)


def test_a_weight_two_convolutions_share_is_not_scaled_in_place():
    """Each convolution is folded with its own BatchNorm; scaling their one weight tensor in place
    would scale it for the other convolution too."""
    first, second = nn.Conv2d(2, 2, 3, padding=1), nn.Conv2d(2, 2, 3, padding=1)
    second.weight = first.weight
    model = randomize_batch_norms(nn.Sequential(first, nn.BatchNorm2d(2), nn.ReLU(), second, nn.BatchNorm2d(2))).double()
    before = copy.deepcopy(model)
    assert fold_batch_norms(model, in_place=True) == 2
    x = torch.randn(2, 2, 5, 5, dtype=torch.float64)
    with torch.inference_mode():
        torch.testing.assert_close(model(x), before(x), rtol=1e-10, atol=1e-10)


def conv_inputs(model: nn.Module, x: torch.Tensor) -> dict:
    """Each Conv2d's input shape in a forward pass of x."""
    shapes = {}

    def record(conv, args):  # returns None: the input goes on unchanged
        shapes.setdefault(conv, args[0].shape)

    hooks = [m.register_forward_pre_hook(record) for m in model.modules() if isinstance(m, nn.Conv2d)]
    with torch.inference_mode():
        model(x)
    for h in hooks:
        h.remove()
    return shapes


@pytest.mark.parametrize("name, size, wide", [("small_cnn", 16, 3), ("deep_cnn", 16, 5), ("resnet18", 16, 12),
                                              ("resnet18", 64, 17), ("resnet50", 32, 27), ("vit_small", 16, 1)])
def test_each_convolution_runs_in_the_layout_of_its_input_and_computes_the_same(name, size, wide):
    """Channels-last where 2 * H * W >= the input's channels, contiguous elsewhere; float64
    outputs to rounding; BatchNorms still fold afterwards (the layout hooks change no value)."""
    model = randomize_batch_norms(make_backbone(name, image_size=size)).double()
    x = torch.rand(3, 3, size, size, dtype=torch.float64)
    with torch.inference_mode():
        expected = model(x)
    inputs = conv_inputs(model, x)
    n_bn = batch_norms(model)
    assert set_conv_layouts(model, x[:1]) == wide
    for conv, (_, c, h, w) in inputs.items():
        layout = torch.channels_last if 2 * h * w >= c else torch.contiguous_format
        assert conv.weight.is_contiguous(memory_format=layout)
        if conv.kernel_size != (1, 1):  # a 1 x 1 kernel's weight is both
            other = torch.contiguous_format if layout is torch.channels_last else torch.channels_last
            assert not conv.weight.is_contiguous(memory_format=other)
    assert set_conv_layouts(model, x[:1]) == wide  # again: one layout hook per convolution
    assert all(len(m._forward_pre_hooks) == 1 and "forward" not in vars(m) for m in inputs)
    with torch.inference_mode():
        torch.testing.assert_close(model(x), expected, rtol=1e-10, atol=1e-10)
    assert fold_batch_norms(model, in_place=True) == n_bn
    with torch.inference_mode():
        torch.testing.assert_close(model(x), expected, rtol=1e-10, atol=1e-10)


class SamePadding(nn.Conv2d):
    """Pads in its forward, as "same" convolutions of TensorFlow ports do: its output is not the
    shape its stored padding (0) gives."""

    def forward(self, x):
        return super().forward(F.pad(x, (1, 1, 1, 1)))


def test_a_convolution_subclass_runs_for_real_while_layouts_are_found():
    """Plain convolutions only work out their output's shape while the layouts are found; a
    subclass runs its own forward, whose shape the layers after it rely on."""
    model = nn.Sequential(SamePadding(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 16, 3, padding=1, stride=2), nn.Flatten(),
                          nn.Linear(16 * 4 * 4, 5)).double().eval()
    x = torch.rand(2, 3, 8, 8, dtype=torch.float64)
    with torch.inference_mode():
        expected = model(x)
    assert set_conv_layouts(model, x[:1]) == 2
    assert model[0].weight.is_contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        torch.testing.assert_close(model(x), expected, rtol=1e-10, atol=1e-10)


def test_the_scoring_job_folds_its_encoder_and_embeds_like_query_views(tmp_path, job_plans):
    """`lpla embed --images`: the job's folded encoder gives query_views' embeddings of the
    unfolded one, to float rounding."""
    import glob

    import numpy as np

    from lpla_fast.encoders import TrainConfig, build_encoder, load_encoder, query_views, save_encoder
    from lpla_fast.streaming import ScoreConfig, score_shards
    from lpla_fast.streaming.images import to_float_images
    from lpla_fast.testing import random_images

    torch.manual_seed(0)
    encoder = build_encoder(TrainConfig(framework="simclr", backbone="small_cnn", width=8, image_size=16,
                                        augmentation="natural"))
    randomize_batch_norms(encoder.backbone)
    save_encoder(encoder, str(tmp_path / "encoder"))
    images = random_images(40)
    (tmp_path / "src").mkdir()
    np.save(tmp_path / "src" / "a.npy", images)
    config = ScoreConfig(images=str(tmp_path / "src"), encoder=str(tmp_path / "encoder"), out=str(tmp_path / "out"),
                         K=3, stat="norm", write_embeddings=True, batch_rows=32, progress=False, workers=0)
    score_shards(config)
    assert batch_norms(job_plans[0].scorer.encoder) == 0
    parts = sorted(p for p in glob.glob(str(tmp_path / "out" / "embeddings" / "*.npy")) if not p.endswith(".ids.npy"))
    got = np.concatenate([np.load(p) for p in parts])
    loaded = load_encoder(str(tmp_path / "encoder"))
    assert batch_norms(loaded) == 4
    want = query_views(loaded, to_float_images(images), 3).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


def _vma_flags(address: int) -> dict:
    """The /proc/self/smaps fields of the mapping that holds `address`."""
    fields, inside = {}, False
    with open("/proc/self/smaps") as f:
        for line in f:
            head = line.split()[0]
            if "-" in head and not head.endswith(":"):
                lo, hi = (int(x, 16) for x in head.split("-"))
                if inside:
                    break
                inside = lo <= address < hi
            elif inside:
                key, _, value = line.partition(":")
                fields[key] = value.strip()
    return fields


def test_huge_pages_keep_values_strides_and_sharing():
    model = randomize_batch_norms(make_backbone("resnet18", image_size=16))
    model.layer4[1].conv2.weight = model.layer4[1].conv1.weight  # a tied weight stays tied
    model = model.to(memory_format=torch.channels_last)
    expected_state = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.rand(2, 3, 16, 16)
    with torch.inference_mode():
        expected = model(x)
    moved = place_in_huge_pages(model)
    if moved == 0:
        pytest.skip(f"no transparent huge pages here ({transparent_huge_pages()})")
    assert moved >= sum(t.numel() * t.element_size() for t in model.parameters())
    for k, v in model.state_dict().items():
        assert torch.equal(v, expected_state[k]) and v.stride() == expected_state[k].stride(), k
    assert model.layer4[1].conv2.weight is model.layer4[1].conv1.weight
    assert model.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    ptrs = sorted(t.data_ptr() for t in model.parameters())
    assert all(p % 64 == 0 for p in ptrs)
    with torch.inference_mode():
        assert torch.equal(model(x), expected)
    assert _vma_flags(ptrs[0]).get("THPeligible", "1") == "1"  # advised for huge pages (older kernels: no field)


def test_without_transparent_huge_pages_nothing_moves(tmp_path, monkeypatch):
    from lpla_fast.encoders import inference

    (tmp_path / "enabled").write_text("always madvise [never]\n")
    assert inference.transparent_huge_pages(str(tmp_path / "enabled")) == "never"
    assert inference.transparent_huge_pages(str(tmp_path / "missing")) == "unavailable"
    monkeypatch.setattr(inference, "transparent_huge_pages", lambda: "never")
    model = make_backbone("small_cnn", width=4)
    before = [p.data_ptr() for p in model.parameters()]
    assert place_in_huge_pages(model) == 0
    assert [p.data_ptr() for p in model.parameters()] == before
