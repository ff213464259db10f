"""The demo profile end to end through the CLI, on a tiny world and a one-epoch recipe (the real
world and recipes take minutes; their numbers are in bench/demo_zoo.py and the issue note)."""

from __future__ import annotations

import dataclasses
import json

import pandas as pd
import pytest

import run_all
from bagrepro.demo import DEMO_ROLES, training, zoo
from bagrepro.harness.profiles import PROFILES, stand_ins

MODELS = ["demo_bagnet9", "demo_resnet50"]


def test_demo_is_the_default_profile():
    assert run_all.parse_args([]).profile == "demo" and "demo" in PROFILES


def test_demo_roles_and_models_come_from_the_demo_zoo_table():
    for name, entry in zoo.DEMO_ZOO.items():
        assert all(DEMO_ROLES[role] == name for role in entry.roles)  # each entry stands in for its roles
    # one more entry whose own role another entry covered so far takes that role over
    extra = dataclasses.replace(zoo.DEMO_ZOO["demo_vgg16"], roles=("vgg11",), paper_name="VGG-11 (demo)")
    roles = stand_ins({name: entry.roles for name, entry in {**zoo.DEMO_ZOO, "demo_vgg11": extra}.items()})
    assert roles["vgg11"] == "demo_vgg11" and roles["vgg16"] == "demo_vgg16"
    assert PROFILES["demo"].models == tuple(zoo.DEMO_ZOO)
    assert PROFILES["demo"].role_of("demo_vgg16") == "vgg16" and PROFILES["demo"].role("resnet152") == "demo_resnet50"


def test_demo_profile_trains_once_then_reuses_the_zoo(tiny_demo, tmp_path, monkeypatch):
    args = ["--profile", "demo", "--experiment", "accuracy", "--models", *MODELS, "--quiet", "--out", str(tmp_path)]
    assert run_all.main(args) == 0
    results = tmp_path / "results" / "accuracy"
    predictions = pd.read_csv(results / "predictions.csv")
    classes = tiny_demo.num_classes
    assert len(predictions) == len(MODELS) * classes * 2
    groups = pd.read_csv(results / "per_group.csv")
    assert set(groups["group"]) == {"local", "arrangement", "all"}
    arrangement = tiny_demo.class_groups.count("arrangement")
    assert groups.loc[groups["group"] == "arrangement", "chance_top1"].iloc[0] == pytest.approx(100 / arrangement)
    meta = json.loads((results / "predictions.meta.json").read_text())
    assert all("trained by bagrepro.demo.training" in meta["models"][m] for m in MODELS)
    assert "demo world" in meta["data"]

    def must_not_train(*args, **kwargs):
        raise AssertionError("the cached demo zoo was retrained")

    monkeypatch.setattr(training, "train_model", must_not_train)
    assert run_all.main([*args, "--experiment", "interactions", "--out", str(tmp_path / "again")]) == 0
    assert run_all.main([*args, "--force"]) == 0  # --force recomputes the units, it does not retrain
    with pytest.raises(AssertionError, match="retrained"):  # --retrain trains the zoo again
        run_all.main([*args, "--retrain"])
