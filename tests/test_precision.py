"""--precision bf16: autocast on the forward-only passes, bounded against fp32 on the (tiny) demo zoo
on the CPU; fp32 is the default and leaves everything as it was; heatmaps stay exact."""

from __future__ import annotations

import json

import math

import pandas as pd
import pytest
import torch

import run_all
from bagrepro.demo.store import demo_test_images
from bagrepro.methods.heatmaps import dense_heatmaps
from bagrepro.methods.masking import grid_shape, masking_curves, ranks_from_scores
from bagrepro.models import create_model
from bagrepro.models.fast import fuse_for_inference, with_precision

#: what bf16 may change, on a demo model's probabilities (bfloat16 keeps 8 bits of mantissa: logits
#: move by about 1 %); measured on the tiny demo zoo: well inside
MAX_PROBABILITY_CHANGE = 0.05
MEAN_PROBABILITY_CHANGE = 0.01
MIN_TOP1_AGREEMENT = 0.9


def test_fp32_is_the_model_itself_and_bf16_changes_only_forward():
    model = create_model("smoke_bagnet17").eval()
    fused = fuse_for_inference(model)
    assert with_precision(fused, "fp32") is fused
    images = torch.rand(2, 3, 64, 64)
    exact_maps = dense_heatmaps(fused, images, targets=torch.tensor([1, 2]))
    with torch.inference_mode():
        exact = fused(images)
    with_precision(fused, "bf16")
    with torch.inference_mode():
        rounded = fused(images)
    assert rounded.dtype == torch.float32 and not torch.equal(rounded, exact)
    assert torch.allclose(rounded, exact, rtol=0.05, atol=0.05)
    assert torch.equal(dense_heatmaps(fused, images, targets=torch.tensor([1, 2])), exact_maps)  # stays float32
    with pytest.raises(ValueError, match="unknown precision 'fp8'"):
        with_precision(fused, "fp8")


MODELS = ["demo_bagnet9", "demo_resnet50"]


def _predictions(out, precision) -> pd.DataFrame:
    assert run_all.main(["--profile", "demo", "--experiment", "accuracy", "--models", *MODELS,
                         "--precision", precision, "--quiet", "--out", str(out)]) == 0
    return pd.read_csv(out / "results" / "accuracy" / "predictions.csv")


def test_bf16_stays_within_bounds_of_fp32_on_the_demo_zoo(tiny_demo, tmp_path):  # noqa: F811
    """Accuracy through the CLI, then masking curves of the trained demo ResNet-50 (random patch
    orders, DC fill) in both precisions. Measured here: probabilities move by at most ~0.005."""
    exact, rounded = _predictions(tmp_path / "fp32", "fp32"), _predictions(tmp_path / "bf16", "bf16")
    meta = json.loads((tmp_path / "bf16" / "results" / "accuracy" / "predictions.meta.json").read_text())
    assert meta["precision"] == "bf16" and "bf16" in (tmp_path / "bf16" / "figures" / "report.html").read_text()
    both = exact.merge(rounded, on=["model", "image_id"], suffixes=("_fp32", "_bf16"))
    assert len(both) == len(exact)
    change = (both["true_prob_fp32"] - both["true_prob_bf16"]).abs()
    assert 0 < change.max() <= MAX_PROBABILITY_CHANGE and change.mean() <= MEAN_PROBABILITY_CHANGE
    assert (both["pred_1_fp32"] == both["pred_1_bf16"]).mean() >= MIN_TOP1_AGREEMENT

    model = create_model("demo_resnet50", pretrained=True, progress=False)  # the cached tiny one
    images = model.zoo_spec.preprocess.normalize(demo_test_images().images[:6])
    ranks = ranks_from_scores(torch.rand(len(images), math.prod(grid_shape(*images.shape[-2:], 8)),
                                         generator=torch.Generator().manual_seed(0)))
    fp32 = fuse_for_inference(model)
    bf16 = with_precision(fuse_for_inference(model), "bf16")
    with torch.inference_mode():
        leading = fp32(images).argmax(1)
        curves = [masking_curves(net, images, ranks, leading, 10) for net in (fp32, bf16)]
    curve_change = (curves[0] - curves[1]).abs()
    assert 0 < curve_change.max() <= MAX_PROBABILITY_CHANGE and curve_change.mean() <= MEAN_PROBABILITY_CHANGE
