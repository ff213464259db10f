"""Scoring attribution maps against ground truth: the benchmark the paper proposes (its Sec. 5).

Two kinds of truth, two sets of scores, all batched over images (torch in, torch out).

**Part A: a BagNet's exact evidence.** A BagNet's logit of class t is the mean of its patch logits
``l_w`` over the windows w of its native grid (window (i, j) = input rows [8i, 8i + q), columns
[8j, 8j + q); :func:`bagrepro.methods.heatmaps.patch_logits`), so the evidence of every window is known
exactly. A pixel attribution map is compared with it after :func:`pool_to_patch_grid`:

- pooling: every pixel's attribution is shared equally among the windows that contain it, and a
  window's score is the sum of its shares: ``score_w = sum_{p in w} a_p / n_p`` with ``n_p`` the
  number of windows covering pixel p (:func:`window_coverage`). Windows overlap (stride 8 < q), so a
  plain box sum would count a pixel once per window; with the shares the pooled scores sum to the
  map's total over covered pixels (a complete method stays complete on the grid), and a BagNet whose
  patch logit is the plain sum of its window's inputs is pooled back exactly: gradient x input
  pooled = l_w / (number of windows) (the test builds that BagNet). Pixels no window covers (the
  last (H - q) mod 8 rows and columns) do not enter the grid: the BagNet never sees them.
- :func:`spearman_rows`: Spearman rank correlation of pooled scores and patch logits, per image.
- :func:`top_fraction_overlap`: share of the exact top 10 % windows among the method's top 10 %.
- :func:`deletion_curves`: windows deleted from the bag in a given order; deleting window w replaces
  its q x q input by the mean colour (zero in normalised space) for its own evidence, i.e. ``l_w`` by
  ``c`` = the patch logit of an all-zero window (the same number for every window: valid
  convolutions see the same zeros). The logit after k deletions is
  ``mean_w l_w - (1/P) * sum of (l_w - c) over the k deleted windows``, so the order of descending
  exact patch logits lowers it fastest at every k (the best possible curve by construction;
  :func:`deletion_gaps` measures a method's area above it). Masking pixels of the image instead
  would change every overlapping window's evidence at once and no order would be optimal by
  construction.

**Part B: evidence masks.** The demo world marks where each image's class evidence lies (bool
[B, H, W]). :func:`relevance_mass` (share of the positive attribution inside the mask; Arras et al.
2022), :func:`relevance_rank` (share of the |mask| top-ranked pixels inside it) and
:func:`pointing_game` (is a maximal pixel inside it; Zhang et al. 2018) follow Quantus 0.6's
definitions on the map given (``tests/test_ground_truth.py`` checks them against Quantus).

Written here because no maintained library scores maps against a model's own exact evidence, and
Quantus' localisation metrics are numpy loops over a whole evaluation pipeline (models, explainers)
where these are three reductions on tensors already in memory.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from scipy import stats

from bagrepro.models.bagnet import BAGNET_STRIDE

#: share of windows whose overlap :func:`top_fraction_overlap` measures by default (the issue's 10 %)
TOP_FRACTION = 0.1


def window_coverage(height: int, width: int, q: int, stride: int = BAGNET_STRIDE,
                    dtype=torch.float32, device=None) -> torch.Tensor:
    """Number of q x q windows (at ``stride``, from the top-left corner) covering each pixel: [H, W]
    (0 for pixels no window reaches)."""
    rows, cols = (height - q) // stride + 1, (width - q) // stride + 1
    ones = torch.ones(1, 1, rows, cols, dtype=dtype, device=device)
    kernel = torch.ones(1, 1, q, q, dtype=dtype, device=device)
    covered = F.conv_transpose2d(ones, kernel, stride=stride)[0, 0]  # [(rows-1)*stride+q, ...]
    return F.pad(covered, (0, width - covered.shape[1], 0, height - covered.shape[0]))


def pool_to_patch_grid(maps: torch.Tensor, q: int, stride: int = BAGNET_STRIDE) -> torch.Tensor:
    """Pixel maps [B, H, W] -> window scores [B, rows, cols], rows = (H - q) // stride + 1: each
    pixel's value shared equally among the windows covering it, summed per window (module docstring)."""
    coverage = window_coverage(*maps.shape[-2:], q, stride, maps.dtype, maps.device)
    shares = torch.where(coverage > 0, maps / coverage.clamp(min=1), torch.zeros_like(maps))
    return F.avg_pool2d(shares[:, None], q, stride)[:, 0] * (q * q)


def spearman_rows(scores: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """Spearman rank correlation per row: scores, truth [B, P] -> [B] float64 (NaN where either row
    is constant). Average ranks for ties, as scipy.stats.spearmanr."""
    ranked = [torch.from_numpy(stats.rankdata(values.flatten(1).double().cpu().numpy(), axis=-1))
              for values in (scores, truth)]
    a, b = ranked
    a, b = a - a.mean(-1, keepdim=True), b - b.mean(-1, keepdim=True)
    denominator = (a.square().sum(-1) * b.square().sum(-1)).sqrt()
    return torch.where(denominator > 0, (a * b).sum(-1) / denominator.clamp(min=1e-300),
                       torch.full_like(denominator, math.nan))


def _top_k_mask(values: torch.Tensor, k: int) -> torch.Tensor:
    index = values.argsort(dim=-1, descending=True, stable=True)[:, :k]
    return torch.zeros_like(values, dtype=torch.bool).scatter_(-1, index, True)


def top_fraction_overlap(scores: torch.Tensor, truth: torch.Tensor, fraction: float = TOP_FRACTION) -> torch.Tensor:
    """Share of the ``fraction`` highest-truth windows that are also among the method's ``fraction``
    highest: [B, P] x [B, P] -> [B] float64, k = ceil(fraction * P) windows (ties broken by index)."""
    scores, truth = scores.flatten(1), truth.flatten(1)
    k = max(1, math.ceil(fraction * scores.shape[-1]))
    overlap = (_top_k_mask(scores, k) & _top_k_mask(truth, k)).sum(-1)
    return overlap.double() / k


def deletion_curves(order_scores: torch.Tensor, patch_logits: torch.Tensor, deleted_logit: torch.Tensor) -> torch.Tensor:
    """The BagNet's logit while its windows are deleted from the bag in descending ``order_scores``.

    order_scores, patch_logits [B, P] (P windows; the exact logits of the class), deleted_logit [B]
    or scalar: the patch logit of an all-zero (mean-colour) window. Returns [B, P + 1] float64:
    entry k = mean over windows after the first k in the order have their logit replaced by
    ``deleted_logit`` (k = 0: the model's logit). Module docstring: why this is the deletion.
    """
    logits = patch_logits.flatten(1).double()
    windows = logits.shape[-1]
    evidence = logits - torch.as_tensor(deleted_logit, dtype=torch.float64, device=logits.device).reshape(-1, 1)
    order = order_scores.flatten(1).argsort(dim=-1, descending=True, stable=True)
    removed = evidence.gather(-1, order).cumsum(-1) / windows  # [B, P]
    start = logits.mean(-1, keepdim=True)
    return torch.cat([start, start - removed], -1)


def deletion_gaps(order_scores: torch.Tensor, patch_logits: torch.Tensor,
                  deleted_logit: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """How far a method's deletion curve lies above the exact ordering's: (gap [B], normalised [B]).

    gap: mean over k = 0..P of (method's curve - exact curve), in logits (the area between the curves
    over the deleted fraction 0..1, a Riemann sum); >= 0, 0 for the exact order. normalised: gap
    divided by the gap of the worst order (ascending patch logits): 0 = exact, 1 = worst, NaN where
    every window has the same logit."""
    logits = patch_logits.flatten(1)
    method = deletion_curves(order_scores, logits, deleted_logit)
    best = deletion_curves(logits, logits, deleted_logit)
    worst = deletion_curves(-logits, logits, deleted_logit)
    gap = (method - best).mean(-1)
    span = (worst - best).mean(-1)
    return gap, torch.where(span > 0, gap / span.clamp(min=1e-300), torch.full_like(span, math.nan))


def _flat(maps: torch.Tensor, masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if maps.shape != masks.shape:
        raise ValueError(f"maps {tuple(maps.shape)} and masks {tuple(masks.shape)} must have one shape [B, H, W]")
    return maps.flatten(1).double(), masks.flatten(1).bool()


def relevance_mass(maps: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Share of the positive attribution that lies inside the mask: maps [B, H, W], masks bool
    [B, H, W] -> [B] float64 (NaN for an empty mask or a map without positive values)."""
    values, inside = _flat(maps, masks)
    positive = values.clamp(min=0)
    total = positive.sum(-1)
    share = (positive * inside).sum(-1) / total.clamp(min=1e-300)
    return torch.where((total > 0) & inside.any(-1), share, torch.full_like(share, math.nan))


def relevance_rank(maps: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Share of the K highest-ranked pixels that lie inside the mask, K = the mask's size (per
    image): [B, H, W] x bool [B, H, W] -> [B] float64 (NaN for an empty mask). Ties by index."""
    values, inside = _flat(maps, masks)
    sizes = inside.sum(-1)  # [B]
    ranked_inside = inside.gather(-1, values.argsort(dim=-1, descending=True, stable=True))  # [B, HW]
    within_top = torch.arange(values.shape[-1], device=values.device)[None, :] < sizes[:, None]
    hits = (ranked_inside & within_top).sum(-1).double()
    return torch.where(sizes > 0, hits / sizes.clamp(min=1), torch.full_like(hits, math.nan))


def pointing_game(maps: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """1 where a pixel of maximal attribution lies inside the mask (any of tied maxima), else 0:
    [B, H, W] x bool [B, H, W] -> [B] float64 (NaN for an empty mask)."""
    values, inside = _flat(maps, masks)
    maximal = values == values.max(-1, keepdim=True).values
    hit = (maximal & inside).any(-1).double()
    return torch.where(inside.any(-1), hit, torch.full_like(hit, math.nan))


#: Part A's scores (name -> whether higher is better), in the order of the CSVs and figures
PART_A_METRICS = {"spearman": True, "top10_overlap": True, "deletion_gap": False, "deletion_gap_normalised": False}
#: Part B's scores (name -> whether higher is better)
PART_B_METRICS = {"relevance_mass": True, "relevance_rank": True, "pointing_game": True}
