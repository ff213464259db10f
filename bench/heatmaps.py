"""Dense BagNet-q heatmaps (q = 9, 17, 33): ours against the released per-patch method, on this CPU.

Ours: ``dense_heatmaps`` on ``fuse_bagnet(bagnet(q))``, one 224x224 image, one class (the image's
predicted class). Baseline (paper.md section 2, written here the way the released helper works): zero-
pad the normalised image by (q - 1) / 2, cut all 224 * 224 = 50,176 stride-1 q x q patches, run them
through the plain eager BagNet-q (eval, no_grad) in batches of 1000 and keep the class logit. Ours
costs about the same for every q (whole-image passes); the baseline's patches grow with q^2, so the
ratio is largest for BagNet-33 (the target below is for q = 33; the other ratios are reported).

The full baseline takes about 400 s here for q = 33, so by default it is timed on a fixed random
sample of patches (--samples batches of 1000 after one untimed warm-up batch) and extrapolated
linearly to 50,176 patches: every patch costs one independent forward pass of a q x q input, so the
cost is linear in the number of patches. --full runs and times the whole baseline. Either way our
values are checked against the baseline's on every patch it computed (max |diff| / max |logit| <= 1e-4).

Ours runs in a fresh subprocess (same weights, same thread count) so that its peak memory can be
measured: the increase of the process's peak RSS (``resource.getrusage(RUSAGE_SELF).ru_maxrss``, a
high-water mark) across the first heatmap call, model and image already in memory.

Usage: python bench/heatmaps.py [--q 9 17 33] [--threads N] [--samples 3] [--full]
"""

from __future__ import annotations

import argparse
import os
import pathlib
import resource
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from bagrepro.methods.heatmaps import dense_heatmaps  # noqa: E402
from bagrepro.models.bagnet import BagNet, bagnet, randomise_batchnorm  # noqa: E402
from bagrepro.models.fast import fuse_bagnet  # noqa: E402

SIZE = 224
PATCH_BATCH = 1000  # the released helper's batch size
TARGET_SPEEDUP = 15.0
TOLERANCE = 1e-4


#: the ratio BagNet-33 must reach (the released method is slowest there)
TARGET_Q = 33


def random_bagnet(q: int, seed: int) -> BagNet:
    """BagNet-q with random weights and random, roughly calibrated BatchNorm statistics (eval)."""
    torch.manual_seed(seed)
    return randomise_batchnorm(bagnet(q), seed)


def baseline_patches(padded: torch.Tensor, positions: torch.Tensor, q: int) -> torch.Tensor:
    """The q x q patches of ``padded`` [1, 3, P, P] whose top-left corners are ``positions`` [N, 2]."""
    windows = padded[0].unfold(1, q, 1).unfold(2, q, 1)  # [3, 224, 224, q, q], a view
    return windows[:, positions[:, 0], positions[:, 1]].permute(1, 0, 2, 3).contiguous()


@torch.no_grad()
def baseline_logits(model: BagNet, padded: torch.Tensor, positions: torch.Tensor, cls: int, q: int) -> torch.Tensor:
    """Released method on the given positions, in batches of PATCH_BATCH: [N] class logits."""
    out = []
    for start in range(0, len(positions), PATCH_BATCH):
        patches = baseline_patches(padded, positions[start:start + PATCH_BATCH], q)
        out.append(model(patches)[:, cls])
    return torch.cat(out)


def worker(state_path: str, out_path: str, threads: int | None) -> None:
    """Our method in a fresh process: peak-RSS increase of the first call, then a timed call."""
    if threads:
        torch.set_num_threads(threads)
    saved = torch.load(state_path, weights_only=True)
    model = bagnet(int(saved["q"]))
    model.load_state_dict(saved["state_dict"])
    model.eval()
    image, cls = saved["image"], int(saved["cls"])
    t0 = time.perf_counter()
    fused = fuse_bagnet(model)
    fuse_s = time.perf_counter() - t0
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    heatmap = dense_heatmaps(fused, image, cls)
    first_s = time.perf_counter() - t0
    rss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    times = []
    for _ in range(2):
        t0 = time.perf_counter()
        again = dense_heatmaps(fused, image, cls)
        times.append(time.perf_counter() - t0)
    assert torch.equal(again, heatmap)
    torch.save({"heatmap": heatmap, "fuse_s": fuse_s, "first_s": first_s, "times": times,
                "peak_rss_increase_kb": rss_after - rss_before, "rss_before_kb": rss_before}, out_path)


def compare(q: int, args) -> tuple[float, bool]:
    """One q: our time, the baseline's (extrapolated unless --full), equality; returns (ratio, equal)."""
    model = random_bagnet(q, args.seed)
    image = torch.randn(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(args.seed + 1))
    with torch.no_grad():
        cls = int(model(image).argmax())

    with tempfile.TemporaryDirectory() as tmp:
        state_path, out_path = os.path.join(tmp, "state.pt"), os.path.join(tmp, "ours.pt")
        torch.save({"state_dict": model.state_dict(), "image": image, "cls": cls, "q": q}, state_path)
        command = [sys.executable, str(pathlib.Path(__file__).resolve()), "--worker", state_path, out_path]
        if args.threads:
            command += ["--threads", str(args.threads)]
        subprocess.run(command, check=True)
        ours = torch.load(out_path, weights_only=True)
    heatmap = ours["heatmap"][0, 0]
    ours_s = min(ours["times"])
    print(f"BagNet-{q} ours: fuse_bagnet {ours['fuse_s']:.2f} s (once per model); dense_heatmaps first call "
          f"{ours['first_s']:.2f} s, then {', '.join(f'{t:.2f}' for t in ours['times'])} s "
          f"-> {ours_s:.2f} s per image (best of 2); peak RSS increase during the first call "
          f"{ours['peak_rss_increase_kb'] / 1024:.0f} MiB (fresh subprocess; {ours['rss_before_kb'] / 1024:.0f} MiB "
          f"before the call)")

    total = SIZE * SIZE
    pad = (q - 1) // 2
    padded = F.pad(image, (pad, pad, pad, pad))
    grid = torch.stack(torch.meshgrid(torch.arange(SIZE), torch.arange(SIZE), indexing="ij"), -1).reshape(-1, 2)
    if args.full:
        t0 = time.perf_counter()
        values = baseline_logits(model, padded, grid, cls, q)
        base_s = time.perf_counter() - t0
        checked = grid
        print(f"BagNet-{q} baseline: all {total} patches in {base_s:.1f} s (measured)")
    else:
        order = torch.randperm(total, generator=torch.Generator().manual_seed(args.seed + 2))
        needed = (args.samples + 1) * PATCH_BATCH
        warm, timed = grid[order[:PATCH_BATCH]], grid[order[PATCH_BATCH:needed]]
        warm_values = baseline_logits(model, padded, warm, cls, q)  # untimed warm-up batch
        t0 = time.perf_counter()
        timed_values = baseline_logits(model, padded, timed, cls, q)
        measured = time.perf_counter() - t0
        base_s = measured * total / len(timed)
        values = torch.cat([warm_values, timed_values])
        checked = grid[order[:needed]]
        print(f"BagNet-{q} baseline: {len(timed)} random patches in {measured:.2f} s "
              f"({1000 * measured / len(timed):.2f} ms per patch, after a warm-up batch of {PATCH_BATCH}); "
              f"extrapolated linearly to {total} patches: {base_s:.1f} s")

    ours_values = heatmap[checked[:, 0], checked[:, 1]]
    scale = values.abs().max().item()
    rel = (ours_values - values).abs().max().item() / scale
    print(f"BagNet-{q} equality on {len(checked)} patches: max |diff| / max |logit| = {rel:.2e} -> "
          f"{'PASS' if rel <= TOLERANCE else 'FAIL'} (<= {TOLERANCE:g})")
    ratio = base_s / ours_s
    print(f"BagNet-{q} speed: ours {ours_s:.2f} s, baseline {base_s:.1f} s{'' if args.full else ' (extrapolated)'}, "
          f"ratio {ratio:.1f}x")
    return ratio, rel <= TOLERANCE


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--q", type=int, nargs="+", default=[9, 17, 33], choices=[9, 17, 33])
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's default)")
    parser.add_argument("--samples", type=int, default=3, help="timed baseline batches of 1000 patches")
    parser.add_argument("--full", action="store_true", help="run the whole baseline (about 400 s here for q = 33)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--worker", nargs=2, metavar=("STATE", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(*args.worker, args.threads)
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, random weights, one {SIZE}x{SIZE} image, "
          f"one class")
    results = {q: compare(q, args) for q in args.q}
    print("dense heatmaps vs the released per-patch method, ratio of times (measured in this run):")
    for q, (ratio, equal) in results.items():
        target = f" (target >= {TARGET_SPEEDUP:g}x: {'PASS' if ratio >= TARGET_SPEEDUP else 'FAIL'})" if q == TARGET_Q else ""
        print(f"  BagNet-{q}: {ratio:.1f}x{target}{'' if equal else ' VALUES DIFFER'}")
    ok = all(equal for _, equal in results.values()) and results.get(TARGET_Q, (TARGET_SPEEDUP, True))[0] >= TARGET_SPEEDUP
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
