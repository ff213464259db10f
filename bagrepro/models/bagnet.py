"""BagNet-9/17/33, state_dict-compatible with the released checkpoints (paper.md section 1).

A BagNet is a ResNet-50 variant whose convolutions are all "valid" (padding 0, no bias), with no
max-pool, strides [2, 2, 2, 1] and 3x3 kernels only in block 0 of some layers. Every output location
therefore sees one q x q patch of the input: output (i, j) sees input rows [8i, 8i+q) and columns
[8j, 8j+q). The classifier is linear on the spatially averaged features, so the pooled logits are the
spatial mean of per-patch logits (pooling and the linear head commute).

Layouts:
- ``forward(x)``: x [B, 3, H, W] (normalised) -> pooled logits [B, num_classes].
- ``patch_logits(x)``: -> per-patch logits [B, num_classes, H', W'] (channels first, unlike the
  released code's channels-last [B, H', W', C]); H' = (H - q) // 8 + 1, W' likewise.
- ``features(x)``: -> final features [B, width * 32, H', W'] before the classifier.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.fx._symbolic_trace import is_fx_symbolic_tracing  # not yet public under torch.fx

from bagrepro.core.errors import ConfigError, DataError

#: total stride of every BagNet, in input pixels per output location
BAGNET_STRIDE = 8


@dataclass(frozen=True)
class BagNetConfig:
    """Architecture of one BagNet.

    layers: blocks per layer; kernel3: 1 where block 0 of that layer has a 3x3 conv2;
    width: planes of layer1 (64 in the released models; layer L has width * 2**(L-1) planes and
    4x as many output channels); stem_width: channels of conv1/conv2 (64 released).
    """

    layers: tuple[int, int, int, int] = (3, 4, 6, 3)
    kernel3: tuple[int, int, int, int] = (1, 1, 1, 1)
    strides: tuple[int, int, int, int] = (2, 2, 2, 1)
    width: int = 64
    stem_width: int = 64
    num_classes: int = 1000

    @property
    def receptive_field(self) -> int:
        """q: side of the square input patch one output location sees, in pixels."""
        field, jump = 3, 1  # stem: 1x1 then 3x3 at stride 1
        for k3, stride in zip(self.kernel3, self.strides):
            field += (3 - 1) * jump if k3 else 0
            jump *= stride
        return field


KERNEL3_BY_Q = {9: (1, 1, 0, 0), 17: (1, 1, 1, 0), 33: (1, 1, 1, 1)}


def bagnet_config(q: int, **overrides) -> BagNetConfig:
    """The released configuration of BagNet-q (q in 9, 17, 33), with optional field overrides."""
    if q not in KERNEL3_BY_Q:
        raise ConfigError(f"BagNet-{q} does not exist; choose q from {sorted(KERNEL3_BY_Q)}")
    return BagNetConfig(**{"kernel3": KERNEL3_BY_Q[q], **overrides})


class Bottleneck(nn.Module):
    """Bottleneck block with valid convolutions; the residual is cropped at the bottom/right.

    The released code crops both spatial axes by the width difference; here each axis is cropped by
    its own difference, which is what a non-square input needs (for the released geometries both
    differences are equal, so the numbers agree).
    """

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, kernel_size: int = 1,
                 downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=kernel_size, stride=stride, padding=0, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        height, width = out.shape[-2:]
        out = out + residual[:, :, :height, :width]
        return self.relu(out)


class BagNet(nn.Module):
    """A bag-of-local-features network (see module docstring for shapes)."""

    def __init__(self, config: BagNetConfig = BagNetConfig()):
        super().__init__()
        self.config = config
        stem = config.stem_width
        self.conv1 = nn.Conv2d(3, stem, kernel_size=1, stride=1, padding=0, bias=False)
        self.conv2 = nn.Conv2d(stem, stem, kernel_size=3, stride=1, padding=0, bias=False)
        self.bn1 = nn.BatchNorm2d(stem, momentum=0.001)
        self.relu = nn.ReLU(inplace=True)
        inplanes = stem
        for index, (blocks, k3, stride) in enumerate(zip(config.layers, config.kernel3, config.strides)):
            planes = config.width * 2 ** index
            layer, inplanes = self._make_layer(inplanes, planes, blocks, stride, 3 if k3 else 1)
            setattr(self, f"layer{index + 1}", layer)
        self.fc = nn.Linear(inplanes, config.num_classes)

    @staticmethod
    def _make_layer(inplanes: int, planes: int, blocks: int, stride: int, kernel_size: int):
        out_planes = planes * Bottleneck.expansion
        downsample = None
        if stride != 1 or inplanes != out_planes:
            downsample = nn.Sequential(
                nn.Conv2d(inplanes, out_planes, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(out_planes),
            )
        modules = [Bottleneck(inplanes, planes, stride, kernel_size, downsample)]
        modules += [Bottleneck(out_planes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*modules), out_planes

    @property
    def receptive_field(self) -> int:
        return self.config.receptive_field

    @property
    def layers(self) -> list[nn.Sequential]:
        return [self.layer1, self.layer2, self.layer3, self.layer4]

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.bn1(self.conv2(self.conv1(x))))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, 3, H, W] -> features [B, C, H', W'] (H, W >= q)."""
        q = self.receptive_field
        # not while torch.fx traces the model (incremental inference): a traced graph has no control flow
        if not is_fx_symbolic_tracing() and (x.shape[-1] < q or x.shape[-2] < q):
            raise DataError(f"BagNet-{q} needs images of at least {q}x{q} px, got {tuple(x.shape[-2:])}")
        x = self.stem(x)
        for layer in self.layers:
            x = layer(x)
        return x

    def patch_logits(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, 3, H, W] -> per-patch logits [B, num_classes, H', W'] (channels first)."""
        return head_logits(self.features(x), self.fc)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, 3, H, W] -> pooled logits [B, num_classes]."""
        return self.fc(self.features(x).mean(dim=(2, 3)))


def head_logits(features: torch.Tensor, fc: nn.Linear, classes: torch.Tensor | None = None) -> torch.Tensor:
    """Apply the linear head at every location: [B, C, H, W] -> [B, K, H, W].

    classes: optional 1-D class indices [K] (the same for every image) or [B, K] (per image); only
    those rows of the classifier are evaluated, so a one-class heatmap costs one dot product per
    location instead of num_classes.
    """
    weight, bias = fc.weight, fc.bias
    if classes is None:
        return torch.einsum("bchw,kc->bkhw", features, weight) + bias[None, :, None, None]
    if classes.dim() == 1:
        return torch.einsum("bchw,kc->bkhw", features, weight[classes]) + bias[classes][None, :, None, None]
    return torch.einsum("bchw,bkc->bkhw", features, weight[classes]) + bias[classes][:, :, None, None]


def bagnet(q: int, **overrides) -> BagNet:
    """BagNet-q with the released architecture (or with overridden width/depth/classes)."""
    return BagNet(bagnet_config(q, **overrides))


def reduced_bagnet(q: int, width: int = 8, blocks: int = 1, num_classes: int = 10) -> BagNet:
    """A narrow, shallow BagNet-q with the released receptive-field geometry (q, stride 8).

    For the smoke profile and tests: every layer keeps its block-0 kernel and stride, so q and the
    output grid are those of the full model.
    """
    return bagnet(q, layers=(blocks,) * 4, width=width, stem_width=width, num_classes=num_classes)


def randomise_batchnorm(model: nn.Module, seed: int, calibration_size: int = 96) -> nn.Module:
    """Give a randomly initialised model realistic BatchNorm statistics, in place; returns it in eval mode.

    Freshly built BatchNorms are the identity, which makes a random network nearly linear and its
    outputs nearly independent of the input. Here the statistics come from one batch of noise
    images (``calibration_size`` px), then variances, scales and shifts are perturbed at random, so
    benchmarks and checks on random weights see a network that behaves like a trained one.
    """
    generator = torch.Generator().manual_seed(seed)
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # a cumulative average: one batch sets the statistics
    model.train()
    with torch.no_grad():
        model(torch.randn(2, 3, calibration_size, calibration_size, generator=generator))
        for norm in norms:
            norm.momentum = 0.1
            norm.running_var.mul_(0.8 + 0.4 * torch.rand(norm.num_features, generator=generator))
            norm.weight.uniform_(0.75, 1.25, generator=generator)
            norm.bias.normal_(0.0, 0.2, generator=generator)
    return model.eval()
