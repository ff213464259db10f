"""The experiment registry: what an experiment is (:class:`Experiment`), how experiments are found
(by name, with :mod:`importlib`: the ``experiments`` package beside ``bagrepro``; no harness module
imports an experiment), the order they run in (``needs`` first), and their settings on a profile.

An experiment module in ``experiments/`` defines ``EXPERIMENT = Experiment(...)`` with ``run(ctx)``
(compute; write its tables through ``ctx.write_csv``) and ``make_figures(results_dir, figures_dir)``
(read CSVs only; write figures). Its ``settings`` is a frozen dataclass whose defaults are the
paper's protocol; the runner applies the profile's overrides (checked:
:mod:`bagrepro.core.settings`) and hands the result over as ``ctx.settings``. ``needs`` names
experiments whose results it reuses: those run first when both are selected (no experiment imports
another; what several share, such as clean predictions, is a library service,
:mod:`bagrepro.harness.predictions`). An experiment that computes its units through
``ctx.map_units`` can declare ``shardable=True``: under torchrun its units are then dealt to all
processes (see :mod:`bagrepro.harness.distributed`).
"""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from bagrepro.core import settings as settings_schema
from bagrepro.core.errors import ConfigError
from bagrepro.core.settings import NoSettings
from bagrepro.harness.profiles import Profile


#: the repository: the ``experiments`` package sits here, beside ``bagrepro``
REPO_ROOT = Path(__file__).resolve().parents[2]



@dataclass(frozen=True)
class Experiment:
    """One experiment of the paper. ``paper_ref`` names the figure/table it reproduces; ``question``
    says in one sentence what it tests; ``report_table(results_dir)`` returns the comparison table (or a list of tables, shown in order)
    of the report (columns ending in ``ours``, ``paper``, ``difference``; CSVs only), or None.
    ``settings``: a frozen dataclass type whose defaults are the paper's protocol. ``needs``: names
    of experiments whose results this one reuses (they run first when both are selected)."""

    name: str
    title: str
    paper_ref: str
    run: Callable[["RunContext"], None]
    make_figures: Callable[[Path, Path], list[Path]]
    question: str = ""
    report_table: Callable[[Path], "object"] | None = None
    settings: type = NoSettings
    needs: tuple[str, ...] = ()
    #: under torchrun, its units are dealt to all ranks (it must compute them through
    #: ``ctx.map_units``); an experiment that is not shardable runs on rank 0 alone
    shardable: bool = False
    #: ``plan(ctx) -> list[bagrepro.harness.plan.Work]``: the work a run would do, without doing it (--plan)
    plan: Callable[["RunContext"], list] | None = None
    #: False for an extension beyond the paper's figures (the attribution benchmark, which the paper
    #: only proposes): it runs when named or with ``--experiment all``, not in a plain run, so that the
    #: default run stays the paper's experiments and keeps its time (the demo's cold run: minutes)
    in_default_run: bool = True
    #: ``plan_notes(ctx) -> list[str]``: lines --plan prints after the estimate (e.g. the images a
    #: comparison needs to resolve the paper's differences)
    plan_notes: Callable[["RunContext"], list] | None = None
    #: what the paper leaves open that is not a setting, and what we do there, each labelled
    #: "ours" or "our reading" (the settings say theirs in their fields: bagrepro.core.settings)
    open_choices: tuple[str, ...] = ()


_EXPERIMENTS: dict[str, Experiment] = {}


def register_experiment(experiment: Experiment) -> Experiment:
    if experiment.name in _EXPERIMENTS and _EXPERIMENTS[experiment.name] is not experiment:
        raise ConfigError(f"experiment name '{experiment.name}' is registered twice")
    if not (dataclasses.is_dataclass(experiment.settings) and experiment.settings.__dataclass_params__.frozen):
        raise ConfigError(f"experiment '{experiment.name}': settings must be a frozen dataclass")
    _EXPERIMENTS[experiment.name] = experiment
    return experiment


def _in_dependency_order(experiments: dict[str, Experiment]) -> list[Experiment]:
    """Every experiment after those it ``needs``; otherwise by name (a stable, documented order)."""
    ordered: list[Experiment] = []
    visiting: set[str] = set()

    def visit(name: str, wanted_by: str | None) -> None:
        if any(e.name == name for e in ordered):
            return
        if name not in experiments:
            raise ConfigError(f"experiment '{wanted_by}' needs '{name}', which is not registered")
        if name in visiting:
            raise ConfigError(f"experiments need each other in a cycle through '{name}'")
        visiting.add(name)
        for need in experiments[name].needs:
            visit(need, name)
        visiting.discard(name)
        ordered.append(experiments[name])

    for name in sorted(experiments):
        visit(name, None)
    return ordered


def discover_experiments() -> dict[str, Experiment]:
    """Import every module of the ``experiments`` package; return the registry in run order."""
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))
    package = importlib.import_module("experiments")
    for module_info in pkgutil.iter_modules(package.__path__):
        module = importlib.import_module(f"experiments.{module_info.name}")
        if hasattr(module, "EXPERIMENT"):
            register_experiment(module.EXPERIMENT)
    return {e.name: e for e in _in_dependency_order(_EXPERIMENTS)}


def select_experiments(names: list[str]) -> list[Experiment]:
    """The named experiments in run order; none named: those ``in_default_run`` (the paper's);
    'all': every registered one, extensions included."""
    registry = discover_experiments()
    if not names:
        return [e for e in registry.values() if e.in_default_run]
    if "all" in names:
        return list(registry.values())
    unknown = [n for n in names if n not in registry]
    if unknown:
        raise ConfigError(f"unknown experiment '{unknown[0]}'; experiments: {', '.join(registry)}, all")
    return [e for e in registry.values() if e.name in names]


def experiment_settings(experiment: Experiment, profile: Profile):
    """The experiment's settings on ``profile``: its paper defaults with the profile's overrides."""
    return settings_schema.resolve(experiment.settings, profile.overrides(experiment.name),
                                   f"profile '{profile.name}', experiment '{experiment.name}'")


def check_profile(profile: Profile) -> None:
    """Every experiment the profile sets must exist and every setting must fit (ConfigError)."""
    registry = discover_experiments()
    for name in profile.settings:
        if name not in registry:
            raise ConfigError(f"profile '{profile.name}' sets unknown experiment '{name}'; "
                              f"experiments: {', '.join(registry)}")
        experiment_settings(registry[name], profile)


def protocol_markdown(experiments, profiles) -> str:
    """``docs/protocol.md``: per experiment, every setting with its default and whose that default is
    (the paper's, with where; ours, with why; mechanics), the value each profile sets where it
    changes it, and the open choices that are not settings. Made from the code
    (``run_all.py --protocol``), so it cannot drift."""
    lines = ["# The protocol: what the paper states, what it leaves open, what we chose", "",
             "Made by `python run_all.py --protocol` from the experiments' `Settings` (each field declares "
             "whose its default is) and their `open_choices`; `tests/test_settings.py` checks that this page "
             "is current. *paper, X*: the paper states it in X; *ours*: the paper leaves it open and this is "
             "our choice, with why; *mechanics*: how the work is done, not what it computes.", ""]
    for experiment in experiments:
        lines += [f"## {experiment.name} ({experiment.paper_ref}): {experiment.title}", ""]
        rows = settings_schema.describe(experiment.settings())
        if rows:
            values = {profile.name: dataclasses.asdict(experiment_settings(experiment, profile)) for profile in profiles}
            lines += ["| setting | default | whose | " + " | ".join(values) + " |", "|---|---|---|" + "---|" * len(values)]
            for field, _, default, _, whose in rows:
                changed = [repr(value[field]) if value[field] != default else "" for value in values.values()]
                lines.append(f"| `{field}` | `{default!r}` | {whose} | " + " | ".join(changed) + " |")
            lines.append("")
        lines += [f"- {choice}" for choice in experiment.open_choices]
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def methods_markdown() -> str:
    """The README's table of attribution methods (``run_all.py --methods-table``; ``tests/test_readme.py``
    checks the README holds it): per registered method its family, the library that computes it, its
    default settings (the options that change results; the mechanics ones, which bound memory or seed
    the draws, are left out: :data:`bagrepro.methods.attribution.MECHANICS_OPTIONS`) and its passes
    per image."""
    from bagrepro.methods import attribution

    lines = ["| method | family | library | defaults | passes per image |", "|---|---|---|---|---|"]
    for name in attribution.attribution_methods():
        method = attribution.get_attribution(name)
        defaults = ", ".join(f"{option} {value}" for option, value in method.options
                             if option not in attribution.MECHANICS_OPTIONS) or "-"
        lines.append(f"| `{name}` | {method.family} | {method.library} | {defaults} | {method.passes} |")
    return "\n".join(lines) + "\n"
