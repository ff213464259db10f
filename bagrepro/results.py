"""Results I/O: atomic long-format CSVs with a provenance sidecar, and resumable units of work.

Layout of one experiment's folder ``results/<experiment>/``:

- ``<table>.csv``: long format, one row per observation; written atomically (temp file + rename);
- ``<table>.meta.json``: provenance (resolved config, profile, seed, versions, commit, device, time);
- ``.units/<config hash>/<unit>.csv``: finished units (one model, or one model x method). A unit's file is
  written atomically once the unit is complete, so its presence is the "done" marker; an interrupted
  run loses at most the unit in flight, and a changed config hashes to a different folder.
"""

from __future__ import annotations

import json
import platform
import shutil
import subprocess
from importlib import metadata
from pathlib import Path

import pandas as pd

from .atomic import atomic_path
from .errors import DataError

PACKAGES = ("torch", "torchvision", "captum", "numpy", "scipy", "pandas", "matplotlib")


def write_csv(frame: pd.DataFrame, path: Path, meta: dict | None = None) -> Path:
    """Write ``frame`` to ``path`` atomically, and ``meta`` to ``<stem>.meta.json`` beside it.
    (Pure I/O: which process writes under torchrun is the runner's decision.)"""
    path = Path(path)
    with atomic_path(path) as temporary:
        frame.to_csv(temporary, index=False)
    if meta is not None:
        write_json(meta, meta_path(path))
    return path


def write_npz(arrays: dict, path: Path) -> Path:
    """Write named arrays (images, heatmaps a figure needs beside its CSVs) to ``path`` as a
    compressed .npz, atomically."""
    import numpy as np

    path = Path(path)
    with atomic_path(path) as temporary:
        with open(temporary, "wb") as handle:
            np.savez_compressed(handle, **arrays)
    return path


def write_json(data: dict, path: Path) -> None:
    with atomic_path(path) as temporary:
        temporary.write_text(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def meta_path(csv_path: Path) -> Path:
    return Path(csv_path).with_suffix(".meta.json")


def read_csv(path: Path) -> pd.DataFrame:
    """Read a results CSV; a missing one is a DataError naming it (run the experiment first)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"results file {path} is missing; run its experiment first (without --figures-only)")
    return pd.read_csv(path)


def git_commit(root: Path | None = None) -> str:
    root = root or Path(__file__).resolve().parent.parent
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "") if out.returncode == 0 else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


class UnitStore:
    """Finished units of one experiment under one config: ``folder/<unit>.csv``."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)

    def _path(self, unit: str) -> Path:
        safe = "".join(c if c.isalnum() or c in "-_.=" else "_" for c in unit)
        return self.folder / f"{safe}.csv"

    def done(self, unit: str) -> bool:
        return self._path(unit).is_file()

    def save(self, unit: str, frame: pd.DataFrame) -> None:
        write_csv(frame, self._path(unit))

    def load(self, unit: str) -> pd.DataFrame:
        return pd.read_csv(self._path(unit))

    def save_arrays(self, unit: str, arrays: dict) -> None:
        """Arrays that go with a unit (``<unit>.npz``); save them before the unit's frame, whose file
        marks the unit done."""
        write_npz(arrays, self._path(unit).with_suffix(".npz"))

    def has_arrays(self, unit: str) -> bool:
        """Whether ``<unit>.npz`` is there (arrays kept without a frame, e.g. a shared input set)."""
        return self._path(unit).with_suffix(".npz").is_file()

    def load_arrays(self, unit: str) -> dict:
        import numpy as np

        with np.load(self._path(unit).with_suffix(".npz")) as arrays:
            return dict(arrays)

    def clear(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def read_unit_frames(store: UnitStore, units: list[str]) -> dict[str, pd.DataFrame]:
    """Every unit's frame, by name; a unit that is not there is a DataError naming it (under
    torchrun: a rank stopped before it saved its units)."""
    missing = [unit for unit in units if not store.done(unit)]
    if missing:
        raise DataError(f"unit '{missing[0]}' is missing from {store.folder} ({len(missing)} of {len(units)} "
                        f"units); a process stopped before saving it: run the same command again")
    return {unit: store.load(unit) for unit in units}
