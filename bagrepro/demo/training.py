"""Training the demo zoo on the demo world, deterministically on the CPU, with a cache.

- Recipes: each :data:`~bagrepro.demo.zoo.DEMO_ZOO` entry carries its :class:`TrainRecipe` (epochs,
  batch size, optimiser settings, warm-up + cosine schedule, flips, seed); :func:`default_recipe`.
- :func:`train_model`: trains one demo model on ``world.train``; the same seed gives the same
  weights (seeded initialisation, a fixed data order and fixed flips drawn from a private
  generator, ``torch.use_deterministic_algorithms`` during training; the global RNG state of the
  caller is left as it was). After the last step BatchNorm statistics are re-estimated over the
  training images (the released BagNet stem has BatchNorm momentum 0.001, whose running averages
  would still be far from the data after a few hundred steps). Inputs are normalised with
  :data:`~bagrepro.demo.spec.DEMO_PREPROCESS`.
- :func:`get_trained`: the trained model from ``cache_dir()/demo-zoo/<name>-<hash>.pt`` (a plain
  state_dict; a ``.json`` beside it records training time and accuracies), training it first when
  missing or when ``force``. The hash (:func:`model_key`) covers the recipe, the world (config and
  generator version), the model's name and architecture, and the input normalisation.
  :func:`trained_weights` is the registry's weights loader for the demo zoo.
- :func:`evaluate`, :func:`predict`, :func:`group_accuracies`: accuracy overall and per class group.
"""

from __future__ import annotations

import contextlib
import json
import math
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ..atomic import atomic_path
from ..cache import cache_dir, config_hash, file_sha256
from ..errors import ConfigError, one_line
from .spec import DEMO_PREPROCESS
from .store import DemoWorld, demo_world, to_tensor
from .zoo import TrainRecipe, demo_model

#: bump when training code changes what it produces: it is part of the cache key
TRAINING_VERSION = 1


def default_recipe(name: str) -> TrainRecipe:
    """The recipe used for ``name`` when none is given: its :data:`~bagrepro.demo.zoo.DEMO_ZOO` entry's."""
    return demo_model(name).recipe


@contextlib.contextmanager
def _deterministic():
    """torch.use_deterministic_algorithms(True) for the duration, then the previous setting."""
    previous = torch.are_deterministic_algorithms_enabled()
    previous_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous, warn_only=previous_warn)


def _learning_rate(recipe: TrainRecipe, step: int, total: int, steps_per_epoch: int) -> float:
    warmup = max(1, round(recipe.warmup_epochs * steps_per_epoch))
    if step < warmup:
        return recipe.lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return recipe.lr * 0.5 * (1 + math.cos(math.pi * progress))


def _augment(images: torch.Tensor, recipe: TrainRecipe, generator: torch.Generator) -> torch.Tensor:
    """Random flips per image (drawn from ``generator`` whether or not they are enabled)."""
    flips = torch.rand(2, images.shape[0], generator=generator) < 0.5
    if recipe.hflip:
        images = torch.where(flips[0, :, None, None, None], images.flip(-1), images)
    if recipe.vflip:
        images = torch.where(flips[1, :, None, None, None], images.flip(-2), images)
    return images


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, images: torch.Tensor, batch_size: int = 100) -> None:
    """Replace every BatchNorm's running statistics by their average over ``images`` (normalised
    inputs [N, 3, S, S]); the model is left in eval mode."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms or not len(images):
        model.eval()
        return
    momenta = [m.momentum for m in norms]
    model.eval()
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the batches below
        m.train()
    for start in range(0, len(images), batch_size):
        model(images[start:start + batch_size])
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
    model.eval()


def train_model(name: str, world: DemoWorld, recipe: TrainRecipe | None = None, progress: bool = True,
                on_epoch=None) -> nn.Module:
    """Train demo architecture ``name`` on ``world.train`` with ``recipe`` (default: its
    :func:`default_recipe`); returns the model in eval mode. Deterministic for a given seed on a
    given machine and thread count. ``on_epoch(epoch, model)``, if given, is called after every
    epoch (for learning curves; it must leave the model's weights and mode as it found them)."""
    entry = demo_model(name)
    recipe = recipe or entry.recipe
    train = world.train
    images_u8 = torch.from_numpy(train.images)  # [N, S, S, 3], converted per batch
    labels = train.label_tensor()
    count = len(labels)
    steps_per_epoch = count // recipe.batch_size  # the last partial batch is dropped
    if steps_per_epoch < 1:
        raise ConfigError(f"batch size {recipe.batch_size} exceeds the {count} training images")
    total = steps_per_epoch * recipe.epochs
    generator = torch.Generator().manual_seed(recipe.seed)
    with torch.random.fork_rng(devices=[]), _deterministic():
        torch.manual_seed(recipe.seed)  # initialisation and dropout
        model = entry.build(world.num_classes)
        memory_format = torch.channels_last if recipe.channels_last else torch.contiguous_format
        model = model.to(memory_format=memory_format)
        decay, no_decay = [], []
        for parameter in model.parameters():
            (no_decay if parameter.ndim <= 1 else decay).append(parameter)
        groups = [{"params": decay, "weight_decay": recipe.weight_decay},
                  {"params": no_decay, "weight_decay": 0.0}]
        if recipe.optimizer == "sgd":
            optimiser = torch.optim.SGD(groups, lr=recipe.lr, momentum=recipe.momentum, nesterov=recipe.nesterov)
        elif recipe.optimizer == "adamw":
            optimiser = torch.optim.AdamW(groups, lr=recipe.lr, betas=(recipe.momentum, 0.999))
        else:
            raise ConfigError(f"unknown optimizer '{recipe.optimizer}' in the training recipe; use sgd or adamw")
        model.train()
        # disable=None: a bar on a terminal only (design.md); a log gets the lines get_trained writes
        bar = tqdm(total=total, desc=f"train {name}", unit="batch", disable=None if progress else True, leave=False)
        step, running_loss, running_correct, running_seen = 0, 0.0, 0, 0
        for epoch in range(recipe.epochs):
            order = torch.randperm(count, generator=generator)
            for batch in range(steps_per_epoch):
                index = order[batch * recipe.batch_size:(batch + 1) * recipe.batch_size]
                inputs = _augment(DEMO_PREPROCESS.normalize(to_tensor(images_u8[index].numpy())), recipe, generator)
                inputs = inputs.contiguous(memory_format=memory_format)
                targets = labels[index]
                for group in optimiser.param_groups:
                    group["lr"] = _learning_rate(recipe, step, total, steps_per_epoch)
                logits = model(inputs)
                loss = F.cross_entropy(logits, targets, label_smoothing=recipe.label_smoothing)
                optimiser.zero_grad(set_to_none=True)
                loss.backward()
                optimiser.step()
                step += 1
                running_loss = 0.95 * running_loss + 0.05 * loss.item() if step > 1 else loss.item()
                running_correct += int((logits.argmax(1) == targets).sum())
                running_seen += len(targets)
                bar.update(1)
                if step % 10 == 0 or step == total:
                    bar.set_postfix(epoch=epoch + 1, loss=f"{running_loss:.3f}",
                                    acc=f"{running_correct / running_seen:.3f}")
            running_correct = running_seen = 0
            if on_epoch is not None:
                with torch.random.fork_rng(devices=[]):
                    on_epoch(epoch + 1, model)
        bar.close()
        if recipe.bn_recalibration_images:
            subset = torch.randperm(count, generator=generator)[:recipe.bn_recalibration_images]
            images = DEMO_PREPROCESS.normalize(to_tensor(train.images[subset.sort().values.numpy()]))
            recalibrate_batchnorm(model, images.contiguous(memory_format=memory_format))
    return model.to(memory_format=torch.contiguous_format).eval()


# ---- evaluation ----------------------------------------------------------------------------------

@torch.no_grad()
def predict(model: nn.Module, images: torch.Tensor, batch_size: int = 200) -> torch.Tensor:
    """Predicted classes [N] for normalised images [N, 3, S, S] (model put in eval mode)."""
    model.eval()
    return torch.cat([model(images[i:i + batch_size]).argmax(1) for i in range(0, len(images), batch_size)])


def evaluate(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 200) -> float:
    """Top-1 accuracy of ``model`` on normalised images [N, 3, S, S] with labels [N]."""
    if not len(labels):
        return float("nan")
    return float((predict(model, images, batch_size) == torch.as_tensor(labels)).float().mean())


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

def model_key(name: str, world: DemoWorld, recipe: TrainRecipe) -> str:
    """Hash of everything that determines a trained demo model."""
    return config_hash(recipe, world.config, world.config.fingerprint, name, demo_model(name).architecture,
                       {"num_classes": world.num_classes, "training_version": TRAINING_VERSION,
                        "input_mean": DEMO_PREPROCESS.mean, "input_std": DEMO_PREPROCESS.std})


def model_path(name: str, world: DemoWorld, recipe: TrainRecipe | None = None) -> Path:
    """Cache file of the trained model: ``cache_dir()/demo-zoo/<name>-<hash>.pt``."""
    recipe = recipe or default_recipe(name)
    return cache_dir() / "demo-zoo" / f"{name}-{model_key(name, world, recipe)}.pt"


def read_training_record(name: str, world: DemoWorld, recipe: TrainRecipe | None = None) -> dict | None:
    """The JSON record written beside a cached model (training seconds, accuracies, recipe), or None."""
    path = model_path(name, world, recipe).with_suffix(".json")
    return json.loads(path.read_text()) if path.exists() else None


def _load_cached(entry, world: DemoWorld, path: Path, into: nn.Module | None = None) -> nn.Module | None:
    """The cached model at ``path`` (loaded into ``into`` when given, else into a new one) in eval mode,
    or None when the file is damaged (its SHA-256 differs from the one recorded beside it, or it
    cannot be loaded): reported in one line, then retrained."""
    record_path = path.with_suffix(".json")
    try:
        recorded = json.loads(record_path.read_text()).get("sha256") if record_path.exists() else None
        if recorded is not None and recorded != file_sha256(path):
            raise ValueError("its SHA-256 does not match the training record")
        model = entry.build(world.num_classes) if into is None else into
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        return model.eval()
    except Exception as error:  # noqa: BLE001  (torch.load raises many kinds on a damaged file)
        print(f"[demo] the cached demo model {path} is damaged ({one_line(error, 120) or type(error).__name__}):"
              f" training it again", file=sys.stderr)
        return None


def get_trained(name: str, world: DemoWorld, recipe: TrainRecipe | None = None, force: bool = False,
                progress: bool = True, into: nn.Module | None = None) -> nn.Module:
    """Demo model ``name`` trained on ``world`` with ``recipe`` (default: :func:`default_recipe`),
    from the cache or trained now (and cached) when missing or ``force``; in eval mode. ``into``: a
    freshly built model of ``name`` to load the weights into (returned), instead of a new one."""
    entry = demo_model(name)
    recipe = recipe or entry.recipe
    path = model_path(name, world, recipe)
    if path.exists() and not force:
        model = _load_cached(entry, world, path, into)
        if model is not None:
            return model
    start = time.perf_counter()
    if progress:
        tqdm.write(f"training {name} on the demo world ({recipe.epochs} epochs; cached for later runs)",
                   file=sys.stderr)
    model = train_model(name, world, recipe, progress=progress)
    seconds = time.perf_counter() - start
    record = {"name": name, "train_seconds": round(seconds, 2), "torch_threads": torch.get_num_threads(),
              "recipe": asdict(recipe), "world": asdict(world.config), "world_fingerprint": world.config.fingerprint,
              "architecture": entry.architecture, "val_accuracy": group_accuracies(model, world, "val")}
    with atomic_path(path) as temporary:
        torch.save(model.state_dict(), temporary)
    record["sha256"] = file_sha256(path)  # checked on every load: a damaged file is trained again
    with atomic_path(path.with_suffix(".json")) as temporary:
        temporary.write_text(json.dumps(record, indent=1))
    if progress:
        accuracies = ", ".join(f"{group} {value:.3f}" for group, value in record["val_accuracy"].items()
                               if not math.isnan(value))  # NaN: an empty group
        tqdm.write(f"trained {name} in {seconds:.0f} s; validation top-1: {accuracies}", file=sys.stderr)
    if into is not None:  # training builds its own (seeded by the recipe); the caller's gets the weights
        into.load_state_dict(model.state_dict())
        return into.eval()
    return model


def trained_weights(model: nn.Module, spec, weights_dir, progress: bool, force: bool) -> str:
    """The demo zoo's weights loader (a :data:`bagrepro.models.registry.WeightsLoader`): puts the
    weights of ``spec.name`` trained on the demo profile's world (:func:`get_trained`: from the cache,
    or trained now) into ``model``; returns their provenance. ``weights_dir`` is not used."""
    world = demo_world()
    get_trained(spec.name, world, force=force, progress=progress, into=model)  # the cached file goes straight in
    return f"trained by bagrepro.demo.training on demo world {world.config.fingerprint}: {model_path(spec.name, world)}"


__all__ = ["TRAINING_VERSION", "TrainRecipe", "default_recipe", "evaluate", "get_trained", "group_accuracies",
           "model_key", "model_path", "predict", "read_training_record", "recalibrate_batchnorm", "train_model",
           "trained_weights"]
