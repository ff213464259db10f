"""Time per image of each white-box attribution method (bagrepro.methods.attribution); informational.

Cases: the smoke ResNet-50 stand-in at 64 px, batch 8, and torchvision's VGG-16 (1000 classes, random
weights) at 224 px, batch 2 (skipped with --quick). Integrated Gradients uses --ig-steps (100, as in
the paper) with the default bounded internal batch. The paper's four methods (attribution.METHODS)
are timed; the passes per image printed are each registered method's ``passes`` (Saliency 1 forward +
1 backward, Integrated Gradients ig_steps of each, eps-LRP 1 + 1, DeepLIFT 2 forward (reference,
image) + 1 backward: the zero reference is shared by the batch, so its forward runs once per batch).

Each case first runs every method once untimed (IG with 2 steps) to warm up, then times one call per
method on one fixed random batch; the time per image is that call's wall time / batch size.

Usage: python bench/attribution.py [--quick] [--threads N] [--device cpu|cuda] [--ig-steps 100]
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
import torchvision  # noqa: E402

from bagrepro.methods.attribution import METHODS, attribute, get_attribution  # noqa: E402
from bagrepro.models import create_model  # noqa: E402


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_case(label: str, model: torch.nn.Module, size: int, batch: int, ig_steps: int, device: torch.device) -> None:
    model = model.to(device).eval()
    gen = torch.Generator().manual_seed(0)
    images = torch.randn(batch, 3, size, size, generator=gen).to(device)
    targets = torch.randint(0, 10, (batch,), generator=gen).to(device)
    for method in METHODS:  # warm-up (allocators, kernel selection, captum imports)
        attribute(model, images, targets, method, ig_steps=2)
    print(f"\n{label}: {size} px, batch {batch}, {device}, {torch.get_num_threads()} threads")
    print(f"  {'method':<22}{'passes per image':<46}{'s / image':>10}")
    for method in METHODS:
        _sync(device)
        start = time.perf_counter()
        attribute(model, images, targets, method, ig_steps=ig_steps)
        _sync(device)
        per_image = (time.perf_counter() - start) / batch
        passes = get_attribution(method).passes.replace("n ", f"{ig_steps} ")
        print(f"  {method:<22}{passes:<46}{per_image:>10.4f}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="skip VGG-16 at 224 px")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's default)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--ig-steps", type=int, default=100)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    time_case("smoke_resnet50", create_model("smoke_resnet50"), 64, 8, args.ig_steps, device)
    if not args.quick:
        torch.manual_seed(0)
        time_case("vgg16 (torchvision, random weights)", torchvision.models.vgg16(num_classes=1000), 224, 2,
                  args.ig_steps, device)


if __name__ == "__main__":
    main()
