"""The demo zoo's architectures: one builder per family, ``builder(settings, num_classes) -> nn.Module``.

Each builder takes the settings of a :data:`bagrepro.demo.zoo.DEMO_ZOO` entry (a dict; with the
family, its builder's name, it enters the cache key of the trained weights) and the number of classes:

- :func:`bagnet`: :func:`~bagrepro.models.bagnet.reduced_bagnet` (narrow, ``blocks`` per layer). The
  receptive field q, the total stride 8 and the valid convolutions are those of the released
  BagNets, so every BagNet property (patch logits, exact dense heatmaps, linearity over separated
  masks) holds for them as for the full models.
- :func:`vgg`: torchvision's :class:`~torchvision.models.VGG` on a layout of ``vgg.make_layers``
  (with BatchNorm, so it trains in a few epochs) and a small three-layer classifier on a pooled grid
  (``avgpool`` -> ``torch.flatten`` -> ``classifier``, as in torchvision's ``VGG.forward``: no
  ``nn.Flatten`` module).
- :func:`resnet`: torchvision's :class:`~torchvision.models.ResNet` with
  :class:`~torchvision.models.resnet.Bottleneck` blocks (each block reuses one ``relu`` module, as in
  torchvision) at a reduced width.
- :func:`densenet`: torchvision's :class:`~torchvision.models.DenseNet`; its ``forward`` applies a
  functional ReLU before pooling.

Input: demo-world images normalised with :data:`bagrepro.demo.spec.DEMO_PREPROCESS`, [B, 3, S, S].
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models import DenseNet, ResNet, VGG
from torchvision.models.resnet import Bottleneck as TorchvisionBottleneck
from torchvision.models.vgg import make_layers

from bagrepro.models.bagnet import BagNet, reduced_bagnet


def _init_conv_bn_linear(modules, linear_std: float | None) -> None:
    """torchvision's initialisation: Kaiming-normal (fan_out) convs, unit BatchNorm, and linear layers
    either N(0, linear_std) with zero bias (VGG) or left at PyTorch's default (``linear_std=None``)."""
    for module in modules:
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Linear) and linear_std is not None:
            nn.init.normal_(module.weight, 0.0, linear_std)
            nn.init.zeros_(module.bias)


def bagnet(settings: dict, num_classes: int) -> BagNet:
    """BagNet-q (settings: q, width, blocks per layer)."""
    return reduced_bagnet(settings["q"], width=settings["width"], blocks=settings["blocks"], num_classes=num_classes)


def vgg(settings: dict, num_classes: int) -> VGG:
    """torchvision VGG (settings: cfg, the ``make_layers`` layout; batch_norm; pool, the side of the
    pooled grid; hidden, the classifier's width; dropout)."""
    features = make_layers(list(settings["cfg"]), batch_norm=settings["batch_norm"])
    # VGG's own head (25088 -> 4096 -> 4096) is built on the meta device and replaced at once: it
    # would cost 470 MB and a second of initialisation for nothing.
    with torch.device("meta"):
        model = VGG(nn.Identity(), num_classes=num_classes, init_weights=False)
    model.features = features
    channels = [c for c in settings["cfg"] if c != "M"][-1]
    pool, hidden = settings["pool"], settings["hidden"]
    model.avgpool = nn.AdaptiveAvgPool2d((pool, pool))
    model.classifier = nn.Sequential(
        nn.Linear(channels * pool * pool, hidden), nn.ReLU(True), nn.Dropout(p=settings["dropout"]),
        nn.Linear(hidden, hidden), nn.ReLU(True), nn.Dropout(p=settings["dropout"]),
        nn.Linear(hidden, num_classes),
    )
    # torchvision's N(0, 0.01) suits 4096-wide layers; for 128-wide ones it all but stops the
    # gradient, so the linear layers keep PyTorch's default initialisation
    _init_conv_bn_linear(model.modules(), linear_std=None)
    return model


def resnet(settings: dict, num_classes: int) -> ResNet:
    """torchvision ResNet with Bottleneck blocks (settings: layers, blocks per stage; width, the first
    stage's planes, doubled at every later stage)."""
    width = settings["width"]
    with torch.device("meta"):
        model = ResNet(TorchvisionBottleneck, [1, 1, 1, 1], num_classes=num_classes)
    # Rebuild every stage at the reduced width with torchvision's own layer factory.
    model.inplanes = width
    model.conv1 = nn.Conv2d(3, width, kernel_size=7, stride=2, padding=3, bias=False)
    model.bn1 = nn.BatchNorm2d(width)
    for index, blocks in enumerate(settings["layers"]):
        stride = 1 if index == 0 else 2
        setattr(model, f"layer{index + 1}",
                model._make_layer(TorchvisionBottleneck, width * 2 ** index, blocks, stride=stride))
    model.fc = nn.Linear(model.inplanes, num_classes)
    _init_conv_bn_linear(model.modules(), linear_std=None)
    return model


def densenet(settings: dict, num_classes: int) -> DenseNet:
    """torchvision DenseNet (settings: growth_rate, block_config, num_init_features, bn_size)."""
    return DenseNet(growth_rate=settings["growth_rate"], block_config=tuple(settings["block_config"]),
                    num_init_features=settings["num_init_features"], bn_size=settings["bn_size"],
                    num_classes=num_classes)
