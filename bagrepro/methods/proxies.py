"""The deletion proxies other benchmarks use in place of ground truth, computed on a BagNet so that they
can be checked against its exact patch logits (the attribution benchmark's Part C).

A proxy either estimates the truth itself (a score per patch window) or scores a method's map by
what deleting the input in the map's order does to the model's output. Every deletion changes the
input distribution, and on a BagNet a deleted pixel changes every patch logit whose window holds
it: the gap between a proxy and the exact patch logits is what Part C measures.

- :func:`window_deletion_drops` (IDSDS-style single-patch deletion, Hesse et al. 2024): per patch
  window of the BagNet's grid (q x q px at stride 8), the drop of the target logit when that window
  alone is set to 0 (the data's mean colour). By incremental inference: one pass keeps each image's
  maps and every deleted window recomputes only what it reaches.
- :func:`deletion_scores`: MoRF and LeRF deletion (Samek et al. 2017; Quantus' region perturbation)
  with 8 x 8 px patches set to 0 in the map's order, most relevant first and least relevant first,
  MoRF insertion (the image's patches put back into the all-zero image, most relevant first: the
  insertion metric of Petsiuk et al. 2018), and the paper's own masking order (Fig. 8: patches
  replaced by their DC component, most relevant first), each as the mean probability of the class
  over the masking steps 1..steps (an area under the curve). Curves through :func:`bagrepro.methods.masking.masking_curves`.
- :func:`road_scores`: ROAD (Rong et al. 2022, "A consistent and efficient evaluation strategy for
  attribution methods") through pytorch-grad-cam's ``ROADMostRelevantFirst`` /
  ``ROADLeastRelevantFirst`` at the library's default percentiles: the pixels removed by the map's
  order are filled by noisy linear imputation from their neighbours (not a constant), and the score is
  the change of the class logit.

Layouts: images [B, 3, H, W] (the model's normalised input), targets [B]; maps [B, H, W].
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor, nn

from bagrepro.methods.incremental import IncrementalModel, NotIncremental, report_fallback
from bagrepro.methods.masking import masking_curves, patch_scores, ranks_from_scores

#: the masking patch side of the curve proxies (px): the paper's Fig. 8 grid
CURVE_PATCH = 8
#: the fill of an insertion curve: it starts from the all-zero (mean-colour) image and puts the
#: image's own patches back in the map's order
INSERTION = "insert"
#: proxy -> (its fill, order, whether a higher score means a better map, what it is)
CURVE_PROXIES = {
    "morf_deletion": ("zero", "most relevant first", False,
                      "MoRF deletion: mean class probability while the most relevant 8x8 patches are set to 0"),
    "lerf_deletion": ("zero", "least relevant first", True,
                      "LeRF deletion: mean class probability while the least relevant 8x8 patches are set to 0"),
    "paper_masking": ("dc", "most relevant first", False,
                      "Fig. 8's order: mean class probability while the most relevant 8x8 patches take their DC value"),
    "morf_insertion": (INSERTION, "most relevant first", True,
                       "MoRF insertion: mean class probability while the most relevant 8x8 patches are put back "
                       "into a mean-colour image"),
}
#: ROAD proxy -> (pytorch-grad-cam class, its default percentile, whether a higher score means a better
#: map, what it is); the score: logit after imputation - logit before
ROAD_PROXIES = {
    "road_morf": ("ROADMostRelevantFirst", 80, False,
                  "ROAD MoRF: class logit change when the 20 % most relevant pixels are imputed"),
    "road_lerf": ("ROADLeastRelevantFirst", 20, True,
                  "ROAD LeRF: class logit change when the 80 % least relevant pixels are imputed"),
}
#: the seed of ROAD's imputation noise (fixed, so a unit computed again gives the same scores)
ROAD_SEED = 0
#: the single-patch deletion proxy: a truth estimate per window, scored like the exact truth (Spearman r)
PATCH_DELETION = "patch_deletion"


def window_positions(height: int, width: int, q: int, stride: int = 8) -> Tensor:
    """Top-left corners (row, col) of the BagNet's patch windows in row-major order: [rows * cols, 2],
    rows = (H - q) // stride + 1 (the grid of :func:`bagrepro.methods.ground_truth.pool_to_patch_grid`)."""
    rows, cols = (height - q) // stride + 1, (width - q) // stride + 1
    return torch.cartesian_prod(torch.arange(rows) * stride, torch.arange(cols) * stride).reshape(-1, 2)


@torch.inference_mode()
def window_deletion_drops(model: nn.Module, images: Tensor, targets: Tensor, q: int, stride: int = 8,
                          inputs_per_pass: int = 64) -> Tensor:
    """Single-window deletion: logit_t(x) - logit_t(x with window (i, j) set to 0), per window of the
    q x q grid at ``stride``: [B, rows, cols]. One pass per image plus one incremental step per
    (image, window); a model torch.fx cannot trace gets full forward passes (one log line)."""
    batch, channels, height, width = images.shape
    positions = window_positions(height, width, q, stride)
    rows, cols = (height - q) // stride + 1, (width - q) // stride + 1
    image_of_lane = torch.arange(batch).repeat_interleave(len(positions))
    position_of_lane = torch.arange(len(positions)).repeat(batch)
    drops = torch.empty(batch * len(positions), device=images.device)
    try:
        evaluator = IncrementalModel(model, (channels, height, width), (q, q), positions)
        clean = evaluator.start(images, keep=True).float().gather(1, targets[:, None])[:, 0]
        zeros = torch.zeros(1, channels, height, width, dtype=images.dtype, device=images.device)
        for start in range(0, len(drops), inputs_per_pass):
            lanes = slice(start, start + inputs_per_pass)
            evaluator.select(image_of_lane[lanes])
            evaluator.advance(position_of_lane[lanes], zeros.expand(len(image_of_lane[lanes]), -1, -1, -1))
            deleted = evaluator.flush().float().gather(1, targets[image_of_lane[lanes], None].to(images.device))[:, 0]
            drops[lanes] = clean[image_of_lane[lanes].to(images.device)] - deleted
    except NotIncremental as reason:
        report_fallback("patch deletion", reason)
        clean = model(images).float().gather(1, targets[:, None])[:, 0]
        for start in range(0, len(drops), inputs_per_pass):
            lanes = slice(start, start + inputs_per_pass)
            chosen, where = image_of_lane[lanes], positions[position_of_lane[lanes]]
            pixel_rows, pixel_cols = torch.arange(height)[None, :, None], torch.arange(width)[None, None, :]
            top, left = where[:, 0, None, None], where[:, 1, None, None]
            window = ((pixel_rows >= top) & (pixel_rows < top + q) & (pixel_cols >= left) & (pixel_cols < left + q))
            inputs = images[chosen.to(images.device)] * (~window[:, None]).to(images)
            deleted = model(inputs).float().gather(1, targets[chosen, None].to(images.device))[:, 0]
            drops[lanes] = clean[chosen.to(images.device)] - deleted
    return drops.reshape(batch, rows, cols)


def deletion_passes(images: int, height: int, width: int, q: int, stride: int = 8) -> int:
    """Forward passes of :func:`window_deletion_drops` on ``images`` images (one per image, one per
    (image, window): an incremental step counts as one pass)."""
    rows, cols = (height - q) // stride + 1, (width - q) // stride + 1
    return images * (1 + rows * cols)


def deletion_scores(model: nn.Module, images: Tensor, targets: Tensor, maps: Tensor, steps: int,
                    chunk_size: int = 64) -> dict[str, Tensor]:
    """Each curve proxy of :data:`CURVE_PROXIES` for one map per image: proxy -> [B], the mean
    probability of ``targets`` over masking steps 1..steps of 8 x 8 px patches ranked by the map's
    patch sums (signed)."""
    scores = patch_scores(maps[:, None], CURVE_PATCH)  # [B, P]
    results = {}
    for proxy, (fill, order, _, _) in CURVE_PROXIES.items():
        ranks = ranks_from_scores(scores if order == "most relevant first" else -scores)
        if fill == INSERTION:  # the blank image masked by the real one
            curve = masking_curves(model, torch.zeros_like(images), ranks, targets, steps, CURVE_PATCH, images, chunk_size)
        else:
            curve = masking_curves(model, images, ranks, targets, steps, CURVE_PATCH, fill, chunk_size)
        results[proxy] = curve[:, 1:].mean(1)
    return results


def curve_passes(images: int, steps: int) -> int:
    """Forward passes of :func:`deletion_scores` on ``images`` images: per curve one pass of the clean
    image and one per step."""
    return len(CURVE_PROXIES) * images * (steps + 1)


def road_scores(model: nn.Module, images: Tensor, targets: Tensor, maps: Tensor,
                proxies: tuple[str, ...] = tuple(ROAD_PROXIES)) -> dict[str, Tensor]:
    """Each ROAD proxy of ``proxies`` (:data:`ROAD_PROXIES` keys) for one map per image: proxy -> [B],
    the target logit after the library's removal and imputation minus before (its ``return_diff``).
    pytorch-grad-cam thresholds each [H, W] map at its percentile and imputes every removed pixel by
    a sparse linear solve per image (scipy, on the CPU: about 25 ms at 121 px for 20 % removed, 150 ms
    for 80 %). Its imputation noise draws from torch's global generator: drawn here from a fixed seed
    (:data:`ROAD_SEED`) inside a forked RNG, so the caller's random state is left alone."""
    from pytorch_grad_cam.metrics import road
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    unknown = sorted(set(proxies) - set(ROAD_PROXIES))
    if unknown:
        raise ValueError(f"unknown ROAD proxies {unknown}; choose from {', '.join(ROAD_PROXIES)}")
    cams = maps.detach().float().cpu().numpy()  # [B, H, W]: the signed map; only its order counts
    class_targets = [ClassifierOutputTarget(int(t)) for t in targets]
    results = {}
    devices = [images.device] if images.device.type == "cuda" else []
    for proxy in proxies:
        class_name, percentile, _, _ = ROAD_PROXIES[proxy]
        with torch.random.fork_rng(devices=devices), warnings.catch_warnings():
            torch.manual_seed(ROAD_SEED)
            # the library makes numpy arrays of tensor lists, which numpy 2 flags as deprecated
            warnings.simplefilter("ignore", DeprecationWarning)
            change = getattr(road, class_name)(percentile=percentile)(images, cams, class_targets, model)
        results[proxy] = torch.as_tensor(change, dtype=torch.float32).reshape(len(images))
    return results


def road_passes(images: int, proxies: tuple[str, ...] = tuple(ROAD_PROXIES)) -> int:
    """Forward passes of :func:`road_scores` on ``images`` images: per proxy the library's pass of the
    clean images and one of the imputed ones."""
    return 2 * len(proxies) * images
