"""Profiles as data: which models, which images, how many, and each experiment's knobs.

Experiments refer to the paper's models by role ('bagnet33', 'vgg16', 'resnet50', ...); a profile
maps each role to the zoo entry standing in for it. An experiment never branches on the profile
name: it reads ``ctx.setting(experiment, key)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType

from .data.demo import DEMO_WORLD
from .errors import ConfigError

#: the paper's models, by role; the paper profile uses the zoo entries of the same names
#: (in order of preference when one stand-in covers several roles)
PAPER_ROLES = ("bagnet9", "bagnet17", "bagnet33", "vgg16", "resnet50", "densenet169", "vgg11", "resnet152")


@dataclass(frozen=True)
class Profile:
    """data: 'smoke' (generated tensors), 'demo' (the demo world), 'imagenet' (--data: an ImageNet
    validation layout) or 'folder' (--data: any ImageFolder).

    models: default model list (zoo names); stand_ins: paper role -> zoo name; pretrained: load
    weights; num_images: images per run (None = all); image_size, num_classes: of the generated
    images (smoke/demo; ImageNet's geometry comes from the models' preprocessing); settings: per-experiment
    knobs, ``{experiment: {key: value}}``. accuracy_metric: what the paper's top-5 analyses (Fig. 7,
    Fig. A.4) use here: 'top5' as in the paper, or 'top1' where there are too few classes for top-5
    to tell models apart.
    """

    name: str
    description: str
    data: str
    models: tuple[str, ...]
    stand_ins: MappingProxyType
    pretrained: bool
    num_images: int | None
    batch_size: int
    image_size: int | None = None
    num_classes: int | None = None
    settings: MappingProxyType = field(default_factory=lambda: MappingProxyType({}))
    accuracy_metric: str = "top5"

    def role(self, role: str) -> str:
        """Zoo name standing in for a paper role in this profile."""
        try:
            return self.stand_ins[role]
        except KeyError:
            raise ConfigError(f"profile '{self.name}' has no model for the role '{role}'") from None

    def role_of(self, model_name: str) -> str | None:
        """The paper role a zoo model stands in for (the first in PAPER_ROLES order), or None."""
        return next((role for role in PAPER_ROLES if self.stand_ins.get(role) == model_name), None)

    def setting(self, experiment: str, key: str, default=None):
        return self.settings.get(experiment, {}).get(key, default)


def _frozen(mapping: dict) -> MappingProxyType:
    return MappingProxyType({k: MappingProxyType(v) if isinstance(v, dict) else v for k, v in mapping.items()})


_SMOKE_ROLES = {
    "bagnet9": "smoke_bagnet9", "bagnet17": "smoke_bagnet17", "bagnet33": "smoke_bagnet33",
    "vgg11": "smoke_vgg16", "vgg16": "smoke_vgg16", "resnet50": "smoke_resnet50",
    "resnet152": "smoke_resnet50", "densenet169": "smoke_densenet169",
}

_DEMO_ROLES = {role: "demo_" + {"vgg11": "vgg16", "resnet152": "resnet50"}.get(role, role) for role in PAPER_ROLES}

PROFILES: dict[str, Profile] = {
    "smoke": Profile(
        name="smoke",
        description="random-initialised narrow models on generated 64 px images (CI, seconds)",
        data="smoke",
        models=("smoke_bagnet9", "smoke_bagnet17", "smoke_bagnet33", "smoke_vgg16", "smoke_resnet50",
                "smoke_densenet169"),
        stand_ins=MappingProxyType(_SMOKE_ROLES),
        pretrained=False,
        num_images=24,
        batch_size=8,
        image_size=64,
        num_classes=10,
        settings=_frozen({
            "runtime": {"batch_size": 8, "repeats": 2, "warmup": 1},
            "interactions": {"patch_sizes": (6, 8, 10, 12, 16, 20), "num_images": 6},
            "masking": {"num_images": 3, "steps": 12, "random_seeds": 2, "ig_steps": 8},
            "scrambling": {"grids": (2, 4, 8), "texture_steps": 5, "texture_images": 8,
                           "texture_note": "5 Adam steps on a random-weight VGG stand-in: not a faithful texture"},
            "heatmaps": {"num_images": 3, "ig_steps": 8},
            "top_patches": {"num_classes": 2, "k": 7},
            "misclassified": {"num_images": 3},
        }),
    ),
    "demo": Profile(
        name="demo",
        description="the embedded default: a generated world and a demo zoo trained on it (offline, CPU, minutes)",
        data="demo",
        models=tuple(_DEMO_ROLES[role] for role in ("bagnet9", "bagnet17", "bagnet33", "vgg16", "resnet50",
                                                      "densenet169")),
        stand_ins=MappingProxyType(_DEMO_ROLES),
        pretrained=True,
        num_images=None,
        batch_size=100,
        image_size=DEMO_WORLD.image_size,
        num_classes=DEMO_WORLD.num_classes,
        accuracy_metric="top1",  # 12 classes: top-5 is 100 % for every model
        settings=_frozen({
            "runtime": {"batch_size": 64, "repeats": 3, "warmup": 1},
            "interactions": {"patch_sizes": (6, 8, 10, 12, 18, 24), "num_images": 60},
            # 10 of 81 patches: the paper's share (100 of 784)
            "masking": {"num_images": 24, "steps": 10, "random_seeds": 2, "ig_steps": 100},
            "scrambling": {"grids": (2, 4, 8), "texture_steps": 100, "texture_images": 48,
                           "texture_note": "100 Adam steps on the demo VGG-16 stand-in (trained on the demo world, "
                                           "not ImageNet)"},
            "heatmaps": {"num_images": 6, "ig_steps": 100},
            "top_patches": {"num_classes": 3, "k": 7},
            "misclassified": {"num_images": 4},
        }),
    ),
    "paper": Profile(
        name="paper",
        description="released BagNets + torchvision IMAGENET1K_V1 models on the ImageNet validation set",
        data="imagenet",
        models=PAPER_ROLES,
        stand_ins=MappingProxyType({role: role for role in PAPER_ROLES}),
        pretrained=True,
        num_images=None,
        batch_size=64,
        settings=_frozen({"runtime": {"batch_size": 64, "repeats": 5, "warmup": 2}}),
    ),
    "custom": Profile(
        name="custom",
        description="your models (--models, --register-models) on your ImageFolder (--data); builders load their own weights",
        data="folder",
        models=(),
        stand_ins=MappingProxyType({}),
        pretrained=False,
        num_images=None,
        batch_size=32,
        settings=_frozen({"runtime": {"batch_size": 32, "repeats": 3, "warmup": 1}}),
    ),
}

DEFAULT_PROFILE = "demo"


def get_profile(name: str) -> Profile:
    try:
        return PROFILES[name]
    except KeyError:
        raise ConfigError(f"unknown profile '{name}'; profiles: {', '.join(sorted(PROFILES))}") from None
