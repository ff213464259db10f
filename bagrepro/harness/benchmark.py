"""The attribution benchmark from a notebook: :func:`benchmark_attribution` scores your callable beside
every registered method and returns the benchmark's tables (what ``run_all.py --plugin FILE.py
--experiment attribution_truth`` writes as CSVs)."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Callable

import pandas as pd
import torch

from bagrepro.core.errors import ConfigError
from bagrepro.harness.registry import discover_experiments
from bagrepro.harness.sources import RunOptions
from bagrepro.harness.stages import run_stages
from bagrepro.methods import attribution

EXPERIMENT = "attribution_truth"
#: the CSVs returned, by table name
TABLES = ("per_image", "summary", "rankings", "proxies")


def as_method(explain: Callable, name: str, description: str | None = None) -> str:
    """Register ``explain(model, images, targets) -> maps`` as attribution method ``name`` (family "your
    method"; a name already taken by another function is a ConfigError). ``maps``: [B, H, W] (put on
    the three channels as map / 3) or [B, 3, H, W], a tensor or anything ``torch.as_tensor`` takes."""

    def compute(net, images, targets):
        maps = torch.as_tensor(explain(net, images, targets)).to(images)
        if maps.dim() == 3:
            maps = (maps[:, None] / images.shape[1]).expand(-1, images.shape[1], -1, -1)
        if maps.shape != images.shape:
            raise ConfigError(f"method {name!r} returned maps of shape {tuple(maps.shape)}; expected "
                              f"[B, H, W] or {list(images.shape)}")
        return maps

    compute.__doc__ = description or explain.__doc__ or f"{name}: {explain.__qualname__} (no docstring)"
    compute.__wrapped__ = explain  # the unit key hashes the source of what you wrote
    if name in attribution.attribution_methods():
        if getattr(attribution.get_attribution(name).compute, "__wrapped__", None) is explain:
            return name
        attribution.unregister_attribution(name)  # a new version of your method (a notebook cell run again)
    attribution.register_attribution(name, passes="yours")(compute)
    return name


def benchmark_attribution(explain: Callable, name: str = "my_method", *, profile: str = "demo",
                          methods: tuple[str, ...] | None = None, models: list[str] | None = None,
                          out: str | Path | None = None, **settings) -> dict[str, pd.DataFrame]:
    """Score ``explain(model, images, targets) -> maps`` with the attribution benchmark.

    explain: your method. ``model`` is the model (eval mode, a copy sharing its weights), ``images``
    [B, 3, H, W] its normalised input, ``targets`` [B] the classes to explain; it returns [B, H, W] or
    [B, 3, H, W] maps (higher = more evidence for the class).
    name: what the tables call it. profile: 'demo' (default), 'smoke', 'paper', ... methods: the other
    methods scored beside it (default: every registered one). models: zoo names (default: the
    profile's). out: the results folder (default: a temporary one); a folder that holds an earlier
    run resumes it, so the other methods' finished units are reused. settings: attribution_truth
    settings to change (e.g. ``num_images=12``; a misspelt one is a ConfigError).

    Returns table name -> DataFrame: 'per_image', 'summary', 'rankings', 'proxies' (Part C, where the
    run has BagNets) and 'leaderboard' (the report's first table).
    """
    as_method(explain, name)
    scored = None if methods is None else tuple(dict.fromkeys((*methods, name)))
    overrides = dict(settings, **({"methods": scored} if scored is not None else {}))
    folder = Path(out) if out is not None else Path(tempfile.mkdtemp(prefix="bagrepro_benchmark_"))
    from bagrepro.harness.profiles import PROFILES, get_profile

    base = get_profile(profile)
    changed = dict(base.overrides(EXPERIMENT))
    changed.update(overrides)
    custom = _with_settings(base, changed)
    try:
        run_stages(RunOptions(profile=custom, experiments=[EXPERIMENT], models=models, out=folder, quiet=True),
                   log=lambda line: None)
    finally:  # the derived profile names your method: it lives only for this call
        if custom != base.name:
            PROFILES.pop(custom, None)
    results = folder / "results" / EXPERIMENT
    tables = {table: pd.read_csv(results / f"{table}.csv") for table in TABLES if (results / f"{table}.csv").is_file()}
    experiment = discover_experiments()[EXPERIMENT]
    tables["leaderboard"] = experiment.report_table(results)[0]
    return tables


def _with_settings(profile, attribution_settings: dict) -> str:
    """Register a copy of ``profile`` whose attribution_truth settings are ``attribution_settings``
    (the caller removes it from PROFILES afterwards); return its name (``profile``'s own when nothing
    changes)."""
    import dataclasses
    import hashlib

    from bagrepro.harness.profiles import PROFILES, frozen, register_profile

    if attribution_settings == dict(profile.overrides(EXPERIMENT)):
        return profile.name
    digest = hashlib.sha1(repr(sorted(attribution_settings.items())).encode()).hexdigest()[:8]
    name = f"{profile.name}+{digest}"
    if name not in PROFILES:
        settings = {key: value for key, value in profile.settings.items()}
        settings[EXPERIMENT] = attribution_settings
        register_profile(dataclasses.replace(profile, name=name, settings=frozen(settings)))
    return name
