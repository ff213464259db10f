"""Unreadable image files: finding them all at once, and carrying them out of DataLoader workers.

A worker that raises hands the main process torch's wrapped traceback, which buries the one line
that matters. So a dataset wrapped in :class:`MarkUnreadable` returns an :class:`Unreadable` marker
(what, where) in place of an image it cannot decode, :func:`collate` keeps markers apart from good
images, and the consumer decides in the main process: raise the worker's one line, or skip.

:func:`find_unreadable` decodes every image fully (a header alone does not reveal a truncated JPEG)
in DataLoader workers, with a progress bar, and returns every unreadable one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch.utils.data
from tqdm.auto import tqdm

from bagrepro.data.images import UnreadableImageError, open_rgb

#: images per task sent to a checking worker
CHECK_CHUNK = 16


@dataclass(frozen=True)
class Unreadable:
    """An image that could not be decoded: its position in the record list, id, file and why
    (``reason``: one line without the path; ``message``: the full one-line error)."""

    index: int
    image_id: str
    path: str
    reason: str
    message: str


@dataclass(frozen=True)
class UnreadableBatch:
    """What :func:`collate` returns for a batch holding at least one unreadable image."""

    unreadable: list[Unreadable]


def _marker(index: int, record, error: UnreadableImageError) -> Unreadable:
    return Unreadable(index, record.image_id, error.path, error.reason, str(error))


class MarkUnreadable(torch.utils.data.Dataset):
    """``dataset`` (an :class:`~bagrepro.data.imagenet.ImageDataset`) with an :class:`Unreadable`
    marker in place of every item whose image cannot be decoded; other items are unchanged."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index):
        try:
            return self.dataset[index]
        except UnreadableImageError as error:
            return _marker(index, self.dataset.records[index], error)


def collate(items: list):
    """torch's default collation for a batch of good items (the very same tensors); an
    :class:`UnreadableBatch` of the markers when any item is unreadable."""
    bad = [item for item in items if isinstance(item, Unreadable)]
    if bad:
        return UnreadableBatch(bad)
    return torch.utils.data.default_collate(items)


class _Decode(torch.utils.data.Dataset):
    """Item i: None when ``records[indices[i]]`` decodes fully, else its :class:`Unreadable`."""

    def __init__(self, records: Sequence, indices: Sequence[int]):
        self.records, self.indices = records, list(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, position: int):
        index = self.indices[position]
        record = self.records[index]
        try:
            open_rgb(record.path)
        except UnreadableImageError as error:
            return _marker(index, record, error)
        return None


def find_unreadable(records: Sequence, workers: int, indices: Sequence[int] | None = None,
                    quiet: bool = False) -> list[Unreadable]:
    """Decode every record's image (or those at ``indices``) fully, in ``workers`` DataLoader
    processes (0: in this process), with a progress bar unless ``quiet``; return the unreadable ones
    in record order. ``records``: objects with ``path`` and ``image_id``."""
    indices = range(len(records)) if indices is None else indices
    dataset = _Decode(records, indices)
    loader = torch.utils.data.DataLoader(dataset, batch_size=CHECK_CHUNK, shuffle=False, num_workers=workers,
                                         collate_fn=list)
    bad: list[Unreadable] = []
    with tqdm(total=len(dataset), desc="checking images", unit="image", disable=quiet or None, leave=False,
              dynamic_ncols=True) as bar:
        for chunk in loader:
            bad += [item for item in chunk if item is not None]
            bar.update(len(chunk))
    return sorted(bad, key=lambda item: item.index)
