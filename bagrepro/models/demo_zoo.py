"""The demo zoo: small models trained on the demo world on a CPU (see :mod:`bagrepro.training`).

Six stand-ins for the paper's models, each built by a ``(num_classes: int) -> nn.Module`` function:

- ``demo_bagnet9`` / ``demo_bagnet17`` / ``demo_bagnet33``: :func:`~bagrepro.models.bagnet.reduced_bagnet`
  (narrow, one block per layer). The receptive field q, the total stride 8 and the valid
  convolutions are those of the released BagNets, so every BagNet property (patch logits, exact
  dense heatmaps, linearity over separated masks) holds for them as for the full models.
- ``demo_vgg16``: torchvision's :class:`~torchvision.models.VGG` on the 13-convolution "D" layout of
  ``vgg.make_layers`` (with BatchNorm, so it trains in a few epochs), channels divided by 4 to 8, and
  a small three-layer classifier on a 2x2 pooled grid (``avgpool`` -> ``torch.flatten`` ->
  ``classifier``, as in torchvision's ``VGG.forward``: no ``nn.Flatten`` module).
- ``demo_resnet50``: torchvision's :class:`~torchvision.models.ResNet` with
  :class:`~torchvision.models.resnet.Bottleneck` blocks (each block reuses one ``relu`` module, as in
  torchvision), planes divided by 4 and fewer blocks per stage.
- ``demo_densenet169``: torchvision's :class:`~torchvision.models.DenseNet` with DenseNet-169's block
  layout shortened and a small growth rate; its ``forward`` applies a functional ReLU before pooling.

Input: images normalised with :data:`bagrepro.data.demo_world.WORLD_MEAN` / ``WORLD_STD``
(:func:`bagrepro.data.demo_world.normalize`), [B, 3, S, S] with S the world's image size.
``DEMO_CONFIGS`` holds each architecture's settings; it enters the cache key of trained weights.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn
from torchvision.models import DenseNet, ResNet, VGG
from torchvision.models.resnet import Bottleneck as TorchvisionBottleneck
from torchvision.models.vgg import make_layers

from .bagnet import reduced_bagnet

#: the settings of every demo architecture (part of the cache key of its trained weights)
DEMO_CONFIGS: dict[str, dict] = {
    "demo_bagnet9": {"family": "bagnet", "q": 9, "width": 16, "blocks": 1},
    "demo_bagnet17": {"family": "bagnet", "q": 17, "width": 16, "blocks": 1},
    "demo_bagnet33": {"family": "bagnet", "q": 33, "width": 16, "blocks": 1},
    # VGG-16 "D" layout (13 conv + 3 linear), channels / 4 in the first three blocks and / 8 in the
    # last two, BatchNorm after every conv (at / 8 throughout it never learnt the lattice classes)
    "demo_vgg16": {"family": "vgg", "cfg": [16, 16, "M", 32, 32, "M", 64, 64, 64, "M", 64, 64, 64, "M",
                                            64, 64, 64, "M"],
                   "batch_norm": True, "pool": 2, "hidden": 128, "dropout": 0.3},
    # ResNet-50 stages (Bottleneck, expansion 4), planes 16/32/64/128 (64/128/256/512 / 4)
    "demo_resnet50": {"family": "resnet", "layers": [1, 2, 2, 1], "width": 16},
    # DenseNet-169 layout (6, 12, 32, 32) shortened to (2, 4, 8, 6), growth 8 instead of 32
    "demo_densenet169": {"family": "densenet", "growth_rate": 8, "block_config": [2, 4, 8, 6],
                         "num_init_features": 16, "bn_size": 4},
}


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


def _bagnet(name: str) -> Callable[[int], nn.Module]:
    cfg = DEMO_CONFIGS[name]

    def build(num_classes: int) -> nn.Module:
        return reduced_bagnet(cfg["q"], width=cfg["width"], blocks=cfg["blocks"], num_classes=num_classes)

    build.__name__ = name
    build.__doc__ = f"BagNet-{cfg['q']} of width {cfg['width']}, {cfg['blocks']} block(s) per layer."
    return build


demo_bagnet9 = _bagnet("demo_bagnet9")
demo_bagnet17 = _bagnet("demo_bagnet17")
demo_bagnet33 = _bagnet("demo_bagnet33")


def demo_vgg16(num_classes: int) -> VGG:
    """torchvision VGG with the VGG-16 layout at 1/8 width and a small classifier (see module doc)."""
    cfg = DEMO_CONFIGS["demo_vgg16"]
    features = make_layers(list(cfg["cfg"]), batch_norm=cfg["batch_norm"])
    # VGG's own head (25088 -> 4096 -> 4096) is built on the meta device and replaced at once: it
    # would cost 470 MB and a second of initialisation for nothing.
    with torch.device("meta"):
        model = VGG(nn.Identity(), num_classes=num_classes, init_weights=False)
    model.features = features
    channels = [c for c in cfg["cfg"] if c != "M"][-1]
    pool, hidden = cfg["pool"], cfg["hidden"]
    model.avgpool = nn.AdaptiveAvgPool2d((pool, pool))
    model.classifier = nn.Sequential(
        nn.Linear(channels * pool * pool, hidden), nn.ReLU(True), nn.Dropout(p=cfg["dropout"]),
        nn.Linear(hidden, hidden), nn.ReLU(True), nn.Dropout(p=cfg["dropout"]),
        nn.Linear(hidden, num_classes),
    )
    # torchvision's N(0, 0.01) suits 4096-wide layers; for 128-wide ones it all but stops the
    # gradient, so the linear layers keep PyTorch's default initialisation
    _init_conv_bn_linear(model.modules(), linear_std=None)
    return model


def demo_resnet50(num_classes: int) -> ResNet:
    """torchvision ResNet with Bottleneck blocks at 1/4 width and fewer blocks (see module doc)."""
    cfg = DEMO_CONFIGS["demo_resnet50"]
    width = cfg["width"]
    with torch.device("meta"):
        model = ResNet(TorchvisionBottleneck, [1, 1, 1, 1], num_classes=num_classes)
    # Rebuild every stage at the reduced width with torchvision's own layer factory.
    model.inplanes = width
    model.conv1 = nn.Conv2d(3, width, kernel_size=7, stride=2, padding=3, bias=False)
    model.bn1 = nn.BatchNorm2d(width)
    for index, blocks in enumerate(cfg["layers"]):
        stride = 1 if index == 0 else 2
        setattr(model, f"layer{index + 1}",
                model._make_layer(TorchvisionBottleneck, width * 2 ** index, blocks, stride=stride))
    model.fc = nn.Linear(model.inplanes, num_classes)
    _init_conv_bn_linear(model.modules(), linear_std=None)
    return model


def demo_densenet169(num_classes: int) -> DenseNet:
    """torchvision DenseNet with a shortened DenseNet-169 layout and growth rate 8 (see module doc)."""
    cfg = DEMO_CONFIGS["demo_densenet169"]
    return DenseNet(growth_rate=cfg["growth_rate"], block_config=tuple(cfg["block_config"]),
                    num_init_features=cfg["num_init_features"], bn_size=cfg["bn_size"],
                    num_classes=num_classes)


#: name -> builder ``(num_classes) -> nn.Module``
DEMO_ARCHITECTURES: dict[str, Callable[[int], nn.Module]] = {
    "demo_bagnet9": demo_bagnet9,
    "demo_bagnet17": demo_bagnet17,
    "demo_bagnet33": demo_bagnet33,
    "demo_vgg16": demo_vgg16,
    "demo_resnet50": demo_resnet50,
    "demo_densenet169": demo_densenet169,
}

#: the paper's model each demo model stands in for
PAPER_COUNTERPARTS = {
    "demo_bagnet9": "bagnet9", "demo_bagnet17": "bagnet17", "demo_bagnet33": "bagnet33",
    "demo_vgg16": "vgg16", "demo_resnet50": "resnet50", "demo_densenet169": "densenet169",
}
