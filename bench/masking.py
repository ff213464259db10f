"""The masking engine (Fig. 8) against a per-image, per-step loop, on the same models, heatmaps and images.

Baseline: what attribution-evaluation toolkits do (Quantus' RegionPerturbation style): for every image
and every masking step, build the masked image and run one forward pass of the model as built. Ours:
what the masking experiment runs, ``bagrepro.masking.masking_curves`` (all (image, step) pairs
flattened and evaluated in chunked batches) on the model's inference copy
(``bagrepro.models.fast.fuse_for_inference``: BatchNorm folded, channels-last). Also printed: the
engine on the model as built, to show what batching alone gives. All give the probability of the
leading class after k = 0..steps masked 8x8 patches (DC fill); the curves must be identical
(max |diff| <= 1e-5) and ours at least 5x faster over all models together (total baseline time /
total time of ours). Default models: the smoke ResNet-50 stand-in at 64 px and the demo profile's
tested models at the demo world's 121 px, random weights with calibrated BatchNorm.

Where the target is missed (README, "Exact BagNet heatmaps", has the figures): the engine saves
per-call overhead, not arithmetic; every (image, step) still needs its own full forward pass. On two
CPU cores a VGG's full-resolution convolutions are compute-bound already at batch 1, so batching
gains little there; models of many small layers (ResNet, DenseNet) gain 4-10x.

Usage: python bench/masking.py [--models smoke_resnet50 demo_vgg16 ...] [--images 8] [--steps 40] [--chunk 128]
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from bagrepro.masking import (fill_values, grid_shape, masking_curves, patch_masks_to_pixels,  # noqa: E402
                              ranks_from_scores)
import bagrepro.demo.plugin  # noqa: E402,F401  (registers the demo zoo)
from bagrepro.models import create_model  # noqa: E402
from bagrepro.models.bagnet import randomise_batchnorm  # noqa: E402
from bagrepro.models.fast import fuse_for_inference  # noqa: E402

TARGET = 5.0
#: model -> input size (px): the smoke stand-in, and the demo profile's tested models at the demo world's size
MODELS = {"smoke_resnet50": 64, "demo_vgg16": 121, "demo_resnet50": 121, "demo_densenet169": 121}


@torch.inference_mode()
def per_step_loop(model, images, ranks, leading, steps, patch=8):
    """One forward pass per image and masking step."""
    fills = fill_values(images, patch, "dc")
    curves = torch.zeros(len(images), steps + 1)
    for b in range(len(images)):
        for k in range(steps + 1):
            pixels = patch_masks_to_pixels(ranks[b:b + 1] < k, *images.shape[-2:], patch)
            masked = torch.where(pixels, fills[b:b + 1], images[b:b + 1])
            curves[b, k] = model(masked).softmax(1)[0, leading[b]]
    return curves


def time_it(function):
    start = time.perf_counter()
    result = function()
    return result, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--chunk", type=int, default=128)
    args = parser.parse_args()
    print(f"{args.images} images per model, k = 0..{args.steps}, chunks of {args.chunk}; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    totals = {"loop": 0.0, "engine": 0.0, "ours": 0.0}
    worst = 0.0
    for name in args.models:
        size = MODELS.get(name, 64)
        torch.manual_seed(0)
        model = randomise_batchnorm(create_model(name), seed=0, calibration_size=size)
        fast = fuse_for_inference(model)
        images = torch.randn(args.images, 3, size, size)
        patches = grid_shape(size, size, 8)
        ranks = ranks_from_scores(torch.randn(args.images, patches[0] * patches[1]))
        with torch.inference_mode():
            leading = model(images).argmax(1)
        steps = min(args.steps, patches[0] * patches[1])
        for warm in (model, fast):
            masking_curves(warm, images[:1], ranks[:1], leading[:1], 2, chunk_size=args.chunk)
        ours, ours_s = time_it(lambda: masking_curves(fast, images, ranks, leading, steps, chunk_size=args.chunk))
        engine, engine_s = time_it(lambda: masking_curves(model, images, ranks, leading, steps, chunk_size=args.chunk))
        baseline, loop_s = time_it(lambda: per_step_loop(model, images, ranks, leading, steps))
        difference = max((ours - baseline).abs().max().item(), (engine - baseline).abs().max().item())
        worst = max(worst, difference)
        for key, seconds in (("loop", loop_s), ("engine", engine_s), ("ours", ours_s)):
            totals[key] += seconds
        print(f"  {name:<18} {size} px, {args.images * (steps + 1)} forward passes: per-step loop {loop_s:6.2f} s, "
              f"engine on the model as built {engine_s:6.2f} s ({loop_s / engine_s:4.1f}x), ours {ours_s:6.2f} s "
              f"({loop_s / ours_s:4.1f}x); max |diff| {difference:.1e}")
    ratio = totals["loop"] / totals["ours"]
    print(f"identical curves: max |diff| = {worst:.2e} -> {'PASS' if worst <= 1e-5 else 'FAIL'}")
    print(f"batching alone: {totals['loop'] / totals['engine']:.1f}x")
    print(f"speed ratio {ratio:.1f}x -> {'PASS' if ratio >= TARGET else 'FAIL'} (target >= {TARGET:.0f}x)")


if __name__ == "__main__":
    main()
