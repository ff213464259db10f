"""LRP through zennit and DeepLiftShap (bagrepro.methods.attribution.lrp): each composite method is
zennit called directly with the same composite and canonizers; our BagNet canonizer keeps the model's
function and leaves it as it was; DeepLiftShap equals captum's where captum's DeepLift is right."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from bagrepro.methods.attribution import MethodNotApplicable, attribute
from bagrepro.methods.attribution.lrp import ZENNIT_COMPOSITES, zennit_canonizers
from bagrepro.models.bagnet import randomise_batchnorm, reduced_bagnet


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


def _zennit_directly(model, x, target, composite_name, canonizers):
    from zennit import composites
    from zennit.attribution import Gradient

    composite_class = getattr(composites, composite_name)
    if composite_class is composites.EpsilonGammaBox:
        low = x.amin((0, 2, 3), keepdim=True).expand_as(x)
        high = x.amax((0, 2, 3), keepdim=True).expand_as(x)
        composite = composite_class(low=low, high=high, canonizers=canonizers)
    else:
        composite = composite_class(canonizers=canonizers)
    with Gradient(model=model, composite=composite) as attributor:
        output, relevance = attributor(x, lambda out: torch.eye(out.shape[1])[[target]] * out)
    return relevance


@pytest.mark.parametrize("architecture", ["vgg11", "resnet18"])
@pytest.mark.parametrize("method", list(ZENNIT_COMPOSITES))
def test_each_composite_is_zennit_on_one_image(architecture, method):
    from zennit.torchvision import ResNetCanonizer, VGGCanonizer

    torch.manual_seed(0)
    model = randomise_batchnorm(getattr(torchvision.models, architecture)(num_classes=5), seed=1).eval()
    x = torch.randn(1, 3, 40, 40)
    ours = attribute(model, x, torch.tensor([3]), method)
    copy = randomise_batchnorm(getattr(torchvision.models, architecture)(num_classes=5), seed=1).eval()
    copy.load_state_dict(model.state_dict())
    for module in copy.modules():
        if isinstance(module, nn.ReLU):
            module.inplace = False
    canonizer = VGGCanonizer() if architecture == "vgg11" else ResNetCanonizer()
    expected = _zennit_directly(copy, x.clone(), 3, ZENNIT_COMPOSITES[method][0], [canonizer])
    assert torch.allclose(ours, expected, rtol=1e-4, atol=1e-6 * float(expected.abs().max())), method


def test_the_bagnet_canonizer_keeps_the_function_and_the_model():
    torch.manual_seed(1)
    model = randomise_batchnorm(reduced_bagnet(9, width=8, blocks=2, num_classes=5), seed=2).eval()
    x = torch.randn(2, 3, 40, 40)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        before = model(x)
    canonizers = zennit_canonizers(model, "lrp_epsilon_plus_flat")
    handles = [handle for canonizer in canonizers for handle in canonizer.apply(model)]
    try:
        with torch.no_grad():
            merged = model(x)  # BatchNorm merged into the convolutions, the residual sums as zennit Sum modules
        assert torch.allclose(merged, before, rtol=1e-3, atol=1e-3)  # float rounding of the merge
        assert any(hasattr(module, "canonizer_sum") for module in model.modules())
    finally:
        for handle in handles:
            handle.remove()
    assert all(torch.allclose(state[k], v) for k, v in model.state_dict().items())
    assert not any(hasattr(module, "canonizer_sum") for module in model.modules())
    # and through the registry the caller's model is never touched
    attribute(model, x, torch.tensor([0, 1]), "lrp_epsilon_gamma_box")
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())


def test_composites_conserve_the_logit_on_a_bias_free_relu_net():
    torch.manual_seed(2)
    model = nn.Sequential(nn.Conv2d(3, 6, 3, bias=False), nn.ReLU(), nn.Conv2d(6, 6, 3, bias=False), nn.ReLU(),
                          nn.Flatten(), nn.Linear(6 * 12 * 12, 4, bias=False)).eval()
    x = torch.rand(3, 3, 16, 16)  # positive inputs: z+ and the flat rule keep every relevance
    t = torch.tensor([0, 1, 2])
    with torch.no_grad():
        logits = model(x).gather(1, t[:, None])[:, 0]
    for method in ("lrp_epsilon_plus_flat", "lrp_epsilon_alpha2_beta1"):
        total = attribute(model, x, t, method).sum((1, 2, 3))
        assert torch.allclose(total, logits, rtol=1e-3, atol=1e-5), method


def test_a_model_with_batchnorm_and_no_canonizer_is_refused():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 2)).eval()
    with pytest.raises(MethodNotApplicable, match="^lrp_epsilon_plus_flat: no zennit canonizer"):
        attribute(model, torch.randn(1, 3, 8, 8), 0, "lrp_epsilon_plus_flat")


def test_deeplift_shap_is_captums_where_captum_is_right():
    from captum.attr import DeepLiftShap

    torch.manual_seed(3)
    model = nn.Sequential(nn.Conv2d(3, 6, 3), nn.ReLU(), nn.Conv2d(6, 6, 3), nn.ReLU(), nn.Flatten(),
                          nn.Linear(6 * 12 * 12, 4)).double().eval()
    x = torch.randn(1, 3, 16, 16, dtype=torch.float64)
    references = torch.randn(5, 3, 16, 16, dtype=torch.float64)
    ours = attribute(model, x, 2, "deeplift_shap", references=references)
    expected = DeepLiftShap(model).attribute(x.clone(), baselines=references, target=2)
    assert torch.allclose(ours.double(), expected, rtol=1e-4, atol=1e-7)
    # summation to delta: the attributions sum to the logit minus the mean reference logit
    with torch.no_grad():
        delta = model(x)[0, 2] - model(references)[:, 2].mean()
    assert float(ours.sum()) == pytest.approx(float(delta), rel=1e-4)
