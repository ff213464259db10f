"""The path family: attributions that integrate gradients along a path from a baseline (Integrated
Gradients, Gradient SHAP and Expected Gradients through captum; Guided IG, Blur IG and XRAI through
PAIR's ``saliency.core``, which is numpy-based and per image: those loop over the images).

Layouts as everywhere in the package: images [B, 3, H, W] (normalised), targets [B] -> [B, 3, H, W].
"""

from __future__ import annotations

import contextlib
import functools
from typing import Callable

import torch
from torch import Tensor, nn

from bagrepro.core.errors import ConfigError
from bagrepro.methods.attribution.registry import (DEFAULT_IG_BATCH, dataset_references, ig_internal_batch_size,
                                                   positive, register_attribution, seeded_rng)

register = functools.partial(register_attribution, family="path")


@register("integrated_gradients", library="captum IntegratedGradients", passes="n forward + n backward", needs=("gradients",),
                      cost=lambda images, options: (options["ig_steps"] * images,) * 2)
def _integrated_gradients(net: nn.Module, images: Tensor, targets: Tensor, *, ig_steps: int = 100,
                          internal_batch_size: int | None = None) -> Tensor:
    """Integrated Gradients (Sundararajan et al. 2017), zero baseline: x * mean_k grad(k/n * x),
    k = 1..n (right Riemann sum, DeepExplain's alphas 1/n .. 1). captum
    ``IntegratedGradients(multiply_by_inputs=True)`` with ``method='riemann_right'``.

    Options: ``ig_steps`` = n = 100, DeepExplain's default ``steps`` (the paper kept DeepExplain's
    defaults; Sundararajan et al. report 20-300 steps as enough); ``internal_batch_size`` = None, i.e.
    :data:`DEFAULT_IG_BATCH` scaled images per pass (see :func:`ig_internal_batch_size`; it bounds
    memory and does not change the definition).
    """
    from captum.attr import IntegratedGradients

    if ig_steps < 2:  # captum's Riemann sums assert n > 1
        raise ConfigError(f"ig_steps must be at least 2, got {ig_steps}")
    return IntegratedGradients(net, multiply_by_inputs=True).attribute(
        images.requires_grad_(True), baselines=torch.zeros_like(images), target=targets, n_steps=ig_steps,
        method="riemann_right", internal_batch_size=ig_internal_batch_size(images.shape[0], ig_steps, internal_batch_size))



def gradient_shap_baselines(images: Tensor, seed: int = 0) -> Tensor:
    """``gradient_shap``'s two reference images [2, C, H, W]: the zero image (the data set's mean
    colour in normalised space) and a Gaussian N(0, 1) noise image drawn from a generator seeded with
    ``seed`` (the data's own spread in normalised space)."""
    shape = (1, *images.shape[1:])
    noise = torch.randn(shape, generator=torch.Generator().manual_seed(seed))
    return torch.cat([torch.zeros(shape), noise]).to(images)


def _shap_images_per_pass(samples: int, internal_batch_size: int | None) -> int:
    bound = DEFAULT_IG_BATCH if internal_batch_size is None else int(internal_batch_size)
    positive("internal_batch_size", bound)
    return max(1, bound // samples)


@register("gradient_shap", library="captum GradientShap", passes="s forward + s backward (s = shap_samples)", needs=("gradients",),
                      cost=lambda images, options: (options["shap_samples"] * images,) * 2)
def _gradient_shap(net: nn.Module, images: Tensor, targets: Tensor, *, shap_samples: int = 20,
                   internal_batch_size: int | None = None, seed: int = 0) -> Tensor:
    """GradientSHAP (Lundberg & Lee 2017; captum ``GradientShap``): expected gradients, the mean over
    s samples of ``(x - b) * grad(b + u (x - b))`` with the reference b drawn from
    :func:`gradient_shap_baselines` (zero image, seeded N(0, 1) noise image) and u ~ U(0, 1); captum's
    default ``stdevs=0`` (no noise added to the input).

    Options: ``shap_samples`` = s = 20 (captum's ``n_samples`` defaults to 5; 20 lowers the sampling
    variance for 4x the cost). ``internal_batch_size`` = None, i.e. :data:`DEFAULT_IG_BATCH`: captum
    sends all s x B samples at once, so the images go in chunks of ``max(1, bound // s)`` (memory
    only). ``seed`` = 0: the noise image, the reference choices and u are drawn inside
    :func:`seeded_rng`, reseeded per chunk, so with one image per chunk (the default) an image's map
    does not depend on the rest of the batch.
    """
    from captum.attr import GradientShap

    positive("shap_samples", shap_samples)
    baselines = gradient_shap_baselines(images, seed)
    chunk = _shap_images_per_pass(shap_samples, internal_batch_size)
    parts = []
    for start in range(0, images.shape[0], chunk):
        with seeded_rng(seed, images.device):
            parts.append(GradientShap(net).attribute(
                images[start:start + chunk], baselines=baselines, n_samples=shap_samples, stdevs=0.0,
                target=targets[start:start + chunk]))
    return torch.cat(parts)



@register("expected_gradients", library="captum GradientShap (dataset baselines)",
          passes="s forward + s backward (s = eg_samples)", needs=("gradients",),
          cost=lambda images, options: (options["eg_samples"] * images,) * 2)
def _expected_gradients(net: nn.Module, images: Tensor, targets: Tensor, *, eg_samples: int = 20,
                        references: Tensor | None = None, internal_batch_size: int | None = None,
                        seed: int = 0) -> Tensor:
    """Expected Gradients (Erion et al. 2021): Integrated Gradients averaged over baselines drawn from
    the data, the mean over s samples of ``(x - b) * grad(b + u (x - b))`` with b drawn from the
    dataset baseline and u ~ U(0, 1); captum ``GradientShap`` with those baselines and ``stdevs=0``
    (captum's GradientShap is this estimator; only the baselines differ from ``gradient_shap``).

    Options: ``eg_samples`` = s = 20 (ours, as ``gradient_shap``'s; captum's ``n_samples`` defaults to
    5; the authors' attributionpriors code trains with one reference per image and recommends
    "100-200 for reliable explanations", and shap's ``GradientExplainer`` draws 200), ``references`` = None: the dataset baseline [R, 3, H, W] (the benchmark passes images of the
    data set it does not score; None -> the batch's own images), ``internal_batch_size`` = None (memory
    only, as ``gradient_shap``), ``seed`` = 0 (draws inside :func:`seeded_rng`, reseeded per chunk).
    """
    from captum.attr import GradientShap

    positive("eg_samples", eg_samples)
    baselines = dataset_references(images, references)
    chunk = _shap_images_per_pass(eg_samples, internal_batch_size)
    parts = []
    for start in range(0, images.shape[0], chunk):
        with seeded_rng(seed, images.device):
            parts.append(GradientShap(net).attribute(
                images[start:start + chunk], baselines=baselines, n_samples=eg_samples, stdevs=0.0,
                target=targets[start:start + chunk]))
    return torch.cat(parts)


# ---- PAIR's path methods (saliency.core, numpy, one image per call) --------------------------------------------

def pair_call_model_function(net: nn.Module, target: int, like: Tensor):
    """saliency.core's ``call_model_function`` for ``net``'s logit of class ``target``: a batch of HWC
    numpy inputs [N, H, W, C] (the model's normalised input space) -> ``{INPUT_OUTPUT_GRADIENTS: d
    logit_target / d input}`` [N, H, W, C] (numpy), computed with torch in ``like``'s dtype and on its
    device: one forward and one backward of the N inputs per call. Written here: saliency.core is
    framework-free and leaves this function to its user (PAIR ships it only for TensorFlow)."""
    import numpy as np
    from saliency.core.base import INPUT_OUTPUT_GRADIENTS

    def call_model_function(x_value_batch, call_model_args=None, expected_keys=None):
        if expected_keys is not None and any(key != INPUT_OUTPUT_GRADIENTS for key in expected_keys):
            raise ConfigError(f"pair_call_model_function returns only {INPUT_OUTPUT_GRADIENTS}, asked for {expected_keys}")
        batch = torch.as_tensor(np.asarray(x_value_batch), device=like.device).to(like.dtype)
        batch = batch.permute(0, 3, 1, 2).contiguous().requires_grad_(True)
        logits = net(batch)
        (gradient,) = torch.autograd.grad(logits[:, int(target)].sum(), batch)
        return {INPUT_OUTPUT_GRADIENTS: gradient.permute(0, 2, 3, 1).detach().cpu().numpy()}

    return call_model_function


def _hwc(image: Tensor):
    """One [C, H, W] image as saliency.core's HWC numpy array (its dtype kept)."""
    return image.detach().permute(1, 2, 0).cpu().numpy()


def _chw(mask, like: Tensor) -> Tensor:
    """saliency.core's HWC mask as a [C, H, W] tensor in ``like``'s dtype and device."""
    import numpy as np

    return torch.as_tensor(np.ascontiguousarray(mask)).permute(2, 0, 1).to(like)


@contextlib.contextmanager
def numpy_quantile_interpolation_keyword():
    """While inside, ``saliency.core.guided_ig`` sees a numpy whose ``quantile`` accepts the
    ``interpolation=`` keyword: saliency 0.2.1's Guided IG calls ``np.quantile(..., interpolation=
    'lower')``, a keyword numpy renamed to ``method=`` in 1.22 and removed in 2.4 (TypeError). The
    keyword is passed on as ``method=`` (numpy's documented synonym), nothing else changes; numpy's
    that still take the keyword are left alone. Written here: no saliency release fixes it."""
    import inspect as _inspect
    import types

    import numpy as np
    from saliency.core import guided_ig

    if "interpolation" in _inspect.signature(np.quantile).parameters:
        yield
        return

    def quantile(a, q, *args, interpolation=None, **kwargs):
        if interpolation is not None:
            kwargs["method"] = interpolation
        return np.quantile(a, q, *args, **kwargs)

    shim = types.ModuleType("numpy_with_quantile_interpolation")
    shim.__getattr__ = lambda name: getattr(np, name)  # module __getattr__ (PEP 562): the rest is numpy's
    shim.quantile = quantile
    original = guided_ig.np
    guided_ig.np = shim
    try:
        yield
    finally:
        guided_ig.np = original


def _pair_cost(calls_per_image: Callable[[dict], int]) -> Callable[[int, dict], tuple[int, int]]:
    def cost(images: int, options: dict) -> tuple[int, int]:
        return (calls_per_image(options) * images,) * 2
    return cost


@register("guided_ig", library="saliency.core GuidedIG",
          passes="n forward + n backward, one input each (n = guided_ig_steps)", needs=("gradients",),
          cost=_pair_cost(lambda options: options["guided_ig_steps"]))
def _guided_ig(net: nn.Module, images: Tensor, targets: Tensor, *, guided_ig_steps: int = 200,
               guided_ig_fraction: float = 0.25, guided_ig_max_dist: float = 0.02) -> Tensor:
    """Guided Integrated Gradients (Kapishnikov et al. 2021, "Guided Integrated Gradients: an
    adaptive path method for removing noise"): the path from the zero baseline (the library's
    default ``x_baseline``; zero = the data set's mean colour in the normalised input) to the image
    moves, at each of the n steps, the fraction of features with the smallest absolute gradient,
    no feature straying more than max_dist (relative L1) from the straight line; attribution = the
    sum of (feature change) x (gradient) along that path. PAIR's ``saliency.core.GuidedIG().GetMask``
    per image with :func:`pair_call_model_function` (the target logit's input gradient), its numpy
    ``quantile`` call adapted by :func:`numpy_quantile_interpolation_keyword`. With respect to the
    normalised input. Sums to logit(x) - logit(0) up to the path's discretisation.

    Options, the library's defaults (``GetMask``'s): ``guided_ig_steps`` = 200 (``x_steps``);
    ``guided_ig_fraction`` = 0.25 (``fraction``); ``guided_ig_max_dist`` = 0.02 (``max_dist``).
    The path depends on each step's gradient, so every step is one model call on one input (no
    batch option). An image equal to the baseline gets zero without a model call (the cost counts
    every image).
    """
    from saliency.core import GuidedIG

    positive("guided_ig_steps", guided_ig_steps)
    if not 0 < guided_ig_fraction <= 1 or not 0 <= guided_ig_max_dist <= 1:
        raise ConfigError(f"guided_ig_fraction must be in (0, 1] and guided_ig_max_dist in [0, 1], got "
                          f"{guided_ig_fraction}, {guided_ig_max_dist}")
    explainer, maps = GuidedIG(), []
    with numpy_quantile_interpolation_keyword():
        for image, target in zip(images, targets.tolist()):  # PAIR's saliency.core is per image
            mask = explainer.GetMask(_hwc(image), pair_call_model_function(net, target, images),
                                     x_steps=guided_ig_steps, fraction=guided_ig_fraction,
                                     max_dist=guided_ig_max_dist)
            maps.append(_chw(mask, images))
    return torch.stack(maps)


@register("blur_ig", library="saliency.core BlurIG",
          passes="n forward + n backward (n = blur_ig_steps)", needs=("gradients",),
          cost=_pair_cost(lambda options: options["blur_ig_steps"]))
def _blur_ig(net: nn.Module, images: Tensor, targets: Tensor, *, blur_ig_max_sigma: float = 50,
             blur_ig_steps: int = 100, blur_ig_grad_step: float = 0.01, blur_ig_sqrt: bool = False,
             pair_batch_size: int = DEFAULT_IG_BATCH) -> Tensor:
    """Blur Integrated Gradients (Xu et al. 2020, "Attribution in scale and space"): integrated
    gradients along the path of ever stronger Gaussian blurs of the image (sigma from 0 to
    max_sigma, scipy ``gaussian_filter``, zero padding), left Riemann sum over n steps of
    -(d blur / d sigma) x gradient x (step in sigma), d blur / d sigma by a forward difference of
    grad_step. PAIR's ``saliency.core.BlurIG().GetMask`` per image with
    :func:`pair_call_model_function`; with respect to the normalised input (the blur acts on it:
    the zero padding is the data set's mean colour). Sums to logit(x) - logit(blur_max_sigma(x))
    up to the discretisation.

    Options, the library's defaults (``GetMask``'s): ``blur_ig_max_sigma`` = 50 (``max_sigma``,
    in pixels); ``blur_ig_steps`` = 100 (``steps``); ``blur_ig_grad_step`` = 0.01 (``grad_step``);
    ``blur_ig_sqrt`` = False (``sqrt``: sigmas spaced by their square). ``pair_batch_size`` = 32
    (:data:`DEFAULT_IG_BATCH`; ours, because the library's ``batch_size`` = 1 calls the model once
    per step): path points per model call, memory only. With ``blur_ig_sqrt`` the library
    multiplies a whole batch by its last step's sigma difference (saliency 0.2.1), so the steps then
    go one per call, where the result does not depend on the batch.
    """
    from saliency.core import BlurIG

    positive("blur_ig_steps", blur_ig_steps)
    positive("pair_batch_size", pair_batch_size)
    if blur_ig_max_sigma <= 0 or blur_ig_grad_step <= 0:
        raise ConfigError(f"blur_ig_max_sigma and blur_ig_grad_step must be positive, got "
                          f"{blur_ig_max_sigma}, {blur_ig_grad_step}")
    batch = 1 if blur_ig_sqrt else int(pair_batch_size)  # see the docstring: the library's batching bug
    explainer, maps = BlurIG(), []
    for image, target in zip(images, targets.tolist()):  # PAIR's saliency.core is per image
        mask = explainer.GetMask(_hwc(image), pair_call_model_function(net, target, images),
                                 max_sigma=blur_ig_max_sigma, steps=blur_ig_steps, grad_step=blur_ig_grad_step,
                                 sqrt=bool(blur_ig_sqrt), batch_size=batch)
        maps.append(_chw(mask, images))
    return torch.stack(maps)


#: XRAI's Integrated Gradients run from two baselines (the library's default: the image's min and max)
XRAI_BASELINES = 2


@register("xrai", library="saliency.core XRAI",
          passes="2n forward + 2n backward (IG from 2 baselines, n = xrai_steps), and a segmentation",
          needs=("gradients",), cost=_pair_cost(lambda options: XRAI_BASELINES * options["xrai_steps"]))
def _xrai(net: nn.Module, images: Tensor, targets: Tensor, *, xrai_steps: int = 100, xrai_algorithm: str = "full",
          pair_batch_size: int = DEFAULT_IG_BATCH) -> Tensor:
    """XRAI (Kapishnikov et al. 2019, "XRAI: better attributions through regions"): Integrated
    Gradients averaged over two constant baselines (the image's minimum and maximum value, the
    library's default ``baselines``; saliency.core's IG: n points ``linspace(0, 1, n)``, sum / n),
    reduced to one map by the maximum over channels, then ranked over Felzenszwalb segments (the
    library's default segmentation: scales 50-1200 at 224 px, dilated by 5 px) by their
    attribution density, region by region; the value of a pixel is the density (gain) of the region
    that first covered it. PAIR's ``saliency.core.XRAI().GetMask`` per image with
    :func:`pair_call_model_function`. The image it sees and segments is the normalised model input
    (the segmentation rescales it to [-1, 1] and 224 px itself). The [H, W] map is returned as map / 3
    on each channel (the channel sum is the map), as the CAMs are.

    Options: ``xrai_steps`` = 100 (the library's default ``XRAIParameters.steps``: IG points per
    baseline); ``xrai_algorithm`` = "full" (the library's default ``XRAIParameters.algorithm``;
    "fast" ranks the segments once, ignoring their overlap: same IG, cheaper ranking);
    ``pair_batch_size`` = 32 (:data:`DEFAULT_IG_BATCH`; ours, because the library's ``batch_size`` = 1
    calls the model once per point): IG points per model call, memory only.
    """
    from saliency.core import XRAI, XRAIParameters

    if xrai_steps < 2:  # saliency.core's IG only flushes its last batch at alpha == 1
        raise ConfigError(f"xrai_steps must be at least 2, got {xrai_steps}")
    positive("pair_batch_size", pair_batch_size)
    if xrai_algorithm not in ("full", "fast"):
        raise ConfigError(f"xrai_algorithm must be 'full' or 'fast', got {xrai_algorithm!r}")
    explainer, maps = XRAI(), []
    channels = images.shape[1]
    for image, target in zip(images, targets.tolist()):  # PAIR's saliency.core is per image
        mask = explainer.GetMask(_hwc(image), pair_call_model_function(net, target, images),
                                 batch_size=int(pair_batch_size),
                                 extra_parameters=XRAIParameters(steps=xrai_steps, algorithm=xrai_algorithm))
        region_map = torch.as_tensor(mask).to(images)
        maps.append((region_map / channels).expand(channels, -1, -1))
    return torch.stack(maps).contiguous()
