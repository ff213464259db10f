"""Patches of the native BagNet grid: streaming top-k over a data set, and crops at the receptive field.

Patch (i, j) of a BagNet-q covers input rows [8i, 8i+q) and columns [8j, 8j+q).
"""

from __future__ import annotations

import torch

from bagrepro.models.bagnet import BAGNET_STRIDE


class RunningTopK:
    """The k largest scores per row seen so far, with an integer record per score.

    Memory is rows x k whatever the number of updates: each update merges the new candidates with the
    kept ones and keeps the k best (torch.topk), so a data set streams through without keeping its
    heatmaps. Rows are independent (e.g. class x {same class, other classes}).
    """

    def __init__(self, rows: int, k: int, record_width: int):
        self.values = torch.full((rows, k), -torch.inf, dtype=torch.float64)
        self.records = torch.full((rows, k, record_width), -1, dtype=torch.long)

    def update(self, scores: torch.Tensor, records: torch.Tensor) -> None:
        """scores [rows, N] (-inf where a candidate does not belong to a row); records [N, width]."""
        values = torch.cat([self.values, scores.double().cpu()], 1)
        candidates = torch.cat([self.records, records.cpu().expand(len(scores), -1, -1)], 1)
        best = values.topk(self.values.shape[1], dim=1)
        self.values = best.values
        self.records = candidates.gather(1, best.indices[..., None].expand(-1, -1, candidates.shape[-1]))


def patch_records(batch_offset: int, batch: int, height: int, width: int) -> torch.Tensor:
    """[(B*h*w), 3] records (image index in the data set, i, j) in the flattening order of [B, h, w]."""
    image = torch.arange(batch_offset, batch_offset + batch)
    grid = torch.cartesian_prod(image, torch.arange(height), torch.arange(width))
    return grid


def crop_patches(images: torch.Tensor, positions: torch.Tensor, q: int) -> torch.Tensor:
    """Crop the q x q receptive field of native patches: images [N, 3, H, W], positions [N, 2] (i, j)
    -> [N, 3, q, q]. Batched with unfold-free indexing."""
    offsets = torch.arange(q)
    rows = positions[:, 0, None] * BAGNET_STRIDE + offsets  # [N, q]
    cols = positions[:, 1, None] * BAGNET_STRIDE + offsets
    n = torch.arange(len(images))[:, None, None]
    return images[n, :, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)
