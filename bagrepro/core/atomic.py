"""The one atomic writer: every file bagrepro writes (CSVs, sidecars, arrays, figures, the report,
the demo world, trained weights, cached heatmaps) goes through :func:`atomic_path`, so a reader never
sees a half-written file and an interrupted write leaves nothing behind but the old file."""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

#: temporary files are named ``.<target name>.<random>.tmp`` beside their target
TEMP_SUFFIX = ".tmp"


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` (its folder is created); rename it onto ``path`` only
    if the block succeeds, and remove it otherwise."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
    os.close(handle)
    try:
        yield Path(temporary)
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)
