"""The model zoo: a name -> (builder, weights, preprocessing, receptive field) registry.

Register a model with the decorator; the builder takes ``num_classes`` and returns an untrained
``nn.Module``::

    from bagrepro.models import register_model

    @register_model("my_net", receptive_field=None, paper_name="My net")
    def my_net(num_classes=1000):
        return MyNet(num_classes)

A user's own file of such registrations is loaded with :func:`register_models_from_file` (or
``run_all.py --register-models path.py``), without editing the package. ``create_model`` returns the
model in eval mode with its :class:`ModelSpec` attached as ``model.zoo_spec``.
"""

from __future__ import annotations

import fnmatch
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from bagrepro.models.preprocess import IMAGENET, Preprocess
from bagrepro.core.errors import ConfigError
from bagrepro.models.weights import WeightsSpec, load_pretrained

#: A loader that puts trained weights into a freshly built model and returns where they came from:
#: ``loader(model, spec, weights_dir, progress, force) -> provenance``; ``force`` re-makes them.
WeightsLoader = Callable[[nn.Module, "ModelSpec", "str | Path | None", bool, bool], str]


@dataclass(frozen=True)
class ModelSpec:
    """Everything that travels with a zoo entry.

    receptive_field: q in pixels for bag-of-local-features models (output (i, j) sees input rows
    [8i, 8i+q)), None for deep models. weights: a released file (URL + SHA-256 prefix in its
    name), or None. weights_loader: how ``pretrained=True`` gets weights when they are not a
    released file (e.g. trained by a recipe); it returns a provenance string.
    state_dict_transform: renames keys of an old checkpoint format (torchvision's DenseNet).
    """

    name: str
    builder: Callable[..., nn.Module]
    num_classes: int = 1000
    weights: WeightsSpec | None = None
    weights_loader: WeightsLoader | None = None
    preprocess: Preprocess = IMAGENET
    receptive_field: int | None = None
    paper_name: str | None = None
    state_dict_transform: Callable[[dict], dict] | None = field(default=None, repr=False)

    @property
    def is_bagnet(self) -> bool:
        return self.receptive_field is not None

    def __deepcopy__(self, memo):
        """The entry itself: it is immutable, and a deep-copied model (an inference copy) shares its
        zoo entry rather than copying what the builder or weights loader hold (a trainer's images)."""
        return self

    @property
    def display_name(self) -> str:
        return self.paper_name or self.name


_REGISTRY: dict[str, ModelSpec] = {}


def register_model(name: str | None = None, **spec_fields):
    """Decorator: register ``builder(num_classes=...) -> nn.Module`` under ``name`` (default: the
    function's name). ``spec_fields`` are :class:`ModelSpec` fields. Refuses duplicate names."""

    def decorate(builder):
        model_name = name or builder.__name__
        if model_name in _REGISTRY:
            raise ConfigError(f"model name '{model_name}' is already registered; pick another name")
        _REGISTRY[model_name] = ModelSpec(name=model_name, builder=builder, **spec_fields)
        return builder

    return decorate


def unregister_model(name: str) -> None:
    """Remove an entry (for tests and for re-registering a user's file)."""
    _REGISTRY.pop(name, None)


def list_models(pattern: str = "*") -> list[str]:
    """Registered names matching a glob (``'bagnet*'``), sorted."""
    return sorted(n for n in _REGISTRY if fnmatch.fnmatchcase(n, pattern))


def get_spec(name: str) -> ModelSpec:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ConfigError(f"unknown model '{name}'; registered models: {', '.join(list_models())}") from None


def resolve_model_names(patterns: list[str]) -> list[str]:
    """Names or globs -> registered names, in the order given, without duplicates."""
    names: list[str] = []
    for pattern in patterns:
        matches = list_models(pattern) if any(c in pattern for c in "*?[") else [get_spec(pattern).name]
        if not matches:
            raise ConfigError(f"no registered model matches '{pattern}'; registered models: {', '.join(list_models())}")
        names += [m for m in matches if m not in names]
    return names


def _load_released(model: nn.Module, spec: ModelSpec, weights_dir, progress: bool) -> str:
    path = load_pretrained(model, spec.weights, weights_dir, progress, transform=spec.state_dict_transform)
    return f"{path} (sha256 {spec.weights.expected_prefix}...)" if spec.weights.expected_prefix else str(path)


def create_model(name: str, pretrained: bool = False, weights_dir: str | Path | None = None,
                 progress: bool = True, force: bool = False, init_seed: int = 0) -> nn.Module:
    """Build a registered model in eval mode; with ``pretrained`` load its weights (``force``:
    re-make weights that a loader makes, such as the demo zoo's training).

    Random initial weights depend on ``name`` and ``init_seed`` only: the model is built under its
    own generator state, so neither the order in which a run builds its models nor the process that
    builds them (torchrun) changes them, and building never moves the global random stream.

    The returned module carries ``zoo_spec`` (its :class:`ModelSpec`) and ``weights_source`` (a
    provenance string: the weights file with its hash, or 'random init').
    """
    spec = get_spec(name)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(zlib.crc32(f"{name}/{init_seed}".encode()))
        model = spec.builder(num_classes=spec.num_classes)
    source = f"random init (seed {init_seed})"
    if pretrained:
        if spec.weights_loader is not None:
            source = spec.weights_loader(model, spec, weights_dir, progress, force)
        elif spec.weights is not None:
            source = _load_released(model, spec, weights_dir, progress)
        else:
            raise ConfigError(f"model '{name}' has no pretrained weights; use it without --pretrained")
    model.zoo_spec = spec
    model.weights_source = source
    return model.eval()


def register_models_from_file(path: str | Path) -> list[str]:
    """Import a user's Python file that calls :func:`register_model`; return the new names
    (ConfigError if it registers none; ``run_all.py --plugin`` accepts files that register
    attribution methods or experiments too: :func:`bagrepro.harness.plugins.load_plugin`)."""
    from bagrepro.core.userfiles import import_user_file

    before = set(_REGISTRY)
    import_user_file(path, "model file")
    added = sorted(set(_REGISTRY) - before)
    if not added:
        raise ConfigError(f"model file {Path(path).expanduser().resolve()} registered no model "
                          f"(use @bagrepro.models.register_model)")
    return added
