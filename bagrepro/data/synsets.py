"""The 1000 ILSVRC-2012 classification synsets and their human-readable names (torch-free).

Class index = position in the sorted list of WordNet ids: the class order of torchvision's ImageNet
models and of the released BagNets. The table ships with the package (``ilsvrc2012_classes.tsv``,
``index<TAB>wnid<TAB>name``, made by :mod:`bagrepro.data.make_ilsvrc2012_classes`) and is read once,
on first use.

- :data:`IMAGENET_WNIDS`: the 1000 wnids, sorted (a tuple);
- :data:`IMAGENET_NAMES`: their names, in the same order (a tuple);
- :func:`imagenet_index`, :func:`class_name`, :func:`display_name`.
"""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path

from bagrepro.core.errors import DataError

TABLE_PATH = Path(__file__).with_name("ilsvrc2012_classes.tsv")
NUM_CLASSES = 1000
WNID_RE = re.compile(r"n\d{8}")


@cache
def _table() -> tuple[tuple[str, ...], tuple[str, ...], dict[str, int]]:
    try:
        lines = TABLE_PATH.read_text(encoding="utf-8").splitlines()
    except OSError as error:
        raise DataError(f"cannot read the shipped ILSVRC-2012 class table {TABLE_PATH}: {error}") from None
    rows = [line.split("\t") for line in lines[1:] if line.strip()]
    wnids = tuple(row[1] for row in rows)
    names = tuple(row[2] for row in rows)
    if ([int(row[0]) for row in rows] != list(range(NUM_CLASSES)) or list(wnids) != sorted(set(wnids))
            or not all(WNID_RE.fullmatch(w) for w in wnids)):
        raise DataError(f"{TABLE_PATH} is not the 1000 sorted ILSVRC-2012 synsets; "
                        "remake it with python -m bagrepro.data.make_ilsvrc2012_classes")
    return wnids, names, {wnid: index for index, wnid in enumerate(wnids)}


def __getattr__(name: str):  # IMAGENET_WNIDS / IMAGENET_NAMES, read on first use
    if name == "IMAGENET_WNIDS":
        return _table()[0]
    if name == "IMAGENET_NAMES":
        return _table()[1]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def is_imagenet_wnid(wnid: str) -> bool:
    """Whether ``wnid`` is one of the 1000 ILSVRC-2012 classification synsets."""
    return wnid in _table()[2]


def imagenet_index(wnid: str) -> int:
    """The 1000-way class index of ``wnid``; :class:`DataError` (one line) if it is not one of the 1000."""
    try:
        return _table()[2][wnid]
    except KeyError:
        raise DataError(f"{wnid!r} is not one of the 1000 ILSVRC-2012 classification synsets") from None


def class_name(index: int) -> str:
    """The human-readable name of 1000-way class ``index`` (torchvision's names, e.g. 0 -> 'tench')."""
    names = _table()[1]
    if not 0 <= int(index) < len(names):
        raise IndexError(f"ImageNet class index {index} is not in 0..{len(names) - 1}")
    return names[int(index)]


def display_name(class_id) -> str:
    """What CSVs and figures call a class: the ImageNet name of a known wnid ('n01440764' -> 'tench'),
    else the class id itself as a string (a user folder's name, a generated class's label)."""
    key = str(class_id)
    index = _table()[2].get(key)
    return key if index is None else _table()[1][index]
