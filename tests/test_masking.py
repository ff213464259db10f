"""The masking engine (Fig. 8) and eq. 1 (Fig. 6): closed forms and models built for the test."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
import torchvision
from torch import nn

from bagrepro.methods.masking import (fill_values, grid_shape, interaction_terms, masking_curves, patch_masks_to_pixels,
                              patch_scores, ranks_from_scores, separated_masks)
from bagrepro.models.bagnet import reduced_bagnet
from experiments.interactions import correlations


def randomised(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random weights and BatchNorm statistics (eval mode), so no layer is trivially linear."""
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.copy_(torch.randn(module.num_features, generator=generator) * 0.1)
            module.running_var.copy_(torch.rand(module.num_features, generator=generator) + 0.5)
            module.weight.data.copy_(torch.rand(module.num_features, generator=generator) + 0.5)
            module.bias.data.copy_(torch.randn(module.num_features, generator=generator) * 0.1)
    return model.eval()


class EvidenceModel(nn.Module):
    """Two classes: logit_1 = 4 * (mean of channel 0) * (H * W / number of evidence pixels), logit_0 = 0."""

    def __init__(self, evidence_pixels: int):
        super().__init__()
        self.evidence_pixels = evidence_pixels

    def forward(self, x):
        logit = 4.0 * x[:, 0].sum((1, 2)) / self.evidence_pixels
        return torch.stack([torch.zeros_like(logit), logit], 1)


def evidence_images(batch: int = 3, size: int = 32, patch: int = 8):
    """Zero images with channel 0 set to 1 on the last two patches of the grid (bottom-right)."""
    images = torch.zeros(batch, 3, size, size)
    images[:, 0, -patch:, -2 * patch:] = 1.0
    rows, cols = grid_shape(size, size, patch)
    evidence = torch.zeros(rows * cols)
    evidence[-2:] = 1.0
    return images, evidence


def per_step_loop(model, images, ranks, leading, steps, patch, fill):
    """The attribution-toolkit way: one forward pass per image and masking step."""
    fills = fill_values(images, patch, fill)
    curves = torch.zeros(len(images), steps + 1)
    for b in range(len(images)):
        for k in range(steps + 1):
            pixels = patch_masks_to_pixels(ranks[b:b + 1] < k, *images.shape[-2:], patch)
            masked = torch.where(pixels, fills[b:b + 1], images[b:b + 1])
            with torch.no_grad():
                curves[b, k] = model(masked).softmax(1)[0, leading[b]]
    return curves


def test_patch_scores_sum_each_patch_and_its_channels():
    attribution = torch.zeros(1, 3, 17, 24)  # the last row does not fill a patch and is ignored
    attribution[0, :, 8:16, 0:8] = 1.0
    attribution[0, 1, 0, 0] = -2.0
    attribution[0, 0, 16, :] = 100.0
    scores = patch_scores(attribution, 8, "signed")
    assert scores.shape == (1, 2 * 3)
    assert scores[0].tolist() == [-2.0, 0.0, 0.0, 192.0, 0.0, 0.0]
    assert patch_scores(attribution, 8, "absolute")[0, 0] == 2.0
    assert patch_scores(attribution, 8, "positive")[0, 0] == 0.0


def test_fills():
    images = torch.rand(2, 3, 16, 20)
    dc = fill_values(images, 8, "dc")
    assert torch.allclose(dc[:, :, :8, :8].mean((2, 3)), images[:, :, :8, :8].mean((2, 3)))
    assert torch.allclose(dc[:, :, :8, :8], dc[:, :, :1, :1].expand(-1, -1, 8, 8))
    assert torch.equal(dc[..., 16:], images[..., 16:])  # outside the grid: untouched
    assert fill_values(images, 8, "zero").abs().sum() == 0
    assert fill_values(images, 8, "blur").shape == images.shape


def test_engine_equals_the_per_step_loop_for_any_chunk_size():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(8, 8, 3), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5)).eval()
    images = torch.randn(3, 3, 32, 40)
    ranks = ranks_from_scores(torch.randn(3, 4 * 5))
    leading = torch.tensor([0, 3, 4])
    expected = per_step_loop(model, images, ranks, leading, 12, 8, "dc")
    for chunk in (1, 7, 64):
        curves = masking_curves(model, images, ranks, leading, 12, 8, "dc", chunk_size=chunk)
        assert torch.allclose(curves, expected, atol=1e-6)


def test_true_evidence_heatmap_destroys_the_class_and_a_constant_one_masks_in_grid_order():
    images, evidence = evidence_images()
    model = EvidenceModel(evidence_pixels=2 * 64)
    leading = torch.ones(3, dtype=torch.long)
    clean = model(images).softmax(1)[0, 1]
    assert clean > 0.98
    true_order = masking_curves(model, images, ranks_from_scores(evidence.expand(3, -1)), leading, 16, fill="zero")
    constant = masking_curves(model, images, ranks_from_scores(torch.zeros(3, 16)), leading, 16, fill="zero")
    # marking the evidence: the class is gone (p = 0.5) after exactly the two evidence patches
    assert torch.allclose(true_order[:, 2:], torch.full_like(true_order[:, 2:], 0.5))
    assert (true_order[:, 1] < clean).all() and (true_order[:, 1] > 0.5).all()
    # a constant heatmap masks in grid order: nothing changes until the evidence (patches 14, 15)
    assert torch.allclose(constant[:, :15], clean.expand(3, 15))
    assert (true_order <= constant + 1e-6).all()


def test_eq1_holds_for_bagnets_when_masks_are_more_than_q_apart_and_fails_for_resnet():
    images = torch.randn(3, 3, 112, 104, dtype=torch.float64)
    classes = torch.tensor([1, 2, 3])
    for q in (9, 17, 33):
        model = randomised(reduced_bagnet(q, width=4), seed=q).double()
        size = q + 1
        assert len(separated_masks(112, 104, size)) >= 2
        lhs, rhs = interaction_terms(model, images, classes, size)
        assert (lhs.abs() > 1e-6).all()  # the masks do change the logit
        assert torch.allclose(lhs, rhs, rtol=1e-9, atol=1e-12), q
    resnet = randomised(torchvision.models.resnet18(num_classes=5)).double()
    lhs, rhs = interaction_terms(resnet, images[..., :64, :64], classes, 20)
    assert (lhs - rhs).abs().max() > 0.05 * lhs.abs().max()


def test_pearson_r_is_one_for_a_bagnet_beyond_q():
    """In float64, so that float32 rounding of tiny logit differences does not blur the identity."""
    model = randomised(reduced_bagnet(9, width=4), seed=3).double()
    images = torch.randn(6, 3, 64, 64, dtype=torch.float64)
    leading = model(images).argmax(1)
    lhs, rhs = interaction_terms(model, images, leading, 12)
    terms = pd.DataFrame({"model": "m", "role": "bagnet9", "patch_size": 12, "min_distance": 12,
                          "lhs": lhs.numpy(), "rhs": rhs.numpy()})
    assert correlations(terms)["pearson_r"].iloc[0] == pytest.approx(1.0, abs=1e-9)


def test_a_new_attribution_method_is_one_function_and_a_setting(tmp_path, monkeypatch):
    """Register a method (one decorated function), name it in the masking setting ``white_box``
    through a profile, and the experiment masks patches in its order: no other edit."""
    import dataclasses

    import pandas as pd

    import run_all
    from bagrepro.methods import attribution
    from bagrepro.harness import profiles

    @attribution.register_attribution("test_input_x_gradient", passes="1 forward + 1 backward")
    def input_x_gradient(net, images, targets):
        """Gradient x input (captum InputXGradient): a method the paper did not use."""
        from captum.attr import InputXGradient

        return InputXGradient(net).attribute(images.requires_grad_(True), target=targets)

    try:
        settings = {"masking": {"num_images": 2, "steps": 3, "random_seeds": 1, "tested_roles": ("vgg16",),
                                "white_box": ("saliency", "test_input_x_gradient")}}
        smoke = dataclasses.replace(profiles.PROFILES["smoke"], settings=profiles.frozen(settings))
        monkeypatch.setitem(profiles.PROFILES, "smoke", smoke)
        assert run_all.main(["--profile", "smoke", "--experiment", "masking", "--models", "smoke_vgg16",
                             "smoke_bagnet9", "smoke_bagnet17", "smoke_bagnet33", "--quiet",
                             "--out", str(tmp_path)]) == 0
    finally:
        attribution.unregister_attribution("test_input_x_gradient")
    curves = pd.read_csv(tmp_path / "results" / "masking" / "curves.csv")
    assert list(dict.fromkeys(curves["method"])) == ["saliency", "test_input_x_gradient", "bagnet9", "bagnet17",
                                                     "bagnet33", "random"]
    ours = curves[curves["method"] == "test_input_x_gradient"]
    assert len(ours) == 2 * 4 and ours["probability"].between(0, 1).all()
    # k = 0 is the clean image whatever the order: the same probability for every method
    clean = curves[curves["k"] == 0].groupby("image_id")["probability"]
    assert ((clean.max() - clean.min()) < 1e-5).all()
