"""The paper's numbers, in one place (../shared/paper.md). Figures and the report read them here.

Keys are the paper's model roles ('bagnet33', 'vgg16', ...), see :data:`bagrepro.profiles.PAPER_ROLES`.
Accuracies are in percent.
"""

from types import MappingProxyType as _Frozen

#: Fig. 1B, top-5 accuracy as reported in the paper
FIG1B_TOP5 = _Frozen({"bagnet17": 80.5, "bagnet33": 87.6})

#: independent measurement of the released BagNet weights (resize 256, crop 224): (top-1, top-5)
RELEASED_BAGNET_ACCURACY = _Frozen({"bagnet9": (46.39, 70.39), "bagnet17": (58.80, 81.16), "bagnet33": (66.66, 86.99)})

#: torchvision's documented IMAGENET1K_V1 accuracies (top-1, top-5): the reference for the deep models
TORCHVISION_V1_ACCURACY = _Frozen({
    "vgg11": (69.02, 88.628), "vgg16": (71.592, 90.382), "resnet50": (76.13, 92.862),
    "resnet152": (78.312, 94.046), "densenet169": (75.6, 92.806),
})

#: Sec. 4.1: inference throughput at batch 64, 224 px, images/s on the authors' GPU
RUNTIME_IMAGES_PER_S = _Frozen({"bagnet9": 155.0, "bagnet17": 155.0, "bagnet33": 155.0, "resnet50": 570.0})
RUNTIME_REFERENCE = "resnet50"


def reference_accuracy(role: str) -> tuple[float, float] | None:
    """(top-1, top-5) to compare a model with, or None where the paper gives none."""
    return RELEASED_BAGNET_ACCURACY.get(role) or TORCHVISION_V1_ACCURACY.get(role)


def runtime_ratio(role: str) -> float | None:
    """The paper's throughput of ``role`` relative to ResNet-50 (BagNets: 155 / 570 = 0.27)."""
    if role not in RUNTIME_IMAGES_PER_S:
        return None
    return RUNTIME_IMAGES_PER_S[role] / RUNTIME_IMAGES_PER_S[RUNTIME_REFERENCE]
