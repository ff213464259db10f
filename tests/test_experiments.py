"""Every registered experiment, through the CLI a user types, on the smoke profile: its run, its
CSVs (non-empty, with a provenance sidecar that names it and its settings), its figures (made from
the CSVs alone) and its section of the report. A new experiment module is tested here without a
line of new test code."""

from __future__ import annotations

import dataclasses
import json

import pandas as pd
import pytest

import run_all
from bagrepro.harness.profiles import get_profile
from bagrepro.harness.stages import plan_units
from bagrepro.harness.sources import RunOptions
from bagrepro.harness.registry import discover_experiments, experiment_settings

EXPERIMENTS = list(discover_experiments().values())


@pytest.fixture(scope="module")
def smoke_out(tmp_path_factory):
    """One results folder for the whole module: experiments that need another reuse its units."""
    return tmp_path_factory.mktemp("smoke")


def planned_passes(experiment, out) -> dict[str, dict[str, int]]:
    """What ``--plan`` says the experiment will do on the smoke profile now: passes per model."""
    _, rows = plan_units(RunOptions(profile="smoke", experiments=[experiment.name], out=out, quiet=True))
    totals: dict[str, dict[str, int]] = {}
    for _, work in rows:
        model = totals.setdefault(work.model, {"forward": 0, "backward": 0})
        model["forward"] += work.forward
        model["backward"] += work.backward
    return totals


@pytest.mark.parametrize("experiment", EXPERIMENTS, ids=[e.name for e in EXPERIMENTS])
def test_every_experiment_runs_writes_csvs_figures_and_its_report_section(experiment, smoke_out, capsys):
    assert experiment.plan is not None, f"{experiment.name} declares no plan for --plan"
    planned = planned_passes(experiment, smoke_out)
    code = run_all.main(["--profile", "smoke", "--experiment", experiment.name, "--quiet", "--out", str(smoke_out)])
    output = capsys.readouterr().out
    assert code == 0
    assert f"[{experiment.name}] {experiment.title}" in output  # the runner names it ...
    assert f"  {experiment.name} " in output.split("time per stage:")[1]  # ... and times it

    results = smoke_out / "results" / experiment.name
    tables = sorted(results.glob("*.csv"))
    assert tables, f"{experiment.name} wrote no CSV"
    settings = dataclasses.asdict(experiment_settings(experiment, get_profile("smoke")))
    for table in tables:
        assert len(pd.read_csv(table)) > 0, f"{table.name} is empty"
        meta = json.loads(table.with_suffix(".meta.json").read_text())
        assert meta["experiment"] == experiment.name and meta["profile"] == "smoke"
        assert json.loads(json.dumps(settings)) == meta["settings"]
        assert meta["wall_time_s"] >= 0
    assert not list(results.rglob("*.tmp"))
    # --plan said what the run would do: the passes counted in the run (last sidecar written) agree
    counted = max((json.loads(t.with_suffix(".meta.json").read_text())["passes"] for t in tables),
                  key=lambda passes: sum(p["forward"] + p["backward"] for p in passes.values()))
    assert counted == planned

    figures = sorted((smoke_out / "figures" / experiment.name).glob("*.png"))
    assert figures and all(png.stat().st_size > 5_000 for png in figures)
    report = (smoke_out / "figures" / "report.html").read_text()
    section = report.split(f'<h2 id="{experiment.name}">')[1].split("<h2")[0]
    assert experiment.paper_ref in report and "<img" in section and "Not run" not in section


@pytest.mark.parametrize("experiment", EXPERIMENTS, ids=[e.name for e in EXPERIMENTS])
def test_experiments_name_only_registered_needs_and_take_frozen_settings(experiment):
    registry = discover_experiments()
    assert all(need in registry and need != experiment.name for need in experiment.needs)
    order = list(registry)
    assert all(order.index(need) < order.index(experiment.name) for need in experiment.needs)
    defaults = experiment.settings()  # every field has a default: the paper's protocol
    assert dataclasses.is_dataclass(defaults) and type(defaults).__dataclass_params__.frozen
