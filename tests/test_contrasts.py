"""The report's first section, the paper's findings in this run: derived from the CSVs (change a CSV,
the verdict follows), on small hand-made results folders (no model runs)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from bagrepro.harness import contrasts
from bagrepro.core.metrics import with_accuracy_intervals
from bagrepro.harness.contrasts import AGREES, DISAGREES, NOT_MEASURABLE, NOT_RESOLVED, NOT_RUN
from bagrepro.harness.report import build_report

ROLES = {"b9": "bagnet9", "b17": "bagnet17", "b33": "bagnet33", "vgg": "vgg16", "res": "resnet50"}


def write(out, experiment, name, frame):
    folder = out / "results" / experiment
    folder.mkdir(parents=True, exist_ok=True)
    frame.to_csv(folder / name, index=False)


def predictions(accuracy_of: dict[str, float], n: int = 200, seed: int = 0) -> pd.DataFrame:
    """correct_top1 per (model, image): the first round(acc * n) images right."""
    rows = []
    for model, accuracy in accuracy_of.items():
        right = np.arange(n) < round(accuracy * n)
        rows.append(pd.DataFrame({"model": model, "role": ROLES[model], "image_id": [f"i{i}" for i in range(n)],
                                  "correct_top1": right.astype(float)}))
    return pd.concat(rows, ignore_index=True)


def by_name(out) -> dict[str, contrasts.Contrast]:
    return {c.source.split("/")[1] if c.source else c.finding: c for c in contrasts.contrasts(out)}


def test_nothing_run_says_not_run(tmp_path):
    assert {c.verdict for c in contrasts.contrasts(tmp_path)} == {NOT_RUN}


def test_accuracy_rising_with_q_follows_the_csv(tmp_path):
    write(tmp_path, "accuracy", "predictions.csv", predictions({"b9": 0.4, "b17": 0.6, "b33": 0.8}))
    found = contrasts.accuracy_rises_with_q(tmp_path / "results")
    assert found.verdict == AGREES and "bagnet33 - bagnet17: 20.0" in found.ours
    write(tmp_path, "accuracy", "predictions.csv", predictions({"b9": 0.6, "b17": 0.6, "b33": 0.8}))
    assert contrasts.accuracy_rises_with_q(tmp_path / "results").verdict == NOT_RESOLVED  # 9 -> 17: no gain
    write(tmp_path, "accuracy", "predictions.csv", predictions({"b9": 0.8, "b17": 0.6, "b33": 0.8}))
    assert contrasts.accuracy_rises_with_q(tmp_path / "results").verdict == DISAGREES
    # too few images to resolve a real difference
    write(tmp_path, "accuracy", "predictions.csv", predictions({"b9": 0.5, "b17": 0.6, "b33": 0.7}, n=10))
    assert contrasts.accuracy_rises_with_q(tmp_path / "results").verdict == NOT_RESOLVED


def group_table(b33: float, deep: float, n: int = 150) -> pd.DataFrame:
    """per_group.csv as the accuracy experiment writes it (with its exact intervals)."""
    return with_accuracy_intervals(
        pd.DataFrame({"model": ["b33", "vgg"], "role": ["bagnet33", "vgg16"], "group": "arrangement",
                      "n_images": n, "top1": [b33, deep], "top5": 100.0, "chance_top1": 100 / 3}))


def test_blindness_to_arrangements_follows_the_csv(tmp_path):
    write(tmp_path, "accuracy", "predictions.csv", predictions({"b33": 0.5}))
    assert contrasts.blind_to_arrangements(tmp_path / "results").verdict == NOT_MEASURABLE  # no groups: ImageNet
    write(tmp_path, "accuracy", "per_group.csv", group_table(34.0, 99.0))
    assert contrasts.blind_to_arrangements(tmp_path / "results").verdict == AGREES
    write(tmp_path, "accuracy", "per_group.csv", group_table(100.0, 99.0))
    assert contrasts.blind_to_arrangements(tmp_path / "results").verdict == DISAGREES  # BagNet-33 sees them


def test_eq1_exactness_beyond_q_follows_the_csv(tmp_path):
    terms = pd.DataFrame({"model": ["b9", "vgg"], "receptive_field": [9, np.nan]})
    table = pd.DataFrame({"model": ["b9", "b9", "vgg"], "role": ["bagnet9", "bagnet9", "vgg16"],
                          "min_distance": [8, 16, 16], "pearson_r": [0.5, 1.0, 0.7],
                          "pearson_r_low": [0.3, 0.99995, 0.6], "pearson_r_high": [0.6, 1.0, 0.8]})
    write(tmp_path, "interactions", "terms.csv", terms)
    write(tmp_path, "interactions", "correlation.csv", table)
    found = contrasts.exact_beyond_q(tmp_path / "results")
    assert found.verdict == AGREES and "16 px" in found.ours and "8 px" not in found.ours  # within q: not a test
    write(tmp_path, "interactions", "correlation.csv", table.assign(pearson_r_low=[0.3, 0.9, 0.6]))
    assert contrasts.exact_beyond_q(tmp_path / "results").verdict == DISAGREES


def test_logit_correlation_needs_separated_intervals(tmp_path):
    summary = pd.DataFrame({"model": ["b9", "b33"], "role": ["bagnet9", "bagnet33"], "pooled_r": [0.6, 0.8],
                            "pooled_r_low": [0.55, 0.75], "pooled_r_high": [0.65, 0.85]})
    write(tmp_path, "logit_correlation", "summary.csv", summary)
    assert contrasts.logit_correlation_rises(tmp_path / "results").verdict == AGREES
    write(tmp_path, "logit_correlation", "summary.csv", summary.assign(pooled_r_high=[0.8, 0.85]))
    assert contrasts.logit_correlation_rises(tmp_path / "results").verdict == NOT_RESOLVED


def scrambled(drop_b33: float, drop_res: float, n: int = 200) -> pd.DataFrame:
    rows = []
    for model, drop in (("b33", drop_b33), ("res", drop_res)):
        ids = [f"i{i}" for i in range(n)]
        rows.append(pd.DataFrame({"model": model, "role": ROLES[model], "image_id": ids, "method": "clean",
                                  "grid": np.nan, "correct_top1": 1.0}))
        rows.append(pd.DataFrame({"model": model, "role": ROLES[model], "image_id": ids, "method": "tiles", "grid": 4,
                                  "correct_top1": (np.arange(n) >= round(drop * n)).astype(float)}))
    return pd.concat(rows, ignore_index=True)


def test_scrambling_contrast_follows_the_csv(tmp_path):
    write(tmp_path, "scrambling", "predictions.csv", scrambled(0.05, 0.4))
    found = contrasts.scrambling_hurts_deep_models_more(tmp_path / "results")
    assert found.verdict == AGREES and "resnet50 - bagnet33: 0.350" in found.ours
    write(tmp_path, "scrambling", "predictions.csv", scrambled(0.4, 0.05))
    assert contrasts.scrambling_hurts_deep_models_more(tmp_path / "results").verdict == DISAGREES


def test_masking_contrast_uses_the_best_method_of_each_kind(tmp_path):
    table = pd.DataFrame({
        "model": "vgg", "role": "vgg16", "k": 10, "n_images": 24,
        "bagnet_method": ["bagnet9", "bagnet9", "bagnet33", "bagnet33"],
        "white_box_method": ["saliency", "deeplift", "saliency", "deeplift"],
        "bagnet_p": [0.3, 0.3, 0.2, 0.2], "white_box_p": [0.5, 0.4, 0.5, 0.4],
        "bagnet_minus_white_box": [-0.2, -0.1, -0.3, -0.2],
        "bagnet_minus_white_box_low": [-0.3, -0.2, -0.4, -0.3], "bagnet_minus_white_box_high": [-0.1, 0.0, -0.2, -0.1]})
    write(tmp_path, "masking", "comparisons.csv", table)
    found = contrasts.bagnet_heatmaps_beat_white_box(tmp_path / "results")
    assert found.verdict == AGREES and "bagnet33 - deeplift = -0.200" in found.ours
    write(tmp_path, "masking", "comparisons.csv", table.assign(bagnet_minus_white_box_high=[-0.1, 0, -0.2, 0.05]))
    assert contrasts.bagnet_heatmaps_beat_white_box(tmp_path / "results").verdict == NOT_RESOLVED


def test_the_report_opens_with_the_contrasts_and_they_follow_a_changed_csv(tmp_path):
    write(tmp_path, "accuracy", "predictions.csv", predictions({"b9": 0.4, "b17": 0.6, "b33": 0.8}))
    page = build_report(tmp_path, []).read_text()
    section = page[page.index("id='contrasts'"):]
    assert page.index("id='contrasts'") < page.index("id='provenance'")
    assert "class='verdict agrees'>agrees" in section.split("</tr>")[1]  # the first finding: accuracy rises with q
    write(tmp_path, "accuracy", "predictions.csv", predictions({"b9": 0.8, "b17": 0.6, "b33": 0.4}))
    page = build_report(tmp_path, []).read_text()
    first = page[page.index("id='contrasts'"):].split("</tr>")[1]
    assert "class='verdict disagrees'>disagrees" in first


def test_a_csv_without_the_interval_columns_is_not_run_not_a_crash(tmp_path):
    write(tmp_path, "logit_correlation", "summary.csv",
          pd.DataFrame({"model": ["b9", "b33"], "role": ["bagnet9", "bagnet33"], "pooled_r": [0.6, 0.8]}))
    found = {c.verdict for c in contrasts.contrasts(tmp_path)}
    assert found == {NOT_RUN}


@pytest.mark.parametrize("finding", contrasts.FINDINGS, ids=lambda f: f.__name__)
def test_every_finding_names_the_paper_and_its_source(finding, tmp_path):
    found = finding(tmp_path / "results")
    assert found.finding and found.paper and found.source.startswith("results/") and found.verdict == NOT_RUN


def texture_predictions(lost: int, n: int = 60) -> pd.DataFrame:
    """VGG-16 right on every clean image and wrong on the first ``lost`` of its n textures."""
    ids = [f"i{i}" for i in range(n)]
    clean = pd.DataFrame({"image_id": ids, "method": "clean", "grid": 0, "correct_top1": 1.0, "correct_top5": 1.0})
    right = (np.arange(n) >= lost).astype(float)
    texture = pd.DataFrame({"image_id": ids, "method": "texture", "grid": 0, "correct_top1": right,
                            "correct_top5": right})
    return pd.concat([clean, texture], ignore_index=True).assign(model="vgg", role="vgg16")


def test_texturisation_finding_reads_the_experiments_paired_drop(tmp_path):
    from experiments.scrambling import table

    results = tmp_path / "results"
    assert contrasts.texturisation_costs_vgg16(results).verdict == NOT_RUN
    write(tmp_path, "scrambling", "table.csv", table(texture_predictions(lost=20)))
    found = contrasts.texturisation_costs_vgg16(results)
    assert found.verdict == AGREES and "drop 33.3" in found.ours and found.reference_source == "paper, Fig. 5"
    write(tmp_path, "scrambling", "table.csv", table(texture_predictions(lost=0)))
    assert contrasts.texturisation_costs_vgg16(results).verdict == NOT_RESOLVED
