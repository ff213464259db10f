"""The masking engine (Fig. 8) against a per-image, per-step loop, on the same model, heatmaps and images.

Baseline: what attribution-evaluation toolkits do (Quantus' RegionPerturbation style): for every image
and every masking step, build the masked image and run one forward pass. Ours:
``bagrepro.masking.masking_curves``: all (image, step) pairs flattened and evaluated in chunked
batches. Both give the probability of the leading class after k = 0..steps masked 8x8 patches
(DC fill); the curves must be identical (max |diff| <= 1e-5) and ours at least 5x faster.

Usage: python bench/masking.py [--model smoke_resnet50] [--images 8] [--size 64] [--steps 40] [--chunk 128]
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
from bagrepro.models import create_model  # noqa: E402
from bagrepro.models.bagnet import randomise_batchnorm  # noqa: E402

TARGET = 5.0


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smoke_resnet50")
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--chunk", type=int, default=128)
    args = parser.parse_args()
    torch.manual_seed(0)
    model = randomise_batchnorm(create_model(args.model), seed=0, calibration_size=args.size)
    images = torch.randn(args.images, 3, args.size, args.size)
    patches = grid_shape(args.size, args.size, 8)
    ranks = ranks_from_scores(torch.randn(args.images, patches[0] * patches[1]))
    with torch.inference_mode():
        leading = model(images).argmax(1)
    steps = min(args.steps, patches[0] * patches[1])
    masking_curves(model, images[:1], ranks[:1], leading[:1], 2, chunk_size=args.chunk)  # warm-up
    start = time.perf_counter()
    ours = masking_curves(model, images, ranks, leading, steps, chunk_size=args.chunk)
    ours_s = time.perf_counter() - start
    start = time.perf_counter()
    baseline = per_step_loop(model, images, ranks, leading, steps)
    baseline_s = time.perf_counter() - start
    difference = (ours - baseline).abs().max().item()
    ratio = baseline_s / ours_s
    print(f"{args.model}, {args.images} images of {args.size} px, k = 0..{steps}: "
          f"{args.images * (steps + 1)} forward passes each way, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    print(f"per-step loop {baseline_s:.2f} s, ours (chunks of {args.chunk}) {ours_s:.2f} s")
    print(f"identical curves: max |diff| = {difference:.2e} -> {'PASS' if difference <= 1e-5 else 'FAIL'}")
    print(f"speed ratio {ratio:.1f}x -> {'PASS' if ratio >= TARGET else 'FAIL'} (target >= {TARGET:.0f}x)")


if __name__ == "__main__":
    main()
