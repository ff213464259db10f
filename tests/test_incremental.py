"""Incremental inference (bagrepro.methods.incremental): the same outputs as full forward passes, for every
architecture family it covers, odd sizes, patches that do not divide the image, every fill; the
nodes it cannot window are computed whole; untraceable models fall back with one log line."""

from __future__ import annotations

import logging

import pytest
import torch
import torchvision
from torch import nn

import bagrepro.demo.plugin  # noqa: F401  (registers the demo zoo)
from bagrepro.methods.incremental import IncrementalModel, NotIncremental
from bagrepro.methods.masking import (batched_masking_curves, grid_positions, grid_shape, incremental_masking_curves,
                              masking_curves, ranks_from_scores)
from bagrepro.models import create_model
from bagrepro.models.bagnet import randomise_batchnorm, reduced_bagnet
from bagrepro.models.fast import fuse_for_inference
from bagrepro.core.passes import PassCounter

HEIGHT, WIDTH = 61, 67  # odd, not square, and 8 divides neither


def family(name: str) -> nn.Module:
    """Random-weight models of every family the evaluator covers (BatchNorm statistics calibrated)."""
    builders = {
        "demo_vgg16": lambda: create_model("demo_vgg16"),  # torchvision VGG (with BatchNorm, a small head)
        "resnet18": lambda: torchvision.models.resnet18(num_classes=7),
        "demo_resnet50": lambda: create_model("demo_resnet50"),  # torchvision Bottleneck ResNet
        "demo_densenet169": lambda: create_model("demo_densenet169"),  # torchvision DenseNet
        "bagnet9": lambda: reduced_bagnet(9, width=8, blocks=1, num_classes=7),
        "bagnet33": lambda: reduced_bagnet(33, width=8, blocks=1, num_classes=7),
    }
    torch.manual_seed(0)
    return randomise_batchnorm(builders[name](), seed=0, calibration_size=HEIGHT).eval()


def curves_both_ways(model, patch=8, fill="dc", images=2, steps=6, chunk_size=8, seed=0):
    generator = torch.Generator().manual_seed(seed)
    inputs = torch.randn(images, 3, HEIGHT, WIDTH, generator=generator)
    patches = grid_shape(HEIGHT, WIDTH, patch)
    ranks = ranks_from_scores(torch.randn(images, patches[0] * patches[1], generator=generator))
    with torch.inference_mode():
        leading = model(inputs).argmax(1)
    expected = batched_masking_curves(model, inputs, ranks, leading, steps, patch, fill)
    incremental = incremental_masking_curves(model, inputs, ranks, leading, steps, patch, fill, chunk_size=chunk_size)
    return expected, incremental


@pytest.mark.parametrize("name", ["demo_vgg16", "resnet18", "demo_resnet50", "demo_densenet169", "bagnet9", "bagnet33"])
@pytest.mark.parametrize("copy", ["as built", "inference copy"])
def test_curves_equal_full_forward_passes_for_every_family(name, copy):
    model = family(name)
    if copy == "inference copy":
        model = fuse_for_inference(model)
    evaluator = IncrementalModel(model, (3, HEIGHT, WIDTH), (8, 8), grid_positions(HEIGHT, WIDTH, 8))
    evaluator.start(torch.zeros(1, 3, HEIGHT, WIDTH))
    summary = evaluator.summary()
    assert summary["incremental"] > 0 and 0 < summary["flop_share"] < 1  # something is windowed
    expected, incremental = curves_both_ways(model)
    assert (expected[:, 0] - expected[:, -1]).abs().max() > 1e-4  # masking changes the probability
    torch.testing.assert_close(incremental, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("fill", ["dc", "zero", "blur"])
@pytest.mark.parametrize("patch", [8, 7, 16])
def test_every_fill_and_patch_size(fill, patch):
    expected, incremental = curves_both_ways(family("resnet18"), patch=patch, fill=fill, steps=4)
    torch.testing.assert_close(incremental, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("chunk_size", [1, 3, 64])
def test_lanes_and_flush_batches_do_not_change_the_curves(chunk_size):
    # chunk 1: one image per lane group and one step per flush; 3: a lane group of 1 with 3 steps per flush
    expected, incremental = curves_both_ways(family("demo_vgg16"), images=4, steps=7, chunk_size=chunk_size)
    torch.testing.assert_close(incremental, expected, atol=1e-5, rtol=0)


class Unusual(nn.Module):
    """Operations the evaluator must not window (a spatial flip, a map-sized constant, channel
    slicing, functional pooling) between ones it can, and a pooled head."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, stride=2, padding=2, dilation=2)
        self.pool = nn.AvgPool2d(3, stride=2, padding=1)
        self.conv3 = nn.Conv2d(12, 6, 3, padding=1)
        self.register_buffer("position", torch.linspace(0, 1, WIDTH).expand(HEIGHT, WIDTH).clone())
        self.fc = nn.Linear(6, 5)

    def forward(self, x):
        a = torch.relu(self.conv1(x * 2.0 + 1.0)) * self.position  # pointwise by a map-sized constant: whole
        b = torch.relu(self.conv1(x))
        b = torch.cat([b, torch.flip(b, [3])[:, :4]], 1)  # a flip moves pixels: whole from here on that path
        c = self.pool(torch.nn.functional.max_pool2d(b, 3, 1, 1))
        d = self.conv2(a)
        merged = self.conv3(c[:, :, : d.shape[-2], : d.shape[-1]] + torch.cat([d, d[:, :4]], 1))
        return self.fc(merged.mean((2, 3)))


def test_operations_it_cannot_window_are_computed_whole():
    model = Unusual().eval()
    expected, incremental = curves_both_ways(model, steps=8)
    torch.testing.assert_close(incremental, expected, atol=1e-5, rtol=0)


def test_full_fraction_zero_computes_everything_whole_and_agrees():
    model = family("resnet18")
    everything = IncrementalModel(model, (3, HEIGHT, WIDTH), (8, 8), grid_positions(HEIGHT, WIDTH, 8), full_fraction=0.0)
    windowed = IncrementalModel(model, (3, HEIGHT, WIDTH), (8, 8), grid_positions(HEIGHT, WIDTH, 8))
    inputs = torch.randn(2, 3, HEIGHT, WIDTH)
    source = torch.zeros_like(inputs)
    for evaluator in (everything, windowed):
        evaluator.start(inputs)
    assert everything.summary()["incremental"] == 0 and everything.flop_share() == 1.0
    assert windowed.flop_share() < 1.0
    for position in ([0, 5], [40, 1]):
        torch.testing.assert_close(windowed.step(torch.tensor(position), source),
                                   everything.step(torch.tensor(position), source), atol=1e-5, rtol=0)


def test_boxes_over_the_border_and_selected_lanes_match_explicit_inputs():
    """select() repeats the kept lanes of a start (one base image per occlusion window); a box may
    hang over the bottom/right border and is cut there."""
    model = family("demo_vgg16")
    box = 12
    positions = torch.tensor([[0, 0], [HEIGHT - 5, 3], [20, WIDTH - 7], [HEIGHT - 2, WIDTH - 2]])
    evaluator = IncrementalModel(model, (3, HEIGHT, WIDTH), (box, box), positions)
    images = torch.randn(2, 3, HEIGHT, WIDTH)
    evaluator.start(images, keep=True)
    baseline = torch.full((1, 3, HEIGHT, WIDTH), -0.5)
    for lanes in (torch.tensor([0, 0, 1, 1]), torch.tensor([1, 0, 1, 0])):
        evaluator.select(lanes)
        chosen = torch.tensor([0, 1, 2, 3])
        outputs = evaluator.step(chosen, baseline.expand(4, -1, -1, -1))
        explicit = images[lanes].clone()
        for lane, (row, col) in enumerate(positions[chosen].tolist()):
            explicit[lane, :, row:row + box, col:col + box] = -0.5
        with torch.inference_mode():
            torch.testing.assert_close(outputs, model(explicit), atol=1e-5, rtol=0)


def test_windows_count_as_passes_of_the_first_convolution():
    """A step enters the model's first convolution once per lane, as a forward pass does (the
    run's pass counts and --plan stay what they were)."""
    counted = {}
    for engine in ("batched", "incremental"):
        counter = PassCounter()
        model = counter.attach("m", fuse_for_inference(family("resnet18")))
        inputs = torch.randn(3, 3, HEIGHT, WIDTH)
        ranks = ranks_from_scores(torch.randn(3, 7 * 8))
        masking_curves(model, inputs, ranks, torch.zeros(3, dtype=torch.long), 5, engine=engine, chunk_size=4)
        counted[engine] = counter.as_dict()["m"]["forward"]
    assert counted["incremental"] == counted["batched"] == 3 * 6


class DataDependent(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x):
        if x.mean() > 0:  # control flow on values: torch.fx cannot trace it
            x = -x
        return self.conv(x).mean((2, 3))


def test_an_untraceable_model_falls_back_to_full_passes_with_one_log_line(caplog):
    model = DataDependent().eval()
    with pytest.raises(NotIncremental, match="cannot trace DataDependent"):
        IncrementalModel(model, (3, HEIGHT, WIDTH), (8, 8), grid_positions(HEIGHT, WIDTH, 8))
    inputs = torch.randn(2, 3, HEIGHT, WIDTH)
    ranks = ranks_from_scores(torch.randn(2, 7 * 8))
    leading = torch.zeros(2, dtype=torch.long)
    with caplog.at_level(logging.WARNING, logger="bagrepro.methods.incremental"):
        first = masking_curves(model, inputs, ranks, leading, 4)
        masking_curves(model, inputs, ranks, leading, 4)
    lines = [r for r in caplog.records if "DataDependent" in r.getMessage()]
    assert len(lines) == 1 and "full forward passes instead" in lines[0].getMessage()
    torch.testing.assert_close(first, batched_masking_curves(model, inputs, ranks, leading, 4))


def test_an_unknown_engine_is_a_config_error():
    from bagrepro.core.errors import ConfigError

    with pytest.raises(ConfigError, match="unknown masking engine 'fast'"):
        masking_curves(nn.Identity(), torch.zeros(1, 3, 8, 8), torch.zeros(1, 1, dtype=torch.long),
                       torch.zeros(1, dtype=torch.long), 1, engine="fast")


def test_a_model_whose_forward_is_replaced_is_not_traced():
    """--precision bf16 autocasts the inference copy's forward on the instance: its graph alone would run fp32."""
    from bagrepro.models.fast import with_precision

    model = with_precision(fuse_for_inference(family("resnet18")), "bf16")
    with pytest.raises(NotIncremental, match="forward is replaced"):
        IncrementalModel(model, (3, HEIGHT, WIDTH), (8, 8), grid_positions(HEIGHT, WIDTH, 8))


@pytest.mark.parametrize("name", ["demo_resnet50", "demo_densenet169"])
def test_occlusion_equals_captum(name):
    """The registry's occlusion runs incremental inference; captum's Occlusion on the same model is
    the reference (a 12 px window at stride 5 hangs over the 61 x 67 px border)."""
    from captum.attr import Occlusion

    from bagrepro.methods.attribution import attribute

    model = family(name)
    images = torch.randn(2, 3, HEIGHT, WIDTH, generator=torch.Generator().manual_seed(1))
    targets = torch.tensor([1, 3])
    ours = attribute(model, images, targets, "occlusion", occlusion_window=12, occlusion_stride=5,
                     perturbations_per_eval=7)
    reference = Occlusion(model).attribute(images, sliding_window_shapes=(3, 12, 12), strides=(3, 5, 5),
                                           baselines=0.0, target=targets, perturbations_per_eval=8)
    assert reference.abs().max() > 0.05
    torch.testing.assert_close(ours, reference, atol=2e-5, rtol=0)


def test_occlusion_of_an_untraceable_model_goes_through_captum():
    from bagrepro.methods.attribution import attribute, incremental_occlusion

    model = DataDependent().eval()
    images = torch.randn(2, 3, 20, 20)
    with pytest.raises(NotIncremental):
        incremental_occlusion(model, images, torch.tensor([0, 1]), 8, 4)
    got = attribute(model, images, torch.tensor([0, 1]), "occlusion", occlusion_window=8, occlusion_stride=4)
    assert got.shape == images.shape and got.abs().max() > 0
