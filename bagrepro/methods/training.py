"""The one training loop of the project: the demo zoo and models trained on your data both use it.

- :class:`TrainingImages`: labelled images held in memory as uint8 [N, L, L, 3] (decoded once; a
  15-scene-sized set at 256 px is about 0.3 GB), served as augmented, normalised float batches.
- :func:`fit`: trains a freshly built model with a :class:`~bagrepro.core.recipe.TrainRecipe`; on the CPU
  the same seed gives the same weights (seeded initialisation of new layers, a fixed data order and
  fixed augmentation drawn from a private generator, ``torch.use_deterministic_algorithms`` during
  training; the caller's global random state is left as it was). After every epoch it writes a
  checkpoint (weights, optimiser, both random states), so a killed training resumes from its last
  finished epoch with the same result as an uninterrupted one. BatchNorm statistics are re-estimated
  at the end (:func:`recalibrate_batchnorm`).
- :func:`train_cached`: the trained weights from a cache file (SHA-256 checked against the record
  beside it; a damaged file is trained again), or trained now and cached.
- :func:`predict`, :func:`evaluate`: top-1 on normalised float images.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from bagrepro.core.atomic import atomic_path
from bagrepro.core.cache import file_sha256
from bagrepro.core.errors import ConfigError, one_line
from bagrepro.core.recipe import TrainRecipe


@dataclass
class TrainingImages:
    """Labelled images in memory. images: uint8 [N, L, L, 3] (square; L >= ``crop``); labels: int64
    [N]; crop: side in px of what the model sees (a random crop in training when the recipe says so,
    else and in evaluation the centre crop; equal to L: the whole image)."""

    images: torch.Tensor
    labels: torch.Tensor
    crop: int

    def __post_init__(self):
        if self.images.dtype != torch.uint8 or self.images.ndim != 4 or self.images.shape[-1] != 3:
            raise ValueError(f"training images must be uint8 [N, L, L, 3], got {tuple(self.images.shape)} "
                             f"{self.images.dtype}")
        if self.images.shape[1] != self.images.shape[2] or self.images.shape[1] < self.crop:
            raise ValueError(f"training images must be square and at least {self.crop} px, got "
                             f"{tuple(self.images.shape[1:3])}")

    def __len__(self) -> int:
        return len(self.labels)

    def _crop(self, index: torch.Tensor, offsets: torch.Tensor | None) -> torch.Tensor:
        """uint8 [B, crop, crop, 3]: at ``offsets`` (int64 [2, B], rows then columns) or centred."""
        side = self.images.shape[1]
        if self.crop == side:
            return self.images[index]
        if offsets is None:
            start = (side - self.crop) // 2
            return self.images[index, start:start + self.crop, start:start + self.crop]
        span = torch.arange(self.crop)
        rows = (offsets[0][:, None] + span)[:, :, None]  # [B, crop, 1]
        cols = (offsets[1][:, None] + span)[:, None, :]  # [B, 1, crop]
        return self.images[index[:, None, None], rows, cols]  # one gather for the whole batch

    def inputs(self, index: torch.Tensor, normalize: Callable[[torch.Tensor], torch.Tensor],
               recipe: TrainRecipe | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
        """Normalised float32 [B, 3, crop, crop] of the images at ``index``: augmented by ``recipe``
        with draws from ``generator`` when both are given (flips are drawn whether or not they are
        enabled, crops only when enabled), else the centre crops."""
        offsets = None
        if recipe is not None and recipe.random_crop and self.crop < self.images.shape[1]:
            offsets = torch.randint(0, self.images.shape[1] - self.crop + 1, (2, len(index)), generator=generator)
        images = normalize(self._crop(index, offsets).permute(0, 3, 1, 2).float().div_(255.0))
        if recipe is None:
            return images
        flips = torch.rand(2, images.shape[0], generator=generator) < 0.5
        if recipe.hflip:
            images = torch.where(flips[0, :, None, None, None], images.flip(-1), images)
        if recipe.vflip:
            images = torch.where(flips[1, :, None, None, None], images.flip(-2), images)
        return images


@contextlib.contextmanager
def _deterministic(enabled: bool = True):
    """torch.use_deterministic_algorithms(True) for the duration (if ``enabled``), then the previous setting."""
    previous = torch.are_deterministic_algorithms_enabled()
    previous_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    if enabled:
        torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous, warn_only=previous_warn)


def learning_rate(recipe: TrainRecipe, step: int, total: int, steps_per_epoch: int) -> float:
    """Linear warm-up over ``warmup_epochs``, then a half cosine to 0 at step ``total``."""
    warmup = max(1, round(recipe.warmup_epochs * steps_per_epoch))
    if step < warmup:
        return recipe.lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return recipe.lr * 0.5 * (1 + math.cos(math.pi * progress))


def _optimiser(model: nn.Module, recipe: TrainRecipe) -> torch.optim.Optimizer:
    decay, no_decay = [], []
    for parameter in model.parameters():
        (no_decay if parameter.ndim <= 1 else decay).append(parameter)
    groups = [{"params": decay, "weight_decay": recipe.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if recipe.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=recipe.lr, momentum=recipe.momentum, nesterov=recipe.nesterov)
    if recipe.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=recipe.lr, betas=(recipe.momentum, 0.999))
    raise ConfigError(f"unknown optimizer '{recipe.optimizer}' in the training recipe; use sgd or adamw")


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, images: torch.Tensor, batch_size: int = 100) -> None:
    """Replace every BatchNorm's running statistics by their average over ``images`` (normalised
    inputs [N, 3, S, S] on the model's device); the model is left in eval mode."""
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


def checkpoint_path(weights_path: Path) -> Path:
    """The per-epoch checkpoint of an unfinished training whose weights go to ``weights_path``."""
    return weights_path.with_name(weights_path.stem + ".epoch.pt")


def fit(build: Callable[[], nn.Module], data: TrainingImages, recipe: TrainRecipe,
        normalize: Callable[[torch.Tensor], torch.Tensor], desc: str = "train", progress: bool = True,
        checkpoint: Path | None = None, on_epoch=None, device: torch.device | str = "cpu",
        log: Callable[[str], None] | None = None) -> nn.Module:
    """Train the model ``build()`` makes (called under ``recipe.seed``: new layers start the same
    every time) on ``data`` with ``recipe``; returns it on the CPU in eval mode, contiguous.

    checkpoint: a file written after every epoch (weights, optimiser state, the data-order and
    global random states, the step); when it exists at the start, training resumes after its epoch
    (and says so through ``log``). On the CPU the result is the same, bit for bit, as one run
    without interruption (deterministic algorithms, same thread count); on a GPU it is not forced
    to be. ``on_epoch(epoch, model)``, if given, is called after every epoch (it must leave the
    model's weights and mode as it found them).
    """
    device = torch.device(device)
    count = len(data)
    steps_per_epoch = count // recipe.batch_size  # the last partial batch is dropped
    if steps_per_epoch < 1:
        raise ConfigError(f"batch size {recipe.batch_size} exceeds the {count} training images")
    total = steps_per_epoch * recipe.epochs
    generator = torch.Generator().manual_seed(recipe.seed)
    memory_format = torch.channels_last if recipe.channels_last else torch.contiguous_format
    with torch.random.fork_rng(devices=[]), _deterministic(device.type == "cpu"):
        torch.manual_seed(recipe.seed)  # initialisation of new layers, dropout
        model = build().to(device=device, memory_format=memory_format)
        optimiser = _optimiser(model, recipe)
        first_epoch = 0
        if checkpoint is not None and checkpoint.exists():
            first_epoch = _resume(checkpoint, model, optimiser, generator, recipe)
            if log is not None:
                log(f"resuming {desc} after epoch {first_epoch} of {recipe.epochs} (checkpoint {checkpoint})")
        model.train()
        step = first_epoch * steps_per_epoch
        # disable=None: a bar on a terminal only (design.md); a log gets the caller's lines
        bar = tqdm(total=total, initial=step, desc=desc, unit="batch", disable=None if progress else True,
                   leave=False)
        running_loss = 0.0
        for epoch in range(first_epoch, recipe.epochs):
            running_correct = running_seen = 0
            order = torch.randperm(count, generator=generator)
            for batch in range(steps_per_epoch):
                index = order[batch * recipe.batch_size:(batch + 1) * recipe.batch_size]
                inputs = data.inputs(index, normalize, recipe, generator)
                inputs = inputs.to(device, non_blocking=True).contiguous(memory_format=memory_format)
                targets = data.labels[index].to(device)
                for group in optimiser.param_groups:
                    group["lr"] = learning_rate(recipe, step, total, steps_per_epoch)
                logits = model(inputs)
                loss = F.cross_entropy(logits, targets, label_smoothing=recipe.label_smoothing)
                optimiser.zero_grad(set_to_none=True)
                loss.backward()
                optimiser.step()
                step += 1
                running_loss = 0.95 * running_loss + 0.05 * loss.item() if batch else loss.item()
                running_correct += int((logits.argmax(1) == targets).sum())
                running_seen += len(targets)
                bar.update(1)
                if step % 10 == 0 or step == total:
                    bar.set_postfix(epoch=epoch + 1, loss=f"{running_loss:.3f}",
                                    acc=f"{running_correct / running_seen:.3f}")
            if on_epoch is not None:
                with torch.random.fork_rng(devices=[]):
                    on_epoch(epoch + 1, model)
            if checkpoint is not None and epoch + 1 < recipe.epochs:
                _save_checkpoint(checkpoint, epoch + 1, model, optimiser, generator, recipe)
        bar.close()
        if recipe.bn_recalibration_images:
            subset = torch.randperm(count, generator=generator)[:recipe.bn_recalibration_images]
            images = data.inputs(subset.sort().values, normalize).to(device)
            recalibrate_batchnorm(model, images.contiguous(memory_format=memory_format))
    return model.to(device="cpu", memory_format=torch.contiguous_format).eval()


def _save_checkpoint(path: Path, epoch: int, model: nn.Module, optimiser, generator: torch.Generator,
                     recipe: TrainRecipe) -> None:
    state = {"epoch": epoch, "recipe": asdict(recipe), "model": model.state_dict(),
             "optimiser": optimiser.state_dict(), "generator": generator.get_state(),
             "torch_rng": torch.get_rng_state()}
    with atomic_path(path) as temporary:  # a kill while saving leaves the previous epoch's checkpoint
        torch.save(state, temporary)


def _resume(path: Path, model: nn.Module, optimiser, generator: torch.Generator, recipe: TrainRecipe) -> int:
    """Load a checkpoint into model, optimiser and generator (and the global random state); returns
    the epochs it had finished. A checkpoint of another recipe or a damaged one is a ConfigError."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        if state["recipe"] != asdict(recipe):
            raise ValueError("it was written with another recipe")
        model.load_state_dict(state["model"])
        optimiser.load_state_dict(state["optimiser"])
        generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        return int(state["epoch"])
    except Exception as error:  # noqa: BLE001  (torch.load raises many kinds on a damaged file)
        raise ConfigError(f"cannot resume from the training checkpoint {path} "
                          f"({one_line(error, 120) or type(error).__name__}); delete it to start over") from None


# ---- evaluation ----------------------------------------------------------------------------------

@torch.no_grad()
def predict(model: nn.Module, images: torch.Tensor, batch_size: int = 200) -> torch.Tensor:
    """Predicted classes [N] for normalised images [N, 3, S, S] (model put in eval mode)."""
    model.eval()
    return torch.cat([model(images[i:i + batch_size]).argmax(1) for i in range(0, len(images), batch_size)])


def evaluate(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 200) -> float:
    """Top-1 accuracy of ``model`` on normalised images [N, 3, S, S] with labels [N]; NaN when empty."""
    if not len(labels):
        return float("nan")
    return float((predict(model, images, batch_size) == torch.as_tensor(labels)).float().mean())


# ---- cache ---------------------------------------------------------------------------------------

def read_record(weights_path: Path) -> dict | None:
    """The JSON record written beside cached weights (training time, accuracies, recipe, sha256), or None."""
    path = weights_path.with_suffix(".json")
    return json.loads(path.read_text()) if path.exists() else None


def load_cached(path: Path, model: nn.Module, what: str = "cached") -> nn.Module | None:
    """``model`` with the weights at ``path`` in eval mode, or None when the file is damaged (its
    SHA-256 differs from the one recorded beside it, or it cannot be loaded): said in one line
    (``what``: how the line names the file, e.g. 'cached' or 'shipped')."""
    try:
        recorded = (read_record(path) or {}).get("sha256")
        if recorded is not None and recorded != file_sha256(path):
            raise ValueError("its SHA-256 does not match the training record")
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        return model.eval()
    except Exception as error:  # noqa: BLE001  (torch.load raises many kinds on a damaged file)
        print(f"[training] the {what} trained model {path} is damaged "
              f"({one_line(error, 120) or type(error).__name__}): training it again", file=sys.stderr)
        return None


def write_weights(state_dict: dict, path: Path) -> None:
    """Save ``state_dict`` to ``path`` atomically, the same bytes for the same tensors: ``torch.save``
    names the archive's folder after the file it writes, so it writes to memory first (folder
    'archive') rather than to the randomly named temporary file."""
    buffer = io.BytesIO()
    torch.save(state_dict, buffer)
    with atomic_path(path) as temporary:
        temporary.write_bytes(buffer.getvalue())


def train_cached(path: Path, train: Callable[[Path], tuple[nn.Module, dict]], into: nn.Module,
                 force: bool = False) -> tuple[nn.Module, bool]:
    """``into`` with the weights cached at ``path``, or trained now by ``train(checkpoint) -> (model,
    record)`` and cached (weights, then ``record`` with their SHA-256 as ``path.json``; the epoch
    checkpoint is removed once the weights are saved). ``force``: train again from the start.
    Returns (model, whether it was trained now)."""
    checkpoint = checkpoint_path(path)
    if force:
        checkpoint.unlink(missing_ok=True)
    elif path.exists():
        model = load_cached(path, into)
        if model is not None:
            return model, False
    model, record = train(checkpoint)
    write_weights(model.state_dict(), path)
    record["sha256"] = file_sha256(path)  # checked on every load: a damaged file is trained again
    with atomic_path(path.with_suffix(".json")) as temporary:
        temporary.write_text(json.dumps(record, indent=1))
    checkpoint.unlink(missing_ok=True)
    into.load_state_dict(model.state_dict())
    return into.eval(), True
