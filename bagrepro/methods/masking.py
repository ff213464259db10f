"""Masking primitives: patch grids, patch scores, fill values, and the batched masking engines.

Everything works on model inputs (normalised images) [B, C, H, W]. A patch grid of side ``patch``
covers the image from the top-left corner; rows/columns that do not fill a whole patch stay
untouched. Patch index p = row * grid_width + column.

- :func:`patch_scores`: attribution [B, C, H, W] -> score per patch [B, P] (sum over the patch's
  pixels and channels, with a sign convention).
- :func:`masking_curves`: the spatial-sensitivity engine (Fig. 8): patches masked one after another
  in descending score, the leading class's probability after every step, all steps of many images
  in chunked batches (memory bounded by ``chunk_size``, not by the number of steps).
- :func:`interaction_terms`: eq. 1's two sides for a set of separated masks, batched; its grid
  (:func:`separated_masks`) covers the whole image, border cells clipped, so that about a quarter is
  masked at every size.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.transforms.v2 import functional as TF

from bagrepro.core.errors import ConfigError
from bagrepro.methods.incremental import IncrementalModel, NotIncremental, report_fallback

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


def fill_values(images: torch.Tensor, patch: int, fill: str | torch.Tensor = "dc",
                blur_sigma: float | None = None) -> torch.Tensor:
    """What a masked pixel becomes, for every pixel: [B, C, H, W].

    'dc': the per-channel mean of the pixel's patch (its DC component, as in eq. 1);
    'zero': 0 in normalised space, i.e. the data set's mean colour; 'blur': a Gaussian blur of the
    image (sigma = patch / 2 by default); a tensor of the images' shape: those values (an insertion
    curve masks a blank image with the real one).
    """
    if isinstance(fill, torch.Tensor):
        if fill.shape != images.shape:
            raise ConfigError(f"a fill tensor must have the images' shape {tuple(images.shape)}, got {tuple(fill.shape)}")
        return fill.to(images)
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


#: how masking curves are computed: 'incremental' (:mod:`bagrepro.methods.incremental`; a model it cannot
#: trace falls back to 'batched' with one log line) or 'batched' (a full forward pass per (image, step))
ENGINES = ("incremental", "batched")


def grid_positions(height: int, width: int, patch: int) -> torch.Tensor:
    """Top-left corner (row, col) px of every whole patch, in patch-index order: [P, 2]."""
    rows, cols = grid_shape(height, width, patch)
    return torch.cartesian_prod(torch.arange(rows) * patch, torch.arange(cols) * patch).reshape(-1, 2)


@torch.inference_mode()
def masking_curves(model, images: torch.Tensor, ranks: torch.Tensor, leading: torch.Tensor, steps: int,
                   patch: int = 8, fill: str | torch.Tensor = "dc", chunk_size: int = 64,
                   engine: str = "incremental") -> torch.Tensor:
    """Probability of the leading class after masking the k best-ranked patches, k = 0..steps.

    model: maps images to logits. images [B, C, H, W] (model input); ranks [B, P] (from
    :func:`ranks_from_scores`); leading [B] class per image (predicted on the clean image).
    engine 'incremental' (default): :func:`incremental_masking_curves` (a quarter of ``chunk_size``
    images step together; the layers computed whole take ``chunk_size`` inputs at a time);
    'batched': :func:`batched_masking_curves`, all (image, k) pairs flattened and evaluated in chunks
    of ``chunk_size`` full forward passes. The same curves to float rounding; memory does not grow
    with ``steps``. Returns [B, steps + 1] probabilities.
    """
    if engine not in ENGINES:
        raise ConfigError(f"unknown masking engine '{engine}'; choose from {', '.join(ENGINES)}")
    if engine == "incremental":
        try:
            return incremental_masking_curves(model, images, ranks, leading, steps, patch, fill, chunk_size)
        except NotIncremental as reason:
            report_fallback("masking", reason)
    return batched_masking_curves(model, images, ranks, leading, steps, patch, fill, chunk_size)


@torch.inference_mode()
def incremental_masking_curves(model, images: torch.Tensor, ranks: torch.Tensor, leading: torch.Tensor, steps: int,
                               patch: int = 8, fill: str = "dc", chunk_size: int = 64, lanes: int | None = None,
                               ) -> torch.Tensor:
    """:func:`masking_curves` by incremental inference: per image the model's maps of step k are
    kept, and step k + 1 recomputes only what its newly masked patch reaches
    (:class:`bagrepro.methods.incremental.IncrementalModel`). ``lanes`` images step together (default: a
    quarter of ``chunk_size``, at least 1: the kept maps of a lane are several times an image's
    activations), and the layers computed whole run on ``chunk_size`` (lane, step) inputs at a time.
    Same arguments and result as :func:`batched_masking_curves`, to float rounding. Raises
    NotIncremental for a model torch.fx cannot trace."""
    batch, channels, height, width = images.shape
    lanes = lanes or max(1, chunk_size // 4)
    evaluator = IncrementalModel(model, (channels, height, width), (patch, patch), grid_positions(height, width, patch))
    fills = fill_values(images, patch, fill)
    order = ranks.argsort(dim=1).cpu()  # [B, P]: the patch masked at step k + 1 is order[:, k]
    probabilities = torch.empty(batch, steps + 1, device=images.device)
    for start in range(0, batch, lanes):
        chosen = slice(start, start + lanes)
        targets = leading[chosen, None]
        group = len(targets)
        logits = evaluator.start(images[chosen])
        probabilities[chosen, 0] = logits.float().softmax(1).gather(1, targets)[:, 0]
        source = fills[chosen]
        per_flush = max(1, chunk_size // group)  # steps whose whole layers run as one batch
        for first in range(0, steps, per_flush):
            done = range(first, min(steps, first + per_flush))
            for k in done:
                evaluator.advance(order[chosen, k], source)
            logits = evaluator.flush().float().reshape(len(done), group, -1)  # [steps, lanes, classes]
            chosen_probabilities = logits.softmax(2).gather(2, targets[None].expand(len(done), -1, -1))[..., 0]
            probabilities[chosen, first + 1:first + 1 + len(done)] = chosen_probabilities.T
    return probabilities


@torch.inference_mode()
def batched_masking_curves(model, images: torch.Tensor, ranks: torch.Tensor, leading: torch.Tensor, steps: int,
                           patch: int = 8, fill: str = "dc", chunk_size: int = 64) -> torch.Tensor:
    """:func:`masking_curves` by full forward passes: all (image, k) pairs flattened and evaluated in
    chunks of ``chunk_size`` inputs. Returns [B, steps + 1] probabilities."""
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


def cell_offset(length: int, patch: int) -> int:
    """Where eq. 1's grid starts along an axis of ``length`` px: the offset o in (-2 * patch, 0] of the
    first masked cell (cells of ``patch`` px at o + 2k * patch, clipped to the image) whose masked
    share of the axis is closest to 1/2; among those, the one whose smallest (clipped) masked cell is
    largest (no slivers at the border), then the one whose two border margins are most alike, then
    the largest o. Our choice: the paper says only that about a quarter of the image is masked,
    which a grid from the corner misses where ``length`` is no multiple of ``patch``."""
    offsets = torch.arange(0, -2 * patch, -1)  # [O]
    cells = (torch.arange(length)[None, :] - offsets[:, None]) // patch  # [O, L]: each pixel's cell
    sizes = torch.zeros(len(offsets), length // patch + 3, dtype=torch.long).scatter_add_(
        1, cells, torch.ones_like(cells))  # [O, n] pixels of each cell in the image
    masked_sizes = sizes[:, ::2]  # every second cell, the first masked
    off_share = (2 * masked_sizes.sum(1) - length).abs()  # |masked - length / 2|, times 2
    smallest = torch.where(masked_sizes > 0, masked_sizes, length + 1).min(1).values
    masked = cells % 2 == 0  # [O, L]
    first = masked.long().argmax(1)
    last_gap = masked.flip(1).long().argmax(1)
    keys = np.lexsort(((first - last_gap).abs().numpy(), -smallest.numpy(), off_share.numpy()))
    return int(offsets[keys[0]])


def _axis_cells(length: int, patch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Along one axis of eq. 1's grid: each pixel's cell [L] (cells of ``patch`` px from
    :func:`cell_offset`, numbered from 0 at the first cell with a pixel in the image, partial cells at
    the borders included) and whether each cell is masked [n] (every second cell of the grid)."""
    cell = (torch.arange(length) - cell_offset(length, patch)) // patch
    first, last = int(cell[0]), int(cell[-1])  # a grid cell wholly outside the image is no cell here
    return cell - first, torch.arange(first, last + 1) % 2 == 0


def separated_masks(height: int, width: int, patch: int) -> torch.Tensor:
    """eq. 1's masks: every second cell in every second row of a grid of ``patch`` px cells that covers
    the image, one pixel mask per masked cell, [M, H, W] bool.

    The grid is placed per axis by :func:`cell_offset` so that about half of each axis, a quarter of the
    image, is masked at every size (:func:`masked_share`); cells cut by the border are kept, clipped
    to the image. Masked cells are ``patch`` px apart horizontally and vertically."""
    row_cell, row_masked = _axis_cells(height, patch)
    col_cell, col_masked = _axis_cells(width, patch)
    rows = row_masked.nonzero()[:, 0]  # the masked cells' numbers
    cols = col_masked.nonzero()[:, 0]
    in_row = row_cell[None, :] == rows[:, None]  # [Mr, H]
    in_col = col_cell[None, :] == cols[:, None]  # [Mc, W]
    masks = in_row[:, None, :, None] & in_col[None, :, None, :]  # [Mr, Mc, H, W]
    return masks.reshape(-1, height, width)


def masked_share(height: int, width: int, patch: int) -> float:
    """The share of the image's pixels that eq. 1's masks cover together (about 1/4)."""
    return float(separated_masks(height, width, patch).any(0).double().mean())


def cell_fill_values(images: torch.Tensor, patch: int, fill: str = "dc") -> torch.Tensor:
    """What a masked pixel of eq. 1's grid becomes, for every pixel: [B, C, H, W]. 'dc': the
    per-channel mean of the pixel's cell (its DC component; a cell cut by the border: the mean of its
    pixels inside the image); 'zero' and 'blur' as :func:`fill_values`."""
    if fill != "dc":
        return fill_values(images, patch, fill)
    height, width = images.shape[-2:]
    rows = F.one_hot(_axis_cells(height, patch)[0]).to(images)  # [H, R]: the cell of each row
    cols = F.one_hot(_axis_cells(width, patch)[0]).to(images)  # [W, K]
    sums = torch.einsum("hr,bchw,wk->bcrk", rows, images, cols)
    counts = rows.sum(0)[:, None] * cols.sum(0)[None, :]  # [R, K] pixels per cell
    return torch.einsum("hr,bcrk,wk->bchw", rows, sums / counts, cols)


@torch.inference_mode()
def interaction_terms(model, images: torch.Tensor, classes: torch.Tensor, patch: int, fill: str = "dc",
                      chunk_size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """eq. 1 for every image: LHS = l(x) - l(x + sum_i delta_i), RHS = sum_i (l(x) - l(x + delta_i)).

    l is the logit of ``classes`` [B]; delta_i replaces mask i (:func:`separated_masks`) with its fill
    (:func:`cell_fill_values`). Per image 2 + M inputs (clean, all masks, each mask alone), evaluated
    in chunks. Returns (lhs [B], rhs [B]) in float64 (sums of many logit differences).
    """
    batch, _, height, width = images.shape
    single = separated_masks(height, width, patch).to(images.device)  # [M, H, W]
    variants = torch.cat([torch.zeros_like(single[:1]), single.any(0, keepdim=True), single])  # [2 + M, H, W]
    fills = cell_fill_values(images, patch, fill)
    pairs = torch.cartesian_prod(torch.arange(batch, device=images.device),
                                 torch.arange(len(variants), device=images.device))
    logits = torch.empty(len(pairs), dtype=torch.float64, device=images.device)
    for start in range(0, len(pairs), chunk_size):
        image_index, variant = pairs[start:start + chunk_size].unbind(1)
        pixels = variants[variant][:, None]  # [n, 1, H, W]
        inputs = torch.where(pixels, fills[image_index], images[image_index])
        logits[start:start + chunk_size] = model(inputs).double().gather(1, classes[image_index, None])[:, 0]
    logits = logits.reshape(batch, len(variants))
    clean, all_masked, each = logits[:, 0], logits[:, 1], logits[:, 2:]
    return clean - all_masked, (clean[:, None] - each).sum(1)
