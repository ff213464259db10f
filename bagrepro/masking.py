"""Masking primitives: patch grids, patch scores, fill values, and the batched masking engines.

Everything works on model inputs (normalised images) [B, C, H, W]. A patch grid of side ``patch``
covers the image from the top-left corner; rows/columns that do not fill a whole patch stay
untouched. Patch index p = row * grid_width + column.

- :func:`patch_scores`: attribution [B, C, H, W] -> score per patch [B, P] (sum over the patch's
  pixels and channels, with a sign convention).
- :func:`masking_curves`: the spatial-sensitivity engine (Fig. 8): patches masked one after another
  in descending score, the leading class's probability after every step, all steps of many images
  in chunked batches (memory bounded by ``chunk_size``, not by the number of steps).
- :func:`interaction_terms`: eq. 1's two sides for a set of separated masks, batched.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torchvision.transforms.v2 import functional as TF

from .errors import ConfigError

FILLS = ("dc", "zero", "blur")
SIGNS = ("signed", "positive", "absolute")


def grid_shape(height: int, width: int, patch: int) -> tuple[int, int]:
    """Number of whole patches per column and per row."""
    return height // patch, width // patch


def patch_scores(attribution: torch.Tensor, patch: int = 8, sign: str = "signed") -> torch.Tensor:
    """Sum an attribution over each patch and its channels: [B, C, H, W] -> [B, P].

    sign: 'signed' sums the values as they are (a patch with negative evidence ranks last: the
    released BagNet heatmaps and DeepExplain's maps are ranked this way); 'positive' sums only the
    positive part; 'absolute' sums magnitudes (evidence of either sign ranks first).
    """
    if sign not in SIGNS:
        raise ConfigError(f"unknown sign convention '{sign}'; choose from {', '.join(SIGNS)}")
    values = {"signed": attribution, "positive": attribution.clamp(min=0), "absolute": attribution.abs()}[sign]
    rows, cols = grid_shape(*attribution.shape[-2:], patch)
    values = values[..., : rows * patch, : cols * patch].sum(1, keepdim=True)
    return (F.avg_pool2d(values, patch) * patch * patch).flatten(1)


def fill_values(images: torch.Tensor, patch: int, fill: str = "dc", blur_sigma: float | None = None) -> torch.Tensor:
    """What a masked pixel becomes, for every pixel: [B, C, H, W].

    'dc': the per-channel mean of the pixel's patch (its DC component, as in eq. 1);
    'zero': 0 in normalised space, i.e. the data set's mean colour; 'blur': a Gaussian blur of the
    image (sigma = patch / 2 by default).
    """
    if fill == "dc":
        rows, cols = grid_shape(*images.shape[-2:], patch)
        means = F.avg_pool2d(images[..., : rows * patch, : cols * patch], patch)
        dc = images.clone()
        dc[..., : rows * patch, : cols * patch] = means.repeat_interleave(patch, -2).repeat_interleave(patch, -1)
        return dc
    if fill == "zero":
        return torch.zeros_like(images)
    if fill == "blur":
        sigma = blur_sigma or patch / 2
        kernel = 2 * int(round(3 * sigma)) + 1
        return TF.gaussian_blur(images, [kernel, kernel], [sigma, sigma])
    raise ConfigError(f"unknown fill '{fill}'; choose from {', '.join(FILLS)}")


def patch_masks_to_pixels(masks: torch.Tensor, height: int, width: int, patch: int) -> torch.Tensor:
    """Boolean patch masks [..., P] -> pixel masks [..., 1, H, W]."""
    rows, cols = grid_shape(height, width, patch)
    grid = masks.reshape(*masks.shape[:-1], 1, rows, cols)
    pixels = grid.repeat_interleave(patch, -2).repeat_interleave(patch, -1)
    return F.pad(pixels, (0, width - cols * patch, 0, height - rows * patch), value=False)


def ranks_from_scores(scores: torch.Tensor) -> torch.Tensor:
    """[B, P] scores -> rank of every patch in descending order (0 = masked first), [B, P]."""
    order = scores.argsort(dim=1, descending=True, stable=True)
    return order.argsort(dim=1)


@torch.inference_mode()
def masking_curves(model, images: torch.Tensor, ranks: torch.Tensor, leading: torch.Tensor, steps: int,
                   patch: int = 8, fill: str = "dc", chunk_size: int = 64) -> torch.Tensor:
    """Probability of the leading class after masking the k best-ranked patches, k = 0..steps.

    model: maps images to logits. images [B, C, H, W] (model input); ranks [B, P] (from
    :func:`ranks_from_scores`); leading [B] class per image (predicted on the clean image).
    All (image, k) pairs are flattened and evaluated in chunks of ``chunk_size`` inputs, so memory
    does not grow with ``steps``. Returns [B, steps + 1] probabilities.
    """
    batch, _, height, width = images.shape
    fills = fill_values(images, patch, fill)
    k = torch.arange(steps + 1, device=images.device)
    pairs = torch.cartesian_prod(torch.arange(batch, device=images.device), k)  # [(B*(steps+1)), 2]
    probabilities = torch.empty(len(pairs), device=images.device)
    for start in range(0, len(pairs), chunk_size):
        image_index, step = pairs[start:start + chunk_size].unbind(1)
        masks = ranks[image_index] < step[:, None]  # [n, P]
        pixels = patch_masks_to_pixels(masks, height, width, patch)
        inputs = torch.where(pixels, fills[image_index], images[image_index])
        logits = model(inputs).float()
        probabilities[start:start + chunk_size] = logits.softmax(1).gather(1, leading[image_index, None])[:, 0]
    return probabilities.reshape(batch, steps + 1)


def separated_masks(height: int, width: int, patch: int) -> torch.Tensor:
    """eq. 1's masks: every second patch in every second row of the patch grid, [M, P] one-hot.

    Masked patches are ``patch`` px apart horizontally and vertically (about a quarter of the image).
    """
    rows, cols = grid_shape(height, width, patch)
    grid = torch.zeros(rows, cols, dtype=torch.bool)
    grid[::2, ::2] = True
    chosen = grid.flatten().nonzero()[:, 0]
    return F.one_hot(chosen, rows * cols).bool()


@torch.inference_mode()
def interaction_terms(model, images: torch.Tensor, classes: torch.Tensor, patch: int, fill: str = "dc",
                      chunk_size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """eq. 1 for every image: LHS = l(x) - l(x + sum_i delta_i), RHS = sum_i (l(x) - l(x + delta_i)).

    l is the logit of ``classes`` [B]; delta_i replaces mask i (:func:`separated_masks`) with its fill.
    Per image 2 + M inputs (clean, all masks, each mask alone), evaluated in chunks. Returns
    (lhs [B], rhs [B]) in float64 (sums of many logit differences).
    """
    batch, _, height, width = images.shape
    single = separated_masks(height, width, patch).to(images.device)  # [M, P]
    variants = torch.cat([torch.zeros_like(single[:1]), single.any(0, keepdim=True), single])  # [2 + M, P]
    fills = fill_values(images, patch, fill)
    pairs = torch.cartesian_prod(torch.arange(batch, device=images.device),
                                 torch.arange(len(variants), device=images.device))
    logits = torch.empty(len(pairs), dtype=torch.float64, device=images.device)
    for start in range(0, len(pairs), chunk_size):
        image_index, variant = pairs[start:start + chunk_size].unbind(1)
        pixels = patch_masks_to_pixels(variants[variant], height, width, patch)
        inputs = torch.where(pixels, fills[image_index], images[image_index])
        logits[start:start + chunk_size] = model(inputs).double().gather(1, classes[image_index, None])[:, 0]
    logits = logits.reshape(batch, len(variants))
    clean, all_masked, each = logits[:, 0], logits[:, 1], logits[:, 2:]
    return clean - all_masked, (clean[:, None] - each).sum(1)
