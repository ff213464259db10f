"""ImageNet (ILSVRC2012) validation data in its common on-disk layouts, and generic image folders.

In every ImageNet layout a record's ``label`` is the 1000-way class index of its synset (its position
in the sorted list of the 1000 ILSVRC-2012 WordNet ids shipped in :mod:`bagrepro.data.synsets`, the
class order of torchvision's ImageNet models and of the released BagNets), whatever subset of the
synsets the folder holds, and ``dataset.classes`` is that full list of 1000 wnids. A synset outside
the 1000 is a :class:`DataError`. A generic :func:`image_folder` numbers its own sorted class names.
Records are sorted by ``image_id`` so that runs are deterministic.
"""

from __future__ import annotations

import csv
import os
import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import torch.utils.data

from bagrepro.data import synsets
from bagrepro.data.images import is_image_file, open_rgb
from bagrepro.core.errors import ConfigError, DataError

WNID_RE = synsets.WNID_RE
VAL_IMAGE_RE = re.compile(r"ILSVRC2012_val_(\d{8})\.jpeg", re.IGNORECASE)
LOC_CSV = "LOC_val_solution.csv"
GROUND_TRUTH = "ILSVRC2012_validation_ground_truth.txt"
DEVKIT_DATA = Path("ILSVRC2012_devkit_t12", "data")
KAGGLE_VAL = ("ILSVRC", "Data", "CLS-LOC", "val")

LAYOUT_DESCRIPTIONS = {
    "torchvision_imagenet": "torchvision ImageNet root: meta.bin and val/<wnid>/*.JPEG",
    "imagefolder": "one folder per synset: <wnid>/*.JPEG, in root or root/val",
    "loc_solution_csv": (
        "flat ILSVRC2012_val_*.JPEG with Kaggle's LOC_val_solution.csv in the folder or its parent"
    ),
    "devkit_ground_truth": (
        f"flat ILSVRC2012_val_*.JPEG with {GROUND_TRUTH} and ILSVRC2012_devkit_t12/data/meta.mat "
        "in the folder or its parent"
    ),
}
#: Layouts that :func:`load_imagenet_val` recognises.
LAYOUTS: tuple[str, ...] = ("imagefolder", "loc_solution_csv", "devkit_ground_truth", "torchvision_imagenet")
# The order in which they are tried: a torchvision root also looks like an image folder (root/val/<wnid>).
_DETECTION_ORDER = ("torchvision_imagenet", "imagefolder", "loc_solution_csv", "devkit_ground_truth")


@dataclass(frozen=True)
class ImageRecord:
    """One image: its file, its class index and a stable id (used to key per-image results)."""

    path: Path
    label: int
    image_id: str


class ImageDataset(torch.utils.data.Dataset):
    """A list of :class:`ImageRecord` served as ``(image, label, image_id)``.

    ``image`` is ``transform(open_rgb(path))`` when ``transform`` is set, else the PIL RGB image. The
    ``transform`` attribute may be replaced after construction.
    """

    def __init__(self, records, classes, root, layout, transform=None):
        self.records: list[ImageRecord] = list(records)
        self.classes: list[str] = list(classes)
        self.root = Path(root)
        self.layout = layout
        self.transform = transform

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index):
        record = self.records[index]
        image = open_rgb(record.path)
        if self.transform is not None:
            image = self.transform(image)
        return image, record.label, record.image_id

    @property
    def is_imagenet(self) -> bool:
        """Whether the labels are 1000-way ImageNet class indices (the classes are the 1000 synsets)."""
        return tuple(self.classes) == synsets.IMAGENET_WNIDS

    def describe(self, source=None) -> str:
        """What the run used, for provenance and the report: images, and how many of the 1000 ImageNet
        synsets (or of the folder's classes) they cover, e.g. '450 images of 9 of the 1000 ImageNet
        synsets from DIR (imagefolder)'."""
        present = len({record.label for record in self.records})
        where = self.root if source is None else source
        if self.is_imagenet:
            what = f"{present} of the {len(self.classes)} ImageNet synsets"
        else:
            what = f"{present} of {len(self.classes)} classes"
        return f"{len(self.records)} images of {what} from {where} ({self.layout})"

    def __repr__(self) -> str:
        return (
            f"ImageDataset(layout={self.layout!r}, root={str(self.root)!r}, "
            f"images={len(self.records)}, classes={len(self.classes)})"
        )


# --------------------------------------------------------------------------------------------- subsets


def balanced_subset(records, limit, seed) -> list[ImageRecord]:
    """A fixed, class-balanced subset of ``min(limit, len(records))`` records, sorted by ``image_id``.

    Each class's records are shuffled with ``numpy.random.default_rng(seed)`` (classes in label order),
    then images are taken round-robin over the classes, so class counts differ by at most one (until
    small classes run out). The same seed gives the same subset, and a smaller ``limit`` gives a subset
    of a larger one. ``limit=None`` returns all records.
    """
    records = list(records)
    if limit is None:
        return sorted(records, key=lambda r: r.image_id)
    if isinstance(limit, bool) or not isinstance(limit, (int, np.integer)) or limit < 1:
        raise ConfigError(f"limit must be a positive integer or None, got {limit!r}")
    by_class: dict[int, list[ImageRecord]] = defaultdict(list)
    for record in sorted(records, key=lambda r: r.image_id):
        by_class[record.label].append(record)
    rng = np.random.default_rng(seed)
    queues = [[members[i] for i in rng.permutation(len(members))] for _, members in sorted(by_class.items())]
    chosen: list[ImageRecord] = []
    depth = 0
    while len(chosen) < min(limit, len(records)):
        for queue in queues:
            if depth < len(queue) and len(chosen) < limit:
                chosen.append(queue[depth])
        depth += 1
    return sorted(chosen, key=lambda r: r.image_id)


# --------------------------------------------------------------------------------------------- scanning


def _walk_images(folder: Path) -> Iterable[Path]:
    """Image files under ``folder`` (recursively, following links, skipping hidden folders)."""
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for name in filenames:
            if is_image_file(name):
                yield Path(dirpath, name)


def _subdirs(folder: Path) -> list[str]:
    """Sorted names of the non-hidden sub-folders of ``folder`` (empty if it is not a folder)."""
    if not folder.is_dir():
        return []
    return sorted(e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith("."))


def _wnid_dirs(folder: Path) -> list[str]:
    return [name for name in _subdirs(folder) if WNID_RE.fullmatch(name)]


def _has_val_images(folder: Path) -> bool:
    return folder.is_dir() and any(VAL_IMAGE_RE.fullmatch(e.name) for e in os.scandir(folder))


def _finish(records: list[ImageRecord], where: Path) -> list[ImageRecord]:
    """Sort records by id; refuse an empty list or duplicate ids."""
    if not records:
        raise DataError(f"no image files found in {where}")
    records.sort(key=lambda r: r.image_id)
    for a, b in zip(records, records[1:]):
        if a.image_id == b.image_id:
            raise DataError(f"two images share the id {a.image_id!r}: {a.path} and {b.path}")
    return records


def _class_folder_records(folder: Path, labelled: Iterable[tuple[int, str]], image_id: Callable[[Path], str]):
    """Records of the images under ``folder/<name>`` for each ``(label, name)``."""
    records = [
        ImageRecord(path, label, image_id(path))
        for label, name in labelled
        for path in _walk_images(folder / name)
    ]
    return _finish(records, folder)


def _imagenet_labels(wnids: Iterable[str], where) -> dict[str, int]:
    """wnid -> 1000-way class index for each of ``wnids``; DataError naming the first (sorted) that is
    not one of the 1000 ILSVRC-2012 synsets."""
    wnids = sorted(set(wnids))
    unknown = next((w for w in wnids if not synsets.is_imagenet_wnid(w)), None)
    if unknown is not None:
        raise DataError(f"{where}: synset {unknown} is not one of the 1000 ILSVRC-2012 classes "
                        f"(a folder of other classes needs --profile custom with non-wnid folder names)")
    return {wnid: synsets.imagenet_index(wnid) for wnid in wnids}


# --------------------------------------------------------------------------------------------- layouts
# Each finder returns the arguments for its loader, or None when the layout does not match. Loaders
# return (records, classes).


def _find_torchvision(root: Path):
    if (root / "meta.bin").is_file() and _wnid_dirs(root / "val"):
        return (root / "val",)
    return None


def _find_imagefolder(root: Path):
    for folder in (root, root / "val"):
        if _wnid_dirs(folder):
            return (folder,)
    return None


def _load_wnid_folders(folder: Path):
    index_of = _imagenet_labels(_wnid_dirs(folder), folder)
    labelled = [(index, wnid) for wnid, index in index_of.items()]
    return _class_folder_records(folder, labelled, lambda p: p.stem), list(synsets.IMAGENET_WNIDS)


def _flat_candidates(root: Path):
    """(image folder, folders that may hold its metadata) for the flat layouts."""
    for folder in (root, root / "val", root.joinpath(*KAGGLE_VAL)):
        if _has_val_images(folder):
            meta_dirs = [folder, folder.parent]
            if folder.parts[-4:] == KAGGLE_VAL:  # Kaggle download: the CSVs sit above ILSVRC/Data/CLS-LOC/val
                meta_dirs.append(folder.parents[3])
            yield folder, meta_dirs


def _first_file(candidates: Iterable[Path]) -> Path | None:
    return next((p for p in candidates if p.is_file()), None)


def _find_loc_csv(root: Path):
    for folder, meta_dirs in _flat_candidates(root):
        csv_path = _first_file(d / LOC_CSV for d in meta_dirs)
        if csv_path:
            return folder, csv_path
    return None


def _load_loc_csv(folder: Path, csv_path: Path):
    wnid_of: dict[str, str] = {}
    with open(csv_path, newline="") as handle:
        rows = csv.reader(handle)
        header = next(rows, None)
        if header is None or [h.strip() for h in header[:2]] != ["ImageId", "PredictionString"]:
            raise DataError(f"{csv_path}: expected the header 'ImageId,PredictionString', got {header!r}")
        for line, row in enumerate(rows, start=2):
            if not row:
                continue
            tokens = row[1].split() if len(row) > 1 else []
            if not tokens or not WNID_RE.fullmatch(tokens[0]):
                raise DataError(f"{csv_path} line {line}: no synset id at the start of PredictionString")
            wnid_of[row[0].strip()] = tokens[0]
    index_of = _imagenet_labels(wnid_of.values(), csv_path)
    records = []
    for entry in os.scandir(folder):
        if VAL_IMAGE_RE.fullmatch(entry.name):
            stem = Path(entry.name).stem
            if stem not in wnid_of:
                raise DataError(f"{csv_path} has no row for {Path(folder, entry.name)}")
            records.append(ImageRecord(Path(folder, entry.name), index_of[wnid_of[stem]], stem))
    return _finish(records, folder), list(synsets.IMAGENET_WNIDS)


def _find_devkit(root: Path):
    for folder, meta_dirs in _flat_candidates(root):
        truth = _first_file(p for d in meta_dirs for p in (d / GROUND_TRUTH, d / DEVKIT_DATA / GROUND_TRUTH))
        meta = _first_file(p for d in meta_dirs for p in (d / "meta.mat", d / DEVKIT_DATA / "meta.mat"))
        if truth and meta:
            return folder, truth, meta
    return None


def _devkit_leaf_wnids(meta_path: Path) -> dict[int, str]:
    """Map ILSVRC2012_ID -> WNID for the leaf synsets (the 1000 classes) of the devkit's meta.mat."""
    import scipy.io

    try:
        synsets = np.atleast_1d(scipy.io.loadmat(meta_path, squeeze_me=True)["synsets"])
        fields = synsets.dtype.names or ()
        ids = [int(s) for s in synsets["ILSVRC2012_ID"]]
        wnids = [str(s) for s in synsets["WNID"]]
        if "num_children" in fields:
            leaf = [int(n) == 0 for n in synsets["num_children"]]
        else:
            leaf = [i <= 1000 for i in ids]
    except Exception as exc:  # scipy raises many kinds of errors for a bad file
        raise DataError(f"cannot read the synsets of {meta_path}: {' '.join(str(exc).split())}") from None
    return {i: w for i, w, is_leaf in zip(ids, wnids, leaf) if is_leaf}


def _load_devkit(folder: Path, truth_path: Path, meta_path: Path):
    wnid_of_id = _devkit_leaf_wnids(meta_path)
    leaves = sorted(wnid_of_id.values())
    _imagenet_labels(leaves, meta_path)  # every leaf is one of the 1000
    if leaves != list(synsets.IMAGENET_WNIDS):
        missing = next((w for w in synsets.IMAGENET_WNIDS if w not in set(leaves)), None)
        detail = f"first missing: {missing}" if missing else "some appear twice"
        raise DataError(f"{meta_path}: its {len(leaves)} leaf synsets are not the 1000 ILSVRC-2012 classes "
                        f"({detail})")
    # the devkit's own ILSVRC2012_ID -> wnid, then the wnid's 1000-way index (sorted wnids = leaves)
    classes = leaves
    index_of = {wnid: i for i, wnid in enumerate(classes)}
    truth = []
    for line, text in enumerate(truth_path.read_text().splitlines(), start=1):
        if text.strip():
            try:
                truth.append(index_of[wnid_of_id[int(text)]])
            except (ValueError, KeyError):
                message = f"{truth_path} line {line}: {text.strip()!r} is not a leaf ILSVRC2012_ID of {meta_path}"
                raise DataError(message) from None
    records = []
    for entry in os.scandir(folder):
        match = VAL_IMAGE_RE.fullmatch(entry.name)
        if match:
            number = int(match.group(1))
            if not 1 <= number <= len(truth):
                raise DataError(f"{truth_path} has no line for {Path(folder, entry.name)}")
            records.append(ImageRecord(Path(folder, entry.name), truth[number - 1], Path(entry.name).stem))
    return _finish(records, folder), classes


_FINDERS = {
    "torchvision_imagenet": (_find_torchvision, _load_wnid_folders),
    "imagefolder": (_find_imagefolder, _load_wnid_folders),
    "loc_solution_csv": (_find_loc_csv, _load_loc_csv),
    "devkit_ground_truth": (_find_devkit, _load_devkit),
}


def _check_root(root) -> Path:
    root = Path(root).expanduser()
    if not root.exists():
        raise DataError(f"data folder does not exist: {root}")
    if not root.is_dir():
        raise DataError(f"data folder is not a directory: {root}")
    return root


def _detect(root: Path):
    for layout in _DETECTION_ORDER:
        found = _FINDERS[layout][0](root)
        if found is not None:
            return layout, found
    looked_for = "; ".join(f"{name} ({LAYOUT_DESCRIPTIONS[name]})" for name in _DETECTION_ORDER)
    raise DataError(f"no known ImageNet validation layout in {root}; looked for: {looked_for}")


def detect_layout(root) -> str:
    """Name of the layout of ``root`` (see :data:`LAYOUTS`); :class:`DataError` if it has none of them.

    Tried in this order: torchvision_imagenet, imagefolder, loc_solution_csv, devkit_ground_truth.
    """
    return _detect(_check_root(root))[0]


def load_imagenet_val(root, transform=None, limit=None, seed=0) -> ImageDataset:
    """The ImageNet validation images under ``root``, in whichever layout of :data:`LAYOUTS` it has.

    With ``limit``, a class-balanced subset of that many images (see :func:`balanced_subset`).
    """
    root = _check_root(root)
    layout, found = _detect(root)
    records, classes = _FINDERS[layout][1](*found)
    return ImageDataset(balanced_subset(records, limit, seed), classes, root, layout, transform)


def image_folder(root, transform=None, limit=None, seed=0) -> ImageDataset:
    """A generic ImageFolder: ``root/<class name>/**/<image>``, for any class names.

    Classes are the sorted non-hidden sub-folders of ``root``; images are files with an extension in
    :data:`bagrepro.data.images.IMAGE_EXTENSIONS` (any case). An image's id is its path relative to
    ``root`` without the extension, with '/' separators.
    """
    root = _check_root(root)
    classes = _subdirs(root)
    if not classes:
        raise DataError(f"no class folders in {root} (expected root/<class name>/<image files>)")
    records = _class_folder_records(root, enumerate(classes), lambda p: p.relative_to(root).with_suffix("").as_posix())
    return ImageDataset(balanced_subset(records, limit, seed), classes, root, "imagefolder", transform)


def load_images(root, transform=None, limit=None, seed=0) -> ImageDataset:
    """``--data`` of a profile that takes any images: an ImageNet layout when ``root`` is one (then
    1000-way labels, as :func:`load_imagenet_val`), else a generic :func:`image_folder`.

    ``root`` is an ImageNet layout when :func:`detect_layout` finds one, except that a folder of class
    folders counts as ImageNet only when every class folder is named by a wnid (``cats/``, ``dogs/``
    and ``n01440764/`` together are a user's classes). A folder of wnid folders one of which is not an
    ILSVRC-2012 synset is a :class:`DataError` naming it.
    """
    root = _check_root(root)
    try:
        layout, found = _detect(root)
    except DataError:
        return image_folder(root, transform, limit, seed)
    if layout == "imagefolder" and any(not WNID_RE.fullmatch(name) for name in _subdirs(found[0])):
        return image_folder(root, transform, limit, seed)
    records, classes = _FINDERS[layout][1](*found)
    return ImageDataset(balanced_subset(records, limit, seed), classes, root, layout, transform)
