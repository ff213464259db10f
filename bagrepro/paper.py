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

#: Table 1: mean probability of the leading class after masking 100 patches of 8x8 px, by tested model
#: (rows) and the heatmap that ordered the patches (columns)
TABLE1_METHODS = ("saliency", "integrated_gradients", "eps_lrp", "deeplift", "bagnet9", "bagnet17", "bagnet33")
TABLE1 = _Frozen({
    "vgg16": dict(zip(TABLE1_METHODS, (0.369, 0.250, 0.326, 0.162, 0.158, 0.151, 0.193))),
    "resnet50": dict(zip(TABLE1_METHODS, (0.528, 0.492, 0.545, 0.379, 0.281, 0.263, 0.291))),
    "resnet152": dict(zip(TABLE1_METHODS, (0.602, 0.580, 0.614, 0.479, 0.394, 0.371, 0.393))),
    "densenet169": dict(zip(TABLE1_METHODS, (0.589, 0.515, 0.571, 0.423, 0.339, 0.326, 0.359))),
})
TABLE1_STEPS = 100
TABLE1_PATCH = 8


def table1_value(role: str | None, method: str) -> float | None:
    """The paper's Table 1 entry for a tested model role and a heatmap method, or None."""
    return TABLE1.get(role, {}).get(method) if isinstance(role, str) else None

#: Fig. 1C: Pearson correlation between each BagNet's logits and VGG-16's
LOGIT_CORRELATION_WITH_VGG16 = _Frozen({"bagnet9": 0.70, "bagnet17": 0.79, "bagnet33": 0.88})

#: Fig. 5: VGG-16 top-5 accuracy on clean against texturised images (%)
TEXTURISED_VGG16_TOP5 = _Frozen({"clean": 90.1, "texture": 79.4})

#: the reproducibility report (15-scene data, 1200/300 train/val, 1200 test, 224 px): top-1 as a
#: fraction (validation, test, test with 4x4 tiles scrambled; None: not reported), by zoo name of
#: the architecture it trained (CBAM-ResNet-50 is not in our zoo)
REPRODUCIBILITY_15SCENE = _Frozen({
    "resnet50": (0.913, 0.907, 0.50), "densenet121": (0.933, 0.918, 0.57), "densenet169": (0.953, 0.922, 0.58),
    "cbam_resnet50": (0.953, 0.934, 0.73), "bagnet9": (0.853, 0.840, None), "bagnet17": (0.913, 0.905, None),
    "bagnet33": (0.947, 0.925, 0.90),
})

#: the reproducibility report: (test, test with 4x4 tiles scrambled) top-1, where it scrambled
SCRAMBLED_4X4_REPORT = _Frozen({name: (test, scrambled) for name, (_, test, scrambled)
                                in REPRODUCIBILITY_15SCENE.items() if scrambled is not None})

#: Fig. A.4: the best binarisation threshold stays within 3-4 % top-5 of the unmodified BagNet-33
THRESHOLDING_BINARISE_GAP_TOP5 = (3.0, 4.0)
