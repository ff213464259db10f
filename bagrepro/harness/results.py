"""Results I/O: atomic long-format CSVs with a provenance sidecar, and resumable units of work.

Layout of one experiment's folder ``results/<experiment>/``:

- ``<table>.csv``: long format, one row per observation; written atomically (temp file + rename);
- ``<table>.meta.json``: provenance (resolved config, profile, seed, versions, commit, device, time);
- ``.units/<config hash>/<unit>.csv`` (and ``<unit>.npz`` for arrays): finished units (one model, or
  one model x method). A unit's file is written atomically once the unit is complete, then its
  SHA-256 beside it (``<file>.sha256``): a file with a matching checksum is the "done" marker. An
  interrupted run loses at most the unit in flight, a changed config hashes to a different folder,
  and a damaged unit file (truncated, corrupted, or without its checksum) is reported in one line,
  removed and computed again.
"""

from __future__ import annotations

import json
import platform
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pandas as pd

from bagrepro.core.atomic import atomic_path
from bagrepro.core.cache import file_sha256
from bagrepro.core.errors import DataError

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
    root = root or Path(__file__).resolve().parents[2]  # the repository
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
    """Finished units of one experiment under one config: ``folder/<unit>.csv`` (and ``.npz``), each
    with its checksum ``<file>.sha256`` written after it (see the module docstring)."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        #: files this store wrote or verified, with the (size, mtime) they had then: each unit file is
        #: hashed once per run, not on every ``done``/``load`` (units of the paper profile reach GBs)
        self._verified: dict[Path, tuple[int, int]] = {}

    @staticmethod
    def _stamp(path: Path) -> tuple[int, int]:
        stat = path.stat()
        return stat.st_size, stat.st_mtime_ns

    def _path(self, unit: str) -> Path:
        safe = "".join(c if c.isalnum() or c in "-_.=" else "_" for c in unit)
        return self.folder / f"{safe}.csv"

    @staticmethod
    def _checksum_path(path: Path) -> Path:
        return path.with_name(path.name + ".sha256")

    def _seal(self, path: Path) -> None:
        with atomic_path(self._checksum_path(path)) as temporary:
            temporary.write_text(file_sha256(path) + "\n")
        self._verified[path] = self._stamp(path)

    def _intact(self, path: Path) -> bool:
        """Whether ``path`` is there with a matching checksum; a damaged file is reported in one line
        and removed (so that it is computed again), a missing one is simply not done."""
        checksum = self._checksum_path(path)
        if not path.is_file():
            checksum.unlink(missing_ok=True)
            return False
        if self._verified.get(path) == self._stamp(path) and checksum.is_file():
            return True
        try:
            intact = checksum.read_text().strip() == file_sha256(path)
        except OSError:  # no checksum: killed between the file and its checksum, or written by hand
            intact = False
        if not intact:
            print(f"[units] {path} is damaged (its SHA-256 does not match {checksum.name}): computing it again",
                  file=sys.stderr)
            path.unlink(missing_ok=True)
            checksum.unlink(missing_ok=True)
        else:
            self._verified[path] = self._stamp(path)
        return intact

    def done(self, unit: str) -> bool:
        """Whether the unit's frame is there, intact, and so are its arrays if it has any."""
        path = self._path(unit)
        arrays = path.with_suffix(".npz")
        if (arrays.exists() or self._checksum_path(arrays).exists()) and not self._intact(arrays):
            path.unlink(missing_ok=True)  # a unit is its frame and its arrays: both are made again
            self._checksum_path(path).unlink(missing_ok=True)
            return False
        return self._intact(path)

    def save(self, unit: str, frame: pd.DataFrame) -> None:
        path = self._path(unit)
        write_csv(frame, path)
        self._seal(path)

    def load(self, unit: str) -> pd.DataFrame:
        return pd.read_csv(self._path(unit))

    def save_arrays(self, unit: str, arrays: dict) -> None:
        """Arrays that go with a unit (``<unit>.npz``); save them before the unit's frame, whose file
        marks the unit done."""
        path = self._path(unit).with_suffix(".npz")
        write_npz(arrays, path)
        self._seal(path)

    def has_arrays(self, unit: str) -> bool:
        """Whether ``<unit>.npz`` is there, intact (arrays kept without a frame, e.g. a shared input set)."""
        return self._intact(self._path(unit).with_suffix(".npz"))

    def load_arrays(self, unit: str) -> dict:
        import numpy as np

        path = self._path(unit).with_suffix(".npz")
        if not self._intact(path):
            raise DataError(f"unit arrays {path} are missing or damaged: run the same command again")
        with np.load(path) as arrays:
            return dict(arrays)

    def clear(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)
        self._verified.clear()


def read_unit_frames(store: UnitStore, units: list[str]) -> dict[str, pd.DataFrame]:
    """Every unit's frame, by name; a unit that is not there is a DataError naming it (under
    torchrun: a rank stopped before it saved its units)."""
    missing = [unit for unit in units if not store.done(unit)]
    if missing:
        raise DataError(f"unit '{missing[0]}' is missing from {store.folder} ({len(missing)} of {len(units)} "
                        f"units); a process stopped before saving it: run the same command again")
    return {unit: store.load(unit) for unit in units}
