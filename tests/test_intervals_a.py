"""95 % intervals of accuracy, scrambling, thresholding, error distribution and runtime: their columns,
and properties every interval must have, on small hand-made tables (no model runs)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from bagrepro.core import metrics
from bagrepro.harness import plotting
from bagrepro.core.metrics import error_consistency, proportion_interval
from experiments import accuracy, error_distribution, runtime, scrambling, thresholding


def assert_inside(table: pd.DataFrame, column: str) -> None:
    """``<column>_low`` <= ``column`` <= ``<column>_high`` on every row (up to rounding)."""
    low, value, high = (table[name].to_numpy(float) for name in (f"{column}_low", column, f"{column}_high"))
    assert not np.isnan(low).any() and not np.isnan(high).any(), column
    assert (low <= value + 1e-9).all() and (value <= high + 1e-9).all(), column


# ---- the shared exact interval of an accuracy -------------------------------------------------------
def test_exact_intervals_of_all_right_and_all_wrong_reach_the_ends():
    low, high = metrics.exact_intervals([10, 0, 5], [10, 10, 10])
    assert high[0] == 100 and 0 < low[0] < 100
    assert low[1] == 0 and 0 < high[1] < 100
    assert (low[2], high[2]) == pytest.approx(tuple(100 * b for b in proportion_interval(5, 10)))
    assert high[0] - low[0] == pytest.approx(high[1] - low[1])  # symmetric


def test_exact_intervals_narrow_with_more_images_and_round_fractional_hits():
    (small_low, big_low), (small_high, big_high) = metrics.exact_intervals([30, 300], [100, 1000], scale=1.0)
    assert big_high - big_low < small_high - small_low and small_high <= 1
    # expected hits under random tie-breaking are fractional: 4.6 correct of 10 count as 5
    assert metrics.exact_intervals(4.6, 10) == metrics.exact_intervals(5, 10)
    # once per distinct pair: repeated entries give the same bounds as single ones
    low, high = metrics.exact_intervals([3, 7, 3, 3], [9, 9, 9, 12])
    assert low[0] == low[2] and high[0] == high[2] and low[3] != low[0]
    empty_low, empty_high = metrics.exact_intervals([], [])
    assert len(empty_low) == len(empty_high) == 0


def test_error_bars_are_distances_and_absent_without_interval_columns():
    table = pd.DataFrame({"top1": [50.0, 100.0], "top1_low": [40.0, 90.0], "top1_high": [55.0, 100.0]})
    assert np.array_equal(plotting.error_bars(table, "top1"), [[10.0, 10.0], [5.0, 0.0]])
    assert np.array_equal(plotting.error_bars(table, "top1", scale=0.5), [[5.0, 5.0], [2.5, 0.0]])
    assert plotting.error_bars(table.drop(columns=["top1_low"]), "top1") is None


# ---- accuracy -----------------------------------------------------------------------------------------
def predictions(correct_top1: dict[str, list[float]], classes: int = 2) -> pd.DataFrame:
    """Per-image rows of models whose top-1 answers are ``correct_top1[model]``; top-5 all right."""
    return pd.concat([pd.DataFrame({"model": model, "role": "bagnet33" if model == "b" else "resnet50",
                                    "image_id": [f"i{i}" for i in range(len(hits))],
                                    "true_class": np.arange(len(hits)) % classes,
                                    "correct_top1": hits, "correct_top5": 1.0})
                      for model, hits in correct_top1.items()], ignore_index=True)


def test_accuracy_summary_appends_exact_intervals_in_percent():
    rows = predictions({"b": [1, 0, 1, 1, 0.5, 0, 1, 1], "r": [1.0] * 8})
    summary = accuracy.summarize(rows)
    old = ["model", "role", "n_images", "top1", "top5", "reference_top1", "reference_top1_source", "reference_top5",
           "reference_top5_source", "diff_top1", "diff_top5"]
    assert list(summary.columns) == old + ["top1_low", "top1_high", "top5_low", "top5_high"]
    for metric in ("top1", "top5"):
        assert_inside(summary, metric)
    by_model = summary.set_index("model")
    assert by_model.loc["r", "top1_high"] == 100 and by_model.loc["r", "top5_high"] == 100
    # 5.5 correct of 8 count as 6 (rounded to even: 5.5 -> 6)
    assert (by_model.loc["b", "top1_low"], by_model.loc["b", "top1_high"]) == pytest.approx(
        tuple(100 * b for b in proportion_interval(6, 8)))
    groups = accuracy.per_group(rows, ["local", "global"])
    assert list(groups.columns[-4:]) == ["top1_low", "top1_high", "top5_low", "top5_high"]
    assert_inside(groups, "top1")
    everything = groups[groups["group"] == "all"].set_index("model")
    assert (everything.loc["b", "top1_low"], everything.loc["b", "top1_high"]) == (
        by_model.loc["b", "top1_low"], by_model.loc["b", "top1_high"])


def test_accuracy_figure_and_report_from_a_summary_with_and_without_intervals(tmp_path):
    summary = accuracy.summarize(predictions({"b": [1, 0, 1, 1], "r": [1.0] * 4}))
    for name, table in (("with", summary), ("without", summary.iloc[:, :9])):
        results = tmp_path / name
        results.mkdir()
        table.to_csv(results / "summary.csv", index=False)
        assert accuracy.make_figures(results, tmp_path / f"figures_{name}")
    report = accuracy.report_table(tmp_path / "with")
    assert report["ours_low"].notna().all() and (report["ours_low"] <= report["ours"]).all()


# ---- scrambling ---------------------------------------------------------------------------------------
def scrambled(images: int, clean_right: int, tiles_right: int, texture_images: int = 0) -> pd.DataFrame:
    """One model: ``clean_right`` of ``images`` right when clean, ``tiles_right`` right at 4x4 tiles
    (the first ones), ``texture_images`` texturised images all wrong."""
    ids = [f"i{i}" for i in range(images)]
    frames = [pd.DataFrame({"image_id": ids, "method": "clean", "grid": 0,
                            "correct_top1": np.arange(images) < clean_right, "correct_top5": 1.0}),
              pd.DataFrame({"image_id": ids, "method": "tiles", "grid": 4,
                            "correct_top1": np.arange(images) < tiles_right, "correct_top5": 1.0})]
    if texture_images:
        frames.append(pd.DataFrame({"image_id": ids[:texture_images], "method": "texture", "grid": 0,
                                    "correct_top1": 0.0, "correct_top5": 0.0}))
    return pd.concat(frames, ignore_index=True).assign(model="m", role="vgg16")


def test_scrambling_table_appends_exact_and_paired_bootstrap_intervals():
    table = scrambling.table(scrambled(40, 40, 20, texture_images=10), "note")
    old = ["model", "role", "method", "grid", "n_images", "protocol", "clean_top1", "manipulated_top1", "drop_top1",
           "clean_top5", "manipulated_top5", "drop_top5", "report_clean_top1", "report_scrambled_top1",
           "report_clean_top1_source", "report_scrambled_top1_source", "paper_clean_top5_pct",
           "paper_clean_top5_pct_source", "paper_texture_top5_pct", "paper_texture_top5_pct_source", "note"]
    added = [f"{stage}_{metric}_{bound}" for metric in ("top1", "top5") for stage in ("clean", "manipulated", "drop")
             for bound in ("low", "high")]
    assert list(table.columns) == old + added
    for column in ("clean_top1", "manipulated_top1", "drop_top1", "clean_top5", "manipulated_top5", "drop_top5"):
        assert_inside(table, column)
    tiles, texture = table.set_index("method").loc["tiles"], table.set_index("method").loc["texture"]
    assert tiles["clean_top1_high"] == 1 and tiles["manipulated_top5_high"] == 1  # fractions, all right
    assert texture["manipulated_top5_low"] == 0 and texture["drop_top5_low"] == texture["drop_top5_high"] == 1
    # every image loses its answer or keeps it: the drop's interval lies within (0, 1), about 0.5
    assert 0 < tiles["drop_top1_low"] < 0.5 < tiles["drop_top1_high"] < 1


def test_scrambling_drop_interval_keeps_images_paired_and_narrows_with_more_images():
    """Clean and scrambled accuracy both 50 %, the same images right: the drop is 0 on every image,
    so the paired interval is [0, 0] while the accuracies' own intervals are wide."""
    same = scrambling.table(scrambled(20, 10, 10)).iloc[0]
    assert same["drop_top1_low"] == same["drop_top1_high"] == 0
    assert same["manipulated_top1_high"] - same["manipulated_top1_low"] > 0.3
    small, big = (scrambling.table(scrambled(n, n, n // 2)).iloc[0] for n in (20, 200))
    for column in ("drop_top1", "manipulated_top1"):
        assert big[f"{column}_high"] - big[f"{column}_low"] < small[f"{column}_high"] - small[f"{column}_low"]


def test_scrambling_report_table_carries_intervals_in_the_units_shown(tmp_path):
    scrambling.table(scrambled(30, 30, 12, texture_images=10)).to_csv(tmp_path / "table.csv", index=False)
    report = scrambling.report_table(tmp_path)
    assert report[["ours_low", "ours_high"]].notna().all().all()
    assert (report["ours_low"] <= report["ours"]).all() and (report["ours"] <= report["ours_high"]).all()
    texture = report[report["metric"] == "texturised top-5 (%)"].iloc[0]
    assert texture["ours"] == 0 and texture["ours_low"] == 0 and 10 < texture["ours_high"] < 100  # in %


# ---- thresholding -------------------------------------------------------------------------------------
def sweep(images: int, unmodified: float, clip: list[float], binarise: list[float]) -> pd.DataFrame:
    """accuracy.csv rows (top-1 = top-5, %) of a sweep over len(clip) thresholds on ``images`` images."""
    thresholds = np.linspace(-1, 1, len(clip)).tolist()
    return pd.DataFrame({"mode": ["clip"] * len(clip) + ["binarise"] * len(binarise) + ["none"],
                         "threshold": thresholds + thresholds + [np.nan], "n_images": images,
                         "top1": clip + binarise + [unmodified], "top5": clip + binarise + [unmodified]})


def test_thresholding_accuracy_and_summary_carry_exact_intervals():
    rows = metrics.with_accuracy_intervals(sweep(50, 100.0, [80.0, 90.0, 60.0], [0.0, 70.0, 96.0]).assign(model="b"))
    assert list(rows.columns[-5:]) == ["model", "top1_low", "top1_high", "top5_low", "top5_high"]
    assert_inside(rows, "top5")
    summary = thresholding.summarize(rows).set_index("mode")
    assert list(summary.columns[-6:]) == ["best_low", "best_high", "unmodified_low", "unmodified_high",
                                          "gap_low", "gap_high"]
    for column in ("best", "unmodified", "gap"):
        assert_inside(summary.reset_index(), column)
    assert (summary["unmodified_high"] == 100).all() and summary.loc["binarise", "best_low"] < 96
    assert summary.loc["clip", "best"] == 90 and summary.loc["binarise", "best_threshold"] == 1
    assert rows.set_index(["mode", "threshold"]).loc[("clip", 0.0), "top5_low"] == summary.loc["clip", "best_low"]


def test_thresholding_gap_interval_is_the_conservative_one_and_narrows_with_more_images():
    """gap in [u_low - b_high, u_high - b_low] from 97.5 % exact intervals: wider than either
    accuracy's 95 % interval, narrower on ten times the images."""
    small, big = (thresholding.summarize(sweep(n, 80.0, [70.0, 60.0], [50.0, 40.0]), "top1").set_index("mode")
                  for n in (100, 1000))
    u_low, u_high = (100 * b for b in proportion_interval(80, 100, level=0.975))
    b_low, b_high = (100 * b for b in proportion_interval(70, 100, level=0.975))
    assert (small.loc["clip", "gap_low"], small.loc["clip", "gap_high"]) == pytest.approx((u_low - b_high, u_high - b_low))
    width = small["gap_high"] - small["gap_low"]
    assert (width > small["best_high"] - small["best_low"]).all()
    assert (big["gap_high"] - big["gap_low"] < width).all()
    assert big.loc["binarise", "gap_low"] > 0  # 40 points on 1000 images: resolved


def test_thresholding_report_table_shows_the_gap_interval(tmp_path):
    thresholding.summarize(sweep(100, 80.0, [70.0], [50.0])).to_csv(tmp_path / "summary.csv", index=False)
    report = thresholding.report_table(tmp_path)
    assert (report["ours_low"] <= report["ours"]).all() and (report["ours"] <= report["ours_high"]).all()


# ---- error distribution -------------------------------------------------------------------------------
def test_vectorised_kappa_equals_error_consistency_per_row():
    generator = np.random.default_rng(2)
    x = generator.random((4, 300)) < 0.6
    y = np.where(generator.random((4, 300)) < 0.7, x, generator.random((4, 300)) < 0.5)
    y[3] = True
    x[3] = True  # both always right: undefined
    expected = [error_consistency(a, b) for a, b in zip(x, y)]
    assert np.allclose(error_consistency(x.astype(float), y.astype(float)), expected, equal_nan=True)
    assert np.isnan(expected[3])


def pair_predictions(images: int, agreement: float, seed: int = 3) -> pd.DataFrame:
    generator = np.random.default_rng(seed)
    rows = pd.DataFrame({"image_id": [f"i{i}" for i in range(images)], "true_class": np.arange(images) % 10,
                         "correct_top1": generator.random(images) < 0.5, "correct_top5": generator.random(images) < 0.7})
    flip = generator.random(images) > agreement
    other = rows.assign(correct_top1=rows["correct_top1"] ^ flip, correct_top5=rows["correct_top5"] ^ flip)
    return pd.concat([rows.assign(model="a"), other.assign(model="b")], ignore_index=True)


def test_error_distribution_pairs_carry_bootstrap_and_exact_intervals():
    _, summary = error_distribution.compare(pair_predictions(400, 0.8), "a", "b")
    added = ["pearson_r_per_class_low", "pearson_r_per_class_high", "kappa_top1_low", "kappa_top1_high",
             "top1_x_low", "top1_x_high", "top1_y_low", "top1_y_high"]
    assert list(summary)[-len(added):] == added
    assert list(summary)[:7] == ["metric", "pearson_r_per_class", "kappa_top1", "top1_x", "top1_y", "n_images",
                                 "n_classes"]
    table = pd.DataFrame([summary])
    for column in ("pearson_r_per_class", "kappa_top1", "top1_x", "top1_y"):
        assert_inside(table, column)
    assert -1 <= summary["pearson_r_per_class_low"] and summary["pearson_r_per_class_high"] <= 1
    _, bigger = error_distribution.compare(pair_predictions(4000, 0.8), "a", "b")
    assert (bigger["kappa_top1_high"] - bigger["kappa_top1_low"]
            < summary["kappa_top1_high"] - summary["kappa_top1_low"])


def test_error_distribution_intervals_of_identical_and_constant_models():
    _, same = error_distribution.compare(pair_predictions(200, 1.0), "a", "b")
    assert same["kappa_top1_low"] == same["kappa_top1_high"] == 1
    assert same["pearson_r_per_class_low"] == pytest.approx(1.0)
    rows = pair_predictions(50, 1.0).assign(correct_top1=True, correct_top5=True)
    _, constant = error_distribution.compare(rows, "a", "b")
    assert np.isnan(constant["pearson_r_per_class_low"]) and np.isnan(constant["kappa_top1_high"])
    assert constant["top1_x_high"] == 100 and constant["top1_x_low"] > 90


# ---- runtime ------------------------------------------------------------------------------------------
def timings(repeats: int, load) -> pd.DataFrame:
    """Reference r50 at 100 images/s and b33 at 30 (fused 20 % faster), each repeat slowed by
    ``load(repeat)`` for every model alike."""
    rows = [{"model": model, "role": role, "path": path, "repeat": repeat,
             "images_per_s": speed * (1.2 if path == "fused" else 1.0) / load(repeat)}
            for repeat in range(repeats) for model, role, speed in (("r50", "resnet50", 100.0), ("b33", "bagnet33", 30.0))
            for path in ("eager", "fused")]
    return pd.DataFrame(rows).assign(reference_model="r50")


def test_runtime_intervals_over_repeats_keep_each_repeat_paired():
    summary = runtime.summarize(timings(5, lambda repeat: 1 + 0.3 * repeat))
    old = ["model", "role", "path", "images_per_s", "repeats", "relative_to_reference", "reference_model",
           "paper_relative", "paper_relative_source"]
    assert list(summary.columns) == old + ["images_per_s_low", "images_per_s_high", "relative_to_reference_low",
                                           "relative_to_reference_high"]
    for column in ("images_per_s", "relative_to_reference"):
        assert_inside(summary, column)
    # the load slows every model alike within a repeat: paired, the ratio does not vary at all
    assert np.allclose(summary["relative_to_reference_low"], summary["relative_to_reference"])
    assert np.allclose(summary["relative_to_reference_high"], summary["relative_to_reference"])
    assert (summary["images_per_s_high"] > summary["images_per_s_low"]).all()  # the raw speeds do vary


def test_runtime_interval_is_nan_with_one_repeat():
    summary = runtime.summarize(timings(1, lambda repeat: 1.0))
    assert summary[["images_per_s_low", "relative_to_reference_high"]].isna().all().all()
    assert summary["relative_to_reference"].notna().all()
