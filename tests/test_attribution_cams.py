"""The CAM family through pytorch-grad-cam (bagrepro.methods.attribution.cams): each registered method
is the library's map, called directly on the same layer and image; the maps are the library's
normalised [0, 1] maps on the channel sum; a model without a spatial convolution is refused."""

from __future__ import annotations

import copy

import pytest
import torch
import torchvision
from torch import nn

from bagrepro.methods.attribution import MethodNotApplicable, attribute, get_attribution, gradcam_layer
from bagrepro.methods.attribution.cams import GRAD_CAM_LIBRARY
from bagrepro.models.bagnet import randomise_batchnorm


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


@pytest.fixture(scope="module")
def resnet():
    torch.manual_seed(0)
    return randomise_batchnorm(torchvision.models.resnet18(num_classes=5), seed=1).eval()


@pytest.mark.parametrize("method", list(GRAD_CAM_LIBRARY))
def test_each_method_is_the_library_on_one_image(resnet, method):
    import pytorch_grad_cam
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    torch.manual_seed(1)
    x = torch.randn(1, 3, 40, 40)
    ours = attribute(resnet, x, torch.tensor([2]), method)
    assert ours.shape == x.shape and get_attribution(method).library.startswith("pytorch-grad-cam")
    model = copy.deepcopy(resnet)  # a copy the library may modify (Ablation-CAM swaps a layer)
    for module in model.modules():
        if isinstance(module, nn.ReLU):
            module.inplace = False
    with getattr(pytorch_grad_cam, GRAD_CAM_LIBRARY[method][0])(model=model, target_layers=[model.layer4]) as cam:
        expected = torch.as_tensor(cam(input_tensor=x.clone(), targets=[ClassifierOutputTarget(2)]))
    assert torch.allclose(ours.sum(1), expected, atol=1e-5), method
    assert float(ours.min()) >= 0 and float(ours.sum(1).max()) <= 1 + 1e-6  # the library's [0, 1] maps
    # the caller's model was not touched (Ablation-CAM swaps the layer on the working copy only)
    assert isinstance(resnet.layer4, nn.Sequential)


def test_the_per_channel_batch_does_not_change_the_map(resnet):
    x = torch.randn(2, 3, 40, 40)
    t = torch.tensor([0, 4])
    for method in ("score_cam", "ablation_cam"):
        assert torch.allclose(attribute(resnet, x, t, method, cam_batch_size=7),
                              attribute(resnet, x, t, method, cam_batch_size=64), atol=1e-5), method


def test_a_model_without_a_spatial_convolution_is_refused():
    flat = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 4))
    one_by_one = nn.Sequential(nn.Conv2d(3, 4, 8), nn.Flatten())  # its map is 1 x 1 at 8 px
    for method in GRAD_CAM_LIBRARY:
        if method == "full_grad":
            continue
        for model in (flat, one_by_one):
            with pytest.raises(MethodNotApplicable, match=f"^{method}: "):
                attribute(model, torch.randn(1, 3, 8, 8), 0, method)


def test_score_cam_needs_the_model_for_its_cost(resnet):
    from bagrepro.core.errors import ConfigError

    with pytest.raises(ConfigError, match="score_cam"):
        get_attribution("score_cam").passes_for(2, image_size=40)
    assert gradcam_layer(resnet, torch.randn(1, 3, 40, 40), "score_cam") is resnet.layer4
    # one pass of the activations plus one per channel of layer4 (512), per image; one layer-finding pass
    assert get_attribution("score_cam").passes_for(2, image_size=40, model=resnet) == (2 * 513 + 1, 0)


def test_full_grad_refuses_a_model_whose_bias_layers_run_out_of_registration_order(resnet):
    class Swapped(nn.Module):
        """Registers conv_b before conv_a but runs conv_a first: FullGrad would pair their biases wrongly."""

        def __init__(self):
            super().__init__()
            self.conv_b = nn.Conv2d(4, 4, 3, padding=1)
            self.conv_a = nn.Conv2d(3, 4, 3, padding=1)
            self.head = nn.Linear(4, 5)

        def forward(self, x):
            return self.head(self.conv_b(self.conv_a(x).relu()).relu().mean((2, 3)))

    full_grad = get_attribution("full_grad")
    assert full_grad.not_applicable(resnet, 40) is None
    reason = full_grad.not_applicable(Swapped(), (32, 32))
    assert reason is not None and reason.startswith("full_grad: ")
    with pytest.raises(MethodNotApplicable, match="order it registers"):
        attribute(Swapped(), torch.randn(2, 3, 32, 32), torch.tensor([0, 1]), "full_grad")
    assert get_attribution("grad_cam").not_applicable(Swapped(), 32) is None  # no check: applies
