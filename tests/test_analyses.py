"""Logit correlation, scrambling, error distribution and thresholding: numbers known in closed form."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

import run_all
from bagrepro.core.metrics import error_consistency, top_k_hits
from bagrepro.methods.scrambling import scramble_tiles
from experiments import scrambling
from experiments.error_distribution import PAIRS, compare, distinct_pairs
from experiments.logit_correlation import pearson_rows
from experiments.thresholding import summarize, thresholded_scores


# ---- thresholding ---------------------------------------------------------------------------------
def test_threshold_sweep_equals_one_threshold_at_a_time():
    logits = torch.randn(3, 7, 4, 5, generator=torch.Generator().manual_seed(0)) * 10
    thresholds = torch.linspace(-20, 20, 11)
    clip, binarise = thresholded_scores(logits, thresholds)
    for index, t in enumerate(thresholds):
        assert torch.allclose(clip[index], logits.double().clamp(min=t.item()).mean((2, 3)), atol=1e-9)
        assert torch.allclose(binarise[index], (logits > t).double().mean((2, 3)))


def test_constant_patch_logits_give_identical_accuracy_below_them():
    """Patch logits constant per class (c_k): any threshold below min(c) leaves clip = c and
    binarise = 1 for every class, so accuracies do not depend on the threshold there."""
    constants = torch.tensor([3.0, 1.0, 2.0, 0.5])
    logits = constants[None, :, None, None].expand(6, -1, 3, 3)
    labels = torch.tensor([0, 1, 2, 3, 0, 2])
    thresholds = torch.tensor([-50.0, -5.0, 0.0, 0.4])
    clip, binarise = thresholded_scores(logits, thresholds)
    clip_hits = top_k_hits(clip.float(), labels, 1).mean(-1)
    assert torch.allclose(clip_hits, clip_hits[0].expand_as(clip_hits))
    assert clip_hits[0] == pytest.approx(2 / 6)  # class 0 wins: the two class-0 images
    binarise_hits = top_k_hits(binarise.float(), labels, 1).mean(-1)
    assert torch.allclose(binarise_hits, torch.full_like(binarise_hits, 1 / 4))  # all tied: chance


def test_threshold_summary_picks_the_best_threshold_in_the_chosen_metric():
    accuracy = pd.DataFrame({
        "mode": ["clip", "clip", "binarise", "binarise", "none"],
        "threshold": [-1.0, 1.0, -1.0, 1.0, np.nan], "n_images": 100,
        "top1": [60.0, 70.0, 50.0, 40.0, 80.0],
        "top5": [99.0, 90.0, 95.0, 97.0, 100.0]})
    for metric, best_clip, best_binarise in (("top1", 1.0, -1.0), ("top5", -1.0, 1.0)):
        summary = summarize(accuracy, metric).set_index("mode")
        assert (summary["metric"] == metric).all()
        assert summary.loc["clip", "best_threshold"] == best_clip
        assert summary.loc["binarise", "best_threshold"] == best_binarise
        assert (summary["gap"] == summary["unmodified"] - summary["best"]).all()
        assert summary.loc["binarise", "unmodified"] == accuracy[metric].iloc[-1]


def test_top_k_hits_breaks_ties_at_random_in_expectation():
    scores = torch.tensor([[1.0, 1.0, 1.0, 1.0], [3.0, 2.0, 2.0, 0.0]])
    labels = torch.tensor([2, 1])
    assert top_k_hits(scores, labels, 1).tolist() == pytest.approx([0.25, 0.0])  # one higher: never first
    assert top_k_hits(scores, labels, 2).tolist() == pytest.approx([0.5, 0.5])  # second or third, evenly


# ---- scrambling -------------------------------------------------------------------------------------
def test_tile_scrambling_permutes_tiles():
    images = torch.rand(4, 3, 33, 32)
    scrambled = scramble_tiles(images, 4, seed=1)
    assert not torch.equal(scrambled, images)
    assert torch.equal(scrambled[..., 32:, :], images[..., 32:, :])  # the row beyond the grid stays
    tiles = lambda x: sorted(x[0, :, r:r + 8, c:c + 8].sum().item() for r in range(0, 32, 8) for c in range(0, 32, 8))  # noqa: E731
    assert tiles(scrambled) == pytest.approx(tiles(images))
    assert torch.equal(scramble_tiles(images, 4, seed=1), scrambled)  # seeded
    assert torch.equal(scramble_tiles(images, 1, seed=1), images)


def test_a_one_pixel_receptive_field_model_is_unchanged_by_tile_scrambling():
    model = nn.Sequential(nn.Conv2d(3, 16, 1), nn.ReLU(), nn.Conv2d(16, 5, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    images = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        for grid in (2, 4, 8):
            assert torch.allclose(model(scramble_tiles(images, grid, seed=grid)), model(images), atol=1e-6)


# ---- error distribution, logit correlation ----------------------------------------------------------
def test_kappa_of_a_model_with_itself_is_one_and_independent_errors_give_zero():
    generator = np.random.default_rng(0)
    a = generator.random(20_000) < 0.7
    assert error_consistency(a, a) == 1.0
    assert abs(error_consistency(a, generator.random(20_000) < 0.6)) < 0.03
    assert error_consistency(a, ~a) == pytest.approx(-0.42 / 0.58, abs=0.02)  # never agree: c_obs = 0


def test_error_distribution_pair_of_identical_models():
    generator = np.random.default_rng(1)
    rows = pd.DataFrame({"image_id": [f"i{i}" for i in range(60)], "true_class": np.arange(60) % 6,
                         "correct_top1": generator.random(60) < 0.5, "correct_top5": generator.random(60) < 0.7})
    predictions = pd.concat([rows.assign(model="a"), rows.assign(model="b")])
    per_class, summary = compare(predictions, "a", "b")
    assert (per_class["accuracy_x"] == per_class["accuracy_y"]).all()
    assert summary["pearson_r_per_class"] == pytest.approx(1.0) and summary["kappa_top1"] == 1.0


def test_error_distribution_leaves_out_pairs_the_stand_ins_collapse():
    said = []
    stand_ins = {"bagnet33": "b33", "vgg16": "v", "vgg11": "v", "resnet50": "r", "resnet152": "r", "densenet169": "d"}
    pairs = distinct_pairs(stand_ins.__getitem__, log=said.append)
    assert [(x, y) for x, y, _ in pairs] == [("b33", "v"), ("b33", "r"), ("b33", "d")]
    assert len(said) == 2 and "bagnet33 vs resnet152" in said[0] and "vgg11 vs vgg16" in said[1]
    identity = distinct_pairs(lambda role: role, log=said.append)
    assert [label for _, _, label in identity] == [f"{x} vs {y}" for x, y in PAIRS] and len(said) == 2


def test_pearson_rows():
    a = torch.randn(5, 10, dtype=torch.float64)
    assert torch.allclose(pearson_rows(a, 3 * a + 1), torch.ones(5, dtype=torch.float64))
    assert torch.allclose(pearson_rows(a, -a), -torch.ones(5, dtype=torch.float64))


# ---- the four experiments through the CLI on the smoke profile ------------------------------------------
def test_analyses_run_on_the_smoke_profile(tmp_path):
    experiments = ["logit_correlation", "error_distribution", "thresholding", "scrambling"]
    args = ["--profile", "smoke", "--quiet", "--out", str(tmp_path)]
    for name in experiments:
        args += ["--experiment", name]
    assert run_all.main(args) == 0
    results, figures = tmp_path / "results", tmp_path / "figures"
    summary = pd.read_csv(results / "logit_correlation" / "summary.csv")
    assert summary["paper_r"].tolist() == [0.70, 0.79, 0.88] and summary["pooled_r"].between(-1, 1).all()
    pairs = pd.read_csv(results / "error_distribution" / "pairs.csv")
    # smoke stands one model in for VGG-11 and VGG-16, one for ResNet-50 and -152: those pairs are left out
    assert pairs["pair"].tolist() == ["bagnet33 vs vgg16", "bagnet33 vs resnet50", "bagnet33 vs densenet169"]
    assert (pairs["model_x"] != pairs["model_y"]).all()
    accuracy = pd.read_csv(results / "thresholding" / "accuracy.csv")
    assert set(accuracy["mode"]) == {"clip", "binarise", "none"} and len(accuracy) == 2 * 201 + 1
    assert (pd.read_csv(results / "thresholding" / "summary.csv")["metric"] == "top5").all()  # the paper's
    table = pd.read_csv(results / "scrambling" / "table.csv")
    assert set(zip(table["method"], table["grid"])) == {("tiles", 2), ("tiles", 4), ("tiles", 8), ("texture", 0)}
    assert table.loc[table["method"] == "texture", "note"].str.contains("not a faithful texture").all()
    # whose protocol: texturisation is the paper's, tiles the reproducibility report's (its numbers only in
    # a --train run of its protocol: none here)
    assert set(table["protocol"]) == {scrambling.TEXTURE_PROTOCOL, scrambling.TILES_PROTOCOL}
    assert table.loc[table["method"] == "tiles", "report_scrambled_top1"].isna().all()
    texture_vgg = table[(table["method"] == "texture") & (table["role"] == "vgg16")].iloc[0]
    assert texture_vgg["paper_texture_top5_pct"] == 79.4 and texture_vgg["paper_texture_top5_pct_source"] == "paper, Fig. 5"
    textures = pd.read_csv(results / "scrambling" / "textures.csv")
    assert len(textures) == 8 and (textures["loss_ratio"] == textures["loss"] / textures["initial_loss"]).all()
    assert (textures["converged"] == (textures["loss_ratio"] <= scrambling.CONVERGED_RATIO)).all()
    assert (figures / "scrambling" / "fig5_texture_loss.png").stat().st_size > 5_000
    # the accuracy units that error_distribution and scrambling filled are the accuracy experiment's own
    assert len(list((results / "accuracy" / ".units").glob("*/*.csv"))) == 6
    for figure in ("logit_correlation/fig1c_logit_correlation", "error_distribution/fig7_error_distribution",
                   "thresholding/figA4_thresholding", "scrambling/fig5_examples", "scrambling/fig5_scrambling_accuracy"):
        assert (figures / f"{figure}.png").stat().st_size > 5_000 and (figures / f"{figure}.pdf").is_file()


def test_misclassified_shows_both_models_probabilities_of_the_same_classes(tmp_path):
    args = ["--profile", "smoke", "--quiet", "--out", str(tmp_path), "--experiment", "misclassified"]
    assert run_all.main(args) == 0
    probabilities = pd.read_csv(tmp_path / "results" / "misclassified" / "probabilities.csv")
    assert len(probabilities) and set(probabilities["class_kind"]) == {"true", "bagnet33 predicted", "vgg16 predicted"}
    per_kind = probabilities.groupby(["image_id", "class_kind"])
    assert (per_kind["model"].nunique() == 2).all() and (per_kind["class"].nunique() == 1).all()  # the same class
    images = pd.read_csv(tmp_path / "results" / "misclassified" / "images.csv").set_index(["image_id", "model"])
    for row in probabilities[probabilities["class_kind"] == "true"].itertuples():
        assert row.probability == pytest.approx(images.loc[(row.image_id, row.model), "p_true"])
