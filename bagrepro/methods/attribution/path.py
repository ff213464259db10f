"""The path family: attributions that integrate gradients along a path from a baseline (Integrated
Gradients, Gradient SHAP).

Layouts as everywhere in the package: images [B, 3, H, W] (normalised), targets [B] -> [B, 3, H, W].
"""

from __future__ import annotations

import functools

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
    5), ``references`` = None: the dataset baseline [R, 3, H, W] (the benchmark passes images of the
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
