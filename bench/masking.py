"""Incremental masking curves against our batched engine and Quantus, on full-size models at 224 px.

What is measured: the masking curves of Fig. 8 / Table 1 (the probability of the leading class after
the k best-ranked 8x8 patches are masked, k = 0..100, each masked patch replaced by its DC value, the
per-channel mean of the patch) for full-size torchvision VGG-16, ResNet-50 and DenseNet-169 at 224 px
(random weights, BatchNorm calibrated by ``randomise_batchnorm``; no downloads), on the same images,
ranks and leading classes per model, three ways:

- incremental (ours, new): :func:`bagrepro.methods.masking.incremental_masking_curves`, which keeps every
  image's activations and recomputes per step only the window the newly masked patch reaches
  (:class:`bagrepro.methods.incremental.IncrementalModel`);
- engine (ours, current): :func:`bagrepro.methods.masking.batched_masking_curves`, every (image, k) pair a
  full forward pass, in chunks of ``--chunk`` inputs;
- Quantus 0.6 ``RegionPerturbation`` doing the same work (an optional dependency: without it, that
  ratio is skipped with one line saying why). Set up from its source: patch_size=8 and no padding
  (224 is a multiple of 8), so its patch grid is ours, numbered row by row as ours. order="morf" ranks
  the patches by argsort(-sum of ``a_batch`` over the patch and all channels); ``a_batch`` [B, 1, H, W]
  is constant within each patch and equal to the patch's score, the scores a random permutation of
  0..P-1 per image, so the sums (192 x an integer, exact in float32) are distinct (no ties) and are
  checked to give exactly our ranks; normalise=False, abs=False leave them as they are. No Quantus
  baseline is the DC value (its "mean", with the batched default perturb_func, is the mean of the whole
  image over all channels and pixels), so ``perturb_func`` is :func:`dc_replacement_by_indices` below:
  the per-channel mean of the indexed patch, computed as ours is (bitwise the same fill values).
  Quantus masks one more patch per step, cumulatively (a fixed grid: patches never overlap, none is
  skipped), and returns per image d_k = p(clean) - p(after k patches) for k = 1..regions_evaluation
  (softmax=True: it appends a Softmax to the model). batch_size=--chunk: all images of a step in one
  forward pass.

All three run the model's inference copy (:func:`bagrepro.models.fast.fuse_for_inference`: BatchNorm
folded, channels-last), Quantus too (it wraps the torch module itself), so the comparison is like for
like. Each method is warmed up on one image with 2 steps, then timed on the whole run (for Quantus,
the metric call only). Printed per model: the time ratios engine / incremental and Quantus /
incremental; the share of a full forward pass's conv/linear multiply-adds recomputed per step and the
first layer computed whole (``IncrementalModel.summary()``); how far masking moves the curves (the
scale for what follows); max |incremental - engine| (tolerance 1e-5); and max |Quantus - engine| with
the Quantus curve p_k = p_0 - d_k, k = 1..steps (Quantus does not return p_0, the clean probability:
it is the engine's k = 0, so this compares Quantus' d_k with the engine's p_0 - p_k; same tolerance).

Targets, VGG-16 only: incremental >= 3x the engine and >= 5x Quantus (PASS/FAIL). ResNet-50 and
DenseNet-169: the same numbers, no target.

Measured (2 CPU cores, idle machine, 100 steps; ratios incremental vs engine / vs Quantus):
VGG-16, 4 images: 6.5x / 6.7x; 8 images: 6.6x / 6.4x and, in a second run, 6.3x / 5.8x (4 images
are as good as 8 here). ResNet-50, 4 images: 2.1x / 1.8x; 8 images: 1.8x / 1.7x and 2.2x / 1.6x.
DenseNet-169, 4 images: 1.2x / 0.9x; 8 images: 2.1x / 1.5x and 1.5x / 0.9x (its many small layers
make a step's cost largely per-operation overhead, which the ``lanes`` images stepping together
share: 9.3 s of incremental time per image with 4 images, 5.8-7.6 s with 8). So the default is 8
images, the smallest number representative for all three models; run-to-run spread is about 10%
(VGG-16) to 30% (DenseNet-169). FLOPs recomputed per step: VGG-16 14%, ResNet-50 47%, DenseNet-169
59%. All curves agreed: incremental = engine exactly (max |diff| 0), Quantus to float rounding
(<= 1.5e-8; in tiny runs of 2 images, where the batch sizes, and so the convolutions' rounding,
differ, both reach 3-5e-6 on ResNet-50: within 1e-5, but not by much). Note that torchvision's
VGG-16 has no BatchNorm, so with random weights its softmax is nearly uniform (p ~ 1/1000) and
masking moves it by only ~2e-5: the printed scale says how much the 1e-5 tolerance means there.

Run it on an idle machine: the incremental method runs many small operations, and when another process
holds a core, each of them waits for a time slice of the second thread (about 7 ms measured), so its
ratios collapse (VGG-16 with 4 images measured 2.4x next to another job).

Usage: python bench/masking.py [--models vgg16 resnet50 densenet169] [--images 8] [--steps 100] [--chunk 64]
(about 15 minutes on 2 CPU cores with the defaults)
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

from bagrepro.methods.incremental import IncrementalModel  # noqa: E402
from bagrepro.methods.masking import (batched_masking_curves, grid_positions, grid_shape,  # noqa: E402
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
    C-major, row-major order, so they reshape to [B, C, patch, patch]). Patches never overlap and each
    is masked once, so the patch still holds its clean values here. The mean is torch's 8x8
    ``avg_pool2d``, as in :func:`bagrepro.methods.masking.fill_values`, so the fill values are bitwise ours
    (NumPy's float32 mean differs by an ulp, which the networks amplify to ~1e-5 in probability).
    Returns a new [B, C*H*W] array.
    """
    if perturb_baseline != "dc":
        raise ValueError(f"dc_replacement_by_indices fills with the DC value, not '{perturb_baseline}'")
    perturbed = arr.copy()
    lanes = np.arange(arr.shape[0])[:, None]
    patch = torch.from_numpy(arr[lanes, indices].reshape(arr.shape[0], CHANNELS, PATCH, PATCH))
    dc = torch.nn.functional.avg_pool2d(patch, PATCH).expand_as(patch)  # [B, C, patch, patch]
    perturbed[lanes, indices] = dc.reshape(arr.shape[0], -1).numpy()
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


def verdict(name: str, baseline: str, ratio: float | None) -> str:
    """'PASS'/'FAIL' against the model's target for ``baseline``, 'skipped' without a ratio, or 'no target'."""
    target = TARGETS.get(name, {}).get(baseline)
    if ratio is None:
        return "skipped"
    if target is None:
        return "no target"
    return f"{'PASS' if ratio >= target else 'FAIL'} (target >= {target:.0f}x)"


def agreement(difference: float) -> str:
    return f"{difference:.1e} -> {'PASS' if difference <= TOLERANCE else 'FAIL'} (tolerance {TOLERANCE:.0e})"


def run_model(name: str, count: int, steps: int, chunk: int) -> dict:
    """Times the three methods on one model and prints its block; returns {baseline: time ratio
    baseline / incremental} (None where Quantus is missing)."""
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

    methods = {"incremental": incremental, "engine": engine}
    if quantus:
        methods["quantus"] = quantus_run
    for method in methods.values():
        method(1, 2)  # warm-up: one image, 2 steps
    results, seconds = {}, {}
    for method_name, method in methods.items():
        results[method_name], seconds[method_name] = timed(method)
    summary = flop_summary(model, images)
    ratios = {baseline: seconds[baseline] / seconds["incremental"] if baseline in seconds else None
              for baseline in ("engine", "quantus")}

    timings = ", ".join(f"{method_name} {value:.1f} s" for method_name, value in seconds.items())
    print(f"{MODELS.get(name, name)} ({name}), {SIZE} px, {count} images, k = 0..{steps}: {timings}")
    print(f"incremental vs engine: {ratios['engine']:.1f}x")
    print(f"  {verdict(name, 'engine', ratios['engine'])}")
    if quantus:
        print(f"incremental vs quantus: {ratios['quantus']:.1f}x")
        print(f"  {verdict(name, 'quantus', ratios['quantus'])}")
    else:
        print(f"incremental vs quantus: skipped (quantus not importable: {QUANTUS_MISSING})")
    print(f"  FLOPs recomputed per step: {summary['flop_share']:.1%} of a full forward pass; "
          f"first layer computed whole: {summary['first_full_layer']}")

    engine_curves = results["engine"].double()  # [B, steps + 1]
    movement = (engine_curves[:, 1:] - engine_curves[:, :1]).abs().max().item()
    print(f"  curves: p_0 in [{engine_curves[:, 0].min().item():.2e}, {engine_curves[:, 0].max().item():.2e}], "
          f"max |p_k - p_0| = {movement:.1e} (how far masking moves them: the scale of the differences below)")
    ours_difference = (results["incremental"].double() - engine_curves).abs().max().item()
    print(f"  identical curves: max |incremental - engine| = {agreement(ours_difference)}")
    if quantus:
        quantus_curves = engine_curves[:, :1].numpy() - results["quantus"]  # p_k = p_0 - d_k, k = 1..steps
        quantus_difference = float(np.abs(quantus_curves - engine_curves[:, 1:].numpy()).max())
        print(f"  Quantus curve p_k = p_0 - d_k (k = 1..{steps}, p_0 the engine's): "
              f"max |Quantus - engine| = {agreement(quantus_difference)}")
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
            verdicts = [f"vs {baseline} {verdict(name, baseline, ratio)}" for baseline, ratio in results[name].items()]
            print(f"\n{MODELS[name]} targets: {'; '.join(verdicts)}")

if __name__ == "__main__":
    main()
