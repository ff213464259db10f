"""The demo world as data: its splits, the cache, and the demo profile's world and test images.

Splits (train / val / test) use independent random streams derived from the seed; image ids are
``"<split>-<index>"``. A split is generated when first used (a demo run with the shipped zoo needs
only the test split) and cached under ``cache_dir()/world-<hash>/<split>.npz`` (compressed; the hash
is :attr:`WorldConfig.fingerprint <bagrepro.demo.spec.WorldConfig.fingerprint>`), rebuilt from the
seed when missing or damaged (seconds).

Shapes: ``images`` uint8 [N, S, S, 3]; ``labels`` int64 [N]; ``masks`` bool [N, S, S]; ``ids`` str [N].
As tensors: :meth:`WorldSplit.tensor` (float32 [N, 3, S, S] in [0, 1]) and
:meth:`WorldSplit.normalized` (the demo zoo's inputs: :data:`~bagrepro.demo.spec.DEMO_PREPROCESS`).

The demo profile uses one fixed world, :data:`DEMO_WORLD`: the demo zoo is trained on its train
split and every experiment runs on its test split (:func:`demo_test_images`).
"""

from __future__ import annotations

import sys
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from bagrepro.core.atomic import atomic_path
from bagrepro.core.cache import cache_dir
from bagrepro.data.imagesets import TensorImageSet
from bagrepro.core.errors import ConfigError, one_line
from bagrepro.demo.render import render_images
from bagrepro.demo.spec import DEMO_PREPROCESS, GROUPS, SPLITS, WorldConfig

#: the world of the demo profile (changing it changes the cache keys of the world and the zoo)
DEMO_WORLD = WorldConfig()


@dataclass
class WorldSplit:
    """One split. images uint8 [N, S, S, 3]; labels int64 [N]; masks bool [N, S, S]; ids str [N]."""

    name: str
    images: np.ndarray
    labels: np.ndarray
    masks: np.ndarray
    ids: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)

    def tensor(self, indices=None) -> torch.Tensor:
        """Images as float32 [N, 3, S, S] in [0, 1] (all, or those at ``indices``)."""
        return to_tensor(self.images if indices is None else self.images[indices])

    def normalized(self, indices=None) -> torch.Tensor:
        """Images as the demo zoo's inputs: float32 [N, 3, S, S], normalised by :data:`DEMO_PREPROCESS`."""
        return DEMO_PREPROCESS.normalize(self.tensor(indices))

    def label_tensor(self, indices=None) -> torch.Tensor:
        """Labels as int64 [N]."""
        return torch.from_numpy(self.labels if indices is None else self.labels[indices])

    def mask_tensor(self, indices=None) -> torch.Tensor:
        """Evidence masks as bool [N, S, S]."""
        return torch.from_numpy(self.masks if indices is None else self.masks[indices])

    def image_ids(self, indices=None) -> list[str]:
        return [str(i) for i in (self.ids if indices is None else self.ids[indices])]


@dataclass
class DemoWorld:
    """A world: its config, class names / kinds / groups and the three splits, each generated (or
    read from the cache, when ``cache``) when first used; ``force``: generate even if cached."""

    config: WorldConfig
    splits: dict[str, WorldSplit] = field(default_factory=dict, repr=False)
    cache: bool = True
    force: bool = False

    @property
    def train(self) -> WorldSplit:
        return self.split("train")

    @property
    def val(self) -> WorldSplit:
        return self.split("val")

    @property
    def test(self) -> WorldSplit:
        return self.split("test")

    def split(self, name: str) -> WorldSplit:
        if name not in SPLITS:
            raise ConfigError(f"unknown demo world split '{name}'; choose from {', '.join(SPLITS)}")
        if name not in self.splits:
            self.splits[name] = _cached_split(self.config, name, self.cache, self.force)
        return self.splits[name]

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.config.class_names

    @property
    def class_kinds(self) -> tuple[str, ...]:
        return self.config.class_kinds

    @property
    def class_groups(self) -> tuple[str, ...]:
        return self.config.class_groups

    @property
    def num_classes(self) -> int:
        return self.config.num_classes

    @property
    def image_size(self) -> int:
        return self.config.image_size

    def classes_in_group(self, group: str) -> list[int]:
        """Class indices of a group ('local', 'arrangement', or a kind: 'texture', 'lattice')."""
        if group == "all":
            return list(range(self.num_classes))
        found = [c for c in range(self.num_classes) if group in (self.class_groups[c], self.class_kinds[c])]
        if not found and group not in GROUPS + ("texture", "lattice"):
            raise ConfigError(f"unknown class group '{group}'; choose from all, local, arrangement, texture, lattice")
        return found


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 [N, S, S, 3] -> float32 [N, 3, S, S] in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div_(255.0)


def world_path(config: WorldConfig, split: str = "test") -> Path:
    """Where ``split`` of the world of ``config`` is cached."""
    return cache_dir() / f"world-{config.fingerprint}" / f"{split}.npz"


def make_world(config: WorldConfig | None = None, cache: bool = True, force: bool = False) -> DemoWorld:
    """The demo world of ``config`` (default: :class:`WorldConfig()`); each split comes from the cache
    or is generated when first used. cache: read and write ``cache_dir()/world-<hash>/<split>.npz``;
    force: regenerate even if cached."""
    return DemoWorld(config or WorldConfig(), cache=cache, force=force)


def generate_split(config: WorldConfig, split: str) -> WorldSplit:
    """Generate one split of the world of ``config`` (no cache); each split has its own random stream."""
    rng = np.random.default_rng(np.random.SeedSequence([config.seed, SPLITS.index(split)]))
    labels = np.repeat(np.arange(config.num_classes, dtype=np.int64), config.per_class(split))
    labels = labels[rng.permutation(len(labels))]
    images, masks = render_images(config, labels, rng)
    ids = np.array([f"{split}-{i:05d}" for i in range(len(labels))])
    return WorldSplit(split, images, labels, masks, ids)


def generate_world(config: WorldConfig | None = None) -> DemoWorld:
    """Generate every split of the world of ``config`` now (no cache)."""
    config = config or WorldConfig()
    return DemoWorld(config, {split: generate_split(config, split) for split in SPLITS}, cache=False)


def _cached_split(config: WorldConfig, split: str, cache: bool, force: bool) -> WorldSplit:
    path = world_path(config, split)
    if cache and not force and path.exists():
        try:
            return _load_split(config, split, path)
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as error:  # damaged: rebuild it
            print(f"[demo] the cached demo world split {path} is damaged "
                  f"({one_line(error, 120) or type(error).__name__}): generating it again", file=sys.stderr)
    data = generate_split(config, split)
    if cache:
        with atomic_path(path) as temporary, open(temporary, "wb") as stream:  # a file: savez adds no suffix
            np.savez_compressed(stream, images=data.images, labels=data.labels,
                                masks=np.packbits(data.masks, axis=-1), ids=data.ids)
    return data


def _load_split(config: WorldConfig, split: str, path: Path) -> WorldSplit:
    size = config.image_size
    with np.load(path, allow_pickle=False) as data:
        masks = np.unpackbits(data["masks"], axis=-1, count=size).astype(bool)
        loaded = WorldSplit(split, data["images"], data["labels"].astype(np.int64), masks, data["ids"])
    expected = config.num_classes * config.per_class(split)
    if len(loaded) != expected or loaded.images.shape[1:] != (size, size, 3):
        raise ValueError(f"split {split} holds {len(loaded)} images, expected {expected}")
    return loaded


# ---- the demo profile's world --------------------------------------------------------------------

def demo_world() -> DemoWorld:
    """The demo profile's world (:data:`DEMO_WORLD`), from the cache or generated now."""
    return make_world(DEMO_WORLD)


def demo_test_images() -> TensorImageSet:
    """The demo world's test split as an image set (float images in [0, 1], labels, ids, masks)."""
    world = demo_world()
    split = world.test
    groups = world.class_groups
    return TensorImageSet(
        images=split.tensor(), labels=split.label_tensor(), image_ids=split.image_ids(),
        classes=list(world.class_names), masks=split.mask_tensor(), class_groups=list(world.class_groups),
        description=(f"demo world {world.config.fingerprint} test split: {len(split)} images of "
                     f"{world.image_size}x{world.image_size} px, {world.num_classes} classes "
                     f"({groups.count('local')} local, {groups.count('arrangement')} arrangement)"),
    )
