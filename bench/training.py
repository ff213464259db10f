"""Training cost per model with ``--train``'s loop: seconds per image, per step, and per 15-scene epoch.

    python bench/training.py                                   # the fine-tune zoo at 224 px
    python bench/training.py --image-size 48 --models smoke_bagnet9 smoke_resnet50 ...

Each model is trained by :func:`bagrepro.methods.training.fit` (the loop ``run_all.py --train`` uses:
channels-last, deterministic algorithms, SGD, random crops of images resized to image_size / 0.875,
flips) for one epoch over ``--images`` random images with BatchNorm recalibration off, from random
weights (fine-tuning costs the same per step: only the start differs). The first step is timed
apart (allocations, one-time set-up) and left out of the rate. The last column extrapolates the
rate to one epoch of the reproducibility report's 15-scene train split (1200 images): a projection
from the steps measured here, not a measured epoch.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from bagrepro.models import get_spec  # noqa: E402
from bagrepro.core.recipe import FINETUNE_RECIPE, resized_side  # noqa: E402
from bagrepro.methods.training import TrainingImages, fit  # noqa: E402
from bagrepro.harness.tuning import FINETUNE_ZOO  # noqa: E402

SCENE15_TRAIN_IMAGES = 1200


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(FINETUNE_ZOO))
    parser.add_argument("--image-size", type=int, default=FINETUNE_RECIPE.image_size)
    parser.add_argument("--images", type=int, default=24, help="images per timed epoch")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--classes", type=int, default=15)
    args = parser.parse_args(argv)

    side = resized_side(args.image_size)
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (args.images, side, side, 3), dtype=torch.uint8, generator=generator)
    labels = torch.arange(args.images) % args.classes
    data = TrainingImages(images, labels, crop=args.image_size)
    recipe = dataclasses.replace(FINETUNE_RECIPE, epochs=1, batch_size=args.batch_size, image_size=args.image_size,
                                 bn_recalibration_images=0)
    steps = args.images // args.batch_size
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {args.images} images of {args.image_size} px "
          f"(from {side} px), batch {args.batch_size}, {steps} steps per model")
    print(f"{'model':<20} {'first step s':>12} {'s/step':>8} {'s/image':>8} {'s/15-scene epoch':>17}")
    for name in args.models:
        spec = get_spec(name)
        stamps: list[float] = []

        class Timed(torch.nn.Module):  # a clock after every training step's forward pass
            def __init__(self):
                super().__init__()
                self.inner = spec.builder(num_classes=args.classes)

            def forward(self, x):
                stamps.append(time.perf_counter())
                return self.inner(x)

        fit(Timed, data, recipe, spec.preprocess.normalize, progress=False)
        end = time.perf_counter()
        # step i runs from stamps[i] to stamps[i + 1] (the last one to the end of fit)
        bounds = stamps[:steps] + [end]
        first = bounds[1] - bounds[0]
        rest = (bounds[-1] - bounds[1]) / max(1, steps - 1)
        per_image = rest / args.batch_size
        print(f"{name:<20} {first:12.2f} {rest:8.2f} {per_image:8.3f} {per_image * SCENE15_TRAIN_IMAGES:17.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
