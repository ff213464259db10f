"""The one cache folder for everything bagrepro makes (demo world, trained demo zoo, heatmaps).

``$BAGREPRO_CACHE`` or ``~/.cache/bagrepro``. Every entry lives in a sub-folder named by a hash of
everything that determines it (:func:`config_hash`), so a changed recipe never reuses a stale entry
and a fresh clone reuses what an earlier one made. Downloaded weights live in torch hub's cache.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path


def cache_dir() -> Path:
    """Root of bagrepro's cache (created on demand by the writers, not here)."""
    return Path(os.environ.get("BAGREPRO_CACHE", Path.home() / ".cache" / "bagrepro")).expanduser()


def _jsonable(value):
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {k: _jsonable(v) for k, v in dataclasses.asdict(value).items()}
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in sorted(value.items())}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 hex digest of a file's bytes (read in 1 MiB blocks); OSError if it cannot be read."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def config_hash(*parts, length: int = 12) -> str:
    """A short, stable SHA-256 hex digest of dataclasses / dicts / lists / scalars."""
    text = json.dumps([_jsonable(p) for p in parts], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:length]
