"""The perturbation family: forward passes on masked inputs (Occlusion by incremental inference) and
surrogate models fitted to them (KernelSHAP, LIME).

Layouts as everywhere in the package: images [B, 3, H, W] (normalised), targets [B] -> [B, 3, H, W].
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bagrepro.core.errors import ConfigError
from bagrepro.methods.attribution.registry import IMAGE_SIZE, positive, register_attribution, seeded_rng
from bagrepro.methods.incremental import IncrementalModel, NotIncremental, report_fallback

register = functools.partial(register_attribution, family="perturbation")


def occlusion_grid(height: int, width: int, window: int, stride: int) -> tuple[int, int]:
    """Window positions captum's ``Occlusion`` visits per column and per row: ``1 + ceil((side -
    window) / stride)`` per axis (the last one may hang over the border and is cut there)."""
    if window > min(height, width) or stride > window or stride < 1:
        raise ConfigError(f"occlusion: need stride ({stride}) <= window ({window}) <= image side "
                          f"({height}x{width}) and stride >= 1")
    return 1 + -(-(height - window) // stride), 1 + -(-(width - window) // stride)


def occlusion_windows(height: int, width: int, window: int, stride: int) -> int:
    """The number of window positions captum's ``Occlusion`` visits (:func:`occlusion_grid`)."""
    rows, cols = occlusion_grid(height, width, window, stride)
    return rows * cols


def _occlusion_cost(images: int, options: dict) -> tuple[int, int]:
    size = options[IMAGE_SIZE]
    if size is None:
        raise ConfigError("occlusion: its number of passes depends on the image size; pass image_size")
    windows = occlusion_windows(*size, options["occlusion_window"], options["occlusion_stride"])
    return images * (1 + windows), 0


@register("occlusion", library="bagrepro incremental (= captum Occlusion)", passes="1 + (windows) forward, no backward", needs=("forward",),
                      cost=_occlusion_cost)
def _occlusion(net: nn.Module, images: Tensor, targets: Tensor, *, occlusion_window: int = 16,
               occlusion_stride: int = 8, perturbations_per_eval: int = 16) -> Tensor:
    """Occlusion (Zeiler & Fergus 2014; captum ``Occlusion``): a square window over all colour
    channels is set to the baseline 0 (the data set's mean colour), and every element gets the mean,
    over the window positions covering it, of the drop logit_t(x) - logit_t(x occluded). One pass of
    the unoccluded images, then one per window position (:func:`occlusion_windows`).

    Computed by :func:`incremental_occlusion` (the same numbers as captum's, to float rounding, at the
    cost of what each window reaches); a model torch.fx cannot trace goes through captum itself.

    Options: ``occlusion_window`` = 16 px and ``occlusion_stride`` = 8 px (half-overlapping windows,
    the size of a BagNet-17 patch; Zeiler & Fergus slid a grey square over the image).
    ``perturbations_per_eval`` = 16: at most that many model inputs per forward pass (captum's
    ``perturbations_per_eval`` counts windows per pass, each for every image: there
    ``max(1, 16 // batch)`` windows; memory only).
    """
    positive("perturbations_per_eval", perturbations_per_eval)
    channels, height, width = images.shape[1:]
    occlusion_windows(height, width, occlusion_window, occlusion_stride)  # checks the geometry
    try:
        return incremental_occlusion(net, images, targets, occlusion_window, occlusion_stride, perturbations_per_eval)
    except NotIncremental as reason:
        report_fallback("occlusion", reason, "captum's Occlusion")
    from captum.attr import Occlusion

    return Occlusion(net).attribute(
        images, sliding_window_shapes=(channels, occlusion_window, occlusion_window),
        strides=(channels, occlusion_stride, occlusion_stride), baselines=0.0, target=targets,
        perturbations_per_eval=max(1, perturbations_per_eval // images.shape[0]))


def occlusion_positions(height: int, width: int, window: int, stride: int) -> Tensor:
    """Top-left (row, col) px of captum ``Occlusion``'s window positions, row-major: [N, 2]
    (:func:`occlusion_windows` per axis; the last may hang over the border)."""
    rows, cols = occlusion_grid(height, width, window, stride)
    return torch.cartesian_prod(torch.arange(rows) * stride, torch.arange(cols) * stride)


@torch.inference_mode()
def incremental_occlusion(net: nn.Module, images: Tensor, targets: Tensor, window: int, stride: int,
                          inputs_per_pass: int = 16) -> Tensor:
    """captum ``Occlusion``'s attribution (baseline 0, a window x window square over all channels,
    moved by ``stride``) by incremental inference: one full pass of the images keeps their maps,
    then every occluded input recomputes only the part of each layer its window reaches
    (:class:`bagrepro.methods.incremental.IncrementalModel`), ``inputs_per_pass`` at a time.

    images [B, C, H, W], targets [B] -> [B, C, H, W]: per pixel the mean over the windows covering
    it of logit_t(x) - logit_t(x with the window set to 0), the same value in every channel.
    Raises NotIncremental where the model cannot be traced (the caller then uses captum)."""
    batch, channels, height, width = images.shape
    positions = occlusion_positions(height, width, window, stride)
    evaluator = IncrementalModel(net, (channels, height, width), (window, window), positions)
    clean = evaluator.start(images, keep=True).float().gather(1, targets[:, None])[:, 0]  # [B]
    # every (image, window) pair is a lane; lanes advance once from their image's kept maps
    image_of_lane = torch.arange(batch).repeat_interleave(len(positions))
    position_of_lane = torch.arange(len(positions)).repeat(batch)
    drops = torch.empty(batch * len(positions), device=images.device)
    zeros = torch.zeros(1, channels, height, width, dtype=images.dtype, device=images.device)
    for start in range(0, len(drops), inputs_per_pass):
        lanes = slice(start, start + inputs_per_pass)
        evaluator.select(image_of_lane[lanes])
        evaluator.advance(position_of_lane[lanes], zeros.expand(len(image_of_lane[lanes]), -1, -1, -1))
        occluded = evaluator.flush().float().gather(1, targets[image_of_lane[lanes], None].to(images.device))[:, 0]
        drops[lanes] = clean[image_of_lane[lanes].to(images.device)] - occluded
    rows, cols = occlusion_grid(height, width, window, stride)
    # spread each window's drop over its pixels and divide by the windows covering each pixel: a
    # transposed convolution with a ones kernel places the window at stride steps, cut at the border
    ones = torch.ones(1, 1, window, window, device=images.device)
    summed = F.conv_transpose2d(drops.reshape(batch, 1, rows, cols), ones, stride=stride)[..., :height, :width]
    covering = F.conv_transpose2d(torch.ones(1, 1, rows, cols, device=images.device), ones, stride=stride)
    attribution = summed / covering[..., :height, :width]
    return attribution.expand(-1, channels, -1, -1).to(images.dtype).contiguous()


def cell_feature_mask(height: int, width: int, cell: int, device: torch.device | str = "cpu") -> Tensor:
    """[H, W] long: the index ``row // cell * ncols + col // cell`` of the square cell each pixel is in
    (ncols = ceil(W / cell); the last row and column of cells may be smaller)."""
    positive("cell", cell)
    rows = torch.arange(height, device=device) // cell
    cols = torch.arange(width, device=device) // cell
    return rows[:, None] * (-(-width // cell)) + cols[None, :]


def _surrogate(explainer, images: Tensor, targets: Tensor, cell: int, samples: int,
               perturbations_per_eval: int, seed: int) -> Tensor:
    """captum Lime/KernelShap one image at a time (captum fits one model per image anyway, and on a
    batch first runs an extra forward of it), reseeded per image, with the cell mask and baseline 0;
    each cell's coefficient is put on every element (3 channels x pixels) of the cell, as captum does."""
    positive("samples", samples)
    positive("perturbations_per_eval", perturbations_per_eval)
    channels, height, width = images.shape[1:]
    mask = cell_feature_mask(height, width, cell, images.device)
    maps = []
    for index in range(images.shape[0]):
        with seeded_rng(seed, images.device):
            coefs = explainer.attribute(
                images[index:index + 1], baselines=0.0, target=targets[index:index + 1],
                feature_mask=mask[None, None], n_samples=samples,
                perturbations_per_eval=perturbations_per_eval, return_input_shape=False)
        maps.append(coefs.reshape(-1).to(images)[mask].expand(channels, height, width))
    return torch.stack(maps)


@register("kernel_shap", library="captum KernelShap", passes="k forward (k = kernel_shap_samples), no backward",
                      needs=("forward",),
                      cost=lambda images, options: (options["kernel_shap_samples"] * images, 0))
def _kernel_shap(net: nn.Module, images: Tensor, targets: Tensor, *, cell: int = 16,
                 kernel_shap_samples: int = 200, perturbations_per_eval: int = 16, seed: int = 0) -> Tensor:
    """KernelSHAP (Lundberg & Lee 2017; captum ``KernelShap``): Shapley values of square cells of
    ``cell`` px (all colour channels of a cell one feature; :func:`cell_feature_mask`), an absent cell
    set to the baseline 0 (the data set's mean colour); a weighted linear regression on k coalitions
    sampled with the Shapley kernel (captum's ``SkLearnLinearRegression``; its first two coalitions
    are all cells and none). Each cell's value is put on every element of the cell (captum's
    output), so a map's sum is 3 x cell area x the cells' Shapley values.

    Options: ``cell`` = 16 px (a 14 x 14 grid at 224 px; the size of a BagNet-17 patch),
    ``kernel_shap_samples`` = k = 200 (captum's ``n_samples`` defaults to 25, too few for 196
    features), ``perturbations_per_eval`` = 16 model inputs per pass (memory only), ``seed`` = 0
    (coalitions drawn inside :func:`seeded_rng`, reseeded per image).
    """
    from captum.attr import KernelShap

    return _surrogate(KernelShap(net), images, targets, cell, kernel_shap_samples, perturbations_per_eval, seed)


@register("lime", library="captum Lime", passes="k forward (k = lime_samples), no backward", needs=("forward",),
                      cost=lambda images, options: (options["lime_samples"] * images, 0))
def _lime(net: nn.Module, images: Tensor, targets: Tensor, *, cell: int = 16, lime_samples: int = 200,
          perturbations_per_eval: int = 16, seed: int = 0) -> Tensor:
    """LIME (Ribeiro et al. 2016; captum ``Lime``) on the same cells and baseline as ``kernel_shap``:
    k coalitions with each cell present with probability 1/2, weighted by captum's default similarity
    (exponential kernel of the cosine distance between the image and the perturbed image, width
    1.0), fitted by captum's default interpretable model ``SkLearnLasso(alpha=0.01)``; each cell's
    coefficient is put on every element of the cell.

    Options: ``cell`` = 16 px, ``lime_samples`` = k = 200 (captum's default 25 is too few for 196
    cells), ``perturbations_per_eval`` = 16 model inputs per pass (memory only), ``seed`` = 0
    (reseeded per image, :func:`seeded_rng`). captum's other defaults are kept as they are.
    """
    from captum.attr import Lime

    return _surrogate(Lime(net), images, targets, cell, lime_samples, perturbations_per_eval, seed)



def _cells(options: dict) -> int:
    size = options[IMAGE_SIZE]
    if size is None:
        raise ConfigError("feature_ablation / shapley_value_sampling: their passes depend on the image size; "
                          "pass image_size")
    return (-(-size[0] // options["cell"])) * (-(-size[1] // options["cell"]))


@register("feature_ablation", library="captum FeatureAblation",
          passes="1 + (cells) forward, no backward", needs=("forward",),
          cost=lambda images, options: (images * (1 + _cells(options)), 0))
def _feature_ablation(net: nn.Module, images: Tensor, targets: Tensor, *, cell: int = 16,
                      perturbations_per_eval: int = 16) -> Tensor:
    """Feature ablation (captum ``FeatureAblation``; the cell-wise form of Zeiler & Fergus's 2014
    occlusion, without overlapping windows): each square cell of ``cell`` px (all colour channels;
    :func:`cell_feature_mask`) in turn set to the baseline 0 (the data set's mean colour in normalised
    space); every element of the cell gets logit_t(x) - logit_t(x without the cell). One call of
    ``FeatureAblation.attribute`` on the batch: one pass of the images, then one per cell.

    Options: ``cell`` = 16 px (ours, because it is the cell of ``kernel_shap`` and ``lime`` and the
    size of a BagNet-17 patch; captum's default is one feature per element), ``perturbations_per_eval``
    = 16: at most that many model inputs per forward pass, as for ``occlusion`` (captum's
    ``perturbations_per_eval`` counts cells per pass, each for every image: there ``max(1, 16 //
    batch)``; memory and speed only, not results; ours, because captum's default 1 is slow).
    """
    from captum.attr import FeatureAblation

    positive("perturbations_per_eval", perturbations_per_eval)
    mask = cell_feature_mask(*images.shape[-2:], cell, images.device)
    return FeatureAblation(net).attribute(images, baselines=0.0, target=targets, feature_mask=mask[None, None],
                                          perturbations_per_eval=max(1, perturbations_per_eval // images.shape[0]))


@register("shapley_value_sampling", library="captum ShapleyValueSampling",
          passes="1 + s x (cells) forward (s = shapley_samples), no backward", needs=("forward",),
          cost=lambda images, options: (images * (1 + options["shapley_samples"] * _cells(options)), 0))
def _shapley_value_sampling(net: nn.Module, images: Tensor, targets: Tensor, *, cell: int = 16,
                            shapley_samples: int = 25, perturbations_per_eval: int = 16, seed: int = 0) -> Tensor:
    """Shapley value sampling (Castro, Gomez & Tejada 2009; captum ``ShapleyValueSampling``): the
    cells of ``feature_ablation`` added one by one, from the baseline 0 (all cells absent), in s random
    orders; each cell's value is the mean of its marginal contributions to logit_t, put on every
    element of the cell (a map's channel sum over a cell is 3 x cell area x its Shapley value). The
    values sum to logit_t(x) - logit_t(0) exactly; on a model linear in the cells they are exact
    for any s. One pass of the baseline, then one per (order, cell).

    Options: ``cell`` = 16 px (ours, as for ``feature_ablation``), ``shapley_samples`` = s = 25
    (captum's ``n_samples`` default), ``perturbations_per_eval`` = 16 model inputs per forward pass
    (``max(1, 16 // batch)`` of captum's, as for ``feature_ablation``; memory and speed only),
    ``seed`` = 0 (ours: the orders are drawn from torch's generator inside :func:`seeded_rng`; one set
    of orders serves every image of the batch).
    """
    from captum.attr import ShapleyValueSampling

    positive("shapley_samples", shapley_samples)
    positive("perturbations_per_eval", perturbations_per_eval)
    mask = cell_feature_mask(*images.shape[-2:], cell, images.device)
    with seeded_rng(seed, images.device):
        return ShapleyValueSampling(net).attribute(
            images, baselines=0.0, target=targets, feature_mask=mask[None, None], n_samples=shapley_samples,
            perturbations_per_eval=max(1, perturbations_per_eval // images.shape[0]))
