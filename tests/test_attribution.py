"""White-box attributions (bagrepro.attribution): closed forms, cross-checks against captum,
completeness / summation-to-delta on torchvision ResNet-50 and DenseNet-169, and the caller's model
left untouched. Random weights, small inputs (8-32 px)."""

from __future__ import annotations

import copy

import pytest
import torch
import torchvision
from torch import nn

from bagrepro.attribution import (METHODS, attribute, captum_deeplift, deeplift_rescale, epsilon_lrp,
                                  ig_internal_batch_size, relu_override, unshare_relus)
from bagrepro.errors import ConfigError
from bagrepro.models import create_model


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One intra-op thread: on a shared 2-core machine two threads spinning against other work made
    DenseNet-169's 300 small kernels 10-50x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


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
    assert all(method in str(info.value) for method in METHODS)


def test_ig_internal_batch_size_is_bounded():
    assert ig_internal_batch_size(2, 100) == 32
    assert ig_internal_batch_size(3, 100) == 30   # whole steps only
    assert ig_internal_batch_size(64, 100) == 64  # at least one step of the batch
    assert ig_internal_batch_size(2, 5) == 10     # never more than all steps
    assert ig_internal_batch_size(4, 100, 1) == 4
    with pytest.raises(ConfigError):
        ig_internal_batch_size(2, 100, 0)


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

