"""The attribution benchmark (experiments/attribution_truth.py) through the CLI: both parts on a tiny
demo world (evidence masks), what a method that cannot apply leaves in the CSVs and the report, and
resuming from finished units. The smoke run, its figures, report section and --plan are covered by
tests/test_experiments.py; sharding by tests/test_distributed.py; the scores by test_ground_truth.py."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest

import run_all
from bagrepro.methods import attribution
from bagrepro.harness.profiles import PROFILES, frozen
from experiments.attribution_truth import HIGHER_IS_BETTER
from bagrepro.methods.proxies import CURVE_PROXIES, ROAD_PROXIES

MODELS = ["demo_bagnet9", "demo_resnet50"]
METHODS = ("saliency", "integrated_gradients", "occlusion", "grad_cam")
SMALL = {"num_images": 6, "batch_size": 3, "ig_steps": 4, "occlusion_stride": 16, "methods": METHODS}


@pytest.fixture
def tiny_demo_run(tiny_demo, monkeypatch, tmp_path):
    """The demo profile on the tiny world (conftest), two models, four methods, six images."""
    demo = PROFILES["demo"]
    monkeypatch.setitem(PROFILES, "demo", dataclasses.replace(
        demo, settings=frozen({**demo.settings, "attribution_truth": SMALL})))
    args = ["--profile", "demo", "--experiment", "attribution_truth", "--models", *MODELS, "--quiet",
            "--out", str(tmp_path)]
    return args, tmp_path / "results" / "attribution_truth"


def test_both_parts_on_the_demo_world(tiny_demo_run, tmp_path):
    args, results = tiny_demo_run
    assert run_all.main(args) == 0
    per_image = pd.read_csv(results / "per_image.csv")
    assert set(per_image["profile"]) == {"demo"}
    part_a, part_b = per_image[per_image["part"] == "A"], per_image[per_image["part"] == "B"]
    # Part A: the BagNet alone, every white-box method and the random floor, all images
    assert set(part_a["model"]) == {"demo_bagnet9"}
    assert set(part_a["method"]) == {*METHODS, "random"}
    assert set(part_a["metric"]) == {"spearman", "top10_overlap", "deletion_gap", "deletion_gap_normalised"}
    assert part_a.groupby(["method", "metric"]).size().eq(SMALL["num_images"]).all()
    # Part B: every model, the BagNet heatmap as a black-box map too, correctly classified images only
    assert set(part_b["model"]) == set(MODELS)
    assert set(part_b["method"]) == {*METHODS, "random", "bagnet9"}
    assert set(part_b["metric"]) == {"relevance_mass", "relevance_rank", "pointing_game"}
    assert (part_b.groupby(["model", "method", "metric"]).size() <= SMALL["num_images"]).all()
    # every score within its range
    values = per_image.pivot_table(index=["model", "method", "image_id"], columns="metric", values="value")
    assert values["spearman"].dropna().between(-1, 1).all()
    for bounded in ("top10_overlap", "deletion_gap_normalised", "relevance_mass", "relevance_rank"):
        assert values[bounded].dropna().between(-1e-9, 1 + 1e-9).all(), bounded
    assert (values["deletion_gap"].dropna() >= -1e-9).all()
    assert set(values["pointing_game"].dropna()) <= {0.0, 1.0}

    summary = pd.read_csv(results / "summary.csv")
    scored = summary[summary["n_images"] > 1]
    assert ((scored["mean_low"] <= scored["mean"] + 1e-12) & (scored["mean"] <= scored["mean_high"] + 1e-12)).all()
    rankings = pd.read_csv(results / "rankings.csv")
    for _, group in rankings.groupby(["part", "model", "metric"]):
        assert list(group["rank"]) == list(range(1, len(group) + 1))
        assert group["best"].iloc[0] == group["method"].iloc[0]
        higher = HIGHER_IS_BETTER[group["metric"].iloc[0]]
        means = group["mean"].to_numpy()
        assert (np.diff(means) <= 1e-12).all() if higher else (np.diff(means) >= -1e-12).all()
    assert (tmp_path / "figures" / "attribution_truth" / "partb_ranking.png").is_file()
    # Part C: the deletion proxies on the BagNet alone, every method and the random map, all images
    part_c = per_image[per_image["part"] == "C"]
    assert set(part_c["model"]) == {"demo_bagnet9"} and set(part_c["method"]) == {*METHODS, "random"}
    assert set(part_c["metric"]) == {"patch_deletion", *CURVE_PROXIES, *ROAD_PROXIES, "drops_vs_exact"}
    assert part_c.groupby(["method", "metric"]).size().eq(SMALL["num_images"]).all()
    curves = part_c[part_c["metric"].isin(list(CURVE_PROXIES))]["value"]
    assert curves.between(0, 1).all()  # mean class probabilities
    assert part_c[part_c["metric"].isin(list(ROAD_PROXIES))]["value"].notna().all()  # logit changes
    # the deletion drops are the same truth estimate in every unit
    assert part_c[part_c["metric"] == "drops_vs_exact"].groupby("image_id")["value"].nunique().eq(1).all()
    proxies = pd.read_csv(results / "proxies.csv")
    assert set(proxies["proxy"]) == {"patch_deletion", *CURVE_PROXIES, *ROAD_PROXIES}
    assert (proxies["kendall_tau_low"] <= proxies["kendall_tau_high"]).all()
    assert proxies["truth_spearman"].notna().sum() == 1  # patch_deletion's drops against the exact logits
    assert (tmp_path / "figures" / "attribution_truth" / "partc_proxies.png").is_file()


def test_a_method_that_cannot_apply_says_why_and_the_others_are_scored(tiny_demo_run, tmp_path, monkeypatch):
    args, results = tiny_demo_run
    attribute = attribution.attribute

    def no_grad_cam_on_resnets(model, images, targets, method, **options):
        if method == "grad_cam" and model.zoo_spec.name == "demo_resnet50":
            raise attribution.MethodNotApplicable("grad_cam: no convolutional block in this test's model")
        return attribute(model, images, targets, method, **options)

    monkeypatch.setattr(attribution, "attribute", no_grad_cam_on_resnets)
    assert run_all.main(args) == 0
    summary = pd.read_csv(results / "summary.csv")
    refused = summary[(summary["model"] == "demo_resnet50") & (summary["method"] == "grad_cam")]
    assert set(refused["metric"]) == {"relevance_mass", "relevance_rank", "pointing_game"}  # Part B's scores
    assert (refused["n_images"] == 0).all() and refused["note"].str.contains("no convolutional block").all()
    applied = summary[(summary["model"] == "demo_bagnet9") & (summary["method"] == "grad_cam")]
    assert (applied["n_images"] > 0).all() and applied["note"].isna().all()
    per_image = pd.read_csv(results / "per_image.csv")
    assert per_image["note"].dropna().str.contains("no convolutional block").any()
    report = (tmp_path / "figures" / "report.html").read_text()
    section = report.split('<h2 id="attribution_truth">')[1]
    # ResNet-50's grad_cam in the leaderboard's Part B column and in the row of each Part B score
    assert section.count("<td>not applicable</td>") == 4


def test_finished_units_are_reused_and_give_the_same_csvs(tiny_demo_run, monkeypatch):
    args, results = tiny_demo_run
    assert run_all.main(args) == 0
    first = {name: (results / name).read_bytes() for name in ("per_image.csv", "summary.csv", "rankings.csv")}
    units = sorted((results / ".units").rglob("*.csv"))
    units[0].unlink()  # a run interrupted during that unit: only it is computed again

    calls = []
    attribute = attribution.attribute

    def counting(model, images, targets, method, **options):
        calls.append((model.zoo_spec.name, method))
        return attribute(model, images, targets, method, **options)

    monkeypatch.setattr(attribution, "attribute", counting)
    assert run_all.main(args) == 0
    assert len(set(calls)) <= 1  # the lost unit (a random or black-box unit calls no method at all)
    assert {name: (results / name).read_bytes() for name in first} == first
