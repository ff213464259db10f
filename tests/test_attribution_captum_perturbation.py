"""captum's cell-wise perturbation methods, feature_ablation (FeatureAblation) and
shapley_value_sampling (ShapleyValueSampling): each equals captum called directly on one image; a
linear model's closed form; Shapley values add up to logit(x) - logit(0); the memory bound
(perturbations_per_eval) changes neither the maps nor the passes, and bounds the inputs per pass;
the registry cost equals the passes a PassCounter counts."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from bagrepro.core.errors import ConfigError
from bagrepro.core.passes import PassCounter
from bagrepro.methods.attribution import attribute, cell_feature_mask, get_attribution, seeded_rng
from bagrepro.models.bagnet import randomise_batchnorm, reduced_bagnet

METHODS = ("feature_ablation", "shapley_value_sampling")


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


@pytest.fixture(scope="module")
def bagnet():
    torch.manual_seed(0)
    return randomise_batchnorm(reduced_bagnet(9, width=8, blocks=1, num_classes=5), seed=1).eval()


def test_feature_ablation_is_captums(bagnet):
    from captum.attr import FeatureAblation

    x = torch.randn(1, 3, 36, 40)  # 3 x 3 cells, the last row and column of cells smaller
    mask = cell_feature_mask(36, 40, 16)[None, None]
    expected = FeatureAblation(bagnet).attribute(x.clone(), baselines=0.0, target=3, feature_mask=mask)
    ours = attribute(bagnet, x, 3, "feature_ablation")
    assert ours.shape == x.shape and ours.dtype == torch.float32
    assert torch.allclose(ours, expected, rtol=1e-5, atol=1e-6)
    assert ours.abs().max() > 0


def test_shapley_value_sampling_is_captums_with_the_same_orders(bagnet):
    from captum.attr import ShapleyValueSampling

    x = torch.randn(1, 3, 40, 40)
    mask = cell_feature_mask(40, 40, 16)[None, None]
    for seed, samples in ((0, 3), (5, 2)):
        with seeded_rng(seed):
            expected = ShapleyValueSampling(bagnet).attribute(x.clone(), baselines=0.0, target=2,
                                                              feature_mask=mask, n_samples=samples)
        ours = attribute(bagnet, x, 2, "shapley_value_sampling", shapley_samples=samples, seed=seed)
        assert torch.allclose(ours, expected, rtol=1e-5, atol=1e-6), seed
    # captum's default number of orders, 25
    with seeded_rng(0):
        expected = ShapleyValueSampling(bagnet).attribute(x.clone(), baselines=0.0, target=2, feature_mask=mask)
    assert torch.allclose(attribute(bagnet, x, 2, "shapley_value_sampling"), expected, rtol=1e-5, atol=1e-6)


def test_a_linear_model_has_its_closed_form():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 20 * 24, 3)).double().eval()
    x = torch.randn(2, 3, 20, 24, dtype=torch.float64)
    t = torch.tensor([0, 2])
    contribution = model[1].weight[t].reshape(2, 3, 20, 24) * x  # w x per element
    mask = cell_feature_mask(20, 24, 8)  # 3 x 3 cells of 8 and 4 px
    cells = int(mask.max()) + 1
    per_cell = torch.stack([contribution[:, :, mask == k].sum((1, 2)) for k in range(cells)], 1)  # [2, cells]
    expected = per_cell[:, mask].unsqueeze(1).expand(-1, 3, -1, -1)
    # linear: every marginal contribution of a cell is its sum of w x, whatever the order (so any
    # number of orders is exact), and ablating it alone drops the logit by the same amount
    for method, options in (("feature_ablation", {}), ("shapley_value_sampling", {"shapley_samples": 1}),
                            ("shapley_value_sampling", {"shapley_samples": 3, "seed": 7})):
        ours = attribute(model, x, t, method, cell=8, **options).double()
        assert torch.allclose(ours, expected, atol=1e-6), (method, options)


def test_shapley_values_add_up_to_the_logit_over_the_baseline(bagnet):
    x = torch.randn(2, 3, 40, 40)
    t = torch.tensor([1, 4])
    maps = attribute(bagnet, x, t, "shapley_value_sampling", shapley_samples=2)
    mask = cell_feature_mask(40, 40, 16)
    first_pixel = torch.stack([(mask.flatten() == k).nonzero()[0, 0] for k in range(int(mask.max()) + 1)])
    values = maps[:, 0].flatten(1)[:, first_pixel]  # [B, cells]: one value per cell
    with torch.no_grad():
        logits = bagnet(x).gather(1, t[:, None])[:, 0] - bagnet(torch.zeros_like(x)).gather(1, t[:, None])[:, 0]
    assert torch.allclose(values.sum(1), logits, rtol=1e-4, atol=1e-5)
    # not ablation: a nonlinear model's cells interact
    assert not torch.allclose(maps, attribute(bagnet, x, t, "feature_ablation"), atol=1e-4)


def _max_inputs_per_pass(model: nn.Module, run) -> tuple[object, int]:
    sizes = []
    handle = model.register_forward_pre_hook(lambda _module, inputs: sizes.append(inputs[0].shape[0]))
    try:
        result = run()
    finally:
        handle.remove()
    return result, max(sizes)


@pytest.mark.parametrize("method", METHODS)
def test_the_memory_bound_changes_nothing_but_the_inputs_per_pass(bagnet, method):
    x = torch.randn(2, 3, 40, 40)
    t = torch.tensor([0, 4])
    options = {"shapley_samples": 2}
    reference, widest = _max_inputs_per_pass(
        bagnet, lambda: attribute(bagnet, x, t, method, perturbations_per_eval=1, **options))
    assert widest == 2  # one cell per pass, for both images
    for bound in (4, 5, 64):  # 2 cells per pass, 2 cells, every cell in one pass
        maps, widest = _max_inputs_per_pass(
            bagnet, lambda: attribute(bagnet, x, t, method, perturbations_per_eval=bound, **options))
        assert widest <= max(2, bound), (bound, widest)
        assert torch.allclose(maps, reference, rtol=1e-5, atol=1e-6), bound
    # the batch equals its images one at a time (the same orders for each image)
    one_by_one = torch.cat([attribute(bagnet, x[i:i + 1], t[i:i + 1], method, **options) for i in range(2)])
    assert torch.allclose(attribute(bagnet, x, t, method, **options), one_by_one, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("options", [{}, {"cell": 12, "perturbations_per_eval": 3, "shapley_samples": 2}])
def test_the_cost_is_the_counted_passes(bagnet, method, options):
    if method == "shapley_value_sampling" and not options:
        options = {"shapley_samples": 3}  # the default 25 works alike, only slower
    counter = PassCounter()
    counter.attach("bagnet", bagnet)
    x = torch.randn(3, 3, 40, 36)
    attribute(bagnet, x, torch.tensor([0, 1, 2]), method, **options)
    counted = counter.counts["bagnet"]
    cost = get_attribution(method).passes_for(3, image_size=(40, 36), **options)
    assert cost == (counted.forward, counted.backward) and counted.backward == 0
    cells = (-(-40 // options.get("cell", 16))) * (-(-36 // options.get("cell", 16)))
    per_image = 1 + cells * (options["shapley_samples"] if method == "shapley_value_sampling" else 1)
    assert cost == (3 * per_image, 0)
    with pytest.raises(ConfigError, match="image_size"):
        get_attribution(method).passes_for(3, **options)


def test_seeded_and_deterministic(bagnet):
    x = torch.randn(1, 3, 40, 40)
    state = torch.get_rng_state()
    first = attribute(bagnet, x, 0, "shapley_value_sampling", shapley_samples=2)
    assert torch.equal(torch.get_rng_state(), state)  # the caller's generator is left as it was
    assert torch.equal(first, attribute(bagnet, x, 0, "shapley_value_sampling", shapley_samples=2))
    assert not torch.equal(first, attribute(bagnet, x, 0, "shapley_value_sampling", shapley_samples=2, seed=1))
