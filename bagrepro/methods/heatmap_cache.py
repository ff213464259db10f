"""A disk cache of exact BagNet heatmaps, keyed by everything that determines them.

Key: model name, its weights (provenance string with hash), the image id, the preprocessing, the
image size and the class. Values: float32 compressed arrays [H, W] under
``cache_dir()/heatmaps/<model>/<key>.npz``. Used by the figure experiments, which ask for the same
(image, class) heatmaps again across runs; never written into CSVs.
"""

from __future__ import annotations

import sys
import zipfile

import numpy as np
import torch

from bagrepro.core.cache import cache_dir, config_hash
from bagrepro.core.errors import one_line
from bagrepro.methods.heatmaps import dense_heatmaps
from bagrepro.core.atomic import atomic_path


def _path(model, image_id: str, size: tuple[int, int], target: int):
    spec = model.zoo_spec
    key = config_hash(spec.name, model.weights_source, spec.preprocess, image_id, list(size), int(target))
    return cache_dir() / "heatmaps" / spec.name / f"{key}.npz"


def _load(path, size: tuple[int, int]) -> torch.Tensor | None:
    """The cached heatmap [H, W], or None when it is missing; a damaged file (truncated, corrupted, of
    the wrong shape) is reported in one line, removed and computed again."""
    if not path.is_file():
        return None
    try:
        with np.load(path) as arrays:
            heatmap = torch.from_numpy(arrays["heatmap"])
        if tuple(heatmap.shape) != size:
            raise ValueError(f"shape {tuple(heatmap.shape)} instead of {size}")
        return heatmap
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as error:
        print(f"[heatmaps] cached heatmap {path} is damaged ({one_line(error, 120) or type(error).__name__}): "
              f"computing it again", file=sys.stderr)
        path.unlink(missing_ok=True)
        return None


def cached_heatmaps(model, images: torch.Tensor, image_ids: list[str], targets: torch.Tensor) -> torch.Tensor:
    """Stride-1 heatmaps [B, H, W] (float32) of ``targets`` [B] for images [B, 3, H, W] in [0, 1].

    ``model``: a (fused) BagNet from the zoo (carries ``zoo_spec`` and ``weights_source``). Only the
    missing (or damaged) ones are computed, in one batched dense pass.
    """
    size = tuple(images.shape[-2:])
    paths = [_path(model, i, size, t) for i, t in zip(image_ids, targets.tolist())]
    out = torch.empty(len(paths), *size)
    missing = []
    for b, path in enumerate(paths):
        heatmap = _load(path, size)
        if heatmap is None:
            missing.append(b)
        else:
            out[b] = heatmap
    if missing:
        index = torch.tensor(missing)
        inputs = model.zoo_spec.preprocess.normalize(images[index])
        fresh = dense_heatmaps(model, inputs, targets=targets[index].to(inputs.device))[:, 0].cpu()
        for b, heatmap in zip(missing, fresh):
            with atomic_path(paths[b]) as temporary:
                with open(temporary, "wb") as handle:
                    np.savez_compressed(handle, heatmap=heatmap.numpy())
            out[b] = heatmap
    return out
