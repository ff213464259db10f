"""Zoo entries: the paper's models (released BagNets, torchvision IMAGENET1K_V1) and smoke stand-ins.

(The demo zoo is a plugin: :mod:`bagrepro.demo.zoo`, registered when the demo profile is used.)

The paper predates torchvision's V2 weights, so every comparison model names its ``IMAGENET1K_V1``
weights explicitly (``DEFAULT`` now means V2 for ResNet-50, 80.86% instead of 76.13% top-1).
"""

from __future__ import annotations

import re

import torch
import torchvision
from torch import nn
from torchvision.models import densenet as tv_densenet
from torchvision.models import resnet as tv_resnet
from torchvision.models import vgg as tv_vgg

from bagrepro.models.bagnet import bagnet, reduced_bagnet
from bagrepro.models.preprocess import Preprocess
from bagrepro.models.registry import register_model
from bagrepro.models.weights import WeightsSpec

RELEASED_BAGNET_ROOT = (
    "https://bitbucket.org/wielandbrendel/bag-of-feature-pretrained-models/raw/"
    "249e8fa82c0913623a807d9d35eeab9da7dcc2a8/"
)
RELEASED_BAGNET_FILES = {9: "bagnet8-34f4ccd2.pth.tar", 17: "bagnet16-105524de.pth.tar", 33: "bagnet32-2ddd53ed.pth.tar"}

for _q, _file in RELEASED_BAGNET_FILES.items():
    register_model(
        f"bagnet{_q}",
        weights=WeightsSpec(RELEASED_BAGNET_ROOT + _file),
        receptive_field=_q,
        paper_name=f"BagNet-{_q}",
    )(lambda num_classes=1000, _q=_q: bagnet(_q, num_classes=num_classes))


# torchvision's DenseNet checkpoints predate module names without dots ("norm.1" -> "norm1")
_DENSENET_OLD_KEY = re.compile(r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$")


def densenet_state_dict_transform(state_dict: dict) -> dict:
    """Rename old-format DenseNet keys ('...denselayer1.norm.1.weight' -> '...denselayer1.norm1.weight')."""
    renamed = {}
    for key, value in state_dict.items():
        match = _DENSENET_OLD_KEY.match(key)
        renamed[match.group(1) + match.group(2) if match else key] = value
    return renamed


_TORCHVISION_MODELS = {
    # zoo name: (builder, V1 weights enum member, paper name)
    "vgg11": (torchvision.models.vgg11, torchvision.models.VGG11_Weights.IMAGENET1K_V1, "VGG-11"),
    "vgg16": (torchvision.models.vgg16, torchvision.models.VGG16_Weights.IMAGENET1K_V1, "VGG-16"),
    # not compared: Gatys et al.'s (2015) texturiser for Fig. 5 (experiments/scrambling.py)
    "vgg19": (torchvision.models.vgg19, torchvision.models.VGG19_Weights.IMAGENET1K_V1, "VGG-19"),
    "resnet50": (torchvision.models.resnet50, torchvision.models.ResNet50_Weights.IMAGENET1K_V1, "ResNet-50"),
    "resnet152": (torchvision.models.resnet152, torchvision.models.ResNet152_Weights.IMAGENET1K_V1, "ResNet-152"),
    # not one of the paper's models: the reproducibility report's (15-scene) table has it
    "densenet121": (torchvision.models.densenet121, torchvision.models.DenseNet121_Weights.IMAGENET1K_V1, "DenseNet-121"),
    "densenet169": (torchvision.models.densenet169, torchvision.models.DenseNet169_Weights.IMAGENET1K_V1, "DenseNet-169"),
}

for _name, (_build, _weights, _paper) in _TORCHVISION_MODELS.items():
    register_model(
        _name,
        weights=WeightsSpec(_weights.url),
        paper_name=_paper,
        state_dict_transform=densenet_state_dict_transform if _name.startswith("densenet") else None,
    )(lambda num_classes=1000, _build=_build: _build(weights=None, num_classes=num_classes))


# ---- smoke stand-ins: random weights, narrow, 10 classes, 64 px inputs -----------------------------
SMOKE_CLASSES = 10
SMOKE_PREPROCESS = Preprocess(resize=None, crop=None, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))

for _q in (9, 17, 33):
    register_model(
        f"smoke_bagnet{_q}", num_classes=SMOKE_CLASSES, preprocess=SMOKE_PREPROCESS,
        receptive_field=_q, paper_name=f"BagNet-{_q} (smoke)",
    )(lambda num_classes=SMOKE_CLASSES, _q=_q: reduced_bagnet(_q, width=8, blocks=1, num_classes=num_classes))


@register_model("smoke_vgg16", num_classes=SMOKE_CLASSES, preprocess=SMOKE_PREPROCESS, paper_name="VGG-16 (smoke)")
def smoke_vgg16(num_classes: int = SMOKE_CLASSES):
    """torchvision's VGG class with a narrow 8-conv feature stack and a small classifier.

    VGG's constructor hard-codes a 25088 -> 4096 classifier; it is built on the meta device (no
    memory, no init) and replaced, so only the small layers below are ever allocated.
    """
    with torch.device("meta"):
        model = tv_vgg.VGG(nn.Sequential(), num_classes=num_classes, init_weights=False)
    model.features = tv_vgg.make_layers([8, "M", 16, "M", 32, 32, "M", 32, 32, "M", 32, 32, "M"])
    model.classifier = nn.Sequential(
        nn.Linear(32 * 7 * 7, 64), nn.ReLU(True), nn.Dropout(),
        nn.Linear(64, 64), nn.ReLU(True), nn.Dropout(),
        nn.Linear(64, num_classes),
    )
    return model


@register_model("smoke_resnet50", num_classes=SMOKE_CLASSES, preprocess=SMOKE_PREPROCESS, paper_name="ResNet-50 (smoke)")
def smoke_resnet50(num_classes: int = SMOKE_CLASSES):
    """torchvision's ResNet with Bottleneck blocks (one ReLU module reused per block), 1 block per layer."""
    return tv_resnet.ResNet(tv_resnet.Bottleneck, [1, 1, 1, 1], num_classes=num_classes, width_per_group=16)


@register_model("smoke_densenet169", num_classes=SMOKE_CLASSES, preprocess=SMOKE_PREPROCESS, paper_name="DenseNet-169 (smoke)")
def smoke_densenet169(num_classes: int = SMOKE_CLASSES):
    """torchvision's DenseNet (functional ReLU at the end), tiny growth rate and blocks."""
    return tv_densenet.DenseNet(growth_rate=8, block_config=(2, 2, 2, 2), num_init_features=16, bn_size=2,
                                num_classes=num_classes)
