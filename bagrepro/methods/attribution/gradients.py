"""The gradient family: the input gradient and its modifications (Saliency, Input x Gradient,
SmoothGrad, guided backpropagation, the deconvnet).

Layouts as everywhere in the package: images [B, 3, H, W] (normalised), targets [B] -> [B, 3, H, W].
Each library is imported inside the method that uses it, so importing the package stays fast.
"""

from __future__ import annotations

import functools

from torch import Tensor, nn

from bagrepro.methods.attribution.registry import (ig_internal_batch_size, positive, register_attribution,
                                                   seeded_rng)
from bagrepro.methods.attribution.relu_rules import DeconvRelu, GuidedRelu, modified_gradient

register = functools.partial(register_attribution, family="gradient")


@register("saliency", library="captum Saliency", passes="1 forward + 1 backward", needs=("gradients",))
def _saliency(net: nn.Module, images: Tensor, targets: Tensor) -> Tensor:
    """Saliency map (Simonyan et al. 2014): |d logit_t / d x| for every input element (each colour
    channel separately, as DeepExplain's ``saliency``). No options. captum ``Saliency(abs=True)``."""
    from captum.attr import Saliency

    return Saliency(net).attribute(images.requires_grad_(True), target=targets, abs=True)



@register("input_x_gradient", library="captum InputXGradient", passes="1 forward + 1 backward", needs=("gradients",))
def _input_x_gradient(net: nn.Module, images: Tensor, targets: Tensor) -> Tensor:
    """Gradient x input (Shrikumar et al. 2016): x * d logit_t / d x, per colour channel. No options.
    captum ``InputXGradient``."""
    from captum.attr import InputXGradient

    return InputXGradient(net).attribute(images.requires_grad_(True), target=targets)


@register("smoothgrad", library="captum NoiseTunnel(Saliency)", passes="s forward + s backward (s = smoothgrad_samples)",
                      needs=("gradients",),
                      cost=lambda images, options: (options["smoothgrad_samples"] * images,) * 2)
def _smoothgrad(net: nn.Module, images: Tensor, targets: Tensor, *, noise_level: float = 0.15,
                smoothgrad_samples: int = 50, internal_batch_size: int | None = None, seed: int = 0) -> Tensor:
    """SmoothGrad (Smilkov et al. 2017): mean over s noisy copies x + N(0, sigma^2) of the signed
    gradient d logit_t / d x. captum ``NoiseTunnel(Saliency)`` with ``nt_type='smoothgrad'`` and
    ``abs=False``.

    Options: ``noise_level`` = 0.15: sigma = noise_level x (max - min of the batch's input values);
    Smilkov et al. recommend 10-20 % of the input range. ``smoothgrad_samples`` = s = 50, Smilkov et
    al.'s default. ``internal_batch_size`` = None: at most :data:`DEFAULT_IG_BATCH` noisy images per
    pass (as Integrated Gradients' option: :func:`ig_internal_batch_size`; memory only).
    ``seed`` = 0: the noise is drawn inside :func:`seeded_rng`, so a call is deterministic and leaves
    the caller's random state alone (sigma depends on the whole batch, so a batch's maps are not
    those of its images one at a time).
    """
    from captum.attr import NoiseTunnel, Saliency

    positive("smoothgrad_samples", smoothgrad_samples)
    positive("noise_level", noise_level, 0)
    sigma = float(noise_level) * float(images.max() - images.min())
    per_pass = ig_internal_batch_size(images.shape[0], smoothgrad_samples, internal_batch_size) // images.shape[0]
    with seeded_rng(seed, images.device):
        return NoiseTunnel(Saliency(net)).attribute(
            images, nt_type="smoothgrad", nt_samples=smoothgrad_samples, nt_samples_batch_size=per_pass,
            stdevs=sigma, target=targets, abs=False)



@register("guided_backprop", library="bagrepro (ReLU override)", passes="1 forward + 1 backward", needs=("gradients",))
def _guided_backprop(net: nn.Module, images: Tensor, targets: Tensor) -> Tensor:
    """Guided backpropagation (Springenberg et al. 2015): the gradient of logit_t in which every ReLU
    passes back ``relu(grad_out) * (x > 0)``; not multiplied by the input (as captum's
    ``GuidedBackprop`` returns it). Through the ReLU override, since captum's module hooks miss reused
    and functional ReLUs (module docstring); equal to captum's where every ReLU is its own module
    (tested). Other non-linearities keep their gradient, as in captum. No options.
    """
    return modified_gradient(net, images, targets, GuidedRelu.apply, strict=False)


@register("deconvolution", library="bagrepro (ReLU override)", passes="1 forward + 1 backward", needs=("gradients",))
def _deconvolution(net: nn.Module, images: Tensor, targets: Tensor) -> Tensor:
    """Deconvnet (Zeiler & Fergus 2014, in Springenberg et al. 2015's gradient form): the gradient of
    logit_t in which every ReLU passes back ``relu(grad_out)`` whatever its input; not multiplied by
    the input (as captum's ``Deconvolution``). Through the ReLU override like ``guided_backprop``;
    other non-linearities keep their gradient, as in captum. No options.
    """
    return modified_gradient(net, images, targets, DeconvRelu.apply, strict=False)

