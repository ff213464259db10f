"""What experiments iterate over: labelled images as float tensors in [0, 1] with ids.

An :class:`ImageSet` yields batches ``(images [B, 3, H, W] float32 in [0, 1], labels [B] int64,
image_ids list[str])`` in a fixed order. Two kinds: tensors already in memory (smoke, demo) and files
on disk (ImageNet, a user's ImageFolder) decoded by a DataLoader.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch

from bagrepro.data.check import MarkUnreadable, UnreadableBatch, collate
from bagrepro.data.imagenet import ImageDataset
from bagrepro.data.images import UnreadableImageError

Batch = tuple[torch.Tensor, torch.Tensor, list[str]]


@dataclass
class TensorImageSet:
    """Images held in memory. images [N, 3, H, W] float32 in [0, 1]; labels [N]; ids [N]; masks:
    optional ground truth of where the class evidence lies, bool [N, H, W]; class_groups: optional
    group name per class (the demo world's 'local' / 'arrangement')."""

    images: torch.Tensor
    labels: torch.Tensor
    image_ids: list[str]
    classes: list[str]
    description: str
    masks: torch.Tensor | None = None
    class_groups: list[str] | None = None

    def __len__(self) -> int:
        return len(self.image_ids)

    def batches(self, batch_size: int) -> Iterator[Batch]:
        for start in range(0, len(self), batch_size):
            stop = start + batch_size
            yield self.images[start:stop], self.labels[start:stop], self.image_ids[start:stop]

    def subset(self, indices) -> "TensorImageSet":
        indices = list(indices)
        return TensorImageSet(self.images[indices], self.labels[indices], [self.image_ids[i] for i in indices],
                              self.classes, self.description,
                              None if self.masks is None else self.masks[indices], self.class_groups)


def default_workers() -> int:
    """Decoding processes per DataLoader: this process's share of the CPU cores (torchrun puts
    LOCAL_WORLD_SIZE processes on a machine), at most 8, at least 1."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(8, cores // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1))))


class FileImageSet:
    """Images decoded from files by a DataLoader (workers decode while the model runs).

    An image that cannot be decoded stops the iteration with the worker's one-line
    :class:`~bagrepro.data.images.UnreadableImageError` (what, where), raised in this process, with
    ``hint`` appended (what the user can do about it); batches before it are yielded as usual.
    ``side``: the side in px ``transform`` crops every image to (None: unknown), so a run knows its
    image size without decoding one. ``pin_memory``: batches come in page-locked memory (for a CUDA
    run: its ``.to(device, non_blocking=True)`` copies overlap with compute); each worker keeps
    ``PREFETCH`` batches decoded ahead.
    """

    PREFETCH = 4

    def __init__(self, dataset: ImageDataset, transform, description: str, workers: int | None = None,
                 hint: str = "", side: int | None = None, pin_memory: bool = False):
        self.dataset = dataset
        self.dataset.transform = transform
        self.classes = dataset.classes
        self.description = description
        self.workers = default_workers() if workers is None else workers
        self.hint = hint
        self.side = side
        self.pin_memory = pin_memory

    def __len__(self) -> int:
        return len(self.dataset)

    @property
    def image_ids(self) -> list[str]:
        return [record.image_id for record in self.dataset.records]

    @property
    def labels(self) -> torch.Tensor:
        return torch.tensor([record.label for record in self.dataset.records])

    def batches(self, batch_size: int) -> Iterator[Batch]:
        loader = torch.utils.data.DataLoader(MarkUnreadable(self.dataset), batch_size=batch_size, shuffle=False,
                                             num_workers=self.workers, collate_fn=collate, pin_memory=self.pin_memory,
                                             prefetch_factor=self.PREFETCH if self.workers else None)
        for batch in loader:
            if isinstance(batch, UnreadableBatch):
                first = batch.unreadable[0]
                raise UnreadableImageError(first.path, first.reason, first.message + self.hint)
            images, labels, ids = batch
            yield images, labels, list(ids)

    def subset(self, indices) -> "FileImageSet":
        records = [self.dataset.records[i] for i in indices]
        dataset = ImageDataset(records, self.dataset.classes, self.dataset.root, self.dataset.layout)
        return FileImageSet(dataset, self.dataset.transform, self.description, self.workers, self.hint, self.side,
                            self.pin_memory)


def smoke_images(count: int, size: int, num_classes: int, seed: int) -> TensorImageSet:
    """Tiny generated images: per class a colour and a stripe orientation/frequency, plus noise.

    Deterministic from ``seed``; [count, 3, size, size] in [0, 1]; labels cycle through the classes.
    For CI: models on it are random, so only the machinery is exercised, not the science.
    """
    generator = np.random.default_rng(seed)
    labels = np.arange(count) % num_classes
    rows, cols = np.mgrid[0:size, 0:size].astype(np.float32)
    angle = labels[:, None, None] * np.pi / num_classes
    frequency = 0.2 + 0.05 * (labels % 3)[:, None, None]
    stripes = 0.5 + 0.5 * np.sin(frequency * (np.cos(angle) * rows + np.sin(angle) * cols))
    colour = np.stack([(labels * k % num_classes) / num_classes for k in (1, 3, 7)], axis=1)[:, :, None, None]
    images = 0.6 * stripes[:, None] * (0.3 + 0.7 * colour) + 0.4 * generator.random((count, 3, size, size))
    return TensorImageSet(
        images=torch.from_numpy(np.clip(images, 0, 1).astype(np.float32)),
        labels=torch.from_numpy(labels.astype(np.int64)),
        image_ids=[f"smoke_{i:05d}" for i in range(count)],
        classes=[f"class{c}" for c in range(num_classes)],
        description=f"{count} generated {size}x{size} smoke images, {num_classes} classes, seed {seed}",
    )
