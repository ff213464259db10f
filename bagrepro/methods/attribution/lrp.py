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
from bagrepro.methods.attribution.registry import (MethodNotApplicable, attribute, dataset_references,
                                                   register_attribution, run_method)
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


# ---- zennit's composites -----------------------------------------------------------------------------------
#: method name -> (zennit composite, its rules)
ZENNIT_COMPOSITES = {
    "lrp_epsilon_plus_flat": ("EpsilonPlusFlat", "the flat rule on the first layer, z+ on every other convolution, "
                                                 "epsilon (1e-6) on the dense layers"),
    "lrp_epsilon_gamma_box": ("EpsilonGammaBox", "the z-box rule on the first layer (bounds: the pixel range [0, 1] in "
                                                 "the model's input space), gamma (0.25) on every other convolution, "
                                                 "epsilon (1e-6) on the dense layers"),
    "lrp_epsilon_alpha2_beta1": ("EpsilonAlpha2Beta1", "alpha 2, beta 1 on every convolution, epsilon (1e-6) on the "
                                                       "dense layers"),
}


def _bagnet_canonizers(net: nn.Module):
    """zennit canonizers for bagrepro's BagNet (zennit ships none for it): every convolution's
    BatchNorm merged into it (the stem's conv2 + bn1, each block's conv1-3 + bn1-3 and its downsample),
    and each block's residual addition made a zennit ``Sum`` module (so the composites' Norm rule
    splits the relevance between the two branches, as zennit's ResNet canonizer does for torchvision's
    blocks). Written here: an AttributeCanonizer replacing the block's forward with one that keeps its
    cropping."""
    from zennit.canonizers import AttributeCanonizer, CompositeCanonizer, NamedMergeBatchNorm
    from zennit.layer import Sum

    from bagrepro.models.bagnet import Bottleneck

    def block_forward(self, x):
        residual = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        height, width = out.shape[-2:]
        out = self.canonizer_sum(torch.stack([out, residual[:, :, :height, :width]], dim=-1))
        return self.relu(out)

    def attributes(name, module):
        if isinstance(module, Bottleneck):
            return {"forward": block_forward.__get__(module), "canonizer_sum": Sum()}
        return None

    pairs = [(["conv2"], "bn1")]  # the stem: conv1 (1x1) -> conv2 (3x3) -> bn1
    for name, module in net.named_modules():
        if isinstance(module, Bottleneck):
            pairs += [([f"{name}.conv{k}"], f"{name}.bn{k}") for k in (1, 2, 3)]
            if module.downsample is not None:
                pairs.append(([f"{name}.downsample.0"], f"{name}.downsample.1"))

    return [CompositeCanonizer([NamedMergeBatchNorm(pairs), AttributeCanonizer(attributes)])]


def zennit_canonizers(net: nn.Module, method: str) -> list:
    """The canonizers for ``net``: zennit's for torchvision's VGG and ResNet, ours for the BagNet
    (:func:`_bagnet_canonizers`); none for torchvision's DenseNet (zennit has none: its BatchNorm
    comes before the convolution, through a ReLU, so no merge applies; the composites' layer map then
    passes relevance through BatchNorm unchanged) or another model without BatchNorm.
    MethodNotApplicable for another model with BatchNorm (its BatchNorm would be passed through,
    silently breaking the rules)."""
    import torchvision
    from zennit.torchvision import ResNetCanonizer, VGGCanonizer

    from bagrepro.models.bagnet import BagNet

    if isinstance(net, BagNet):
        return _bagnet_canonizers(net)
    if isinstance(net, torchvision.models.VGG):
        return [VGGCanonizer()]
    if isinstance(net, torchvision.models.ResNet):
        return [ResNetCanonizer()]
    if isinstance(net, torchvision.models.DenseNet):
        return []
    if any(isinstance(module, nn.modules.batchnorm._BatchNorm) for module in net.modules()):
        raise MethodNotApplicable(f"{method}: no zennit canonizer for {type(net).__name__}'s BatchNorm layers "
                                  f"(zennit's: torchvision VGG, ResNet; ours: BagNet)")
    return []


def _input_bounds(net: nn.Module, images: Tensor) -> tuple[Tensor, Tensor]:
    """z-box bounds [1, 3, 1, 1] each: the pixel range [0, 1] in the model's input space (its
    ``zoo_spec.preprocess`` mean and std), else the batch's per-channel min and max."""
    spec = getattr(net, "zoo_spec", None)
    if spec is not None:
        mean = torch.tensor(spec.preprocess.mean, dtype=images.dtype, device=images.device)[None, :, None, None]
        std = torch.tensor(spec.preprocess.std, dtype=images.dtype, device=images.device)[None, :, None, None]
        return (0 - mean) / std, (1 - mean) / std
    return images.amin((0, 2, 3), keepdim=True), images.amax((0, 2, 3), keepdim=True)


def zennit_lrp(net: nn.Module, images: Tensor, targets: Tensor, method: str) -> Tensor:
    """zennit's ``Gradient`` attributor with the composite of ``method`` (:data:`ZENNIT_COMPOSITES`)
    and :func:`zennit_canonizers`, the output relevance started at the target logit (one-hot x logit:
    the input relevance then sums to about the logit, as the paper's eps_lrp does)."""
    from zennit import composites
    from zennit.attribution import Gradient

    composite_class = getattr(composites, ZENNIT_COMPOSITES[method][0])
    canonizers = zennit_canonizers(net, method)
    if composite_class is composites.EpsilonGammaBox:
        low, high = _input_bounds(net, images)
        composite = composite_class(low=low.expand_as(images), high=high.expand_as(images), canonizers=canonizers)
    else:
        composite = composite_class(canonizers=canonizers)
    def start_at_the_logit(output: Tensor) -> Tensor:
        chosen = torch.nn.functional.one_hot(targets, num_classes=output.shape[1]).to(output)
        return chosen * output

    with Gradient(model=net, composite=composite) as attributor:
        _, relevance = attributor(images, start_at_the_logit)
    return relevance


def _register_zennit(name: str) -> None:
    composite, rules = ZENNIT_COMPOSITES[name]

    def compute(net: nn.Module, images: Tensor, targets: Tensor) -> Tensor:
        return zennit_lrp(net, images, targets, name)

    compute.__doc__ = (f"LRP (Bach et al. 2015) with zennit's ``{composite}`` composite (Anders et al. 2021, "
                       f"zennit's defaults): {rules}; BatchNorm merged by the canonizers of "
                       f":func:`zennit_canonizers`; output relevance = the target logit. No options.")
    compute.__name__ = compute.__qualname__ = f"_{name}"
    register(name, library=f"zennit {composite}", passes="1 forward + 1 backward", needs=("gradients",))(compute)


for _name in ZENNIT_COMPOSITES:
    _register_zennit(_name)


# ---- DeepLiftShap --------------------------------------------------------------------------------------------

def _deeplift_shap_cost(images: int, options: dict) -> tuple[int, int]:
    references = options["references"]
    count = images if references is None else int(references.shape[0])
    return count * (images + 1), count * images


@register("deeplift_shap", library="bagrepro ReLU rules (= captum DeepLiftShap)",
          passes="R x (1 forward + 1 backward), and R reference passes per call (R = references)",
          needs=("gradients",), cost=_deeplift_shap_cost)
def _deeplift_shap(net: nn.Module, images: Tensor, targets: Tensor, *, references: Tensor | None = None) -> Tensor:
    """DeepLiftShap (Lundberg & Lee 2017; captum ``DeepLiftShap``): the mean over reference images r of
    DeepLIFT (rescale rule) with baseline r, each computed by the ReLU override of ``deeplift`` (captum's
    DeepLift mis-handles a ReLU module called twice, as in torchvision's ResNet blocks, and functional
    ReLUs, as DenseNet's: module docstring); equal to captum's where captum is right
    (tests/test_attribution_zennit.py).

    Options: ``references`` = None: the dataset baseline [R, 3, H, W] (:func:`dataset_references`; the
    benchmark passes images of the data set that it does not score), None -> the batch's own images.
    """
    baselines = dataset_references(images, references)
    total = torch.zeros_like(images)
    for reference in baselines:  # one DeepLIFT per reference, batched over the images
        total = total + _deeplift_with_baselines(net, images, targets, reference[None])
    return total / len(baselines)
