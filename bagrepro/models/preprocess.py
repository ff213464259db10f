"""Preprocessing: geometry (resize, crop) and normalisation, the one place for their constants.

A model's :class:`Preprocess` travels with its zoo entry (``ModelSpec.preprocess``). Images travel through bagrepro as float tensors in [0, 1], [B, 3, H, W]: masking, scrambling and
texture synthesis work in that space. A model sees ``preprocess.normalize(images)``. Heatmaps pad with
zeros in normalised space, as the released code does.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torchvision.transforms import v2

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Preprocess:
    """How a model expects its input: resize the shorter side to ``resize`` px, centre-crop ``crop``
    px (None: keep), then normalise per channel with ``mean`` / ``std`` (of [0, 1] values)."""

    resize: int | None = 256
    crop: int | None = 224
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] in [0, 1] -> normalised, same shape."""
        mean = torch.tensor(self.mean, dtype=images.dtype, device=images.device)[:, None, None]
        std = torch.tensor(self.std, dtype=images.dtype, device=images.device)[:, None, None]
        return (images - mean) / std

    def pil_transform(self):
        """PIL RGB image -> float tensor [3, crop, crop] in [0, 1] (no normalisation)."""
        steps = []
        if self.resize is not None:
            steps.append(v2.Resize(self.resize, interpolation=v2.InterpolationMode.BILINEAR, antialias=True))
        if self.crop is not None:
            steps.append(v2.CenterCrop(self.crop))
        steps += [v2.PILToTensor(), v2.ToDtype(torch.float32, scale=True)]
        return v2.Compose(steps)


IMAGENET = Preprocess()
