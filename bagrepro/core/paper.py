"""The reference numbers, in one place, each with where it is stated (../shared/paper.md).

Every table here is a :class:`Sourced` mapping: its values and the ``source`` that states them, in
the form the report prints beside them ("paper, Fig. 1B", "torchvision docs (IMAGENET1K_V1)",
"repro report, 15-scene"). Only what that source says is here: a cell the paper does not give is
absent (the report leaves it empty), and a number we measured or chose never is (choices the paper
leaves open are labelled "ours" where they are made: the experiments' ``Settings``). Figures and the
report read them here; :func:`reference_values` lists every value with its source, and
``tests/test_report.py`` checks that every number the report shows as a reference is one of them.

Keys are the paper's model roles ('bagnet33', 'vgg16', ...), see :data:`bagrepro.harness.profiles.PAPER_ROLES`.
Accuracies are in percent unless said otherwise.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

PAPER = "paper"
TORCHVISION = "torchvision docs (IMAGENET1K_V1)"
REPRO_REPORT = "repro report, 15-scene"


class Sourced(Mapping):
    """A read-only mapping of reference values and the one ``source`` that states them all."""

    def __init__(self, source: str, values: Mapping):
        if not source:
            raise ValueError("a reference table needs a source")
        self.source = source
        self._values = MappingProxyType(dict(values))

    def __getitem__(self, key):
        return self._values[key]

    def __iter__(self):
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __repr__(self) -> str:
        return f"Sourced({self.source!r}, {dict(self._values)!r})"


#: Fig. 1B (and the text beside it): top-5 accuracy of the released BagNets. The paper gives top-5
#: only, for BagNet-17 and BagNet-33; nothing for BagNet-9 and no top-1
FIG1B_TOP5 = Sourced(f"{PAPER}, Fig. 1B", {"bagnet17": 80.5, "bagnet33": 87.6})

#: torchvision's documented IMAGENET1K_V1 accuracies (top-1, top-5): the reference for the deep models
TORCHVISION_V1_ACCURACY = Sourced(TORCHVISION, {
    "vgg11": (69.02, 88.628), "vgg16": (71.592, 90.382), "resnet50": (76.13, 92.862),
    "resnet152": (78.312, 94.046), "densenet169": (75.6, 92.806),
})

#: Sec. 4.1: inference throughput at batch 64, 224 px, images/s on the authors' GPU
RUNTIME_IMAGES_PER_S = Sourced(f"{PAPER}, Sec. 4.1", {"bagnet9": 155.0, "bagnet17": 155.0, "bagnet33": 155.0,
                                                      "resnet50": 570.0})
RUNTIME_REFERENCE = "resnet50"

#: Fig. 1C: Pearson correlation between each BagNet's logits and VGG-16's
LOGIT_CORRELATION_WITH_VGG16 = Sourced(f"{PAPER}, Fig. 1C", {"bagnet9": 0.70, "bagnet17": 0.79, "bagnet33": 0.88})

#: Table 1: mean probability of the leading class after masking 100 patches of 8x8 px, by tested model
#: (rows) and the heatmap that ordered the patches (columns)
TABLE1_METHODS = ("saliency", "integrated_gradients", "eps_lrp", "deeplift", "bagnet9", "bagnet17", "bagnet33")
TABLE1 = Sourced(f"{PAPER}, Table 1", {
    "vgg16": dict(zip(TABLE1_METHODS, (0.369, 0.250, 0.326, 0.162, 0.158, 0.151, 0.193))),
    "resnet50": dict(zip(TABLE1_METHODS, (0.528, 0.492, 0.545, 0.379, 0.281, 0.263, 0.291))),
    "resnet152": dict(zip(TABLE1_METHODS, (0.602, 0.580, 0.614, 0.479, 0.394, 0.371, 0.393))),
    "densenet169": dict(zip(TABLE1_METHODS, (0.589, 0.515, 0.571, 0.423, 0.339, 0.326, 0.359))),
})
#: Table 1's protocol: 100 masked patches of 8 x 8 px
TABLE1_PROTOCOL = Sourced(f"{PAPER}, Table 1", {"steps": 100, "patch": 8})
TABLE1_STEPS = TABLE1_PROTOCOL["steps"]
TABLE1_PATCH = TABLE1_PROTOCOL["patch"]

#: Fig. 5: VGG-16 top-5 accuracy on clean against texturised images (%)
TEXTURISED_VGG16_TOP5 = Sourced(f"{PAPER}, Fig. 5", {"clean": 90.1, "texture": 79.4})

#: the reproducibility report (15-scene data, 1200/300 train/val, 1200 test, 224 px): top-1 as a
#: fraction (validation, test, test with 4x4 tiles scrambled; None: not reported), by zoo name of
#: the architecture it trained (CBAM-ResNet-50 is not in our zoo). Tile scrambling is this report's
#: protocol, not the paper's (the paper's Fig. 5 texturises)
REPRODUCIBILITY_15SCENE = Sourced(REPRO_REPORT, {
    "resnet50": (0.913, 0.907, 0.50), "densenet121": (0.933, 0.918, 0.57), "densenet169": (0.953, 0.922, 0.58),
    "cbam_resnet50": (0.953, 0.934, 0.73), "bagnet9": (0.853, 0.840, None), "bagnet17": (0.913, 0.905, None),
    "bagnet33": (0.947, 0.925, 0.90),
})

#: the reproducibility report: (test, test with 4x4 tiles scrambled) top-1, where it scrambled
SCRAMBLED_4X4_REPORT = Sourced(REPRO_REPORT, {name: (test, scrambled) for name, (_, test, scrambled)
                                              in REPRODUCIBILITY_15SCENE.items() if scrambled is not None})

#: Appendix A.1 (Fig. A.4): the best binarisation threshold stays within 3-4 % top-5 of the unmodified BagNet-33
THRESHOLDING_BINARISE_GAP_TOP5 = Sourced(f"{PAPER}, Appendix A.1 (Fig. A.4)", {"low": 3.0, "high": 4.0})

#: eq. 1 (Fig. 6): exact for a bag-of-local-features model whose masks lie more than q px apart
EQ1_CLAIM = Sourced(f"{PAPER}, eq. 1 (Fig. 6)", {
    "text": "eq. 1 holds exactly for a BagNet-q when the masks are more than q px apart"})

#: the paper's two claims on interactions: qualitative, no number (the report's thresholds for them are
#: ours: bagrepro.harness.contrasts). The first is paraphrased from Fig. 6C, the second quotes Sec. 5
FIG6C_VGG16_CLAIM = Sourced(f"{PAPER}, Fig. 6C", {
    "text": "VGG-16 shows few interactions between image parts more than about 30 px apart"})
SEC5_DEPTH_CLAIM = Sourced(f"{PAPER}, Sec. 5 (Fig. 6C)", {
    "text": "Deeper networks ... exhibit stronger nonlinear interactions"})

#: Fig. 3: the classes whose most informative patches the paper shows, in its order (ImageNet synset -> name)
FIG3_CLASSES = Sourced(f"{PAPER}, Fig. 3", {"n07248320": "book jacket", "n04505470": "typewriter keyboard",
                                            "n01440764": "tench", "n02007558": "flamingo", "n10148035": "groom"})

#: every table of reference values, for :func:`reference_values` and the report's check
TABLES = (FIG1B_TOP5, TORCHVISION_V1_ACCURACY, RUNTIME_IMAGES_PER_S, LOGIT_CORRELATION_WITH_VGG16, TABLE1,
          TABLE1_PROTOCOL, TEXTURISED_VGG16_TOP5, REPRODUCIBILITY_15SCENE, THRESHOLDING_BINARISE_GAP_TOP5)


def _numbers(value) -> list[float]:
    if isinstance(value, Mapping):
        return [n for v in value.values() for n in _numbers(v)]
    if isinstance(value, (tuple, list)):
        return [n for v in value for n in _numbers(v)]
    return [] if value is None or isinstance(value, str) else [float(value)]


def reference_values() -> list[tuple[float, str]]:
    """Every number of every table here, with its source: [(value, source)]."""
    return [(number, table.source) for table in TABLES for number in _numbers(dict(table))]


def reference_accuracy(role: str) -> dict[str, tuple[float, str]]:
    """The accuracies to compare a model of ``role`` with: {'top1' / 'top5': (value %, source)},
    only the metrics its source gives (BagNets: the paper's top-5 for BagNet-17 and -33; deep
    networks: torchvision's documented V1 top-1 and top-5; otherwise none)."""
    if role in FIG1B_TOP5:
        return {"top5": (FIG1B_TOP5[role], FIG1B_TOP5.source)}
    if role in TORCHVISION_V1_ACCURACY:
        top1, top5 = TORCHVISION_V1_ACCURACY[role]
        return {"top1": (top1, TORCHVISION), "top5": (top5, TORCHVISION)}
    return {}


def runtime_ratio(role: str) -> float | None:
    """The paper's throughput of ``role`` relative to ResNet-50 (BagNets: 155 / 570 = 0.27), or None."""
    if role not in RUNTIME_IMAGES_PER_S:
        return None
    return RUNTIME_IMAGES_PER_S[role] / RUNTIME_IMAGES_PER_S[RUNTIME_REFERENCE]


#: the source printed beside a ratio of the paper's throughputs
RUNTIME_RATIO_SOURCE = f"{RUNTIME_IMAGES_PER_S.source} (155 / 570 images/s)"


def table1_value(role: str | None, method: str) -> float | None:
    """The paper's Table 1 entry for a tested model role and a heatmap method, or None."""
    return TABLE1.get(role, {}).get(method) if isinstance(role, str) else None


def table1_difference(role: str | None, method: str, other: str) -> float | None:
    """Table 1's ``method`` minus ``other`` for a tested model role, to the table's 3 decimals, or None."""
    a, b = table1_value(role, method), table1_value(role, other)
    return None if a is None or b is None else round(a - b, 3)


#: the source printed beside a difference of two Table 1 entries
TABLE1_DIFFERENCE_SOURCE = f"{TABLE1.source} (difference of two entries)"
