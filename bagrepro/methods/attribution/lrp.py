"""The LRP family: layer-wise relevance propagation and DeepLIFT, modified backward rules.

The paper's two (it used DeepExplain; :mod:`.relu_rules` applies their rules to every ReLU call):

- ``eps_lrp``: gradient x input where the gradient of every ReLU is replaced by
  ``output / (input + eps * sign(input))``, sign(0) = +1, eps = 1e-4; every other op (convolution,
  batch norm, pooling including max-pool, residual addition, concatenation) keeps its gradient.
- ``deeplift``: rescale rule, zero baseline: the gradient of every ReLU is replaced by
  ``(out - out_ref) / (in - in_ref)`` where ``|in - in_ref| > 1e-5``, else by the ReLU's gradient at
  the midpoint ``(in + in_ref) / 2``; attribution = that gradient x (x - baseline). As in
  DeepExplain, max-pool keeps its plain gradient. That is exact for summation-to-delta where the
  reference is constant inside every pooling window (the stem max-pool of ResNet/DenseNet under a zero
  baseline: the stem conv maps 0 to 0, so its BN/ReLU output is constant per channel), not on VGG's later max-pools, so on VGG the sum of
  DeepLIFT attributions is not exactly logit(x) - logit(0) (DeepExplain's isn't either). The paper used
  DeepExplain, hence this choice. captum's ``DeepLift`` registers a MaxPool rule meant to keep the
  summation, but in captum 0.9 it has no effect where a ReLU module feeds the max-pool (VGG, the
  ResNet/DenseNet stems): the ReLU's hook recomputes its input gradient from the output gradient it
  captured before the max-pool's hook ran, so captum's numbers equal the ones here (measured: 8e-8
  relative on a Conv-ReLU-MaxPool net, with captum's MaxPool rule called and changing its gradient).

DeepExplain replaces the gradient of Elu, Sigmoid, Tanh and Softplus too; those have no rule here, so
``eps_lrp`` and ``deeplift`` raise :class:`MethodNotApplicable` (a ConfigError) on a model that calls
one rather than silently keeping its gradient.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor, nn

from bagrepro.core.errors import ConfigError
from bagrepro.methods.attribution.registry import attribute, register_attribution, run_method
from bagrepro.methods.attribution.relu_rules import (ReluWithMultiplier, epsilon_rule, modified_gradient,
                                                     relu_override, rescale_multiplier)

register = functools.partial(register_attribution, family="LRP")


@register("eps_lrp", library="bagrepro (DeepExplain's rule)", passes="1 forward + 1 backward", needs=("gradients",))
def _eps_lrp(net: nn.Module, images: Tensor, targets: Tensor, *, eps: float = 1e-4) -> Tensor:
    """epsilon-LRP (Bach et al. 2015) in DeepExplain's gradient form (Ancona et al. 2018): gradient x
    input where every ReLU's gradient is ``relu(x) / (x + eps * sign(x))``, sign(0) = +1, through the
    ReLU override (captum's ``LRP`` cannot handle reused or functional ReLUs; module docstring).

    Options: ``eps`` = 1e-4, DeepExplain's default ``epsilon``. Models calling sigmoid/tanh/elu/softplus
    are refused (:class:`MethodNotApplicable`).
    """
    return modified_gradient(net, images, targets, epsilon_rule(eps)) * images



def _deeplift_with_baselines(net: nn.Module, images: Tensor, targets: Tensor, baselines: Tensor | None) -> Tensor:
    if baselines is None:  # the zero baseline is shared: one reference pass of a single image
        baselines = torch.zeros_like(images[:1])
    else:  # never the caller's tensor, and a normal tensor even when it was made under inference mode
        baselines = baselines.detach().clone()
    baselines = baselines.to(images).detach()
    if baselines.shape[0] not in (1, images.shape[0]) or baselines.shape[1:] != images.shape[1:]:
        raise ConfigError(f"baselines of shape {tuple(baselines.shape)} do not fit images {tuple(images.shape)}")

    # pass 1: record the input of every ReLU call on the reference, in call order
    reference_inputs: list[Tensor] = []

    def record(x: Tensor) -> Tensor:
        reference_inputs.append(x.detach())
        return torch.relu(x)

    with torch.no_grad(), relu_override(record):
        net(baselines)

    # pass 2: the images; the k-th ReLU call is paired with the k-th reference input
    calls = iter(reference_inputs)

    def rescale(x: Tensor) -> Tensor:
        x_ref = next(calls, None)
        if x_ref is None or x_ref.shape[1:] != x.shape[1:]:
            raise ConfigError("DeepLIFT: the model's ReLU calls differ between the reference and the image pass")
        with torch.no_grad():
            multiplier = rescale_multiplier(x, x_ref)
        return ReluWithMultiplier.apply(x, multiplier)

    grad = modified_gradient(net, images, targets, rescale)
    if next(calls, None) is not None:
        raise ConfigError("DeepLIFT: the model's ReLU calls differ between the reference and the image pass")
    return grad * (images - baselines)


@register("deeplift", library="bagrepro (DeepExplain's rule)", passes="1 forward + 1 backward, and one reference pass per call",
                      needs=("gradients",), cost=lambda images, options: (images + 1, images))
def _deeplift(net: nn.Module, images: Tensor, targets: Tensor) -> Tensor:
    """DeepLIFT (Shrikumar et al. 2017), rescale rule, zero baseline (DeepExplain's default), through
    the ReLU override: every ReLU's gradient becomes ``(out - out_ref) / (in - in_ref)``, or the ReLU's
    gradient at the midpoint where ``|in - in_ref| <= 1e-5`` (:data:`DEEPLIFT_DELTA_THRESHOLD`);
    attribution = that gradient x (x - 0). The zero reference's forward runs once per batch. No
    options (another baseline: :func:`deeplift_rescale`). Models calling sigmoid/tanh/elu/softplus are
    refused (:class:`MethodNotApplicable`).
    """
    return _deeplift_with_baselines(net, images, targets, None)


# ---- direct entry points ---------------------------------------------------------------------------

def epsilon_lrp(model: nn.Module, images: Tensor, targets, *, eps: float = 1e-4) -> Tensor:
    """DeepExplain's epsilon-LRP (see the module docstring); same layouts as :func:`attribute`."""
    return attribute(model, images, targets, "eps_lrp", eps=eps)


def deeplift_rescale(model: nn.Module, images: Tensor, targets, *, baselines: Tensor | None = None) -> Tensor:
    """DeepExplain's DeepLIFT (rescale) through the ReLU override; ``baselines`` [1 or B, 3, H, W]
    (default: zero). Sum of attributions = logit(x) - logit(baseline) when every non-linearity is a
    ReLU (max-pool keeps its gradient: exact only where the reference is constant in each window)."""
    return run_method(model, images, targets, _deeplift_with_baselines, {"baselines": baselines})
