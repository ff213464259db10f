"""Property tests for the BagNets, their fused inference path and the exact dense heatmaps.

These guard the science (paper.md sections 1-2): released parameter counts and checkpoint format,
the output grid, the receptive field of every output location, pooling/linear-head commutation,
translation equivariance at stride 8 on non-square images, the exact additivity of eq. 1 for
spatially separated masks (and its failure for a ResNet), the fused model's equality with the eager
one, and the dense heatmaps' equality with a naive per-patch reference (the released method).

Everything except the parameter counts, the checkpoint tests and the 224 px grid runs on narrow,
shallow BagNets (``reduced_bagnet``): they keep the kernel sizes and strides of block 0 of every
layer, hence the geometry (q, stride 8) of the released models.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from bagrepro.core.errors import DataError, WeightsError
from bagrepro.methods.heatmaps import dense_heatmaps, patch_logits
from bagrepro.models.bagnet import BagNet, bagnet, randomise_batchnorm, reduced_bagnet
from bagrepro.models.fast import fuse_bagnet, fuse_for_inference
from bagrepro.models.weights import load_into

QS = (9, 17, 33)
KERNEL3 = {9: (1, 1, 0, 0), 17: (1, 1, 1, 0), 33: (1, 1, 1, 1)}
LAYERS = (3, 4, 6, 3)


# --------------------------------------------------------------------------------------------------
# helpers

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


def randomise_bn(model: nn.Module, seed: int, positive_bias: bool = False, calibrate: bool = True,
                 size: tuple[int, int] = (64, 72)) -> nn.Module:
    """Random BatchNorm statistics and affine parameters; return model.eval().

    With ``calibrate`` the running statistics are first set from one batch of random images (so every
    layer sees roughly normalised activations and the logits depend on the input instead of on the
    BN biases alone), then perturbed at random; otherwise they are drawn at random outright.
    """
    gen = torch.Generator().manual_seed(seed)
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    if calibrate:
        momenta = [m.momentum for m in norms]
        for m in norms:
            m.reset_running_stats()
            m.momentum = None  # cumulative average: one batch sets the statistics
        model.train()
        with torch.no_grad():
            model(torch.randn(4, 3, *size, generator=gen))
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum
    with torch.no_grad():
        for m in norms:
            c = m.num_features
            if calibrate:
                m.running_mean.add_(0.1 * m.running_var.sqrt() * torch.randn(c, generator=gen))
                m.running_var.mul_(0.8 + 0.4 * torch.rand(c, generator=gen))
            else:
                m.running_mean.copy_(0.2 * torch.randn(c, generator=gen))
                m.running_var.copy_(0.5 + torch.rand(c, generator=gen))
            m.weight.copy_(0.75 + 0.5 * torch.rand(c, generator=gen))
            if positive_bias:
                m.bias.copy_(0.05 + 0.3 * torch.rand(c, generator=gen))
            else:
                m.bias.copy_(0.2 * torch.randn(c, generator=gen))
    return model.eval()


def small(q: int, seed: int = 0, width: int = 8, blocks: int = 1, positive_bias: bool = False) -> BagNet:
    torch.manual_seed(seed)
    return randomise_bn(reduced_bagnet(q, width=width, blocks=blocks, num_classes=10), seed + 1000,
                        positive_bias)


def images(shape, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def grid(size: int, q: int) -> int:
    return (size - q) // 8 + 1


def assert_close_rel(actual: torch.Tensor, expected: torch.Tensor, rel: float, what: str = "") -> None:
    """max |actual - expected| <= rel * max |expected|."""
    assert actual.shape == expected.shape, (what, actual.shape, expected.shape)
    scale = expected.abs().max().item()
    err = (actual - expected).abs().max().item()
    assert scale > 0, what
    assert err <= rel * scale, f"{what}: max |diff| {err:.3g} > {rel} * max |ref| {scale:.3g}"


def expected_bagnet_keys(q: int) -> dict[str, tuple[int, ...]]:
    """Released state_dict keys and shapes, built from the description in paper.md section 1."""
    bn = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")

    def bn_keys(prefix: str, c: int) -> dict[str, tuple[int, ...]]:
        return {f"{prefix}.{n}": ((c,) if n != "num_batches_tracked" else ()) for n in bn}

    keys = {"conv1.weight": (64, 3, 1, 1), "conv2.weight": (64, 64, 3, 3), **bn_keys("bn1", 64)}
    inplanes = 64
    for layer, (blocks, k3) in enumerate(zip(LAYERS, KERNEL3[q]), start=1):
        planes = 64 * 2 ** (layer - 1)
        for b in range(blocks):
            p = f"layer{layer}.{b}"
            k = 3 if (b == 0 and k3) else 1
            keys[f"{p}.conv1.weight"] = (planes, inplanes if b == 0 else 4 * planes, 1, 1)
            keys[f"{p}.conv2.weight"] = (planes, planes, k, k)
            keys[f"{p}.conv3.weight"] = (4 * planes, planes, 1, 1)
            keys.update(bn_keys(f"{p}.bn1", planes))
            keys.update(bn_keys(f"{p}.bn2", planes))
            keys.update(bn_keys(f"{p}.bn3", 4 * planes))
            if b == 0:
                keys[f"{p}.downsample.0.weight"] = (4 * planes, inplanes, 1, 1)
                keys.update(bn_keys(f"{p}.downsample.1", 4 * planes))
        inplanes = 4 * planes
    keys["fc.weight"] = (1000, 2048)
    keys["fc.bias"] = (1000,)
    return keys


# --------------------------------------------------------------------------------------------------
# released architecture and checkpoint format

@pytest.mark.parametrize("q, count", [(9, 15_688_744), (17, 16_213_032), (33, 18_310_184)])
def test_parameter_counts(q, count):
    model = bagnet(q)
    assert sum(p.numel() for p in model.parameters()) == count
    assert model.receptive_field == q


@pytest.mark.parametrize("q", QS)
def test_state_dict_keys_and_shapes_match_release(q):
    own = {k: tuple(v.shape) for k, v in bagnet(q).state_dict().items()}
    expected = expected_bagnet_keys(q)
    assert set(own) == set(expected)
    assert own == expected  # every shape, including which conv2 are 3x3
    for layer, k3 in enumerate(KERNEL3[q], start=1):
        assert own[f"layer{layer}.0.conv2.weight"][-2:] == ((3, 3) if k3 else (1, 1))
        assert own[f"layer{layer}.1.conv2.weight"][-2:] == (1, 1)
    assert own["fc.weight"] == (1000, 2048)
    assert not any(k.startswith("module.") for k in own)


def test_checkpoint_round_trip_and_wrong_model(tmp_path):
    torch.manual_seed(1)
    source = randomise_bn(bagnet(33), 11, calibrate=False)
    path = tmp_path / "bagnet33.pth.tar"
    torch.save(source.state_dict(), path)
    state = torch.load(path, map_location="cpu", weights_only=True)

    torch.manual_seed(2)
    target = bagnet(33).eval()
    x = images((2, 3, 41, 50), 3)
    with torch.no_grad():
        assert not torch.equal(target(x), source(x))
        load_into(target, state, str(path))
        assert torch.equal(target(x), source(x))
        assert torch.equal(target.patch_logits(x), source.patch_logits(x))

    torch.manual_seed(3)
    with pytest.raises(WeightsError, match="layer4.0.conv2.weight"):
        load_into(bagnet(33), bagnet(17).state_dict(), "bagnet17.pth.tar")


# --------------------------------------------------------------------------------------------------
# geometry

@pytest.mark.parametrize("q, side", [(33, 24), (17, 26), (9, 27)])
def test_output_grid_at_224(q, side):
    model = small(q, width=4)  # same kernels and strides as bagnet(q), hence the same grid
    with torch.no_grad():
        out = model.patch_logits(images((1, 3, 224, 224), 0))
    assert out.shape == (1, 10, side, side)


@pytest.mark.parametrize("q", QS)
def test_output_grid_general(q):
    model = small(q, width=4)
    sizes = [(q, q), (q + 1, q + 7), (q + 8, q), (37, 45), (50, 39), (65, 64), (101, 77), (130, 57)]
    with torch.no_grad():
        for h, w in sizes:
            if h < q or w < q:
                continue
            feats = model.features(torch.zeros(1, 3, h, w))
            assert feats.shape[-2:] == (grid(h, q), grid(w, q)), (h, w)
    with pytest.raises(DataError):
        model.features(torch.zeros(1, 3, q - 1, q + 10))


@pytest.mark.parametrize("q", QS)
def test_receptive_field_by_gradient_support(q):
    """d logit(i, j) / d x is non-zero exactly on rows [8i, 8i+q) and columns [8j, 8j+q)."""
    model = small(q, seed=q, positive_bias=True)
    height, width = q + 8 * 3 + 5, q + 8 * 5 + 2  # non-square, not a multiple of 8
    rows, cols = grid(height, q), grid(width, q)
    spots = [(0, 0), (rows - 1, cols - 1), (0, cols - 1), (rows - 1, 0), (1, 2)]
    trials = 3
    # one batch: every (spot, trial) pair is its own image, so one backward gives every gradient
    x = images((trials, 3, height, width), q).abs() + 0.1  # positive inputs
    xb = x.repeat(len(spots), 1, 1, 1).requires_grad_(True)
    out = model.patch_logits(xb)
    assert out.shape[-2:] == (rows, cols)
    picks = [out[s * trials + t, 3, i, j] for s, (i, j) in enumerate(spots) for t in range(trials)]
    torch.stack(picks).sum().backward()
    grads = xb.grad.abs().sum(1).reshape(len(spots), trials, height, width)
    for s, (i, j) in enumerate(spots):
        support = (grads[s] > 0).any(0)  # union over the random inputs
        expected = torch.zeros(height, width, dtype=torch.bool)
        expected[8 * i: 8 * i + q, 8 * j: 8 * j + q] = True
        assert torch.equal(support, expected), (q, i, j, support.nonzero().min(0), support.nonzero().max(0))


def test_residual_is_cropped_at_bottom_right():
    """The released convention (residual[:, :, :-d, :-d]). The geometry tests cannot tell it from a
    centred crop (both stay inside the receptive field), but the released weights need it."""
    model = small(33, seed=3)
    with torch.no_grad():
        for block in (model.layer1[0], model.layer4[0]):  # strided 3x3, then stride-1 3x3
            xin = images((1, block.conv1.in_channels, 23, 30), 4)
            main = block.bn1(block.conv1(xin)).relu()
            main = block.bn2(block.conv2(main)).relu()
            main = block.bn3(block.conv3(main))
            residual = block.downsample(xin)
            h, w = main.shape[-2:]
            assert residual.shape[-2] > h and residual.shape[-1] > w
            assert torch.equal(block(xin), torch.relu(main + residual[:, :, :h, :w]))


@pytest.mark.parametrize("q", QS)
@pytest.mark.parametrize("size", [(72, 72), (57, 90), (83, 41)])
def test_pooling_and_linear_head_commute(q, size):
    model = small(q, seed=7)
    x = images((2, 3, *size), 8)
    with torch.no_grad():
        pooled = model(x)
        via_patches = model.patch_logits(x).mean((2, 3))
    assert_close_rel(via_patches, pooled, 1e-5, f"q={q} {size}")


@pytest.mark.parametrize("q", QS)
def test_translation_equivariance_non_square(q):
    """Cropping the input at multiples of 8 crops the features (non-square, both axes differ)."""
    model = small(q, seed=5, blocks=2)
    height, width = q + 8 * 6 + 3, q + 8 * 9 + 5
    x = images((1, 3, height, width), 9)
    with torch.no_grad():
        full = model.features(x)
        assert full.shape[-2:] == (grid(height, q), grid(width, q))
        for a, b, h, w in [(0, 0, q + 8 * 2, q + 8 * 5 + 1), (2, 1, q + 8 * 4 + 3, q + 8 * 1),
                           (1, 4, q + 8 * 3, q + 8 * 4 + 7), (6, 9, q, q)]:
            crop = x[:, :, 8 * a: 8 * a + h, 8 * b: 8 * b + w]
            part = model.features(crop)
            hh, ww = grid(h, q), grid(w, q)
            assert part.shape[-2:] == (hh, ww)
            assert_close_rel(part, full[:, :, a: a + hh, b: b + ww], 1e-4, f"q={q} crop {a},{b},{h},{w}")


# --------------------------------------------------------------------------------------------------
# eq. 1: no interactions between masks more than q px apart

def _dc_masks(x: torch.Tensor, corners, q: int) -> list[torch.Tensor]:
    """delta_i: replace the q x q square at each corner by its per-channel mean."""
    deltas = []
    for r, c in corners:
        d = torch.zeros_like(x)
        square = x[:, :, r: r + q, c: c + q]
        d[:, :, r: r + q, c: c + q] = square.mean((2, 3), keepdim=True) - square
        deltas.append(d)
    return deltas


def _interaction(model: nn.Module, x: torch.Tensor, corners, q: int, cls: int):
    """(LHS, RHS, scale) of eq. 1 for the pooled logit of class cls, masks applied in one batch."""
    deltas = _dc_masks(x, corners, q)
    batch = torch.cat([x] + [x + d for d in deltas] + [x + sum(deltas)])
    with torch.no_grad():
        logits = model(batch)[:, cls].double()
    base, singles, together = logits[0], logits[1:-1], logits[-1]
    lhs = base - together
    rhs = (base - singles).sum()
    return lhs.item(), rhs.item(), logits.abs().max().item()


def _mask_corners(q: int):
    step = 2 * q + 3  # gap between squares: q + 3 px (> q)
    return [(4, 6), (4, 6 + step), (4 + step, 6), (4 + step, 6 + step)], 4 + step + q + 5, 6 + step + q + 9


@pytest.mark.parametrize("q", QS)
def test_eq1_exact_for_bagnets(q):
    model = small(q, seed=21, blocks=2)
    corners, height, width = _mask_corners(q)
    x = images((1, 3, height, width), 22)
    for cls in (0, 3):
        lhs, rhs, scale = _interaction(model, x, corners, q, cls)
        assert abs(lhs) > 1e-3 * scale  # the masks do change the logit
        assert abs(lhs - rhs) <= 1e-4 * scale, (q, cls, lhs, rhs, scale)


def test_eq1_fails_for_resnet18():
    torch.manual_seed(0)
    model = randomise_bn(torchvision.models.resnet18(num_classes=10), 31)
    q = 33
    corners, height, width = _mask_corners(q)
    x = images((1, 3, height, width), 22)
    for cls in (0, 3):
        lhs, rhs, scale = _interaction(model, x, corners, q, cls)
        assert abs(lhs - rhs) > 100 * 1e-4 * scale, (cls, lhs, rhs, scale)


# --------------------------------------------------------------------------------------------------
# fused inference path

@pytest.mark.parametrize("q", QS)
def test_fused_model_equals_eager(q):
    model = small(q, seed=40 + q, blocks=2)
    fused = fuse_bagnet(model)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fused.modules())
    x = images((2, 3, 61, 75), 41)
    with torch.no_grad():
        assert_close_rel(fused(x), model(x), 1e-4, "pooled")
        assert_close_rel(fused(x.contiguous(memory_format=torch.channels_last)), model(x), 1e-4, "pooled cl")
        assert_close_rel(fused.patch_logits(x), model.patch_logits(x), 1e-4, "patch")
    xs = images((2, 3, 37, 45), 42)
    assert_close_rel(dense_heatmaps(fused, xs, None, chunk_size=2), dense_heatmaps(model, xs, None, chunk_size=2),
                     1e-4, "dense")
    assert_close_rel(patch_logits(fused, xs, [1, 2]), patch_logits(model, xs, [1, 2]), 1e-4, "patch fn")


def test_fused_full_width_bagnet33_equals_eager():
    torch.manual_seed(50)
    model = randomise_bn(bagnet(33), 51)
    fused = fuse_bagnet(model)
    x = images((2, 3, 49, 58), 52)
    with torch.no_grad():
        assert_close_rel(fused(x), model(x), 1e-4, "pooled")
        assert_close_rel(fused.patch_logits(x), model.patch_logits(x), 1e-4, "patch")


@pytest.mark.parametrize("architecture", ["vgg16_bn", "resnet18", "densenet121"])
def test_inference_copy_of_torchvision_models_equals_eager(architecture):
    torch.manual_seed(53)
    model = randomise_batchnorm(getattr(torchvision.models, architecture)(num_classes=7), seed=54, calibration_size=64)
    model.zoo_spec = "spec"  # travels with the copy
    fused = fuse_for_inference(model)
    count = lambda m: sum(isinstance(module, nn.BatchNorm2d) for module in m.modules())  # noqa: E731
    assert fused is not model and fused.zoo_spec == "spec" and count(fused) < count(model)
    if architecture != "densenet121":  # DenseNet's BatchNorms come before their convs: nothing to fold
        assert count(fused) == 0
    x = images((2, 3, 64, 72), 55)
    with torch.no_grad():
        assert_close_rel(fused(x), model(x), 1e-4, architecture)
    assert model.training is False and count(model) > 0  # the original is untouched


def test_inference_copy_of_an_untraceable_model_is_the_model():
    class DataDependent(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.norm = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)

        def forward(self, x):
            return self.norm(self.conv(x)) if x.sum() > 0 else x  # torch.fx cannot trace this branch

    model = DataDependent().eval()
    assert fuse_for_inference(model) is model
    assert isinstance(fuse_for_inference(small(9, seed=56, blocks=1)), BagNet)  # BagNets: fuse_bagnet


# --------------------------------------------------------------------------------------------------
# dense heatmaps against the released per-patch method

def naive_heatmaps(model: BagNet, x: torch.Tensor, chunk: int = 512) -> torch.Tensor:
    """The released method: zero-pad by (q-1)//2, run every stride-1 q x q patch, all classes.

    Returns [B, K, H, W]."""
    q = model.receptive_field
    b, c, h, w = x.shape
    pad = (q - 1) // 2
    padded = F.pad(x, (pad, pad, pad, pad))
    cols = F.unfold(padded, kernel_size=q)  # [B, c*q*q, H*W]
    patches = cols.transpose(1, 2).reshape(b * h * w, c, q, q)
    with torch.no_grad():
        logits = torch.cat([model(patches[i: i + chunk]) for i in range(0, len(patches), chunk)])
    return logits.reshape(b, h, w, -1).permute(0, 3, 1, 2)


@pytest.mark.parametrize("q", QS)
@pytest.mark.parametrize("size", [(37, 45), (50, 39)])
def test_dense_heatmaps_equal_naive_per_patch(q, size):
    model = small(q, seed=60 + q, blocks=1)
    x = images((2, 3, *size), 61 + q)
    reference = naive_heatmaps(model, x)  # [2, 10, H, W]
    per_image = torch.tensor([3, 7])
    cases = [(5, None, reference[:, [5]]), ([1, 4, 9], None, reference[:, [1, 4, 9]]), (None, None, reference),
             (per_image, None, reference[:, [3, 7]]),  # a 1-D tensor of classes is shared, like a list
             (None, per_image, torch.stack([reference[0, [3]], reference[1, [7]]])),
             (None, torch.tensor([[1, 2], [9, 0]]), torch.stack([reference[0, [1, 2]], reference[1, [9, 0]]]))]
    for classes, targets, expected in cases:
        for chunk_size in (1, 2):
            got = dense_heatmaps(model, x, classes, targets=targets, chunk_size=chunk_size)
            assert_close_rel(got, expected, 1e-4, f"q={q} {size} classes={classes} chunk={chunk_size}")

    native = model.patch_logits(x).detach()
    assert torch.equal(patch_logits(model, x), native)
    assert_close_rel(patch_logits(model, x, targets=per_image), torch.stack([native[0, [3]], native[1, [7]]]), 1e-6)
    with pytest.raises(ValueError, match="eval mode"):
        dense_heatmaps(model.train(), x, 1)
    model.eval()
    c = (q - 1) // 2
    rows, cols = native.shape[-2:]
    assert rows >= 1 and cols >= 1
    sampled = reference[:, :, c: c + 8 * rows: 8, c: c + 8 * cols: 8]
    assert_close_rel(sampled, native, 1e-4, "dense at native centres")
    dense = dense_heatmaps(model, x, None, chunk_size=2)
    assert_close_rel(dense[:, :, c: c + 8 * rows: 8, c: c + 8 * cols: 8], native, 1e-4, "ours at centres")
