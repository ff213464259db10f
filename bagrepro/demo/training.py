"""Training the demo zoo on the demo world, with the project's one training loop and cache.

- Recipes: each :data:`~bagrepro.demo.zoo.DEMO_ZOO` entry carries its
  :class:`~bagrepro.core.recipe.TrainRecipe`; :func:`default_recipe`.
- :func:`train_model`: trains one demo model on ``world.train`` with :func:`bagrepro.methods.training.fit`
  (deterministic on the CPU for a given seed; BatchNorm statistics re-estimated after the last step).
  Inputs are normalised with :data:`~bagrepro.demo.spec.DEMO_PREPROCESS`.
- :func:`get_trained`: the trained model, from ``cache_dir()/demo-zoo/<name>-<hash>.pt`` when a
  retraining left it there, else from the weights shipped in the repository (:data:`SHIPPED_DIR`),
  else trained now and cached; ``force`` (``run_all.py --retrain``) trains it again whatever is shipped or cached
  (:func:`bagrepro.methods.training.train_cached`: checksummed, resumable per epoch). Weights are plain
  state_dicts with a ``.json`` record beside them (recipe, world, architecture, training time,
  validation accuracies, SHA-256, checked on every load). The hash (:func:`model_key`) covers the
  recipe, the world (config and generator version), the model's name and architecture, and the input
  normalisation, so weights trained for another recipe or world are never used.
  :func:`ship` copies the cached weights of the current keys into :data:`SHIPPED_DIR` (what
  ``bench/demo_zoo.py --ship`` does after a retraining). :func:`trained_weights` is the registry's
  weights loader for the demo zoo.
- :func:`group_accuracies`: accuracy overall and per class group.
"""

from __future__ import annotations

import math
import shutil
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from bagrepro.core.cache import cache_dir, config_hash
from bagrepro.core.errors import ConfigError
from bagrepro.core.recipe import TrainRecipe
from bagrepro.methods.training import (
    TrainingImages,
    evaluate,
    fit,
    load_cached,
    predict,
    read_record,
    recalibrate_batchnorm,
    train_cached,
)
from bagrepro.demo.spec import DEMO_PREPROCESS, WorldConfig
from bagrepro.demo.store import DEMO_WORLD, DemoWorld, demo_world
from bagrepro.demo.zoo import DEMO_ZOO, demo_model

#: bump when training code changes what it produces: it is part of the cache key
TRAINING_VERSION = 1

#: the demo zoo trained on :data:`~bagrepro.demo.store.DEMO_WORLD` by each entry's recipe, shipped
#: with the code (``<name>-<key>.pt`` + ``.json``, as in the cache) so that a first run trains
#: nothing; made by ``python bench/demo_zoo.py --retrain --ship``
SHIPPED_DIR = Path(__file__).resolve().parent / "trained"


def default_recipe(name: str) -> TrainRecipe:
    """The recipe used for ``name`` when none is given: its :data:`~bagrepro.demo.zoo.DEMO_ZOO` entry's."""
    return demo_model(name).recipe


def training_images(world: DemoWorld) -> TrainingImages:
    """The world's training split as the training loop's input (whole images, no crops)."""
    train = world.train
    return TrainingImages(torch.from_numpy(train.images), train.label_tensor(), crop=train.images.shape[1])


def train_model(name: str, world: DemoWorld, recipe: TrainRecipe | None = None, progress: bool = True,
                on_epoch=None, checkpoint: Path | None = None) -> nn.Module:
    """Train demo architecture ``name`` on ``world.train`` with ``recipe`` (default: its
    :func:`default_recipe`); returns the model in eval mode. Deterministic for a given seed on a
    given machine and thread count. ``on_epoch(epoch, model)``, if given, is called after every
    epoch (for learning curves; it must leave the model's weights and mode as it found them);
    ``checkpoint``: the per-epoch checkpoint to write (and resume from)."""
    entry = demo_model(name)
    recipe = recipe or entry.recipe
    return fit(lambda: entry.build(world.num_classes), training_images(world), recipe, DEMO_PREPROCESS.normalize,
               desc=f"train {name}", progress=progress, checkpoint=checkpoint, on_epoch=on_epoch,
               log=lambda line: tqdm.write(line, file=sys.stderr))


# ---- evaluation ----------------------------------------------------------------------------------

def group_accuracies(model: nn.Module, world: DemoWorld, split: str = "test",
                     groups=("all", "local", "arrangement", "texture", "lattice"),
                     predictions: torch.Tensor | None = None) -> dict[str, float]:
    """Accuracy on ``split`` over all images and within each class group (images whose true class
    belongs to the group; a prediction outside the group counts as an error). NaN for empty groups."""
    data = world.split(split)
    labels = data.label_tensor()
    if predictions is None:
        predictions = predict(model, data.normalized())
    correct = predictions == labels
    result = {}
    for group in groups:
        chosen = torch.isin(labels, torch.tensor(world.classes_in_group(group), dtype=labels.dtype))
        result[group] = float(correct[chosen].float().mean()) if chosen.any() else float("nan")
    return result


# ---- cache ---------------------------------------------------------------------------------------

#: recipe fields added after the demo zoo's cache keys were first written: at their defaults (whole
#: images, no crops) they change nothing a demo model learns, so they stay out of its key and the
#: caches users already have stay valid; any other value enters the key
_LATER_FIELDS = {"random_crop": False, "image_size": None}


def model_key(name: str, world: DemoWorld | WorldConfig, recipe: TrainRecipe) -> str:
    """Hash of everything that determines a trained demo model (the world's config is enough)."""
    config = world.config if isinstance(world, DemoWorld) else world
    recipe_fields = {key: value for key, value in asdict(recipe).items()
                     if not (key in _LATER_FIELDS and value == _LATER_FIELDS[key])}
    return config_hash(recipe_fields, config, config.fingerprint, name, demo_model(name).architecture,
                       {"num_classes": config.num_classes, "training_version": TRAINING_VERSION,
                        "input_mean": DEMO_PREPROCESS.mean, "input_std": DEMO_PREPROCESS.std})


def model_path(name: str, world: DemoWorld | WorldConfig, recipe: TrainRecipe | None = None) -> Path:
    """Cache file of the trained model: ``cache_dir()/demo-zoo/<name>-<hash>.pt``."""
    recipe = recipe or default_recipe(name)
    return cache_dir() / "demo-zoo" / f"{name}-{model_key(name, world, recipe)}.pt"


def shipped_path(name: str, world: DemoWorld | WorldConfig = DEMO_WORLD, recipe: TrainRecipe | None = None) -> Path:
    """Where the shipped weights of ``name`` for this world and recipe would lie (whether or not they do)."""
    return SHIPPED_DIR / model_path(name, world, recipe).name


def ship(names=None) -> list[Path]:
    """Copy the cached weights (and records) of ``names`` (default: the whole demo zoo) trained on
    :data:`DEMO_WORLD` by their default recipes into :data:`SHIPPED_DIR`, removing shipped files of
    those models with other keys; returns the files written. A model not in the cache is a ConfigError."""
    written = []
    for name in names or list(DEMO_ZOO):
        cached = model_path(name, DEMO_WORLD)
        if not cached.exists() or not cached.with_suffix(".json").exists():
            raise ConfigError(f"{name}: no trained weights in the cache ({cached}): train them first")
        SHIPPED_DIR.mkdir(parents=True, exist_ok=True)
        for stale in SHIPPED_DIR.glob(f"{name}-*"):
            if stale.stem != cached.stem:
                stale.unlink()
        for source in (cached, cached.with_suffix(".json")):
            shutil.copyfile(source, SHIPPED_DIR / source.name)
            written.append(SHIPPED_DIR / source.name)
    return written


def read_training_record(name: str, world: DemoWorld, recipe: TrainRecipe | None = None) -> dict | None:
    """The JSON record written beside a cached model (training seconds, accuracies, recipe), or None."""
    return read_record(model_path(name, world, recipe))


def get_trained(name: str, world: DemoWorld, recipe: TrainRecipe | None = None, force: bool = False,
                progress: bool = True, into: nn.Module | None = None) -> nn.Module:
    """Demo model ``name`` trained on ``world`` with ``recipe`` (default: :func:`default_recipe`),
    from the cache or trained now (and cached) when missing or ``force``; in eval mode. ``into``: a
    freshly built model of ``name`` to load the weights into (returned), instead of a new one."""
    entry = demo_model(name)
    recipe = recipe or entry.recipe
    shipped = shipped_path(name, world, recipe)
    if not force and not model_path(name, world, recipe).exists() and shipped.exists():
        model = load_cached(shipped, entry.build(world.num_classes) if into is None else into, what="shipped")
        if model is not None:
            return model

    def train(checkpoint: Path):
        start = time.perf_counter()
        if progress:
            tqdm.write(f"training {name} on the demo world ({recipe.epochs} epochs; cached for later runs)",
                       file=sys.stderr)
        model = train_model(name, world, recipe, progress=progress, checkpoint=checkpoint)
        seconds = time.perf_counter() - start
        record = {"name": name, "train_seconds": round(seconds, 2), "torch_threads": torch.get_num_threads(),
                  "recipe": asdict(recipe), "world": asdict(world.config),
                  "world_fingerprint": world.config.fingerprint, "architecture": entry.architecture,
                  "val_accuracy": group_accuracies(model, world, "val")}
        if progress:
            accuracies = ", ".join(f"{group} {value:.3f}" for group, value in record["val_accuracy"].items()
                                   if not math.isnan(value))  # NaN: an empty group
            tqdm.write(f"trained {name} in {seconds:.0f} s; validation top-1: {accuracies}", file=sys.stderr)
        return model, record

    model, _ = train_cached(model_path(name, world, recipe), train,
                            entry.build(world.num_classes) if into is None else into, force=force)
    return model


def trained_weights(model: nn.Module, spec, weights_dir, progress: bool, force: bool) -> str:
    """The demo zoo's weights loader (a :data:`bagrepro.models.registry.WeightsLoader`): puts the
    weights of ``spec.name`` trained on the demo profile's world (:func:`get_trained`: from the cache,
    or trained now) into ``model``; returns their provenance. ``weights_dir`` is not used."""
    world = demo_world()
    get_trained(spec.name, world, force=force, progress=progress, into=model)  # the file goes straight in
    path = model_path(spec.name, world)
    where = path if path.exists() else shipped_path(spec.name, world)
    return f"trained by bagrepro.demo.training on demo world {world.config.fingerprint}: {where}"


__all__ = ["SHIPPED_DIR", "TRAINING_VERSION", "TrainRecipe", "default_recipe", "evaluate", "get_trained",
           "group_accuracies", "model_key", "model_path", "predict", "read_training_record", "recalibrate_batchnorm",
           "ship", "shipped_path", "train_model", "trained_weights", "training_images"]
