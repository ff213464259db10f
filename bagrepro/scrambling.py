"""Destroying global structure while keeping local statistics: tile scrambling and texturisation.

Images are [B, 3, H, W] floats in [0, 1].
- :func:`scramble_tiles`: cut into an n x n grid of tiles and shuffle them by a seeded permutation
  per image (rows/columns beyond a whole tile stay in place).
- :func:`texturise`: Gatys et al. (2015) texture synthesis: optimise noise until the Gram matrices
  of VGG feature maps match the original's (Adam on the pixels, batched over images). No
  well-kept library ships this for torchvision's VGG, so it is written here.
"""

from __future__ import annotations

import torch
from torch import nn

from .errors import ConfigError


def scramble_tiles(images: torch.Tensor, grid: int, seed: int) -> torch.Tensor:
    """Shuffle the n x n tiles of every image; image b uses permutation b of a generator seeded ``seed``."""
    batch, channels, height, width = images.shape
    tile_h, tile_w = height // grid, width // grid
    if tile_h == 0 or tile_w == 0:
        raise ConfigError(f"cannot cut a {height}x{width} image into a {grid}x{grid} grid of tiles")
    generator = torch.Generator().manual_seed(seed)
    permutation = torch.rand(batch, grid * grid, generator=generator).argsort(1).to(images.device)
    body = images[..., : grid * tile_h, : grid * tile_w]
    tiles = body.reshape(batch, channels, grid, tile_h, grid, tile_w).permute(0, 2, 4, 1, 3, 5)
    tiles = tiles.reshape(batch, grid * grid, channels, tile_h, tile_w)
    shuffled = tiles.gather(1, permutation[:, :, None, None, None].expand_as(tiles))
    shuffled = shuffled.reshape(batch, grid, grid, channels, tile_h, tile_w).permute(0, 3, 1, 4, 2, 5)
    out = images.clone()
    out[..., : grid * tile_h, : grid * tile_w] = shuffled.reshape(batch, channels, grid * tile_h, grid * tile_w)
    return out


def texture_layers(vgg: nn.Module, count: int = 5) -> list[int]:
    """Indices in ``vgg.features`` whose outputs carry the texture statistics: the first ReLU and the
    first ``count - 1`` max-pools (Gatys et al.: conv1_1, pool1..pool4)."""
    features = getattr(vgg, "features", None)
    if not isinstance(features, nn.Sequential):
        raise ConfigError(f"texture synthesis needs a VGG with a `features` Sequential, got {type(vgg).__name__}")
    relus = [i for i, m in enumerate(features) if isinstance(m, nn.ReLU)]
    pools = [i for i, m in enumerate(features) if isinstance(m, nn.MaxPool2d)]
    return sorted(set(relus[:1] + pools[: count - 1]))


def _grams(features: nn.Sequential, layers: list[int], inputs: torch.Tensor) -> list[torch.Tensor]:
    """Gram matrices [B, C, C] (normalised by the number of positions) at the chosen layers."""
    grams, x = [], inputs
    for index, module in enumerate(features[: max(layers) + 1]):
        x = module(x)
        if index in layers:
            flat = x.flatten(2)
            grams.append(flat @ flat.transpose(1, 2) / flat.shape[-1])
    return grams


def _functional_relus(features: nn.Sequential) -> nn.Sequential:
    """A view of the feature stack with non-inplace ReLUs (in-place ones break the pixel gradient)."""
    return nn.Sequential(*[nn.ReLU() if isinstance(m, nn.ReLU) else m for m in features])


def texturise(images: torch.Tensor, vgg: nn.Module, normalize, steps: int = 300, lr: float = 0.05,
              seed: int = 0, layers: list[int] | None = None) -> torch.Tensor:
    """Synthesise, for every image, a texture with the same VGG Gram matrices; returns [B, 3, H, W] in [0, 1].

    Pixels are parametrised through a sigmoid (stays in [0, 1]) and optimised with Adam from seeded
    noise; the loss is the sum over layers of the squared Gram difference relative to the target's norm.
    """
    layers = layers or texture_layers(vgg)
    features = _functional_relus(vgg.features).eval()
    for parameter in features.parameters():
        parameter.requires_grad_(False)
    with torch.no_grad():
        targets = _grams(features, layers, normalize(images))
    generator = torch.Generator().manual_seed(seed)
    start = torch.rand(images.shape, generator=generator).clamp(0.05, 0.95).to(images.device)
    logits = torch.logit(start).requires_grad_(True)
    optimiser = torch.optim.Adam([logits], lr=lr)
    for _ in range(steps):
        optimiser.zero_grad()
        grams = _grams(features, layers, normalize(torch.sigmoid(logits)))
        loss = sum(((g - t) ** 2).sum((1, 2)) / (t ** 2).sum((1, 2)).clamp_min(1e-12)
                   for g, t in zip(grams, targets)).sum()
        loss.backward()
        optimiser.step()
    return torch.sigmoid(logits).detach()
