"""White-box attributions (bagrepro.methods.attribution): the method registry and option dispatch, closed
forms, cross-checks against captum, completeness / summation-to-delta on torchvision ResNet-50 and
DenseNet-169, and the caller's model left untouched. Random weights, small inputs (8-32 px)."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
import torchvision
from torch import nn

from bagrepro.methods.attribution import (METHODS, PAPER_METHODS, AttributionMethod, attribute, attribution_methods,
                                  deeplift_rescale, epsilon_lrp, epsilon_rule, get_attribution,
                                  ig_internal_batch_size, register_attribution, relu_override,
                                  unregister_attribution, working_copy)
from bagrepro.core.errors import ConfigError
from bagrepro.models import create_model
from tests.attribution_crosscheck import captum_deeplift, unshare_relus


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


# ---- helpers ---------------------------------------------------------------------------------------

def randomize_batchnorm(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial eval-mode BatchNorm (torchvision initialises them to the identity)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                c = module.num_features
                module.running_mean.copy_(0.2 * torch.randn(c, generator=gen))
                module.running_var.copy_(0.5 + torch.rand(c, generator=gen))
                module.weight.copy_(0.5 + torch.rand(c, generator=gen))
                module.bias.copy_(0.2 * torch.randn(c, generator=gen))
    return model


def bias_free(model: nn.Module) -> nn.Module:
    """Copy with every BatchNorm replaced by nn.Identity and zero biases (convs here have none)."""
    model = copy.deepcopy(model)
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, nn.BatchNorm2d):
                setattr(module, child_name, nn.Identity())
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.Linear, nn.Conv2d)) and module.bias is not None:
                module.bias.zero_()
    return model.eval()


def target_logits(model, x, targets):
    with torch.no_grad():
        return model(x).gather(1, targets[:, None])[:, 0]


def plain_gradient(model, x, targets):
    x = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(model(x).gather(1, targets[:, None]).sum(), x)
    return grad


def rel_err(a, b):
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


class PlainConvNet(nn.Module):
    """Conv-ReLU-Conv-ReLU-AvgPool-Linear; flattened functionally (captum's LRP has no Flatten rule)."""

    def __init__(self, bias: bool = False):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=bias)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1, bias=bias)
        self.relu2 = nn.ReLU()
        self.pool = nn.AvgPool2d(2)
        self.fc = nn.Linear(8 * 4 * 4, 5, bias=bias)

    def forward(self, x):
        x = self.pool(self.relu2(self.conv2(self.relu1(self.conv1(x)))))
        return self.fc(torch.flatten(x, 1))


@pytest.fixture(scope="module")
def resnet50():
    torch.manual_seed(0)
    return randomize_batchnorm(torchvision.models.resnet50(num_classes=10), seed=1).eval()


@pytest.fixture(scope="module")
def densenet169():
    torch.manual_seed(0)
    return randomize_batchnorm(torchvision.models.densenet169(num_classes=10), seed=2).eval()


@pytest.fixture(params=["resnet50", "densenet169"])
def big_model(request):
    return request.getfixturevalue(request.param)


# ---- interface ---------------------------------------------------------------------------------------

def test_unknown_method_lists_the_methods():
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 2))
    with pytest.raises(ConfigError) as info:
        attribute(model, torch.randn(1, 3, 2, 2), torch.tensor([0]), "gradcam")
    assert "'gradcam'" in str(info.value)
    assert all(method in str(info.value) for method in attribution_methods())
    with pytest.raises(ConfigError, match="integrated_gradients"):
        get_attribution("integrated_gradient")


def test_ig_internal_batch_size_is_bounded():
    assert ig_internal_batch_size(2, 100) == 32
    assert ig_internal_batch_size(3, 100) == 30   # whole steps only
    assert ig_internal_batch_size(64, 100) == 64  # at least one step of the batch
    assert ig_internal_batch_size(2, 5) == 10     # never more than all steps
    assert ig_internal_batch_size(4, 100, 1) == 4
    with pytest.raises(ConfigError):
        ig_internal_batch_size(2, 100, 0)


# ---- the registry --------------------------------------------------------------------------------------

def tiny_relu_model() -> nn.Module:
    torch.manual_seed(10)
    return nn.Sequential(nn.Flatten(), nn.Linear(12, 6), nn.ReLU(), nn.Linear(6, 3)).eval()


def test_paper_methods_are_registered_first_in_the_csv_order():
    assert METHODS == PAPER_METHODS == ("saliency", "integrated_gradients", "eps_lrp", "deeplift")
    assert attribution_methods()[:4] == METHODS
    specs = {name: get_attribution(name) for name in METHODS}
    assert all(isinstance(spec, AttributionMethod) and spec.name == name for name, spec in specs.items())
    assert {name: spec.options for name, spec in specs.items()} == {
        "saliency": (), "integrated_gradients": (("ig_steps", 100), ("internal_batch_size", None)),
        "eps_lrp": (("eps", 1e-4),), "deeplift": ()}
    assert {name: spec.passes for name, spec in specs.items()} == {
        "saliency": "1 forward + 1 backward", "integrated_gradients": "n forward + n backward",
        "eps_lrp": "1 forward + 1 backward", "deeplift": "1 forward + 1 backward, and one reference pass per call"}
    # what --plan counts: (forward, backward) image passes of one call on 8 images
    assert {name: spec.passes_for(8, ig_steps=10) for name, spec in specs.items()} == {
        "saliency": (8, 8), "integrated_gradients": (80, 80), "eps_lrp": (8, 8), "deeplift": (9, 8)}
    assert all(spec.needs == ("gradients",) for spec in specs.values())
    # the defaults are documented where they are declared
    assert "ig_steps" in specs["integrated_gradients"].description and "100" in specs["integrated_gradients"].description
    assert "1e-4" in specs["eps_lrp"].description and "zero baseline" in specs["deeplift"].description
    with pytest.raises(dataclasses.FrozenInstanceError):
        specs["eps_lrp"].passes = "free"


def test_a_new_method_is_one_decorated_function():
    before = attribution_methods()
    calls = []

    @register_attribution("test_scaled_input", passes="none", needs=("forward",))
    def scaled_input(net, images, targets, *, scale: float = 2.0):
        """The input times ``scale`` (default 2): a method registered by a test."""
        calls.append({"net": net, "images": images, "targets": targets, "scale": scale, "training": net.training})
        return images * scale

    model = tiny_relu_model().train()
    x = torch.randn(2, 3, 2, 2)
    x_before = x.clone()
    t = torch.tensor([1, 0])
    try:
        assert attribution_methods() == (*before, "test_scaled_input")
        spec = get_attribution("test_scaled_input")
        assert spec.compute is scaled_input and spec.options == (("scale", 2.0),) and spec.needs == ("forward",)
        assert spec.passes == "none" and spec.description.startswith("The input times")

        got = attribute(model, x, t, "test_scaled_input")
        assert torch.equal(got, x * 2) and got.dtype == torch.float32
        # its own option reaches it; the other methods' shared settings (ig_steps, eps) are dropped
        assert torch.equal(attribute(model, x, t, "test_scaled_input", scale=-3.0, ig_steps=5, eps=0.5), x * -3)
        assert [call["scale"] for call in calls] == [2.0, -3.0]
        # it ran on an eval-mode working copy and a private copy of the images
        assert all(call["net"] is not model and not call["training"] for call in calls)
        assert all(call["images"] is not x and call["targets"].dtype == torch.long for call in calls)
        assert model.training and torch.equal(x, x_before)
        # its option is now a known shared setting: the paper's methods drop it
        assert torch.equal(attribute(model, x, t, "saliency", scale=5.0), attribute(model, x, t, "saliency"))
    finally:
        assert unregister_attribution("test_scaled_input").compute is scaled_input
    assert attribution_methods() == before
    with pytest.raises(ConfigError, match="test_scaled_input"):
        attribute(model, x, t, "test_scaled_input")
    with pytest.raises(ConfigError, match="scale"):  # no registered method declares it any more
        attribute(model, x, t, "saliency", scale=5.0)
    with pytest.raises(ConfigError, match="test_scaled_input"):
        unregister_attribution("test_scaled_input")


def test_duplicate_name_is_refused_and_the_first_kept():
    registered = attribution_methods()
    before = get_attribution("saliency")
    with pytest.raises(ConfigError, match="saliency.*already registered"):
        @register_attribution("saliency", passes="1 forward + 1 backward")
        def other_saliency(net, images, targets):
            """A second saliency."""
            return images
    assert get_attribution("saliency") is before
    assert attribution_methods() == registered


def test_malformed_registrations_are_refused():
    registered = attribution_methods()
    with pytest.raises(ConfigError, match="needs"):
        register_attribution("test_bad_needs", passes="1 forward", needs=("logits",))
    with pytest.raises(ConfigError, match="needs"):
        register_attribution("test_no_needs", passes="1 forward", needs=())

    def no_default(net, images, targets, *, steps):
        """Option without default."""
        return images

    def positional_option(net, images, targets, steps=3):
        """Option that is not keyword-only."""
        return images

    def anything_goes(net, images, targets, **options):
        """Undeclared options."""
        return images

    def undocumented(net, images, targets):
        return images

    for index, compute in enumerate((no_default, positional_option, anything_goes, undocumented)):
        with pytest.raises(ConfigError, match=f"test_bad_{index}"):
            register_attribution(f"test_bad_{index}", passes="1 forward")(compute)
    assert attribution_methods() == registered


@pytest.mark.parametrize("method", METHODS)
def test_option_no_method_knows_is_a_typo(method):
    model = tiny_relu_model()
    x, t = torch.randn(2, 3, 2, 2), torch.tensor([0, 2])
    with pytest.raises(ConfigError, match="ig_stepz") as info:
        attribute(model, x, t, method, ig_stepz=3)
    assert "ig_steps" in str(info.value)  # the message lists the known options
    with pytest.raises(ConfigError, match="epsilon"):
        attribute(model, x, t, method, ig_steps=3, epsilon=0.1)


def test_options_go_to_the_methods_that_declare_them():
    model = tiny_relu_model()
    x, t = torch.randn(3, 3, 2, 2), torch.tensor([0, 2, 1])
    shared = {"ig_steps": 2, "internal_batch_size": 1, "eps": 0.5}
    for method in ("saliency", "deeplift"):  # no options: every shared setting is dropped
        assert torch.equal(attribute(model, x, t, method, **shared), attribute(model, x, t, method))
    # declared options are used: each changes the result of a non-linear model
    assert not torch.allclose(attribute(model, x, t, "eps_lrp", eps=0.5), attribute(model, x, t, "eps_lrp"))
    assert torch.equal(attribute(model, x, t, "eps_lrp", eps=0.5, ig_steps=2), attribute(model, x, t, "eps_lrp", eps=0.5))
    assert torch.equal(attribute(model, x, t, "eps_lrp"), attribute(model, x, t, "eps_lrp", eps=1e-4))
    two = attribute(model, x, t, "integrated_gradients", ig_steps=2)
    assert not torch.allclose(two, attribute(model, x, t, "integrated_gradients", ig_steps=8))
    assert torch.equal(two, attribute(model, x, t, "integrated_gradients", ig_steps=2, eps=0.5))
    assert torch.equal(attribute(model, x, t, "integrated_gradients"),
                       attribute(model, x, t, "integrated_gradients", ig_steps=100, internal_batch_size=None))
    for steps in (0, 1):  # captum's Riemann sums need two steps
        with pytest.raises(ConfigError, match="ig_steps"):
            attribute(model, x, t, "integrated_gradients", ig_steps=steps)


def test_dispatch_equals_the_implementations():
    """attribute() adds nothing to the methods' numbers: bit-equal to each registered function on a
    working copy, and to the direct captum / ReLU-override computations they are made of."""
    from captum.attr import IntegratedGradients, Saliency

    model = randomize_batchnorm(create_model("smoke_resnet50"), seed=7).eval()
    torch.manual_seed(11)
    x = torch.randn(2, 3, 32, 32)
    t = torch.tensor([4, 7])
    got = {method: attribute(model, x, t, method, ig_steps=8) for method in METHODS}
    for method in METHODS:
        spec = get_attribution(method)
        options = {"ig_steps": 8} if method == "integrated_gradients" else {}
        direct = spec.compute(working_copy(model), x.clone(), t.clone(), **options).detach()
        assert torch.equal(got[method], direct), method

    saliency = Saliency(model).attribute(x.clone().requires_grad_(True), target=t, abs=True)
    assert torch.equal(got["saliency"], saliency)
    ig = IntegratedGradients(model, multiply_by_inputs=True).attribute(
        x.clone().requires_grad_(True), baselines=torch.zeros_like(x), target=t, n_steps=8,
        method="riemann_right", internal_batch_size=ig_internal_batch_size(2, 8))
    assert torch.equal(got["integrated_gradients"], ig)
    xg = x.clone().requires_grad_(True)
    with relu_override(epsilon_rule(1e-4)):
        logits = model(xg).gather(1, t[:, None]).sum()
    (grad,) = torch.autograd.grad(logits, xg)
    assert torch.equal(got["eps_lrp"], grad * x)
    assert torch.equal(got["deeplift"], deeplift_rescale(model, x, t, baselines=torch.zeros(1, 3, 32, 32)))
    # the four differ from each other (the comparison above could not pass by returning one map)
    assert len({got[method].sum().item() for method in METHODS}) == 4


# ---- closed forms ------------------------------------------------------------------------------------

def test_linear_model_closed_forms():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 5)).eval()
    x = torch.randn(4, 3, 8, 8)
    t = torch.tensor([0, 2, 4, 2])
    rows = model[1].weight.detach()[t].reshape(4, 3, 8, 8)
    torch.testing.assert_close(attribute(model, x, t, "saliency"), rows.abs())
    for method in ("integrated_gradients", "eps_lrp", "deeplift"):  # all equal gradient x input
        torch.testing.assert_close(attribute(model, x, t, method), rows * x, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(attribute(model, x, t, "integrated_gradients", ig_steps=7, internal_batch_size=5),
                               rows * x, rtol=1e-5, atol=1e-6)


def test_relu_rules_closed_form_one_hidden_layer():
    """DeepExplain's formulas written out for x -> W2 relu(W1 x + b1) + b2, reused inplace ReLU."""
    torch.manual_seed(1)
    lin1, lin2 = nn.Linear(12, 6), nn.Linear(6, 3)
    model = nn.Sequential(nn.Flatten(), lin1, nn.ReLU(inplace=True), lin2).eval()
    x = torch.randn(5, 3, 2, 2)
    t = torch.tensor([0, 1, 2, 1, 0])
    with torch.no_grad():
        z = lin1(x.flatten(1))
        w1, w2 = lin1.weight, lin2.weight[t]
        eps = 0.1
        sign = torch.where(z >= 0, 1.0, -1.0)
        lrp = x.flatten(1) * ((w2 * z.clamp_min(0) / (z + eps * sign)) @ w1)
        z0 = lin1.bias.expand_as(z)
        m = torch.where((z - z0).abs() > 1e-5, (z.clamp_min(0) - z0.clamp_min(0)) / (z - z0), (z + z0 > 0).float())
        dl = x.flatten(1) * ((w2 * m) @ w1)
    torch.testing.assert_close(epsilon_lrp(model, x, t, eps=eps).flatten(1), lrp, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(attribute(model, x, t, "deeplift").flatten(1), dl, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("eps", [1e-4, 0.05])
def test_eps_lrp_equals_captum_lrp_on_bias_free_convnet(eps):
    """captum's LRP puts epsilon at each layer's output z; on a bias-free net where every conv is
    followed by a ReLU that is the same place as DeepExplain's ReLU rule (relu(z) / (z + eps sign z)).
    The convs get EpsilonRule(eps); pool and fc keep captum's 1e-9 (DeepExplain has none there)."""
    from captum.attr import LRP
    from captum.attr._utils.lrp_rules import EpsilonRule

    torch.manual_seed(2)
    net = PlainConvNet(bias=False).eval()
    x = torch.randn(3, 3, 8, 8)
    t = torch.tensor([1, 4, 0])
    theirs_net = copy.deepcopy(net)
    theirs_net.conv1.rule = EpsilonRule(epsilon=eps)
    theirs_net.conv2.rule = EpsilonRule(epsilon=eps)
    theirs = LRP(theirs_net).attribute(x.clone().requires_grad_(True), target=t).detach()
    ours = epsilon_lrp(net, x, t, eps=eps)
    assert rel_err(ours, theirs) < 1e-4
    if eps > 0.01:  # the rule really acts: far from gradient x input at this eps
        assert rel_err(ours, plain_gradient(net, x, t) * x) > 1e-2


def test_ig_equals_manual_riemann_right():
    torch.manual_seed(3)
    net = PlainConvNet(bias=True).eval()
    x = torch.randn(2, 3, 8, 8)
    t = torch.tensor([3, 1])
    steps = 7
    manual = sum(plain_gradient(net, x * k / steps, t) for k in range(1, steps + 1)) / steps * x
    for bound in (None, 4, 1):
        got = attribute(net, x, t, "integrated_gradients", ig_steps=steps, internal_batch_size=bound)
        torch.testing.assert_close(got, manual, rtol=1e-4, atol=1e-6)


def test_unsupported_nonlinearity_is_refused():
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 4), nn.Tanh(), nn.Linear(4, 2))
    x, t = torch.randn(2, 3, 2, 2), torch.tensor([0, 1])
    for method in ("eps_lrp", "deeplift"):
        with pytest.raises(ConfigError, match="tanh"):
            attribute(model, x, t, method)
    assert attribute(model, x, t, "saliency").shape == x.shape


# ---- torchvision ResNet-50 (reused ReLU modules) and DenseNet-169 (functional ReLU) -------------------

def test_eps_lrp_runs_and_is_complete_without_biases(big_model):
    """Bias-free (BatchNorm -> Identity, zero fc bias): the net is positively homogeneous (max-pool,
    avg-pool, additions and concatenations included), so sum(gradient x input) = logit; the eps rule
    moves each ReLU's share by a factor z / (z + eps), so the sum is exact only as eps -> 0."""
    torch.manual_seed(4)
    x = torch.randn(2, 3, 32, 32)
    t = torch.tensor([3, 7])
    full = epsilon_lrp(big_model, x, t)
    assert full.shape == x.shape and torch.isfinite(full).all() and full.abs().sum() > 0
    plain = bias_free(big_model)
    logits = target_logits(plain, x, t).double()
    scale = float(logits.abs().max())
    # tiny eps: exact completeness (float32 rounding only) through reused and functional ReLUs
    sums = epsilon_lrp(plain, x, t, eps=1e-9).double().sum((1, 2, 3))
    torch.testing.assert_close(sums, logits, rtol=1e-4, atol=1e-4 * scale)
    # DeepExplain's eps = 1e-4 absorbs a little relevance (here ~0.2% of the logit on ResNet-50)
    sums = epsilon_lrp(plain, x, t).double().sum((1, 2, 3))
    torch.testing.assert_close(sums, logits, rtol=1e-2, atol=1e-2 * scale)


def test_deeplift_sums_to_logit_difference(big_model):
    """Summation-to-delta with BatchNorm (random statistics): every non-linearity is a ReLU under the
    rescale rule except the stem max-pool, whose zero-baseline reference is constant per channel, where
    its plain gradient is exact too."""
    torch.manual_seed(5)
    x = torch.randn(2, 3, 32, 32)
    t = torch.tensor([2, 9])
    delta = target_logits(big_model, x, t) - target_logits(big_model, torch.zeros_like(x), t)
    sums = attribute(big_model, x, t, "deeplift").double().sum((1, 2, 3))
    torch.testing.assert_close(sums, delta.double(), rtol=1e-4, atol=1e-4 * float(delta.abs().max()))


def _count_relu_calls(model, x):
    calls = []
    with torch.no_grad(), relu_override(lambda v: calls.append(1) or torch.relu(v)):
        model(x)
    return len(calls)


def test_unshare_relus_gives_each_call_its_module_and_the_same_outputs(big_model):
    x = torch.randn(2, 3, 32, 32)
    inplace_before = [m.inplace for m in big_model.modules() if isinstance(m, nn.ReLU)]
    unshared = unshare_relus(big_model)
    with torch.no_grad():
        assert torch.equal(unshared(x), big_model(x))
    relus = [m for m in unshared.modules() if isinstance(m, nn.ReLU)]
    counts = {id(m): 0 for m in relus}
    handles = [m.register_forward_hook(lambda m, i, o: counts.__setitem__(id(m), counts[id(m)] + 1)) for m in relus]
    with torch.no_grad():
        unshared(x)
    for handle in handles:
        handle.remove()
    assert set(counts.values()) == {1}
    assert len(relus) == _count_relu_calls(big_model, x) > sum(isinstance(m, nn.ReLU) for m in big_model.modules())
    assert [m.inplace for m in big_model.modules() if isinstance(m, nn.ReLU)] == inplace_before
    assert unshared.state_dict().keys() <= big_model.state_dict().keys()


@pytest.mark.parametrize("name", ["smoke_resnet50", "smoke_densenet169"])
def test_deeplift_matches_captum_on_unshared_copy_without_maxpool(name):
    """Independent check of the rescale rule: captum's DeepLift on the ReLU-unshared copy. The stem
    max-pool is removed: captum registers its own max-pool rule (DeepExplain has none); in captum 0.9
    it has no effect after a ReLU, but that is captum's internals, not something to rely on here."""
    torch.manual_seed(6)
    model = randomize_batchnorm(create_model(name), seed=3).eval()
    if name == "smoke_resnet50":
        model.maxpool = nn.Identity()
    else:
        model.features.pool0 = nn.Identity()
    x = torch.randn(3, 3, 32, 32)
    t = torch.tensor([0, 5, 9])
    ours = deeplift_rescale(model, x, t)
    theirs = captum_deeplift(model, x, t)
    assert rel_err(ours, theirs) < 1e-4


# ---- all methods on the smoke stand-ins; the caller's model is untouched ------------------------------

@pytest.mark.parametrize("name", ["smoke_vgg16", "smoke_resnet50", "smoke_densenet169"])
def test_all_methods_run_and_leave_the_model_alone(name):
    torch.manual_seed(7)
    model = randomize_batchnorm(create_model(name), seed=4).eval()
    x = torch.randn(3, 3, 32, 32)
    t = torch.tensor([1, 4, 8])
    state = {k: v.clone() for k, v in model.state_dict().items()}
    kinds = [type(m) for m in model.modules()]
    flags = [(m.training, getattr(m, "inplace", None)) for m in model.modules()]
    with torch.no_grad():
        y_before = model(x)
    grad_before = plain_gradient(model, x, t)

    for method in METHODS:
        result = attribute(model, x, t, method, ig_steps=8)
        assert result.shape == x.shape and result.dtype == torch.float32
        assert torch.isfinite(result).all() and result.abs().sum() > 0
        if method == "saliency":
            assert (result >= 0).all()
    with torch.no_grad():  # works inside no_grad as well
        assert attribute(model, x, t, "eps_lrp").shape == x.shape

    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert [type(m) for m in model.modules()] == kinds
    assert [(m.training, getattr(m, "inplace", None)) for m in model.modules()] == flags
    with torch.no_grad():
        assert torch.equal(model(x), y_before)
    assert torch.equal(plain_gradient(model, x, t), grad_before)  # ReLUs are plain ReLUs again


def test_batched_equals_per_image():
    torch.manual_seed(8)
    # float64: eps-LRP divides by pre-activations that can be near 0, where float32 kernels that
    # depend on the batch size differ by more than rounding
    model = randomize_batchnorm(create_model("smoke_resnet50"), seed=5).eval().double()
    x = torch.randn(3, 3, 32, 32, dtype=torch.float64)
    t = torch.tensor([1, 5, 9])
    for method in METHODS:
        batched = attribute(model, x, t, method, ig_steps=6)
        single = torch.cat([attribute(model, x[i:i + 1], t[i:i + 1], method, ig_steps=6) for i in range(3)])
        assert rel_err(batched, single) < 1e-9, method


def test_train_mode_model_is_attributed_in_eval_mode_and_stays_in_train_mode():
    torch.manual_seed(9)
    model = randomize_batchnorm(create_model("smoke_densenet169"), seed=6).train()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(2, 3, 32, 32)
    t = torch.tensor([0, 3])
    for method in ("saliency", "deeplift"):
        got = attribute(model, x, t, method)
        assert torch.equal(got, attribute(copy.deepcopy(model).eval(), x, t, method))
    assert all(m.training for m in model.modules())
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())  # BN statistics unchanged


def test_works_on_inference_mode_tensors():
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 3), nn.ReLU(), nn.Linear(3, 2))
    with torch.inference_mode():
        x = torch.randn(2, 3, 2, 2)
        t = torch.tensor([1, 0])
        for method in METHODS:
            assert attribute(model, x, t, method, ig_steps=4).shape == x.shape

