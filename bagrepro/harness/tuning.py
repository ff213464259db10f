"""Train the zoo on your data: ``run_all.py --profile custom --data DIR --train``.

The reproducibility report's protocol (../shared/paper.md, section 4) for any small labelled data
set: DIR holds ``train/`` and ``val/`` (and optionally ``test/``) ImageFolders with the same class
folders. Each base model of the zoo (default :data:`FINETUNE_ZOO`: the released BagNets, torchvision's
V1 VGG-16, ResNet-50, DenseNet-121 and DenseNet-169; any registered model with ``--models``) gets a
new head for the data's classes and is fine-tuned from its ImageNet weights (``--from-scratch``:
from random weights) with one :class:`~bagrepro.core.recipe.TrainRecipe` (default
:data:`~bagrepro.core.recipe.FINETUNE_RECIPE`, changed with ``--recipe KEY=VALUE``), by the project's one
training loop (:func:`bagrepro.methods.training.fit`: progress bar, a checkpoint per epoch, resumable). The
trained model of base ``b`` is registered as ``tuned_<b>``; its weights are cached under
``cache_dir()/trained/`` keyed by the recipe, the data's fingerprint, the base model and whether it
started from ImageNet weights. Every experiment then runs on the test split (val when there is no
test split) with the trained models standing in for their bases' paper roles.

Training images are decoded once per run into memory at ``image_size / 0.875`` px (shorter side
resized, centre-cropped square; 256 px for 224), random crops of ``image_size`` for training when
the recipe says so, centre crops for validation: the same geometry as the models' evaluation
preprocessing (:func:`~bagrepro.core.recipe.resized_side`).
"""

from __future__ import annotations

import ast
import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Callable

import torch
from torch import nn
from tqdm.auto import tqdm

from bagrepro.core import settings as settings_schema
from bagrepro.core.cache import cache_dir, config_hash
from bagrepro.data.check import find_unreadable
from bagrepro.data.imagenet import ImageDataset, balanced_subset, image_folder
from bagrepro.data.imagesets import FileImageSet, default_workers
from bagrepro.core.errors import BagreproError, ConfigError, DataError
from bagrepro.models import create_model, get_spec, register_model, resolve_model_names, unregister_model
from bagrepro.models.preprocess import Preprocess
from bagrepro.harness.profiles import PAPER_ROLES, PROFILES, Profile, stand_ins
from bagrepro.core.recipe import FINETUNE_RECIPE, TrainRecipe, resized_side
from bagrepro.methods.training import TrainingImages, evaluate, fit, predict, read_record, train_cached

#: bump when training code changes what it produces: it is part of the cache key
TRAINING_VERSION = 1
#: the split folders of DIR: train and val are required, test is optional
SPLITS = ("train", "val", "test")
#: a trained model of base ``b`` is registered as ``TUNED_PREFIX + b``
TUNED_PREFIX = "tuned_"

#: the zoo trained on your data when --models is not given: base zoo name -> the paper roles its
#: trained copy stands in for (the first is its own; VGG-16 also covers VGG-11 and ResNet-50 also
#: ResNet-152 while no model of those is trained). DenseNet-121 stands in for no role of the paper:
#: it is here for the reproducibility report's table.
FINETUNE_ZOO: dict[str, tuple[str, ...]] = {
    "bagnet9": ("bagnet9",), "bagnet17": ("bagnet17",), "bagnet33": ("bagnet33",),
    "vgg16": ("vgg16", "vgg11"), "resnet50": ("resnet50", "resnet152"),
    "densenet121": (), "densenet169": ("densenet169",),
}


def tuned_name(base: str) -> str:
    return TUNED_PREFIX + base


def roles_of(base: str) -> tuple[str, ...]:
    """The paper roles a model trained from ``base`` stands in for: its :data:`FINETUNE_ZOO` entry,
    else the roles some registered profile gives ``base`` itself (the smoke and demo stand-ins),
    in :data:`~bagrepro.harness.profiles.PAPER_ROLES` order."""
    if base in FINETUNE_ZOO:
        return FINETUNE_ZOO[base]
    given = {role for profile in PROFILES.values() for role, name in profile.stand_ins.items() if name == base}
    return tuple(role for role in PAPER_ROLES if role in given)


# ---- the recipe ------------------------------------------------------------------------------------

def parse_recipe(pairs: list[str] | None, base: TrainRecipe = FINETUNE_RECIPE) -> TrainRecipe:
    """``base`` with ``--recipe KEY=VALUE`` overrides (values as Python literals, else strings),
    each checked by name and type: a misspelt key or a wrong type is a ConfigError in one line."""
    overrides = {}
    for pair in pairs or []:
        key, sep, text = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"--recipe takes KEY=VALUE pairs, got {pair!r}")
        try:
            overrides[key] = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            overrides[key] = text  # a bare word: sgd, adamw
    checked = settings_schema.resolve(TrainRecipe, overrides, "--recipe")
    recipe = dataclasses.replace(base, **{key: getattr(checked, key) for key in overrides})
    if recipe.image_size is None:
        raise ConfigError("--recipe image_size must be set to train on your data (images come in many sizes)")
    return recipe


# ---- the data ----------------------------------------------------------------------------------------

@dataclass
class YourData:
    """DIR's splits, every split labelled by the train split's class list. ``fingerprint``: a hash of
    the classes and each train/val file's relative path and size (what the trained weights depend on)."""

    root: Path
    splits: dict[str, ImageDataset]
    classes: list[str]
    fingerprint: str

    @property
    def evaluation_split(self) -> str:
        """Where the experiments run: 'test' when DIR has it, else 'val'."""
        return "test" if "test" in self.splits else "val"


def _relabelled(dataset: ImageDataset, classes: list[str], split: Path) -> ImageDataset:
    unknown = sorted(set(dataset.classes) - set(classes))
    if unknown:
        raise DataError(f"{split} has class folder(s) the train split lacks: {', '.join(unknown[:5])}")
    index = {name: i for i, name in enumerate(classes)}
    records = [dataclasses.replace(r, label=index[dataset.classes[r.label]]) for r in dataset.records]
    return ImageDataset(records, classes, dataset.root, dataset.layout)


def load_your_data(root) -> YourData:
    """DIR's ``train/``, ``val/`` and (if present) ``test/`` ImageFolders; a missing train or val
    split, an empty one or a class folder that the train split lacks is a DataError in one line."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"data folder does not exist: {root}")
    missing = [name for name in SPLITS[:2] if not (root / name).is_dir()]
    if missing:
        raise DataError(f"--train needs {root}/train/ and {root}/val/ ImageFolders (and optionally test/); "
                        f"{root} has no {' or '.join(f'{m}/' for m in missing)}")
    train = image_folder(root / "train")
    classes = train.classes
    splits = {"train": train}
    for name in SPLITS[1:]:
        if (root / name).is_dir():
            splits[name] = _relabelled(image_folder(root / name), classes, root / name)
    for name, dataset in splits.items():
        if not len(dataset):
            raise DataError(f"{root / name} holds no images")
    files = [(name, r.path.relative_to(root).as_posix(), r.path.stat().st_size)
             for name in SPLITS[:2] for r in splits[name].records]
    return YourData(root, splits, classes, config_hash(classes, files, length=16))


def evaluation_dataset(root, limit: int | None = None, seed: int = 0) -> ImageDataset:
    """The images the experiments of a --train run use: DIR's test split (its val split when there is
    no test split), labelled by the train split's classes; with ``limit``, a class-balanced subset."""
    data = load_your_data(root)
    dataset = data.splits[data.evaluation_split]
    return ImageDataset(balanced_subset(dataset.records, limit, seed), data.classes, dataset.root,
                        f"{data.evaluation_split} split of a train/val/test folder")


def decode(dataset: ImageDataset, side: int, crop: int, skip_unreadable: bool, quiet: bool,
           log: Callable[[str], None]) -> TrainingImages:
    """Every image of ``dataset`` decoded once as uint8 [N, side, side, 3] (shorter side resized to
    ``side``, centre crop), served with ``crop`` px crops. An unreadable image stops with its one
    line, unless ``skip_unreadable`` (then it is left out, and said)."""
    records = dataset.records
    if skip_unreadable:
        bad = find_unreadable(records, default_workers(), quiet=quiet)
        if bad:
            log(f"[training] {len(bad)} unreadable image(s) of {dataset.root} left out of training, e.g. "
                f"{bad[0].path}: {bad[0].reason}")
            dropped = {item.index for item in bad}
            records = [r for i, r in enumerate(records) if i not in dropped]
    images = FileImageSet(ImageDataset(records, dataset.classes, dataset.root, dataset.layout),
                          Preprocess(resize=side, crop=side).pil_transform(), str(dataset.root),
                          hint="; run with --skip-unreadable to train without it")
    chunks, labels = [], []
    for batch, batch_labels, _ in tqdm(images.batches(64), total=-(-len(records) // 64), leave=False,
                                       desc=f"decode {dataset.root.name}", disable=True if quiet else None):
        # [0, 1] floats made from 8-bit values: x * 255 rounds back to the same bytes
        chunks.append(batch.mul(255).round_().to(torch.uint8).permute(0, 2, 3, 1).contiguous())
        labels.append(batch_labels)
    return TrainingImages(torch.cat(chunks), torch.cat(labels), crop=crop)


# ---- models --------------------------------------------------------------------------------------------

def with_new_head(base: str, num_classes: int, pretrained: bool, weights_dir=None, progress: bool = True,
                  log: Callable[[str], None] | None = None) -> nn.Module:
    """``base``'s architecture for ``num_classes`` classes: with ``pretrained``, every weight of the
    released ImageNet model whose shape fits is copied (all but the classifier head, which stays as
    initialised); else all as initialised. Built under the caller's random state."""
    model = get_spec(base).builder(num_classes=num_classes)
    if pretrained:
        try:
            source = create_model(base, pretrained=True, weights_dir=weights_dir, progress=progress).state_dict()
        except BagreproError as error:
            raise type(error)(f"{error}; or train from random weights with --from-scratch") from None
        own = model.state_dict()
        kept = {key: value for key, value in source.items() if key in own and own[key].shape == value.shape}
        model.load_state_dict(kept, strict=False)
        if log is not None:
            log(f"[training] {base}: ImageNet weights kept for {len(kept)} of {len(own)} tensors; new head: "
                f"{', '.join(sorted(set(own) - set(kept)))}")
    return model


@dataclass
class TunedZoo:
    """The models trained on DIR in this run: base names, recipe, device; registers ``tuned_<base>``
    entries whose weights loader trains (or loads from the cache) on first use."""

    data: YourData
    bases: list[str]
    recipe: TrainRecipe
    from_scratch: bool
    device: torch.device
    skip_unreadable: bool = False
    quiet: bool = False
    log: Callable[[str], None] = print
    _decoded: dict = field(default_factory=dict)

    @property
    def names(self) -> list[str]:
        return [tuned_name(base) for base in self.bases]

    @property
    def run_key(self) -> str:
        """What the trained weights depend on besides the base (enters the experiments' unit keys)."""
        return config_hash(self.recipe, self.data.fingerprint, self.from_scratch, TRAINING_VERSION)

    def weights_path(self, base: str) -> Path:
        key = config_hash(self.run_key, base, get_spec(base).weights, len(self.data.classes))
        return cache_dir() / "trained" / f"{tuned_name(base)}-{key}.pt"

    def preprocess(self, base: str) -> Preprocess:
        """Evaluation preprocessing of a trained model: resize to image_size / 0.875, centre crop
        image_size, the base's normalisation."""
        spec = get_spec(base)
        size = self.recipe.image_size
        return Preprocess(resize=resized_side(size), crop=size, mean=spec.preprocess.mean, std=spec.preprocess.std)

    def register(self) -> None:
        """Register ``tuned_<base>`` for every base (replacing an entry of an earlier run in this process)."""
        for base in self.bases:
            spec = get_spec(base)
            origin = "from scratch" if self.from_scratch else "fine-tuned"
            unregister_model(tuned_name(base))
            register_model(tuned_name(base), num_classes=len(self.data.classes), preprocess=self.preprocess(base),
                           receptive_field=spec.receptive_field, weights_loader=self._weights,
                           paper_name=f"{spec.display_name} ({origin} on {self.data.root.name})",
                           )(lambda num_classes, _spec=spec: _spec.builder(num_classes=num_classes))

    def stand_ins(self) -> dict[str, str]:
        """Paper role -> trained model (each base's roles; a role's own base wins)."""
        return stand_ins({tuned_name(base): roles_of(base) for base in self.bases if roles_of(base)})

    def profile(self, custom: Profile) -> Profile:
        """The custom profile with the trained models, their roles and their weights."""
        return dataclasses.replace(
            custom, models=tuple(self.names), stand_ins=MappingProxyType(self.stand_ins()), pretrained=True,
            description=f"{custom.description}; trained on {self.data.root}")

    def forget_images(self) -> None:
        """Drop the decoded train/val images (once every model is trained: the experiments read files)."""
        self._decoded.clear()

    def _images(self, split: str) -> TrainingImages:
        if split not in self._decoded:
            size = self.recipe.image_size
            self._decoded[split] = decode(self.data.splits[split], resized_side(size), size, self.skip_unreadable,
                                          self.quiet, self.log)
        return self._decoded[split]

    def _weights(self, model: nn.Module, spec, weights_dir, progress: bool, force: bool) -> str:
        """The registry's weights loader of a ``tuned_<base>`` entry: trains it (or loads the cache)."""
        base = spec.name[len(TUNED_PREFIX):]
        path = self.weights_path(base)
        recipe, normalize = self.recipe, spec.preprocess.normalize

        def train(checkpoint: Path):
            train_images, val_images = self._images("train"), self._images("val")
            origin = "from random weights" if self.from_scratch else "from ImageNet weights"
            self.log(f"[training] {spec.name}: {base} {origin}, {recipe.epochs} epochs on {len(train_images)} "
                     f"images ({len(self.data.classes)} classes, {recipe.image_size} px) on {self.device}")
            val_inputs = val_images.inputs(torch.arange(len(val_images)), normalize)
            val_curve: list[float] = []

            def on_epoch(epoch: int, trained: nn.Module) -> None:
                was_training = trained.training
                top1 = evaluate(trained, val_inputs.to(self.device), val_images.labels.to(self.device), 50)
                trained.train(was_training)
                val_curve.append(round(top1, 4))
                self.log(f"[training] {spec.name} epoch {epoch}/{recipe.epochs}: validation top-1 {top1:.3f} "
                         f"(BatchNorm running averages; re-estimated after the last epoch)")

            start = time.perf_counter()
            build = lambda: with_new_head(base, len(self.data.classes), not self.from_scratch, weights_dir,  # noqa: E731
                                          progress, self.log)
            trained = fit(build, train_images, recipe, normalize, desc=f"train {spec.name}", progress=progress,
                          checkpoint=checkpoint, on_epoch=on_epoch, device=self.device, log=self.log)
            seconds = time.perf_counter() - start
            correct = int((predict(trained, val_inputs, 50) == val_images.labels).sum())
            record = {"model": spec.name, "base": base, "from_scratch": self.from_scratch,
                      "recipe": dataclasses.asdict(recipe), "data": str(self.data.root),
                      "data_fingerprint": self.data.fingerprint, "classes": self.data.classes,
                      "train_images": len(train_images), "val_images": len(val_images), "val_correct": correct,
                      "val_top1": correct / max(1, len(val_images)), "val_top1_per_epoch": val_curve,
                      "train_seconds": round(seconds, 2), "device": str(self.device),
                      "torch_threads": torch.get_num_threads()}
            self.log(f"[training] {spec.name}: trained in {seconds:.0f} s; validation top-1 "
                     f"{record['val_top1']:.3f} ({correct}/{len(val_images)})")
            return trained, record

        _, fresh = train_cached(path, train, model, force=force)
        if not fresh:
            self.log(f"[training] {spec.name}: trained weights from the cache ({path})")
        return f"trained by bagrepro.harness.tuning on {self.data.root} (fingerprint {self.data.fingerprint}): {path}"

    def table(self) -> list[dict]:
        """One row per trained model from the records beside its cached weights (train them first)."""
        rows = []
        for base in self.bases:
            record = read_record(self.weights_path(base)) or {}
            rows.append({"model": tuned_name(base), "base": base, "role": (roles_of(base) or (None,))[0],
                         "from_scratch": self.from_scratch, "epochs": self.recipe.epochs,
                         "image_size": self.recipe.image_size, "train_images": record.get("train_images"),
                         "val_images": record.get("val_images"), "val_correct": record.get("val_correct"),
                         "val_top1": record.get("val_top1"), "train_seconds": record.get("train_seconds"),
                         "data": str(self.data.root), "data_fingerprint": self.data.fingerprint})
        return rows


def prepare(data, models: list[str] | None, recipe_pairs: list[str] | None, from_scratch: bool,
            device: torch.device, skip_unreadable: bool = False, quiet: bool = False,
            log: Callable[[str], None] = print) -> TunedZoo:
    """Check DIR and the bases, register the ``tuned_<base>`` entries; nothing is trained yet."""
    if data is None:
        raise ConfigError("--train needs --data DIR holding train/ and val/ (and optionally test/) ImageFolders")
    recipe = parse_recipe(recipe_pairs)
    your_data = load_your_data(data)
    bases = resolve_model_names(models) if models else list(FINETUNE_ZOO)
    if not from_scratch:
        without = [base for base in bases if get_spec(base).weights is None]
        if without:
            raise ConfigError(f"model '{without[0]}' has no ImageNet weights to fine-tune from; "
                              f"add --from-scratch to train from random weights")
    zoo = TunedZoo(your_data, bases, recipe, from_scratch, device, skip_unreadable, quiet, log)
    zoo.register()
    return zoo

