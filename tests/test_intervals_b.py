"""95 % intervals of logit_correlation (Fig. 1C), interactions (Fig. 6) and masking (Fig. 8, Table 1):
their summarising functions on small hand-made data (no model, no run)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from bagrepro.core import paper

from experiments.interactions import correlations
from experiments.logit_correlation import (
    PEARSON_SUMS,
    pearson_sums,
    pooled_pearson_from_sums,
    summarise,
)
from experiments.masking import bootstrap_mean_band, comparisons, table1


# ---- logit_correlation ------------------------------------------------------------------------------------------
def correlated_logits(images: int, classes: int = 20, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """BagNet-like logits a [N, K] and reference logits b [N, K], correlated (r about 0.7), with
    per-image offsets so that the pooled and the per-image r differ."""
    generator = torch.Generator().manual_seed(seed)
    b = torch.randn(images, classes, generator=generator, dtype=torch.float64) * 3 + 5
    a = b + 3 * torch.randn(images, classes, generator=generator, dtype=torch.float64)
    a = a + torch.randn(images, 1, generator=generator, dtype=torch.float64)
    return a, b


def unit_frame(a: torch.Tensor, b: torch.Tensor, model: str = "m", role: str = "bagnet33") -> pd.DataFrame:
    """A logit_correlation unit's frame as ``run`` makes it, from logits a, b [N, K]."""
    centred_a, centred_b = a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True)
    per_image_r = ((centred_a * centred_b).sum(1) / (centred_a.norm(dim=1) * centred_b.norm(dim=1))).numpy()
    return pd.DataFrame({"model": model, "role": role, "reference": "ref", "image_id": [f"i{i}" for i in range(len(a))],
                         "pearson_r": per_image_r, "pooled_r": np.corrcoef(a.ravel(), b.ravel())[0, 1],
                         **pearson_sums(a, b)})


def test_pooled_r_from_sums_is_corrcoef_of_the_concatenated_logits():
    a, b = correlated_logits(7)
    sums = pearson_sums(a, b)
    assert list(sums) == list(PEARSON_SUMS) and all(value.shape == (7,) for value in sums.values())
    expected = np.corrcoef(a.ravel().numpy(), b.ravel().numpy())[0, 1]
    assert pooled_pearson_from_sums(*sums.values()) == pytest.approx(expected, abs=1e-12)
    # vectorised: one r per row of resampled images [R, N] (images drawn with repeats), each the r of
    # the logits of those images concatenated
    resamples = np.array([[0, 1, 2, 0, 1, 2, 3], [0, 0, 1, 1, 2, 2, 6]])
    r = pooled_pearson_from_sums(*(value[resamples] for value in sums.values()))
    expected = [np.corrcoef(a[row].ravel().numpy(), b[row].ravel().numpy())[0, 1] for row in resamples]
    assert r.shape == (2,) and r == pytest.approx(expected, abs=1e-12)


def test_logit_correlation_summary_intervals_hold_the_estimates_and_shrink_with_more_images():
    a, b = correlated_logits(200)
    few, many = summarise(unit_frame(a[:20], b[:20])).iloc[0], summarise(unit_frame(a, b)).iloc[0]
    assert list(summarise(unit_frame(a, b)).columns) == [
        "model", "role", "reference", "n_images", "pooled_r", "mean_per_image_r", "paper_r", "paper_r_source", "difference",
        "pooled_r_low", "pooled_r_high", "mean_per_image_r_low", "mean_per_image_r_high"]
    for row in (few, many):
        for column in ("pooled_r", "mean_per_image_r"):
            assert -1 <= row[f"{column}_low"] <= row[column] <= row[f"{column}_high"] <= 1
    for column in ("pooled_r", "mean_per_image_r"):
        assert many[f"{column}_high"] - many[f"{column}_low"] < 0.6 * (few[f"{column}_high"] - few[f"{column}_low"])


def test_logit_correlation_summary_is_per_model():
    a, b = correlated_logits(30)
    frame = pd.concat([unit_frame(a, b, "m9", "bagnet9"), unit_frame(a, -b, "m17", "bagnet17")], ignore_index=True)
    summary = summarise(frame).set_index("model")
    assert summary.loc["m9", "pooled_r_low"] > 0 > summary.loc["m17", "pooled_r_high"]
    assert summary.loc["m17", "pooled_r"] == pytest.approx(-summary.loc["m9", "pooled_r"])


# ---- interactions ---------------------------------------------------------------------------------------------
def eq1_terms(images: int, noise: float, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    lhs = rng.normal(size=images)
    return pd.DataFrame({"model": "m", "role": "bagnet9", "patch_size": 16, "min_distance": 16,
                         "lhs": lhs, "rhs": lhs + noise * rng.normal(size=images)})


def test_interaction_r_interval_holds_r_within_minus_one_one_and_shrinks_with_more_images():
    few, many = correlations(eq1_terms(15, 1.0)).iloc[0], correlations(eq1_terms(400, 1.0)).iloc[0]
    assert list(correlations(eq1_terms(15, 1.0)).columns)[-2:] == ["pearson_r_low", "pearson_r_high"]
    for row in (few, many):
        assert -1 <= row["pearson_r_low"] <= row["pearson_r"] <= row["pearson_r_high"] <= 1
    assert many["pearson_r_high"] - many["pearson_r_low"] < 0.5 * (few["pearson_r_high"] - few["pearson_r_low"])
    exact = correlations(eq1_terms(10, 0.0)).iloc[0]  # no interactions: r = 1 in every resample
    assert exact["pearson_r_low"] == pytest.approx(1.0) and exact["pearson_r_high"] == pytest.approx(1.0)
    assert np.isnan(correlations(eq1_terms(2, 1.0)).iloc[0][["pearson_r_low", "pearson_r_high"]].astype(float)).all()


# ---- masking --------------------------------------------------------------------------------------------------
def masking_curves_frame(images: int, shift: float = 0.0, seed: int = 0) -> pd.DataFrame:
    """curves.csv rows for one model (role vgg16), k = 0..2: methods saliency, bagnet33 (lower p
    by 0.1 on average, plus ``shift``) and random with two seeds."""
    rng = np.random.default_rng(seed)
    saliency = rng.uniform(0.3, 0.7, images)
    per_method = {("saliency", -1): saliency,
                  ("bagnet33", -1): np.clip(saliency - 0.1 + shift + 0.05 * rng.normal(size=images), 0, 1),
                  ("random", 0): rng.uniform(0.5, 1, images), ("random", 1): rng.uniform(0.5, 1, images)}
    frames = [pd.DataFrame({"model": "net", "role": "vgg16", "image_id": np.repeat([f"i{i}" for i in range(images)], 3),
                            "method": method, "seed": seed, "k": np.tile([0, 1, 2], images),
                            "probability": np.stack([np.ones(images), (1 + last) / 2, last], 1).ravel()})
              for (method, seed), last in per_method.items()]
    return pd.concat(frames, ignore_index=True)


def test_table1_intervals_hold_the_mean_over_images_and_average_random_seeds_first():
    curves = masking_curves_frame(40)
    table = table1(curves).set_index("method")
    assert list(table1(curves).columns)[-2:] == ["ours_low", "ours_high"]
    assert (table["ours_low"] <= table["ours"]).all() and (table["ours"] <= table["ours_high"]).all()
    assert table.loc["random", "n_images"] == 40  # images, not images x seeds
    last = curves[curves["k"] == 2]
    seeds_averaged = last[last["method"] == "random"].groupby("image_id")["probability"].mean()
    assert table.loc["random", "ours"] == pytest.approx(seeds_averaged.mean())
    wide, narrow = table1(masking_curves_frame(10)).iloc[0], table1(masking_curves_frame(400)).iloc[0]
    assert narrow["ours_high"] - narrow["ours_low"] < 0.5 * (wide["ours_high"] - wide["ours_low"])


def test_comparisons_are_paired_differences_that_resolve_their_sign():
    curves = masking_curves_frame(60)
    pairs = comparisons(curves)
    assert len(pairs) == 1  # bagnet33 against saliency; random is neither
    row = pairs.iloc[0]
    assert (row["bagnet_method"], row["white_box_method"], row["k"], row["n_images"]) == ("bagnet33", "saliency", 2, 60)
    table = table1(curves).set_index("method")
    assert row["bagnet_minus_white_box"] == pytest.approx(table.loc["bagnet33", "ours"] - table.loc["saliency", "ours"])
    assert row["bagnet_minus_white_box_low"] <= row["bagnet_minus_white_box"] <= row["bagnet_minus_white_box_high"]
    assert row["resolved"] == "below"  # 0.1 lower on every image, give or take 0.05: the sample resolves it
    assert np.isnan(row["paper_bagnet_minus_white_box"])  # after 2 patches: Table 1's 100 do not compare
    # at Table 1's k = 100 the paper's difference stands beside ours, with its source
    at_100 = curves.assign(k=curves["k"].replace({2: paper.TABLE1_STEPS}))
    paired, table_at_100 = comparisons(at_100).iloc[0], table1(at_100).set_index("method")
    assert paired["paper_bagnet_minus_white_box"] == pytest.approx(0.193 - 0.369)
    assert paired["paper_bagnet_minus_white_box_source"] == paper.TABLE1_DIFFERENCE_SOURCE
    assert table_at_100.loc["saliency", "paper"] == 0.369 and table_at_100.loc["saliency", "paper_source"] == "paper, Table 1"
    assert table.loc["saliency", "paper_source"] == "" and np.isnan(table.loc["saliency", "paper"])
    # paired: the images' own spread (0.3 to 0.7) does not widen the interval of the difference
    assert row["bagnet_minus_white_box_high"] - row["bagnet_minus_white_box_low"] < 0.05
    assert comparisons(masking_curves_frame(60, shift=0.2)).iloc[0]["resolved"] == "above"
    assert comparisons(masking_curves_frame(60, shift=0.1)).iloc[0]["resolved"] == "not resolved"


def test_bootstrap_mean_band_holds_the_mean_at_every_k_and_is_seeded():
    values = np.random.default_rng(1).uniform(size=(50, 4))
    values[:, 0] = 1.0  # k = 0: the clean image, the same p everywhere
    low, high = bootstrap_mean_band(values)
    assert low.shape == high.shape == (4,)
    assert (low <= values.mean(0) + 1e-12).all() and (values.mean(0) <= high + 1e-12).all()
    assert low[0] == pytest.approx(1.0) and high[0] == pytest.approx(1.0)
    again = bootstrap_mean_band(values)
    assert np.array_equal(low, again[0]) and np.array_equal(high, again[1])
    more_low, more_high = bootstrap_mean_band(np.tile(values, (16, 1)))
    assert ((more_high - more_low)[1:] < 0.5 * (high - low)[1:]).all()
    assert np.isnan(bootstrap_mean_band(values[:1])[0]).all()
