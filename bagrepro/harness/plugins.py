"""``run_all.py --plugin FILE.py``: one file that registers your models, attribution methods and
experiments, without editing the package.

A plugin file is plain Python: it calls :func:`bagrepro.models.register_model`,
:func:`bagrepro.methods.attribution.register_attribution` and/or
:func:`bagrepro.harness.registry.register_experiment`. :func:`load_plugin` imports it and says
what it added; every experiment then sees the additions (``attribution_truth`` scores a new method
beside every other, on every model of the run).
"""

from __future__ import annotations

from pathlib import Path

from bagrepro.core.errors import ConfigError
from bagrepro.core.userfiles import import_user_file
from bagrepro.harness.registry import _EXPERIMENTS, discover_experiments
from bagrepro.methods.attribution import attribution_methods
from bagrepro.models import list_models

#: what a plugin can register: kind -> the names registered now
REGISTRIES = {
    "models": lambda: set(list_models()),
    "attribution methods": lambda: set(attribution_methods()),
    "experiments": lambda: set(_EXPERIMENTS),
}


def load_plugin(path: str | Path) -> dict[str, list[str]]:
    """Import plugin file ``path``; return kind -> the names it registered (kinds: :data:`REGISTRIES`).
    ConfigError (one line) if the file is missing, fails to import, or registers nothing."""
    discover_experiments()  # the package's own experiments first, so only the plugin's count as new
    before = {kind: names() for kind, names in REGISTRIES.items()}
    import_user_file(path)
    added = {kind: sorted(names() - before[kind]) for kind, names in REGISTRIES.items()}
    added = {kind: names for kind, names in added.items() if names}
    if not added:
        raise ConfigError(f"plugin file {Path(path).expanduser().resolve()} registered nothing (register models "
                          f"with bagrepro.models.register_model, methods with "
                          f"bagrepro.methods.attribution.register_attribution, experiments with "
                          f"bagrepro.harness.registry.register_experiment)")
    return added


def describe(added: dict[str, list[str]]) -> str:
    """'2 models (a, b), 1 attribution method (m)': what :func:`load_plugin` returned, in words."""
    parts = []
    for kind, names in added.items():
        label = kind if len(names) != 1 else kind[:-1]
        parts.append(f"{len(names)} {label} ({', '.join(names)})")
    return ", ".join(parts)
