"""JPEG decoding throughput: how fast this machine's cores turn ImageNet-sized files into model inputs.

    python bench/decode.py [--images 400] [--workers 0 1 2]

Writes ``--images`` JPEGs of ImageNet's typical size (500 x 375, quality 90, smooth random content
with noise, about 100 KB each) into a temporary folder, then reads them the way every file-backed
run does (:class:`bagrepro.data.imagesets.FileImageSet`: decode, resize the shorter side to 256,
centre-crop 224, batches of 64) with each number of DataLoader worker processes, one untimed pass
first (the page cache then holds the files, as it would on a second pass over ImageNet). Prints
images/s per worker count and the time one pass over the 50,000 validation images would take at
that rate: the bound on how fast a GPU can be fed by this machine.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from bagrepro.data.imagenet import image_folder  # noqa: E402
from bagrepro.data.imagesets import FileImageSet, default_workers  # noqa: E402
from bagrepro.models.preprocess import IMAGENET  # noqa: E402

IMAGENET_VAL = 50_000


def write_jpegs(root: Path, count: int) -> None:
    rng = np.random.default_rng(0)
    rows, cols = np.mgrid[0:375, 0:500] / 100.0
    for index in range(count):
        folder = root / f"class{index % 10}"
        folder.mkdir(parents=True, exist_ok=True)
        phase = rng.random((3, 1, 1)) * 6
        image = 0.5 + 0.3 * np.sin(rows[None] * (1 + phase) + cols[None] * phase) + 0.1 * rng.standard_normal((3, 375, 500))
        pixels = (np.clip(image, 0, 1).transpose(1, 2, 0) * 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"{index:05d}.JPEG", quality=90)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=400)
    parser.add_argument("--workers", type=int, nargs="+", default=sorted({0, 1, default_workers()}))
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        write_jpegs(root, args.images)
        size = sum(p.stat().st_size for p in root.rglob("*.JPEG")) / args.images / 1024
        print(f"{args.images} JPEGs of 500x375 px, {size:.0f} KB each; resize 256, crop 224; batches of 64")
        for workers in args.workers:
            images = FileImageSet(image_folder(root), IMAGENET.pil_transform(), "bench", workers=workers)
            for _ in images.batches(64):  # untimed: files into the page cache, workers started once
                pass
            start = time.perf_counter()
            seen = sum(len(batch) for batch, _, _ in images.batches(64))
            rate = seen / (time.perf_counter() - start)
            print(f"workers {workers}: {rate:6.0f} images/s; 50,000 images in {IMAGENET_VAL / rate / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
