"""Importing a user's Python file (a ``--plugin``): one clear error line when it cannot be imported."""

from __future__ import annotations

import hashlib
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

from bagrepro.core.errors import BagreproError, ConfigError


def import_user_file(path: str | Path, what: str = "plugin file") -> ModuleType:
    """Import the Python file at ``path`` as a fresh module and return it. ConfigError (one line:
    the file, the exception and where) for a missing file or one that fails on import; a
    :class:`BagreproError` the file raises (e.g. a name registered twice) passes through."""
    path = Path(path).expanduser().resolve()
    if not path.is_file():
        raise ConfigError(f"{what} {path} does not exist")
    digest = hashlib.sha1(str(path).encode()).hexdigest()[:10]
    module_name = f"bagrepro_plugin_{path.stem}_{digest}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise ConfigError(f"{what} {path} is not a Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except BagreproError:
        sys.modules.pop(module_name, None)
        raise
    except Exception as error:  # a user's file: say where it broke, in one line
        sys.modules.pop(module_name, None)
        frames = [frame for frame in _frames(error.__traceback__) if frame[0] == str(path)]
        where = f" (line {frames[-1][1]})" if frames else ""
        raise ConfigError(f"cannot import {what} {path}{where}: {type(error).__name__}: {error}") from error
    return module


def _frames(traceback):
    while traceback is not None:
        yield traceback.tb_frame.f_code.co_filename, traceback.tb_lineno
        traceback = traceback.tb_next
