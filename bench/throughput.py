"""BagNet-33 inference throughput: the fused path against the plain eager model, and ResNet-50.

Ours: ``fuse_bagnet`` (BatchNorm folded, stem composed, channels-last weights), channels-last input,
``torch.inference_mode``. Baseline: the plain eager BagNet-33, ``model.eval()`` under
``torch.no_grad()`` (how the released code runs it). Both have the same random weights with random,
roughly calibrated BatchNorm statistics. ResNet-50 (torchvision, random weights, eval, no_grad, same
batch) is the paper's comparison (Sec. 4.1: BagNet-33 / ResNet-50 = 0.27 images/s on a GPU).

One process, one warm-up batch per model, then the models are measured in turn, alternating,
``--repeats`` times; the median time per model is reported. Outputs of ours and the eager model are
checked equal (max |diff| <= 1e-4 * max |logit|).

Usage: python bench/throughput.py [--batch-size 64] [--size 224] [--repeats 3] [--threads N]
"""

from __future__ import annotations

import argparse
import pathlib
import statistics
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import torchvision  # noqa: E402

from bagrepro.models.bagnet import BagNet, bagnet, randomise_batchnorm  # noqa: E402
from bagrepro.models.fast import fuse_bagnet  # noqa: E402

TARGET_SPEEDUP = 1.2
TOLERANCE = 1e-4
PAPER_RATIO = 0.27


def random_bagnet33(seed: int) -> BagNet:
    """BagNet-33 with random weights and random, roughly calibrated BatchNorm statistics (eval)."""
    torch.manual_seed(seed)
    return randomise_batchnorm(bagnet(33), seed)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's default)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch_size}, "
          f"{args.size}x{args.size}, {args.repeats} repeats after one warm-up batch each")

    eager = random_bagnet33(args.seed)
    fused = fuse_bagnet(eager)
    torch.manual_seed(args.seed + 1)
    resnet = torchvision.models.resnet50().eval()
    x = torch.randn(args.batch_size, 3, args.size, args.size,
                    generator=torch.Generator().manual_seed(args.seed + 2))
    x_cl = x.contiguous(memory_format=torch.channels_last)

    def run_eager():
        with torch.no_grad():
            return eager(x)

    def run_ours():
        with torch.inference_mode():
            return fused(x_cl)

    def run_resnet():
        with torch.no_grad():
            return resnet(x)

    runs = {"BagNet-33 eager": run_eager, "BagNet-33 ours": run_ours, "ResNet-50": run_resnet}
    outputs = {name: fn() for name, fn in runs.items()}  # warm-up
    times = {name: [] for name in runs}
    for _ in range(args.repeats):
        for name, fn in runs.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)

    scale = outputs["BagNet-33 eager"].abs().max().item()
    rel = (outputs["BagNet-33 ours"] - outputs["BagNet-33 eager"]).abs().max().item() / scale
    rates = {}
    for name, ts in times.items():
        rates[name] = args.batch_size / statistics.median(ts)
        print(f"{name:16s} {rates[name]:7.2f} img/s (median of {', '.join(f'{t:.2f}' for t in ts)} s per batch)")
    print(f"equality ours vs eager: max |diff| / max |logit| = {rel:.2e} -> "
          f"{'PASS' if rel <= TOLERANCE else 'FAIL'} (<= {TOLERANCE:g})")
    speedup = rates["BagNet-33 ours"] / rates["BagNet-33 eager"]
    print(f"ours / eager: {speedup:.2f}x -> {'PASS' if speedup >= TARGET_SPEEDUP else 'FAIL'} "
          f"(target >= {TARGET_SPEEDUP:g}x)")
    print(f"BagNet-33 / ResNet-50: eager {rates['BagNet-33 eager'] / rates['ResNet-50']:.3f}, "
          f"ours {rates['BagNet-33 ours'] / rates['ResNet-50']:.3f} (paper, GPU: {PAPER_RATIO})")
    return 0 if rel <= TOLERANCE and speedup >= TARGET_SPEEDUP else 1


if __name__ == "__main__":
    sys.exit(main())
