"""One run per output folder: a lock file, and the clean-up of what killed runs left behind.

``<out>/.bagrepro.harness.lock`` holds the holder's host, PID and start time (JSON). It is created with
``O_CREAT | O_EXCL`` (atomic on local file systems), removed when the run ends, and taken over when
it is stale: written on this host by a process that no longer exists (a run killed with -9). A lock
from another host is never taken over (its process cannot be checked from here): the error says
which file to remove if that run is gone. Under torchrun the ranks of one run share rank 0's lock.

While the lock is held, the temporary files that killed runs left beside their targets
(``.<name>.<random>.tmp``, :mod:`bagrepro.core.atomic`) under ``results/`` and ``figures/`` are removed:
no other run can be writing them.
"""

from __future__ import annotations

import json
import os
import socket
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from bagrepro.core.atomic import TEMP_SUFFIX
from bagrepro.core.errors import ConfigError

LOCK_NAME = ".bagrepro.harness.lock"


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: it exists
        return True
    return True


def _holder(path: Path) -> dict | None:
    """The lock's content, or None when it vanished or cannot be parsed (a half-written lock)."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}


#: seconds after which a lock file that cannot be parsed counts as left by a killed run (a live run
#: writes its few bytes right after creating the file)
UNREADABLE_LOCK_AGE_S = 10.0


def _is_stale(holder: dict, path: Path) -> bool:
    if not holder:  # unreadable: being written by a run starting now, or left by one killed doing so
        try:
            return time.time() - path.stat().st_mtime > UNREADABLE_LOCK_AGE_S
        except FileNotFoundError:
            return True
    return holder.get("host") == socket.gethostname() and not _process_exists(int(holder.get("pid", -1)))


@contextmanager
def output_lock(out: Path, log=print) -> Iterator[Path]:
    """Hold ``<out>/.bagrepro.harness.lock`` for the block; ConfigError naming the holder if another live
    run has it. A stale lock is taken over with a line that says so."""
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ConfigError(f"cannot create the output folder {out} ({error.strerror or error})") from None
    path = out / LOCK_NAME
    mine = {"host": socket.gethostname(), "pid": os.getpid(),
            "started": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
    for _ in range(3):  # a stale lock removed by two runs at once: try again
        try:
            handle = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = _holder(path)
            if holder is None:
                continue
            if not _is_stale(holder, path):
                raise ConfigError(
                    f"{out} is in use by another run (host {holder.get('host')}, PID {holder.get('pid')}, "
                    f"started {holder.get('started')}); wait for it, use another --out, or remove {path} "
                    f"if that run is gone") from None
            log(f"[lock] taking over the stale lock of PID {holder.get('pid')} ({path})")
            path.unlink(missing_ok=True)
            continue
        except OSError as error:
            raise ConfigError(f"cannot write in the output folder {out} ({error.strerror or error})") from None
        with os.fdopen(handle, "w") as stream:
            json.dump(mine, stream)
        break
    else:
        raise ConfigError(f"cannot take the lock {path}; remove it if no run uses {out}")
    try:
        yield path
    finally:
        if _holder(path) == mine:
            path.unlink(missing_ok=True)


def remove_stale_temporaries(out: Path) -> list[Path]:
    """Remove the temporary files killed runs left under ``<out>/results`` and ``<out>/figures``
    (call it with the lock held); return what was removed."""
    removed = []
    for folder in (Path(out) / "results", Path(out) / "figures"):
        if folder.is_dir():
            for path in folder.rglob(f".*{TEMP_SUFFIX}"):
                path.unlink(missing_ok=True)
                removed.append(path)
    return removed
