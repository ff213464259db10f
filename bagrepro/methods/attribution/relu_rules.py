"""The ReLU-rule machinery: backward rules for every ReLU call of a model, whatever calls it.

How the ReLU rules are applied. captum's ``LRP`` and ``DeepLift`` attach hooks to ReLU *modules*:
torchvision's ResNet ``Bottleneck``/``BasicBlock`` call one ``nn.ReLU`` module several times per
forward (captum's ``DeepLift`` then raises, its ``LRP`` returns meaningless relevance), and DenseNet
ends with a functional ``F.relu`` that module hooks never see. So the ReLU itself is overridden
instead: inside :func:`relu_override` a :class:`torch.overrides.TorchFunctionMode` routes every ReLU
call -- ``nn.ReLU`` modules (which call ``F.relu``), ``F.relu``, ``torch.relu``, ``Tensor.relu`` and
their in-place variants -- to a ``torch.autograd.Function`` whose forward is the ordinary ReLU and
whose backward applies the rule. Every call creates its own autograd context, so a module reused
three times is three independent ReLUs, and functional calls are covered like module calls. In-place
calls are computed out of place (the caller's tensor is left alone and the result is returned; every
torchvision model uses the returned value). The mode is thread-local and only active inside the
``with`` block; no module or global function is patched.

DeepExplain replaces the gradient of Elu, Sigmoid, Tanh and Softplus too; those have no rule here, so
``eps_lrp`` and ``deeplift`` raise :class:`MethodNotApplicable` (a ConfigError) on a model that calls
one rather than silently keeping its gradient.

Rules defined here: :func:`epsilon_rule` (DeepExplain's epsilon-LRP), :func:`rescale_multiplier`
(DeepLIFT's rescale rule), :class:`GuidedRelu` (guided backpropagation), :class:`DeconvRelu` (the
deconvnet). :func:`modified_gradient` is the gradient of the target logits with a rule in force.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from bagrepro.methods.attribution.registry import MethodNotApplicable, target_logits

#: DeepExplain's threshold on |in - in_ref| below which DeepLIFT falls back to the midpoint gradient
DEEPLIFT_DELTA_THRESHOLD = 1e-5

ReluRule = Callable[[Tensor], Tensor]

RELU_CALLS = frozenset({F.relu, torch.relu, torch.relu_, Tensor.relu, Tensor.relu_})
# DeepExplain overrides these too; without a rule here their gradient would silently stay plain
_UNSUPPORTED_NONLINEAR = {
    torch.sigmoid: "sigmoid", Tensor.sigmoid: "sigmoid", torch.tanh: "tanh", Tensor.tanh: "tanh",
    F.elu: "elu", F.softplus: "softplus",
}



# ---- the ReLU override ----------------------------------------------------------------------------

class ReluWithMultiplier(torch.autograd.Function):
    """ReLU forward; backward multiplies the incoming gradient by a precomputed ``multiplier``.

    The multiplier (the rule's replacement for the ReLU's derivative) is computed in the forward from
    the input and saved instead of the input, so the memory is the same as a plain ReLU's.
    """

    @staticmethod
    def forward(ctx, x: Tensor, multiplier: Tensor) -> Tensor:
        ctx.save_for_backward(multiplier)
        return torch.relu(x)

    @staticmethod
    def backward(ctx, grad_output: Tensor):
        (multiplier,) = ctx.saved_tensors
        return grad_output * multiplier, None


def epsilon_rule(eps: float = 1e-4) -> ReluRule:
    """DeepExplain's epsilon-LRP ReLU: gradient := grad * relu(x) / (x + eps * sign(x)), sign(0) = +1."""

    def rule(x: Tensor) -> Tensor:
        with torch.no_grad():
            sign = torch.where(x >= 0, 1.0, -1.0).to(x.dtype)
            multiplier = torch.relu(x) / (x + eps * sign)
        return ReluWithMultiplier.apply(x, multiplier)

    return rule


def rescale_multiplier(x: Tensor, x_ref: Tensor, threshold: float = DEEPLIFT_DELTA_THRESHOLD) -> Tensor:
    """DeepLIFT rescale multiplier of a ReLU (DeepExplain's definition); broadcasts x_ref over x.

    (relu(x) - relu(x_ref)) / (x - x_ref) where |x - x_ref| > threshold, else the ReLU's derivative at
    the midpoint (1 where x + x_ref > 0, else 0).
    """
    delta_in = x - x_ref
    large = delta_in.abs() > threshold
    ratio = (torch.relu(x) - torch.relu(x_ref)) / torch.where(large, delta_in, torch.ones_like(delta_in))
    midpoint_grad = ((x + x_ref) > 0).to(x.dtype)
    return torch.where(large, ratio, midpoint_grad)


class _ReluOverrideMode(TorchFunctionMode):
    def __init__(self, rule: ReluRule, strict: bool):
        super().__init__()
        self.rule = rule
        self.strict = strict

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in RELU_CALLS:
            # in-place variants are computed out of place: the returned value is what the model uses
            return self.rule(args[0])
        if self.strict and func in _UNSUPPORTED_NONLINEAR:
            raise MethodNotApplicable(f"the model calls {_UNSUPPORTED_NONLINEAR[func]}, which has no "
                                      "attribution rule here (only ReLU is overridden)")
        return func(*args, **kwargs)


@contextlib.contextmanager
def relu_override(rule: ReluRule, *, strict: bool = True) -> Iterator[None]:
    """Within the block, every ReLU call on this thread is computed as ``rule(x)``.

    Covers ``nn.ReLU`` modules (shared or not, inplace or not), ``F.relu``, ``torch.relu``,
    ``Tensor.relu`` and the in-place variants (computed out of place). ``rule`` must return
    ``relu(x)``; typically it is an autograd Function with a replaced backward (:func:`epsilon_rule`).
    With ``strict``, calling sigmoid/tanh/elu/softplus inside the block raises
    :class:`MethodNotApplicable`. Only the forward needs to run inside the block: the backward uses
    what each call saved.
    """
    with _ReluOverrideMode(rule, strict):
        yield



def modified_gradient(model: nn.Module, images: Tensor, targets: Tensor, rule: ReluRule,
                       strict: bool = True) -> Tensor:
    x = images.detach().requires_grad_(True)
    with relu_override(rule, strict=strict):
        selected = target_logits(model(x), targets).sum()
    (grad,) = torch.autograd.grad(selected, x)
    return grad




class GuidedRelu(torch.autograd.Function):
    """ReLU forward; backward ``relu(grad_out) * (x > 0)`` (guided backpropagation)."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        out = torch.relu(x)
        ctx.save_for_backward(out)  # out > 0 exactly where x > 0
        return out

    @staticmethod
    def backward(ctx, grad_output: Tensor):
        (out,) = ctx.saved_tensors
        return grad_output.clamp(min=0) * (out > 0).to(grad_output.dtype)


class DeconvRelu(torch.autograd.Function):
    """ReLU forward; backward ``relu(grad_out)`` (the deconvnet's backward ReLU)."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        return torch.relu(x)

    @staticmethod
    def backward(ctx, grad_output: Tensor):
        return grad_output.clamp(min=0)


