"""Incremental masking curves against our batched engine and Quantus, on full-size models at 224 px.

What is measured: the masking curves of Fig. 8 / Table 1 (the probability of the leading class after
the k best-ranked 8x8 patches are masked, k = 0..100, each masked patch replaced by its DC value, the
per-channel mean of the patch) for full-size torchvision VGG-16, ResNet-50 and DenseNet-169 at 224 px
(random weights, calibrated BatchNorm; no downloads), on the same images, ranks and leading classes
per model, three ways:

- incremental (ours, new): :func:`bagrepro.masking.incremental_masking_curves`, which keeps every
  image's activations and recomputes per step only the window the newly masked patch reaches
  (:class:`bagrepro.incremental.IncrementalModel`);
- engine (ours, current): :func:`bagrepro.masking.batched_masking_curves`, every (image, k) pair a
  full forward pass, in chunks of ``--chunk`` inputs;
- Quantus 0.6 ``RegionPerturbation`` doing the same work (an optional dependency: without it, that
  ratio is skipped with one line saying why). Set up as follows, from its source:
  patch_size=8 and no padding (224 is a multiple of 8), so its patch grid is ours, numbered row by row
  as ours; order="morf" ranks patches by the sum of ``a_batch`` over the patch, so ``a_batch`` [B, 1,
  H, W] is constant within each patch and equal to the patch's score, the scores being a random
  permutation of 0..P-1 per image: the patch sums (192 x an integer, exact in float32) are distinct,
  so no ties, and they are checked to give exactly our ranks; normalise=False, abs=False leave the
  scores as they are. No perturb_baseline of Quantus is the DC value: with its batched default
  perturb_func, "mean" is the mean of the whole image over all channels and pixels; so
  ``perturb_func`` is :func:`dc_replacement_by_indices` below (the per-channel mean of the indexed
  patch). Quantus masks patches cumulatively, one per step, never overlapping (a fixed grid), and
  returns per image d_k = p(clean) - p(after k patches) for k = 1..regions_evaluation (softmax=True:
  it appends a Softmax to the model). It runs the model's inference copy, as ours do (like for like);
  batch_size=--chunk, i.e. all images of a step in one forward pass.

The model for all three is the inference copy (:func:`bagrepro.models.fast.fuse_for_inference`:
BatchNorm folded, channels-last). Each method is warmed up on one image with 2 steps, then timed on
the whole run (for Quantus, the metric call only). Printed per model: the time ratios (engine /
incremental, Quantus / incremental), the share of a full forward pass's conv/linear multiply-adds
recomputed per step and the first layer computed whole (``IncrementalModel.summary()``), and whether
the curves agree: max |incremental - engine| <= 1e-5, and max |Quantus-derived curve - engine| with
the Quantus curve p_k = p_0 - d_k for k = 1..steps (p_0, the clean probability, which Quantus does not
return, taken from the engine's k = 0; so this compares Quantus' d_k with the engine's p_0 - p_k).

Targets, VGG-16 only: incremental >= 3x the engine and >= 5x Quantus (PASS/FAIL). ResNet-50 and
DenseNet-169: the same numbers, no target.

Measured (2 CPU cores, torch 2.14, VGG-16, 100 steps; ratios only, machines differ):
4 images: incremental vs engine 5.8x, vs Quantus 6.0x; 8 images: 7.6x and 7.9x. The incremental
method steps up to 16 images together (``lanes``: a quarter of ``--chunk``) and gains with more of
them up to about 8, so the default is 8 images. Default run: VGG-16 7.6x / 8.0x (PASS), ResNet-50
2.1x / 2.3x, DenseNet-169 1.6x / 2.0x (the FLOP share recomputed per step: VGG-16 11%, ResNet-50
33%, DenseNet-169 43%).

Usage: python bench/masking.py [--models vgg16 resnet50 densenet169] [--images 8] [--steps 100] [--chunk 64]
(about 20 minutes on 2 CPU cores with the defaults)
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from bagrepro.incremental import IncrementalModel  # noqa: E402
from bagrepro.masking import (batched_masking_curves, grid_positions, grid_shape,  # noqa: E402
                              incremental_masking_curves, patch_scores, ranks_from_scores)
from bagrepro.models import create_model  # noqa: E402
from bagrepro.models.bagnet import randomise_batchnorm  # noqa: E402
from bagrepro.models.fast import fuse_for_inference  # noqa: E402

try:
    import quantus
except ImportError as error:  # optional dependency: its ratio is skipped
    quantus = None
    QUANTUS_MISSING = f"{type(error).__name__}: {error}"

SIZE = 224  # px
PATCH = 8  # px
CHANNELS = 3
TOLERANCE = 1e-5  # max |difference| between curves
#: zoo name -> paper name
MODELS = {"vgg16": "VGG-16", "resnet50": "ResNet-50", "densenet169": "DenseNet-169"}
#: zoo name -> {baseline: minimum time ratio baseline / incremental}
TARGETS = {"vgg16": {"engine": 3.0, "quantus": 5.0}}


def inference_copy(name: str) -> torch.nn.Module:
    """The registered model with random weights and calibrated BatchNorm, as its inference copy."""
    model = randomise_batchnorm(create_model(name), seed=0, calibration_size=SIZE)
    return fuse_for_inference(model)


def make_work(model: torch.nn.Module, count: int, seed: int = 0):
    """Images [B, C, H, W] (model input), patch scores [B, P] (a random permutation of 0..P-1 per image:
    distinct), their ranks [B, P] and the leading class per clean image [B] (the model's prediction)."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(count, CHANNELS, SIZE, SIZE, generator=generator)
    rows, cols = grid_shape(SIZE, SIZE, PATCH)
    scores = torch.stack([torch.randperm(rows * cols, generator=generator) for _ in range(count)]).float()
    with torch.inference_mode():
        leading = model(images).argmax(1)
    return images, scores, ranks_from_scores(scores), leading


def attribution_map(scores: torch.Tensor) -> np.ndarray:
    """Scores [B, P] -> a per-pixel attribution [B, 1, H, W], constant within each patch and equal to
    the patch's score (what Quantus ranks its patches by)."""
    rows, cols = grid_shape(SIZE, SIZE, PATCH)
    grid = scores.reshape(-1, 1, rows, cols)
    return grid.repeat_interleave(PATCH, -2).repeat_interleave(PATCH, -1).numpy()


def check_quantus_ranks(attribution: np.ndarray, ranks: torch.Tensor) -> None:
    """Quantus' MoRF order is argsort(-per-patch sum over all channels) (not stable): the sums of the
    broadcast ``attribution`` must be distinct per image and rank the patches exactly as ``ranks``."""
    sums = patch_scores(torch.from_numpy(attribution).expand(-1, CHANNELS, -1, -1).contiguous(), PATCH)  # [B, P]
    ordered = sums.sort(dim=1).values
    if (ordered[:, 1:] == ordered[:, :-1]).any():
        raise AssertionError("tied patch sums: Quantus' order would be arbitrary")
    if not torch.equal(ranks_from_scores(sums), ranks):
        raise AssertionError("Quantus' patch sums rank the patches differently from ours")


def dc_replacement_by_indices(arr: np.ndarray, indices: np.ndarray, perturb_baseline: str = "dc",
                              **kwargs) -> np.ndarray:
    """Quantus perturb_func: replace one patch per image by its DC value (per-channel mean of the patch).

    arr [B, C*H*W]: the flattened current (already perturbed) images; indices [B, C*patch*patch]: the
    patch's flat indices as Quantus' ``get_block_indices`` yields them (a [C, patch, patch] block in
    C-major order, so a reshape to [B, C, patch*patch] groups them by channel). Patches never overlap
    and each is masked once, so the patch still holds its clean values here. Returns a new [B, C*H*W].
    """
    if perturb_baseline != "dc":
        raise ValueError(f"dc_replacement_by_indices fills with the DC value, not '{perturb_baseline}'")
    perturbed = arr.copy()
    lanes = np.arange(arr.shape[0])[:, None]
    patch = arr[lanes, indices].reshape(arr.shape[0], CHANNELS, -1)  # [B, C, patch*patch]
    perturbed[lanes, indices] = np.broadcast_to(patch.mean(-1, keepdims=True), patch.shape).reshape(arr.shape[0], -1)
    return perturbed


def quantus_differences(model, images: torch.Tensor, attribution: np.ndarray, leading: torch.Tensor, steps: int,
                        batch_size: int) -> np.ndarray:
    """Quantus' RegionPerturbation (MoRF, DC fill) on the same work: d_k = p_0 - p_k, [B, steps] for k = 1..steps."""
    metric = quantus.RegionPerturbation(
        patch_size=PATCH, order="morf", regions_evaluation=steps, perturb_func=dc_replacement_by_indices,
        perturb_baseline="dc", normalise=False, abs=False, disable_warnings=True, display_progressbar=False,
        return_aggregate=False)
    differences = metric(model=model, x_batch=images.numpy(), y_batch=leading.numpy(), a_batch=attribution,
                         channel_first=True, softmax=True, device="cpu", batch_size=batch_size)
    return np.asarray(differences, dtype=np.float64)


def flop_summary(model, images: torch.Tensor) -> dict:
    """``IncrementalModel.summary()`` for the masking plan (after a full pass on one image)."""
    evaluator = IncrementalModel(model, (CHANNELS, SIZE, SIZE), (PATCH, PATCH), grid_positions(SIZE, SIZE, PATCH))
    evaluator.start(images[:1])
    return evaluator.summary()


def timed(function):
    """(function's result, seconds it took)."""
    start = time.perf_counter()
    result = function()
    return result, time.perf_counter() - start


def verdict(name: str, baseline: str, ratio: float) -> str:
    target = TARGETS.get(name, {}).get(baseline)
    if target is None:
        return "  no target"
    return f"  {'PASS' if ratio >= target else 'FAIL'} (target >= {target:.0f}x)"


def run_model(name: str, count: int, steps: int, chunk: int) -> dict:
    """Times the three methods on one model and prints its block; returns the ratios (None where skipped)."""
    model = inference_copy(name)
    images, scores, ranks, leading = make_work(model, count)
    steps = min(steps, ranks.shape[1])
    attribution = attribution_map(scores)
    check_quantus_ranks(attribution, ranks)

    def incremental(batch=count, k=steps):
        return incremental_masking_curves(model, images[:batch], ranks[:batch], leading[:batch], k, PATCH, "dc", chunk)

    def engine(batch=count, k=steps):
        return batched_masking_curves(model, images[:batch], ranks[:batch], leading[:batch], k, PATCH, "dc", chunk)

    def quantus_run(batch=count, k=steps):
        return quantus_differences(model, images[:batch], attribution[:batch], leading[:batch], k, chunk)

    for method in (incremental, engine) + ((quantus_run,) if quantus else ()):
        method(1, 2)  # warm-up: one image, 2 steps
    incremental_curves, incremental_s = timed(incremental)
    engine_curves, engine_s = timed(engine)
    summary = flop_summary(model, images)

    print(f"{MODELS.get(name, name)} ({name}), {SIZE} px, {count} images, k = 0..{steps}: "
          f"engine {engine_s:.1f} s, incremental {incremental_s:.1f} s", end="")
    ratios = {"engine": engine_s / incremental_s, "quantus": None}
    if quantus:
        differences, quantus_s = timed(quantus_run)
        ratios["quantus"] = quantus_s / incremental_s
        print(f", Quantus {quantus_s:.1f} s")
    else:
        print()
    print(f"incremental vs engine: {ratios['engine']:.1f}x")
    print(verdict(name, "engine", ratios["engine"]))
    if quantus:
        print(f"incremental vs quantus: {ratios['quantus']:.1f}x")
        print(verdict(name, "quantus", ratios["quantus"]))
    else:
        print(f"incremental vs quantus: skipped (quantus not importable: {QUANTUS_MISSING})")
    print(f"  FLOPs recomputed per step: {summary['flop_share']:.1%} of a full forward pass; "
          f"first layer computed whole: {summary['first_full_layer']}")
    ours_difference = (incremental_curves - engine_curves).abs().max().item()
    movement = (engine_curves[:, 1:] - engine_curves[:, :1]).abs().max().item()
    print(f"  curves: p_0 in [{engine_curves[:, 0].min().item():.2e}, {engine_curves[:, 0].max().item():.2e}], "
          f"max |p_k - p_0| = {movement:.1e} (how much masking moves them: the scale the differences below are read on)")
    print(f"  identical curves: max |incremental - engine| = {ours_difference:.1e} "
          f"-> {'PASS' if ours_difference <= TOLERANCE else 'FAIL'} (tolerance {TOLERANCE:.0e})")
    if quantus:
        engine_curves = engine_curves.double().numpy()
        quantus_curves = engine_curves[:, :1] - differences  # p_k = p_0 - d_k, k = 1..steps
        quantus_difference = float(np.abs(quantus_curves - engine_curves[:, 1:]).max())
        print(f"  Quantus curve p_k = p_0 - d_k (k = 1..{steps}, p_0 the engine's): max |Quantus - engine| = "
              f"{quantus_difference:.1e} -> {'PASS' if quantus_difference <= TOLERANCE else 'FAIL'} "
              f"(tolerance {TOLERANCE:.0e})")
    return ratios


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(MODELS), help="zoo names (default: %(default)s)")
    parser.add_argument("--images", type=int, default=8, help="images per model (default: %(default)s)")
    parser.add_argument("--steps", type=int, default=100, help="masked patches, k = 0..steps (default: %(default)s)")
    parser.add_argument("--chunk", type=int, default=64, help="inputs per forward pass (default: %(default)s)")
    args = parser.parse_args()
    quantus_version = f"Quantus {quantus.__version__}" if quantus else f"no Quantus ({QUANTUS_MISSING})"
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {quantus_version}")
    print(f"{args.images} images per model, {args.steps} steps, patch {PATCH}, DC fill, chunks of {args.chunk}; "
          f"all on the models' inference copies (random weights)")
    results = {}
    for name in args.models:
        print()
        results[name] = run_model(name, args.images, args.steps, args.chunk)
    for name in TARGETS:
        if name in results:
            verdicts = [f"{baseline} {'skipped' if results[name][baseline] is None else 'PASS' if results[name][baseline] >= target else 'FAIL'}"
                        for baseline, target in TARGETS[name].items()]
            print(f"\n{MODELS[name]} targets: {', '.join(verdicts)}")


if __name__ == "__main__":
    main()
