"""The attribution methods beyond the paper's four (bagrepro.methods.attribution): closed forms on a linear
model, guided backpropagation / deconvolution against captum, Grad-CAM's layer rule, methods that do
not apply, and every registered method on a reduced BagNet and torchvision ResNet-18 / VGG-11 /
DenseNet-121 (random weights, 40-64 px) with its pass count checked against the PassCounter."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

from bagrepro.methods.attribution import (
    PAPER_METHODS,
    MethodNotApplicable,
    attribute,
    attribution_methods,
    cell_feature_mask,
    get_attribution,
    gradcam_layer,
    gradient_shap_baselines,
    occlusion_windows,
)
from bagrepro.core.errors import ConfigError
from bagrepro.models.bagnet import randomise_batchnorm, reduced_bagnet
from bagrepro.core.passes import PassCounter

NEW_METHODS = ("input_x_gradient", "smoothgrad", "guided_backprop", "deconvolution", "gradient_shap",
               "occlusion", "kernel_shap", "lime", "grad_cam")
#: (architecture, method) pairs a method cannot apply to, each with its reason in the method
NOT_APPLICABLE = {("bagnet", "full_grad")}  # FullGrad pairs biases with gradients in module order
SEEDED = ("smoothgrad", "gradient_shap", "kernel_shap", "lime")
#: small sample counts: what the counted runs below use
SMALL = {
    "ig_steps": 4, "smoothgrad_samples": 3, "shap_samples": 3, "kernel_shap_samples": 10, "lime_samples": 10,
    # CAM (cams.py):
    # LRP (lrp.py):
    "guided_ig_steps": 3, "blur_ig_steps": 3, "xrai_steps": 2, "eg_samples": 3,  # path (path.py):
    "shapley_samples": 2,  # perturbation (perturbation.py):
}


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


def rel_err(a, b):
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


# ---- the registry ---------------------------------------------------------------------------------------

def test_new_methods_follow_the_paper_methods_in_order():
    registered = attribution_methods()
    assert registered[:len(PAPER_METHODS)] == PAPER_METHODS
    assert set(NEW_METHODS) <= set(registered[len(PAPER_METHODS):])
    options = {name: get_attribution(name).defaults for name in NEW_METHODS}
    assert options == {
        "input_x_gradient": {}, "guided_backprop": {}, "deconvolution": {}, "grad_cam": {},
        "smoothgrad": {"noise_level": 0.15, "smoothgrad_samples": 50, "internal_batch_size": None, "seed": 0},
        "gradient_shap": {"shap_samples": 20, "internal_batch_size": None, "seed": 0},
        "occlusion": {"occlusion_window": 16, "occlusion_stride": 8, "perturbations_per_eval": 16},
        "kernel_shap": {"cell": 16, "kernel_shap_samples": 200, "perturbations_per_eval": 16, "seed": 0},
        "lime": {"cell": 16, "lime_samples": 200, "perturbations_per_eval": 16, "seed": 0}}
    needs = {name: get_attribution(name).needs for name in NEW_METHODS}
    assert {name for name, need in needs.items() if need == ("forward",)} == {"occlusion", "kernel_shap", "lime"}
    assert needs["grad_cam"] == ("conv_layer",)
    # every default is stated in the docstring
    for name, defaults in options.items():
        description = get_attribution(name).description
        assert all(option in description for option in defaults), name
    # the default costs at 224 px, 8 images
    assert {name: get_attribution(name).passes_for(8, image_size=224) for name in NEW_METHODS} == {
        "input_x_gradient": (8, 8), "smoothgrad": (400, 400), "guided_backprop": (8, 8), "deconvolution": (8, 8),
        "gradient_shap": (160, 160), "occlusion": (8 * (1 + 27 * 27), 0), "kernel_shap": (1600, 0),
        "lime": (1600, 0), "grad_cam": (9, 0)}


def test_occlusion_cost_needs_the_image_size():
    with pytest.raises(ConfigError, match="image_size"):
        get_attribution("occlusion").passes_for(2)
    assert get_attribution("occlusion").passes_for(2, image_size=(40, 56)) == (2 * (1 + 4 * 6), 0)
    assert occlusion_windows(10, 10, 4, 4) == 9  # the last window hangs over the border
    with pytest.raises(ConfigError, match="occlusion"):
        occlusion_windows(10, 10, 4, 5)


def test_image_size_is_reserved():
    from bagrepro.methods.attribution import register_attribution

    def sized(net, images, targets, *, image_size: int = 224):
        """An option named like passes_for's image size."""
        return images

    before = attribution_methods()
    with pytest.raises(ConfigError, match="image_size"):
        register_attribution("test_sized", passes="1 forward")(sized)
    assert attribution_methods() == before


def test_cell_feature_mask():
    mask = cell_feature_mask(5, 7, 3)
    assert mask.tolist() == [[0, 0, 0, 1, 1, 1, 2]] * 3 + [[3, 3, 3, 4, 4, 4, 5]] * 2


# ---- closed forms on a linear model ----------------------------------------------------------------------

class LinearConv(nn.Module):
    """logits = spatial mean of a 1x1 convolution: f_t(x) = mean_ij (W_t . x_ij) + b_t."""

    def __init__(self, classes: int = 4):
        super().__init__()
        self.conv = nn.Conv2d(3, classes, 1, bias=True)

    def forward(self, x):
        return self.conv(x).mean((2, 3))


@pytest.fixture(scope="module")
def linear():
    torch.manual_seed(0)
    model = LinearConv().eval()
    with torch.no_grad():
        model.conv.weight.mul_(30)  # per-cell Shapley values of order 1
    x = torch.randn(3, 3, 10, 10)
    t = torch.tensor([0, 2, 3])
    w = (model.conv.weight.detach()[t, :, 0, 0] / 100)[:, :, None, None].expand_as(x)  # d f_t / d x
    return model, x, t, w


def test_gradient_methods_closed_forms(linear):
    model, x, t, w = linear
    torch.testing.assert_close(attribute(model, x, t, "saliency"), w.abs())
    for method in ("input_x_gradient", "integrated_gradients", "eps_lrp", "deeplift"):
        torch.testing.assert_close(attribute(model, x, t, method), w * x, rtol=1e-5, atol=1e-6, msg=method)
    for method in ("smoothgrad", "guided_backprop", "deconvolution"):  # no ReLU: the plain gradient
        torch.testing.assert_close(attribute(model, x, t, method, smoothgrad_samples=7), w,
                                   rtol=1e-5, atol=1e-7, msg=method)


def test_gradient_shap_closed_form(linear):
    """Each sample contributes (x - b) * w for a linear model, so the map is w * (x - c * noise) with
    c = (samples drawn on the noise baseline) / s, whatever the interpolation points."""
    model, x, t, w = linear
    samples = 6
    got = attribute(model, x, t, "gradient_shap", shap_samples=samples, seed=3)
    baselines = gradient_shap_baselines(x, seed=3)
    assert torch.equal(baselines[0], torch.zeros_like(x[0])) and not torch.equal(baselines[1], baselines[0])
    noise = baselines[1]
    a, r = (w * noise).flatten(1), (w * x - got).flatten(1)
    c = (a * r).sum(1) / (a * a).sum(1)
    torch.testing.assert_close(c * samples, (c * samples).round(), atol=1e-4, rtol=0)
    torch.testing.assert_close(got, w * (x - c[:, None, None, None] * noise), rtol=1e-5, atol=1e-6)


def test_occlusion_closed_form(linear):
    """Every element gets the mean, over the windows covering it, of the window's drop: for a linear
    model the window's sum of w * x (all channels). A 4 px window at stride 4 over 10 px hangs over."""
    model, x, t, w = linear
    contribution = (w * x).sum(1)  # [B, H, W]
    for window, stride in ((4, 4), (4, 3), (3, 2)):
        total, count = torch.zeros_like(contribution), torch.zeros(10, 10)
        positions = range(0, stride * (1 + -(-(10 - window) // stride)), stride)
        for row in positions:
            for col in positions:
                rows, cols = slice(row, row + window), slice(col, col + window)
                total[:, rows, cols] += contribution[:, rows, cols].sum((1, 2))[:, None, None]
                count[rows, cols] += 1
        got = attribute(model, x, t, "occlusion", occlusion_window=window, occlusion_stride=stride,
                        perturbations_per_eval=5)
        torch.testing.assert_close(got, (total / count)[:, None].expand_as(x), rtol=1e-5, atol=1e-6)


def test_kernel_shap_and_lime_closed_forms(linear):
    """The model is additive over cells with baseline 0, so a cell's Shapley value is its sum of w * x;
    captum puts it on every element of the cell. KernelSHAP's regression recovers it exactly; LIME's
    Lasso (alpha = 0.01) shrinks each coefficient by about alpha / Var(z) = 0.04."""
    model, x, t, w = linear
    mask = cell_feature_mask(10, 10, 4)  # 3 x 3 cells of 4, 4 and 2 px
    phi = torch.zeros(3, 9).index_add_(1, mask.flatten(), (w * x).sum(1).flatten(1))
    expected = phi[:, mask][:, None].expand_as(x)
    assert phi.abs().max() > 0.5
    kernel_shap = attribute(model, x, t, "kernel_shap", cell=4, kernel_shap_samples=60)
    torch.testing.assert_close(kernel_shap, expected, rtol=1e-4, atol=1e-5)
    lime = attribute(model, x, t, "lime", cell=4, lime_samples=200)
    assert float((lime - expected).abs().max()) < 0.08
    assert (lime.abs() <= expected.abs() + 1e-4).all()  # shrunk towards 0, never beyond
    # batched equals one image at a time (reseeded per image)
    single = torch.cat([attribute(model, x[i:i + 1], t[i:i + 1], "lime", cell=4, lime_samples=200)
                        for i in range(3)])
    assert torch.equal(lime, single)


def test_grad_cam_closed_form(linear):
    """The layer is the 1x1 convolution (same size as the input: no interpolation); alpha_k =
    mean_ij d f_t / d A_kij = [k = t] / HW, so the map is relu(A_t) / HW, a third on each channel."""
    model, x, t, _ = linear
    assert gradcam_layer(model, x) is model.conv
    with torch.no_grad():
        activation = model.conv(x)[torch.arange(3), t]
    expected = (activation.clamp(min=0) / 100 / 3)[:, None].expand_as(x)
    torch.testing.assert_close(attribute(model, x, t, "grad_cam"), expected, rtol=1e-5, atol=1e-7)


# ---- guided backpropagation and deconvolution against captum -------------------------------------------

class PlainNet(nn.Module):
    """Conv-ReLU-MaxPool-Conv-ReLU-AdaptiveAvgPool-Flatten-Linear; ``shared``: one ReLU module
    called twice (captum's module hooks cannot handle that; the override can)."""

    def __init__(self, shared: bool = False):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.relu1 = nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.relu2 = self.relu1 if shared else nn.ReLU()
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(32, 5))

    def forward(self, x):
        return self.head(self.relu2(self.conv2(self.pool(self.relu1(self.conv1(x))))))


@pytest.mark.parametrize("method", ["guided_backprop", "deconvolution"])
def test_modified_relu_gradients_equal_captum(method):
    from captum.attr import Deconvolution, GuidedBackprop

    torch.manual_seed(1)
    net = PlainNet().eval()
    shared = PlainNet(shared=True).eval()
    shared.load_state_dict(net.state_dict())
    x = torch.randn(3, 3, 12, 12)
    t = torch.tensor([0, 3, 4])
    explainer = {"guided_backprop": GuidedBackprop, "deconvolution": Deconvolution}[method]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # captum's notice about module backward hooks
        theirs = explainer(net).attribute(x.clone().requires_grad_(True), target=t).detach()
    ours = attribute(net, x, t, method)
    assert rel_err(ours, theirs) < 1e-6
    assert rel_err(attribute(shared, x, t, method), theirs) < 1e-6  # a reused ReLU is two ReLUs
    xg = x.clone().requires_grad_(True)
    (gradient,) = torch.autograd.grad(net(xg).gather(1, t[:, None]).sum(), xg)
    assert rel_err(ours, gradient) > 1e-2  # the rule acts


# ---- methods that do not apply --------------------------------------------------------------------------

def test_method_not_applicable():
    x, t = torch.randn(2, 3, 4, 4), torch.tensor([0, 1])
    with pytest.raises(MethodNotApplicable, match="no convolution"):
        attribute(nn.Sequential(nn.Flatten(), nn.Linear(48, 2)), x, t, "grad_cam")
    with pytest.raises(MethodNotApplicable, match="1x1"):  # a convolution, but only a 1x1 map
        attribute(nn.Sequential(nn.Conv2d(3, 2, 4), nn.Flatten()), x, t, "grad_cam")
    sigmoid = nn.Sequential(nn.Flatten(), nn.Linear(48, 4), nn.Sigmoid(), nn.Linear(4, 2))
    for method in ("eps_lrp", "deeplift"):
        with pytest.raises(MethodNotApplicable, match="sigmoid"):
            attribute(sigmoid, x, t, method)
    assert issubclass(MethodNotApplicable, ConfigError)
    # guided backprop and deconvolution only concern ReLUs (as captum's): a sigmoid keeps its gradient
    assert torch.isfinite(attribute(sigmoid, x, t, "guided_backprop")).all()


# ---- real architectures -----------------------------------------------------------------------------------

ARCHITECTURES = {  # name -> (constructor, image side, the Grad-CAM layer's attribute name)
    "bagnet": (lambda: reduced_bagnet(9, width=8, blocks=1, num_classes=5), 40, "layer4"),
    "resnet18": (lambda: torchvision.models.resnet18(num_classes=5), 40, "layer4"),
    "vgg11": (lambda: torchvision.models.vgg11(num_classes=5), 64, "features"),
    "densenet121": (lambda: torchvision.models.densenet121(num_classes=5), 64, "features"),
}


@pytest.fixture(scope="module", params=list(ARCHITECTURES))
def architecture(request):
    build, side, layer = ARCHITECTURES[request.param]
    torch.manual_seed(0)
    model = randomise_batchnorm(build(), seed=1)
    if request.param == "vgg11":
        # a random VGG's logits vary by ~0.01 between inputs, so LIME's Lasso (alpha = 0.01) would
        # zero every coefficient; a trained network's vary by units
        with torch.no_grad():
            model.classifier[-1].weight.mul_(100)
    return request.param, model, side, layer


def test_gradcam_layer_rule(architecture):
    _, model, side, layer = architecture
    assert gradcam_layer(model, torch.randn(1, 3, side, side)) is getattr(model, layer)
    assert all(not m._forward_hooks for m in model.modules())


def blur_path_gradient(model, images, targets, steps, max_sigma=50.0):
    """Sum of |d logit_t / d input| at Blur IG's path points of sigma > 0 (the library's sigmas
    i * max_sigma / steps; at sigma 0 its blur derivative is zero: a 0.01 px kernel is one pixel),
    every (sigma, image) point in one batch."""
    from scipy import ndimage

    sigmas = [i * max_sigma / steps for i in range(1, steps)]
    blurred = [ndimage.gaussian_filter(images.numpy(), sigma=[0, 0, sigma, sigma], mode="constant") for sigma in sigmas]
    points = torch.tensor(np.concatenate(blurred), requires_grad=True)  # [(steps - 1) * B, 3, H, W]
    model(points).gather(1, targets.repeat(steps - 1)[:, None]).sum().backward()
    model.zero_grad(set_to_none=True)
    return float(points.grad.abs().sum())


def test_every_method_runs_counts_its_passes_and_leaves_the_model_alone(architecture):
    name, model, side, _ = architecture
    torch.manual_seed(2)
    x = torch.randn(2, 3, side, side)
    t = torch.tensor([1, 3])
    counter = PassCounter()
    counter.attach(name, model)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    flags = [(type(m), m.training, getattr(m, "inplace", None)) for m in model.modules()]
    def hook_counts():
        return [(len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks)) for m in model.modules()]

    hooks = hook_counts()
    with torch.no_grad():
        y_before = model(x)
    for method in attribution_methods():
        counter.reset()
        try:
            result = attribute(model, x, t, method, **SMALL)
        except MethodNotApplicable as reason:
            assert (name, method) in NOT_APPLICABLE, (method, str(reason))
            assert str(reason).startswith(f"{method}: ")
            continue
        assert result.shape == x.shape and result.dtype == torch.float32, method
        assert torch.isfinite(result).all(), method
        counted = counter.as_dict()[name]
        if method == "blur_ig" and result.abs().sum() == 0:
            # Blur IG is zero where the model's input gradient vanishes all along the blur path: a
            # random DenseNet's last ReLUs are all off on a blurred image. Then so must the gradient be.
            assert blur_path_gradient(model, x, t, SMALL["blur_ig_steps"]) == 0, method
        else:
            assert result.abs().sum() > 0, method
        assert get_attribution(method).passes_for(2, image_size=side, model=model, **SMALL) == (
            counted["forward"], counted["backward"]), method
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert [(type(m), m.training, getattr(m, "inplace", None)) for m in model.modules()] == flags
    assert hook_counts() == hooks
    with torch.no_grad():
        assert torch.equal(model(x), y_before)


def test_seeded_methods_are_deterministic_and_keep_the_callers_random_state():
    torch.manual_seed(3)
    model = randomise_batchnorm(reduced_bagnet(9, width=8, blocks=1, num_classes=5), seed=2)
    x = torch.randn(2, 3, 40, 40)
    t = torch.tensor([0, 4])
    np.random.seed(123)
    torch_state, numpy_state = torch.get_rng_state(), np.random.get_state()
    for method in SEEDED:
        first = attribute(model, x, t, method, **SMALL)
        assert torch.equal(first, attribute(model, x, t, method, **SMALL)), method
        assert not torch.equal(first, attribute(model, x, t, method, seed=1, **SMALL)), method
    assert torch.equal(torch.get_rng_state(), torch_state)
    after = np.random.get_state()
    assert after[0] == numpy_state[0] and np.array_equal(after[1], numpy_state[1]) and after[2:] == numpy_state[2:]


def test_memory_bounds_do_not_change_the_results():
    torch.manual_seed(4)
    model = randomise_batchnorm(reduced_bagnet(9, width=8, blocks=1, num_classes=5), seed=3).double()
    x = torch.randn(3, 3, 40, 40, dtype=torch.float64)
    t = torch.tensor([0, 4, 2])
    for method in ("occlusion", "kernel_shap"):
        results = [attribute(model, x, t, method, kernel_shap_samples=12, perturbations_per_eval=bound)
                   for bound in (1, 7, 1000)]
        assert all(rel_err(r, results[0]) < 1e-9 for r in results), method
    # gradient_shap: one image per chunk reseeds per image, so the batch equals its images one by one
    batched = attribute(model, x, t, "gradient_shap", shap_samples=4, internal_batch_size=4)
    single = torch.cat([attribute(model, x[i:i + 1], t[i:i + 1], "gradient_shap", shap_samples=4)
                        for i in range(3)])
    assert rel_err(batched, single) < 1e-9
