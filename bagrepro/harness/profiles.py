"""Profiles as data: which models, which images, how many, and each experiment's settings.

Experiments refer to the paper's models by role ('bagnet33', 'vgg16', ...); a profile maps each role
to the zoo entry standing in for it. An experiment never branches on the profile name: it reads its
typed settings (``ctx.settings``, the experiment's ``Settings`` dataclass with the profile's
overrides applied; an unknown experiment or key, or a wrong type, is a ConfigError).

This module is torch-free (``run_all.py --help`` lists the profiles without loading torch). A plugin
(the demo world and zoo, :mod:`bagrepro.demo`) registers its own profile with :func:`register_profile`;
its ``plugin`` names the module that registers the plugin's models and image source, imported by
:func:`activate` when the profile is used, so the core never imports a plugin.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Mapping

from bagrepro.core.errors import ConfigError, MissingRoleError

#: the paper's models, by role; the paper profile uses the zoo entries of the same names
#: (in order of preference when one stand-in covers several roles)
PAPER_ROLES = ("bagnet9", "bagnet17", "bagnet33", "vgg16", "resnet50", "densenet169", "vgg11", "resnet152")
#: the paper's BagNets, by role (smallest receptive field first)
BAGNET_ROLES = ("bagnet9", "bagnet17", "bagnet33")


@dataclass(frozen=True)
class Profile:
    """data: the kind of image source, 'smoke' (generated tensors), 'imagenet' (--data: an ImageNet
    validation layout), 'folder' (--data: any ImageFolder) or one a plugin registers ('demo').

    models: default model list (zoo names); stand_ins: paper role -> zoo name; pretrained: load
    weights; num_images: images per run (None = all); image_size, num_classes: of the smoke images;
    settings: per-experiment overrides of the experiments' ``Settings`` defaults (the paper's
    protocol), ``{experiment: {field: value}}``, validated when a run starts. accuracy_metric: what
    the paper's top-5 analyses (Fig. 7, Fig. A.4) use here: 'top5' as in the paper, or 'top1' where
    there are too few classes for top-5 to tell models apart. plugin: a module to import before the
    profile is used (it registers the plugin's models and image source), or None.
    check_data_first: decode every image once before the first experiment and stop with the list of
    unreadable files (all at once, before the expensive work), unless --skip-unreadable leaves them out.
    """

    name: str
    description: str
    data: str
    models: tuple[str, ...]
    stand_ins: Mapping[str, str]
    pretrained: bool
    num_images: int | None
    batch_size: int
    image_size: int | None = None
    num_classes: int | None = None
    settings: Mapping[str, Mapping[str, object]] = field(default_factory=lambda: MappingProxyType({}))
    accuracy_metric: str = "top5"
    plugin: str | None = None
    check_data_first: bool = False

    def role(self, role: str) -> str:
        """Zoo name standing in for a paper role in this profile."""
        try:
            return self.stand_ins[role]
        except KeyError:
            raise MissingRoleError(f"no model of this run stands in for the paper's '{role}' "
                                   f"(profile '{self.name}')") from None

    def has_role(self, role: str) -> bool:
        return role in self.stand_ins

    def role_of(self, model_name: str) -> str | None:
        """The paper role a zoo model stands in for (the first in PAPER_ROLES order), or None."""
        return next((role for role in PAPER_ROLES if self.stand_ins.get(role) == model_name), None)

    def overrides(self, experiment: str) -> Mapping[str, object]:
        """This profile's overrides of ``experiment``'s settings (may be empty)."""
        return self.settings.get(experiment, MappingProxyType({}))


def stand_ins(roles: Mapping[str, tuple[str, ...]]) -> dict[str, str]:
    """Paper role -> zoo name from each model's roles (``{name: (own role, other roles it covers)}``):
    a model's own role (its first) wins over another model that merely covers it."""
    return ({role: name for name, covered in roles.items() for role in covered[1:]}
            | {covered[0]: name for name, covered in roles.items() if covered})


def frozen(mapping: dict) -> MappingProxyType:
    """A read-only ``{experiment: {field: value}}`` for :attr:`Profile.settings`."""
    return MappingProxyType({k: MappingProxyType(v) if isinstance(v, dict) else v for k, v in mapping.items()})


_SMOKE_ROLES = {
    "bagnet9": "smoke_bagnet9", "bagnet17": "smoke_bagnet17", "bagnet33": "smoke_bagnet33",
    "vgg11": "smoke_vgg16", "vgg16": "smoke_vgg16", "vgg19": "smoke_vgg16", "resnet50": "smoke_resnet50",
    "resnet152": "smoke_resnet50", "densenet169": "smoke_densenet169",
}

PROFILES: dict[str, Profile] = {}


def register_profile(profile: Profile) -> Profile:
    """Add a profile (a plugin's); a second profile of the same name is a ConfigError."""
    if profile.name in PROFILES and PROFILES[profile.name] != profile:
        raise ConfigError(f"profile name '{profile.name}' is registered twice")
    PROFILES[profile.name] = profile
    return profile


register_profile(Profile(
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
    settings=frozen({
        "runtime": {"batch_size": 8, "repeats": 2, "warmup": 1},
        "interactions": {"patch_sizes": (6, 8, 10, 12, 16, 20), "num_images": 6},
        "masking": {"num_images": 3, "steps": 12, "random_seeds": 2, "ig_steps": 8},
        # Adam (not Gatys's L-BFGS): its passes are fixed in number, so --plan's count is exact here
        "scrambling": {"grids": (2, 4, 8), "texture_optimizer": "adam", "texture_iterations": 5, "texture_images": 8,
                       "texture_note": "5 Adam steps on a random-weight VGG stand-in: not a faithful texture"},
        "heatmaps": {"num_images": 3, "ig_steps": 8},
        "top_patches": {"num_classes": 2, "k": 7},
        "misclassified": {"num_images": 3},
        "attribution_truth": {"num_images": 4, "batch_size": 4, "ig_steps": 4, "smoothgrad_samples": 3,
                              "shap_samples": 3, "kernel_shap_samples": 16, "lime_samples": 16,
                              "occlusion_stride": 16},
    }),
))

register_profile(Profile(
    name="paper",
    description="released BagNets + torchvision IMAGENET1K_V1 models on the ImageNet validation set",
    data="imagenet",
    models=PAPER_ROLES,
    # VGG-19 is not compared: it synthesises Fig. 5's textures (Gatys et al. 2015), loaded only there
    stand_ins=MappingProxyType({role: role for role in (*PAPER_ROLES, "vgg19")}),
    pretrained=True,
    num_images=None,
    batch_size=64,
    settings=frozen({
        "runtime": {"batch_size": 64, "repeats": 5, "warmup": 2},
        # ours: Table 1's VGG-16 difference (BN-17 - DeepLIFT = -0.011) needs n = (1.96 SD / 0.011)^2
        # images to resolve: 1270 at a per-image SD of 0.2, 2858 at 0.3 (`--plan` prints it)
        "masking": {"num_images": 3000},
    }),
    check_data_first=True,
))

register_profile(Profile(
    name="custom",
    description="your models (--models, --plugin) on your images (--data: an ImageNet layout or any "
                "ImageFolder); builders load their own weights",
    data="folder",
    models=(),
    stand_ins=MappingProxyType({}),
    pretrained=False,
    num_images=None,
    batch_size=32,
    settings=frozen({"runtime": {"batch_size": 32, "repeats": 3, "warmup": 1}}),
))


def get_profile(name: str) -> Profile:
    try:
        return PROFILES[name]
    except KeyError:
        raise ConfigError(f"unknown profile '{name}'; profiles: {', '.join(sorted(PROFILES))}") from None


def activate(profile: Profile) -> Profile:
    """Import the profile's plugin module (it registers models and an image source); returns the profile."""
    if profile.plugin:
        importlib.import_module(profile.plugin)
    return profile
