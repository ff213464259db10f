"""Sharding a run with torchrun: the same CSVs as one process, each unit computed once."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from bagrepro.core.errors import DataError
from bagrepro.harness.results import UnitStore, read_unit_frames

REPO = Path(__file__).resolve().parents[1]
# sharded: accuracy, masking, scrambling (textures made on rank 0 first), top_patches, attribution_truth;
# rank 0 alone: error_distribution (which reads the accuracy units outside a sharded stage)
EXPERIMENTS = ("accuracy", "masking", "scrambling", "top_patches", "error_distribution", "attribution_truth")


def _run(prefix: list[str], out: Path, experiments=EXPERIMENTS, extra=()) -> subprocess.CompletedProcess:
    args = [a for name in experiments for a in ("--experiment", name)] + list(extra)
    # one thread per process in both runs: float sums in another thread count differ in the last bit
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([*prefix, str(REPO / "run_all.py"), "--profile", "smoke", "--quiet", "--out", str(out), *args],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def test_torchrun_gives_the_csvs_of_one_process(tmp_path):
    single = _run([sys.executable], tmp_path / "single")
    assert single.returncode == 0, single.stderr[-2000:]
    sharded = _run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"],
                   tmp_path / "sharded")
    assert sharded.returncode == 0, sharded.stderr[-2000:]
    assert sharded.stdout.count("time per stage") == 1  # rank 0 reports, rank 1 is quiet

    results = {run: tmp_path / run / "results" for run in ("single", "sharded")}
    tables = sorted(p.relative_to(results["single"]) for p in results["single"].glob("*/*.csv"))
    assert len(tables) >= 10
    for table in tables:
        assert (results["sharded"] / table).read_bytes() == (results["single"] / table).read_bytes(), table
    # every unit exists once, in the same store; rank 1 must have computed its share (rank 0 only
    # computes every second unit of a sharded experiment: a missing one would have failed the run)
    units = {run: sorted(p.relative_to(results[run]) for p in results[run].glob("*/.units/*/*.csv"))
             for run in results}
    assert units["single"] == units["sharded"] and len(units["single"]) >= 20
    assert not list(results["sharded"].rglob("*.tmp"))
    meta = pd.read_json(results["sharded"] / "masking" / "curves.meta.json", typ="series")
    assert meta["world_size"] == 2
    for figure in ("masking/fig8_masking_curves.png", "top_patches/fig3_top_patches.png", "report.html"):
        assert (tmp_path / "sharded" / "figures" / figure).is_file()

    # --force under torchrun: rank 0 clears the old units before any rank computes new ones
    stale = results["sharded"] / "accuracy" / "predictions.csv"
    before = stale.read_bytes()
    unit_files = sorted(results["sharded"].glob("accuracy/.units/*/*.csv"))
    for unit in unit_files:  # an old unit that --force must not reuse
        unit.write_text(unit.read_text().replace("smoke_", "stale_"))
    forced = _run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"],
                  tmp_path / "sharded", experiments=("accuracy",), extra=("--force",))
    assert forced.returncode == 0, forced.stderr[-2000:]
    assert stale.read_bytes() == before and all("stale_" not in unit.read_text() for unit in unit_files)


def test_a_missing_unit_is_one_clear_error(tmp_path):
    store = UnitStore(tmp_path / "units")
    store.save("a", pd.DataFrame({"x": [1]}))
    assert read_unit_frames(store, ["a"])["a"]["x"].tolist() == [1]
    with pytest.raises(DataError, match="unit 'b' is missing .* run the same command again"):
        read_unit_frames(store, ["a", "b"])
