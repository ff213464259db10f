"""Write ``bagrepro/data/ilsvrc2012_classes.tsv``: the 1000 ILSVRC-2012 synsets with their names.

Run once (the table is shipped with the package; this script records how it was made)::

    python -m bagrepro.data.make_ilsvrc2012_classes [SYNSETS_TXT]

``SYNSETS_TXT`` lists the 1000 classification synsets, one WordNet id a line (``#`` lines are
comments), in any order (the devkit's is fine): sorted, they give the class index of torchvision's
and the released BagNets' 1000-way outputs. The human-readable names are torchvision's
(``ResNet50_Weights.IMAGENET1K_V1.meta["categories"]``, in class-index order; nothing is downloaded).
"""

from __future__ import annotations

import sys
from pathlib import Path

from bagrepro.data.synsets import TABLE_PATH, WNID_RE

#: the project's copy of the devkit-order list: ``../shared/`` beside the repository
DEFAULT_SOURCE = Path(__file__).resolve().parents[3] / "shared" / "ilsvrc2012_synsets.txt"


def read_wnids(path: Path) -> list[str]:
    wnids = [line.strip() for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]
    bad = next((w for w in wnids if not WNID_RE.fullmatch(w)), None)
    if bad is not None:
        raise SystemExit(f"{path}: {bad!r} is not a WordNet id")
    if len(wnids) != 1000 or len(set(wnids)) != 1000:
        raise SystemExit(f"{path}: expected 1000 distinct synsets, got {len(wnids)} ({len(set(wnids))} distinct)")
    return sorted(wnids)


def torchvision_names() -> list[str]:
    import torchvision

    names = list(torchvision.models.ResNet50_Weights.IMAGENET1K_V1.meta["categories"])
    if len(names) != 1000 or any("\t" in n or "\n" in n for n in names):
        raise SystemExit("torchvision's IMAGENET1K_V1 categories are not 1000 one-line names")
    return names


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    wnids = read_wnids(Path(argv[0]) if argv else DEFAULT_SOURCE)
    names = torchvision_names()
    lines = ["index\twnid\tname"] + [f"{i}\t{w}\t{n}" for i, (w, n) in enumerate(zip(wnids, names))]
    TABLE_PATH.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"wrote {TABLE_PATH} ({len(wnids)} synsets)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
