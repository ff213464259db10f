"""Gatys et al. (2015) texture synthesis (:mod:`bagrepro.methods.scrambling`): the average-pool VGG and its
layers, the loss, the batched L-BFGS (against torch.optim.LBFGS, on box-constrained and non-convex
problems), and texturise itself on tiny VGGs (the loss falls by orders of magnitude, the pixels stay
in [0, 1], an image's texture does not depend on the rest of its batch)."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torchvision.models import vgg as tv_vgg

from bagrepro.core.errors import ConfigError
from bagrepro.methods.scrambling import (
    CONVERGED_RATIO,
    GATYS_ITERATIONS,
    TextureResult,
    average_pool_features,
    batched_lbfgs,
    converged,
    gatys_layers,
    gatys_loss,
    gram_matrices,
    seeded_noise,
    texturise,
)

TINY = [8, "M", 16, "M", 16, "M", 16, "M"]


def tiny_vgg(cfg=TINY, batch_norm: bool = False, device: str | None = None) -> tv_vgg.VGG:
    """torchvision's VGG class around a small ``make_layers`` stack (its 25088 -> 4096 head is built
    on the meta device and dropped: the texture code only uses ``features``)."""
    with torch.device("meta"):
        model = tv_vgg.VGG(nn.Sequential(), init_weights=False)
    if device is None:
        model.features = tv_vgg.make_layers(cfg, batch_norm=batch_norm)
    else:
        with torch.device(device):
            model.features = tv_vgg.make_layers(cfg, batch_norm=batch_norm)
    model.classifier = nn.Identity()
    return model.eval()


def normalize(images: torch.Tensor) -> torch.Tensor:
    return (images - 0.5) / 0.25


def quadratic(matrices: torch.Tensor, centres: torch.Tensor):
    """closure for f_b(x) = 1/2 (x_b - c_b)' A_b (x_b - c_b), batched: (loss [B], gradient [B, D])."""
    def closure(x):
        diff = x - centres
        gradient = torch.einsum("bij,bj->bi", matrices, diff)
        return 0.5 * (diff * gradient).sum(1), gradient
    return closure


def spd(batch: int, size: int, generator: torch.Generator) -> torch.Tensor:
    factor = torch.randn(batch, size, size, generator=generator, dtype=torch.float64)
    return factor @ factor.transpose(1, 2) / size + 0.5 * torch.eye(size, dtype=torch.float64)


# ---- the network and its layers -------------------------------------------------------------------
def test_average_pool_features_swaps_every_max_pool_and_leaves_the_model_alone():
    vgg = tiny_vgg()
    before = {name: p.detach().clone() for name, p in vgg.named_parameters()}
    features = average_pool_features(vgg)
    assert len(features) == len(vgg.features)
    for original, copy in zip(vgg.features, features):
        if isinstance(original, nn.MaxPool2d):
            assert type(copy) is nn.AvgPool2d
            assert (copy.kernel_size, copy.stride, copy.padding, copy.ceil_mode) == (
                original.kernel_size, original.stride, original.padding, original.ceil_mode)
        elif isinstance(original, nn.ReLU):
            assert isinstance(copy, nn.ReLU) and not copy.inplace
        else:
            assert type(copy) is type(original)
    assert not any(isinstance(m, nn.MaxPool2d) for m in features) and not features.training
    assert all(not p.requires_grad for p in features.parameters())
    # the caller's model: still max-pools and in-place ReLUs, trainable, its own parameter storage
    assert sum(isinstance(m, nn.MaxPool2d) for m in vgg.features) == 4
    assert all(m.inplace for m in vgg.features if isinstance(m, nn.ReLU))
    assert all(p.requires_grad for p in vgg.parameters())
    with torch.no_grad():
        next(features.parameters()).add_(1.0)
    assert all(torch.equal(p, before[name]) for name, p in vgg.named_parameters())
    # same convolutions: on one image the copy is the original with average pools
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        reference = x
        for module in vgg.features:
            pool = isinstance(module, nn.MaxPool2d)
            reference = nn.functional.avg_pool2d(reference, 2, 2) if pool else module(reference)
        assert torch.allclose(average_pool_features(vgg)(x), reference, atol=1e-6)


def test_gatys_layers_are_the_first_relu_and_the_first_four_pools():
    assert gatys_layers(tiny_vgg()) == [1, 2, 5, 8, 11]
    assert gatys_layers(tiny_vgg(batch_norm=True)) == [2, 3, 7, 11, 15]  # conv, BN, ReLU = conv1_1
    # torchvision's VGG-19 ("E") and VGG-16 ("D") layouts: conv1_1 = features[1], pool1..pool4
    assert gatys_layers(tiny_vgg(tv_vgg.cfgs["E"], device="meta")) == [1, 4, 9, 18, 27]
    assert gatys_layers(tiny_vgg(tv_vgg.cfgs["D"], device="meta")) == [1, 4, 9, 16, 23]
    # the average-pool copy has the same layers
    assert gatys_layers(_holder(average_pool_features(tiny_vgg()))) == [1, 2, 5, 8, 11]


def _holder(features: nn.Sequential) -> nn.Module:
    module = nn.Module()
    module.features = features
    return module


def test_models_that_cannot_make_textures_raise_config_error():
    images = torch.rand(1, 3, 32, 32)
    for model in (nn.Linear(3, 3), _holder(nn.ModuleList([nn.Conv2d(3, 3, 3)])),
                  _holder(tv_vgg.make_layers([8, "M", 8, "M", 8, "M"]))):
        for call in (gatys_layers, average_pool_features, lambda m: texturise(images, m, normalize, iterations=1)):
            with pytest.raises(ConfigError) as error:
                call(model)
            assert "\n" not in str(error.value)
    with pytest.raises(ConfigError):
        texturise(images, tiny_vgg(), normalize, iterations=1, optimizer="sgd")
    with pytest.raises(ConfigError):
        texturise(images, tiny_vgg(), normalize, iterations=1, seeds=[1, 2])


# ---- the loss -------------------------------------------------------------------------------------
def test_gatys_loss_is_the_papers_formula():
    features = nn.Sequential(nn.Conv2d(3, 5, 3), nn.ReLU(), nn.AvgPool2d(2), nn.Conv2d(5, 4, 1)).double()
    x, a = torch.rand(2, 3, 12, 10, dtype=torch.float64), torch.rand(2, 3, 12, 10, dtype=torch.float64)
    layers = [1, 3]
    with torch.no_grad():
        loss = gatys_loss(gram_matrices(features, layers, x), gram_matrices(features, layers, a))
        expected = 0
        for stop in layers:
            f, t = features[: stop + 1](x).flatten(2), features[: stop + 1](a).flatten(2)
            n, m = f.shape[1], f.shape[2]
            gram, target = f @ f.transpose(1, 2), t @ t.transpose(1, 2)  # G = F F^T, no normalisation
            expected = expected + ((gram - target) ** 2).sum((1, 2)) / (4 * n ** 2 * m ** 2)
    assert loss.shape == (2,) and torch.allclose(loss, expected, rtol=1e-12)
    assert torch.all(gatys_loss(gram_matrices(features, layers, a), gram_matrices(features, layers, a)) == 0)


# ---- the batched L-BFGS ---------------------------------------------------------------------------
def test_batched_lbfgs_follows_torch_lbfgs_while_torch_steps_are_accepted():
    """Same rules as torch.optim.LBFGS (no line search): equal iterates as long as torch's full step
    satisfies our Armijo condition (then our line search accepts the same step)."""
    generator = torch.Generator().manual_seed(0)
    size = 8
    matrix, centre = spd(1, size, generator), 2 * torch.randn(1, size, generator=generator, dtype=torch.float64)
    closure = quadratic(matrix, centre)
    start = torch.zeros(1, size, dtype=torch.float64)

    point = start[0].clone().requires_grad_(True)
    optimiser = torch.optim.LBFGS([point], lr=1, max_iter=1, max_eval=10, history_size=5,
                                  tolerance_grad=0, tolerance_change=0)

    def torch_closure():
        optimiser.zero_grad()
        loss = closure(point[None])[0].sum()
        loss.backward()
        return loss

    iterates = [start[0].clone()]
    for _ in range(30):
        optimiser.step(torch_closure)
        iterates.append(point.detach().clone())
    agree = 0
    for k in range(30):
        before, after = iterates[k][None], iterates[k + 1][None]
        f0, g0 = closure(before)
        if not closure(after)[0] <= f0 + 1e-4 * (g0 * (after - before)).sum():
            break
        agree = k + 1
    assert agree >= 5  # the comparison below covers several L-BFGS updates with a full history
    for k in range(1, agree + 1):
        ours = batched_lbfgs(closure, start, iterations=k, history=5, bounds=None, tolerance_grad=0, tolerance_change=0)
        assert torch.allclose(ours.x[0], iterates[k], atol=1e-12, rtol=0), k
    # past that point torch's step raises the loss; ours backtracks and keeps descending
    ours = batched_lbfgs(closure, start, iterations=60, history=5, bounds=None, tolerance_grad=0, tolerance_change=0)
    assert torch.all(ours.trace[1:] <= ours.trace[:-1])
    assert torch.allclose(ours.x, centre, atol=1e-6)


def test_batched_lbfgs_finds_each_box_constrained_minimiser_independently_of_the_batch():
    generator = torch.Generator().manual_seed(1)
    batch, size = 3, 12
    matrices = spd(batch, size, generator)
    centres = 1.5 * torch.randn(batch, size, generator=generator, dtype=torch.float64) + 0.5  # partly outside
    start = torch.rand(batch, size, generator=generator, dtype=torch.float64)
    # tolerance_change=0: stop on the projected gradient alone (a loss change of 1e-9 relative comes
    # long before: near a minimum the loss is flat)
    result = batched_lbfgs(quadratic(matrices, centres), start, iterations=300, history=10, tolerance_change=0)
    x = result.x
    assert torch.all((x >= 0) & (x <= 1))
    assert torch.any(x == 0) and torch.any(x == 1)  # the box is active
    # KKT of a strictly convex box problem (so the unique minimiser): projected gradient 0
    gradient = quadratic(matrices, centres)(x)[1]
    assert (x - (x - gradient).clamp(0, 1)).abs().max() < 1e-6
    assert torch.all(result.trace[1:] <= result.trace[:-1])
    assert torch.all(result.iterations < 300)  # every problem stopped on its own tolerance
    for b in range(batch):
        alone = batched_lbfgs(quadratic(matrices[b:b + 1], centres[b:b + 1]), start[b:b + 1], iterations=300,
                              history=10, tolerance_change=0)
        assert torch.allclose(alone.x[0], x[b], atol=1e-12, rtol=0)
        assert alone.iterations.item() == result.iterations[b].item()


def test_batched_lbfgs_never_raises_the_loss_on_a_non_convex_problem():
    """Rosenbrock's valley in the box [-2, 2]^2 from three starts: the loss never increases and
    every start reaches the minimum (1, 1)."""
    def rosenbrock(x):
        x = x.detach().requires_grad_(True)
        loss = (1 - x[:, 0]) ** 2 + 100 * (x[:, 1] - x[:, 0] ** 2) ** 2
        return loss.detach(), torch.autograd.grad(loss.sum(), x)[0]

    start = torch.tensor([[-1.5, 2.0], [0.0, 0.0], [2.0, -2.0]], dtype=torch.float64)
    result = batched_lbfgs(rosenbrock, start, iterations=500, history=10, bounds=(-2.0, 2.0))
    assert torch.all(result.trace[1:] <= result.trace[:-1])
    assert torch.allclose(result.x, torch.ones(3, 2, dtype=torch.float64), atol=1e-5)


# ---- texturise ------------------------------------------------------------------------------------
def test_lbfgs_texture_loss_falls_by_orders_of_magnitude_and_pixels_stay_in_the_box():
    torch.manual_seed(0)
    vgg = tiny_vgg()
    images = (torch.rand(2, 3, 32, 32) > 0.5).float()  # saturated targets: the box [0, 1] is active
    result = texturise(images, vgg, normalize, iterations=100, seed=5)
    assert isinstance(result, TextureResult)
    assert result.images.shape == images.shape and result.images.dtype == images.dtype
    assert result.loss.shape == result.initial_loss.shape == result.iterations.shape == (2,)
    assert result.images.min() >= 0 and result.images.max() <= 1
    assert (result.images == 0).any() and (result.images == 1).any()
    assert torch.all(result.loss <= 1e-2 * result.initial_loss)
    assert converged(result).all() and CONVERGED_RATIO == 1e-2
    assert torch.all((result.iterations > 0) & (result.iterations <= 100))
    # the reported loss is the Gatys loss of the returned texture
    features, layers = average_pool_features(vgg), gatys_layers(vgg)
    with torch.no_grad():
        recomputed = gatys_loss(gram_matrices(features, layers, normalize(result.images)),
                                gram_matrices(features, layers, normalize(images)))
    assert torch.allclose(recomputed.double(), result.loss, rtol=1e-4)


@pytest.mark.parametrize("dtype, iterations, atol", [(torch.float64, 30, 1e-9), (torch.float32, 10, 1e-5)])
def test_a_texture_does_not_depend_on_the_rest_of_its_batch(dtype, iterations, atol):
    """Alone or in a batch of 3: the same texture. (In float32 a batched convolution rounds a little
    differently, ~1e-7, and a non-convex L-BFGS run amplifies that over many iterations, so float32
    is compared after 10 iterations; float64 shows the runs are the same computation. A coupled
    optimiser, e.g. torch.optim.LBFGS over the batch, differs from the first step on.)"""
    torch.manual_seed(0)
    vgg = tiny_vgg().to(dtype)
    images = torch.rand(3, 3, 32, 32, dtype=dtype)
    together = texturise(images, vgg, normalize, iterations=iterations, seed=7)
    assert torch.all(together.loss < 0.1 * together.initial_loss)  # far from the start: a real test
    for b in range(3):
        alone = texturise(images[b:b + 1], vgg, normalize, iterations=iterations, seed=7 + b)
        assert torch.allclose(alone.images[0], together.images[b], atol=atol, rtol=0)
        assert torch.allclose(alone.loss[0], together.loss[b], rtol=1e-4)
        assert alone.iterations[0] == together.iterations[b]
    # explicit per-image seeds: the same as the default seed + b
    reordered = texturise(images[[2, 0]], vgg, normalize, iterations=iterations, seeds=[9, 7])
    assert torch.allclose(reordered.images, together.images[[2, 0]], atol=atol, rtol=0)


def test_starting_noise_is_seeded_per_image():
    images = torch.rand(3, 3, 16, 16)
    vgg = tiny_vgg()
    start = texturise(images, vgg, normalize, iterations=0, seed=3)
    assert torch.equal(start.images, seeded_noise((3, 16, 16), [3, 4, 5]))
    assert torch.equal(start.loss, start.initial_loss) and torch.all(start.iterations == 0)
    assert not torch.equal(start.images[0], start.images[1])
    assert torch.equal(seeded_noise((3, 4, 4), [4])[0], seeded_noise((3, 4, 4), [3, 4])[1])


def test_adam_variant_lowers_the_same_loss():
    torch.manual_seed(0)
    images = torch.rand(2, 3, 32, 32)
    result = texturise(images, tiny_vgg(), normalize, iterations=40, optimizer="adam")
    assert result.images.shape == images.shape
    assert result.images.min() >= 0 and result.images.max() <= 1
    assert torch.all(result.loss < 0.5 * result.initial_loss)
    assert torch.all(result.iterations == 40)


def test_converged_compares_the_loss_with_its_start():
    result = TextureResult(images=torch.zeros(3, 3, 1, 1), loss=torch.tensor([1e-3, 0.5, 0.0], dtype=torch.float64),
                           initial_loss=torch.ones(3, dtype=torch.float64), iterations=torch.ones(3, dtype=torch.long))
    assert converged(result).tolist() == [True, False, True]
    assert converged(result, ratio=0.6).tolist() == [True, True, True]
    assert GATYS_ITERATIONS == 2000
