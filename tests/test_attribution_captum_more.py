"""captum's remaining image methods (feature_ablation, shapley_value_sampling, expected_gradients):
each equals captum called directly on one image; Shapley values of a linear model are exact; the
memory bounds do not change the maps."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from bagrepro.methods.attribution import attribute, cell_feature_mask, seeded_rng
from bagrepro.models.bagnet import randomise_batchnorm, reduced_bagnet


@pytest.fixture(scope="module")
def bagnet():
    torch.manual_seed(0)
    return randomise_batchnorm(reduced_bagnet(9, width=8, blocks=1, num_classes=5), seed=1).eval()


def test_feature_ablation_and_shapley_sampling_are_captums(bagnet):
    from captum.attr import FeatureAblation, ShapleyValueSampling

    bagnet = bagnet.float()  # captum's ShapleyValueSampling mixes dtypes on float64 when it batches perturbations
    x = torch.randn(1, 3, 40, 40)
    mask = cell_feature_mask(40, 40, 16)[None, None]
    expected = FeatureAblation(bagnet).attribute(x.clone(), baselines=0.0, target=2, feature_mask=mask)
    assert torch.allclose(attribute(bagnet, x, 2, "feature_ablation"), expected, atol=1e-5)
    with seeded_rng(0):
        expected = ShapleyValueSampling(bagnet).attribute(x.clone(), baselines=0.0, target=2, feature_mask=mask,
                                                          n_samples=3)
    assert torch.allclose(attribute(bagnet, x, 2, "shapley_value_sampling", shapley_samples=3), expected, atol=1e-5)


def test_expected_gradients_is_captums_gradient_shap_on_the_references(bagnet):
    from captum.attr import GradientShap

    bagnet = bagnet.double()
    x = torch.randn(1, 3, 40, 40, dtype=torch.float64)
    references = torch.randn(4, 3, 40, 40, dtype=torch.float64)
    with seeded_rng(0):
        expected = GradientShap(bagnet).attribute(x.clone(), baselines=references, n_samples=6, stdevs=0.0, target=1)
    ours = attribute(bagnet, x, 1, "expected_gradients", eg_samples=6, references=references)
    assert torch.allclose(ours.double(), expected, atol=1e-6)


def test_shapley_values_of_a_linear_model_are_exact():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 3)).double().eval()
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    t = torch.tensor([0, 2])
    weights = model[1].weight[t].reshape(2, 3, 32, 32)
    contribution = weights * x  # a cell's Shapley value: the sum of its elements' w x
    mask = cell_feature_mask(32, 32, 16)
    per_cell = torch.stack([contribution[:, :, mask == k].sum((1, 2)) for k in range(4)], 1)  # [2, 4]
    expected = per_cell[:, mask].unsqueeze(1).expand(-1, 3, -1, -1)
    for method in ("shapley_value_sampling", "feature_ablation"):  # linear: ablation is exact too
        assert torch.allclose(attribute(model, x, t, method, shapley_samples=2).double(), expected, atol=1e-8), method


def test_the_memory_bounds_do_not_change_the_maps(bagnet):
    bagnet = bagnet.float()
    x = torch.randn(2, 3, 40, 40)
    t = torch.tensor([0, 4])
    for method in ("feature_ablation", "shapley_value_sampling"):
        first = attribute(bagnet, x, t, method, perturbations_per_eval=1, shapley_samples=2)
        assert torch.allclose(first, attribute(bagnet, x, t, method, perturbations_per_eval=9, shapley_samples=2),
                              atol=1e-5), method
