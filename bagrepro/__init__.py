"""bagrepro: reproduce Brendel & Bethge (ICLR 2019), BagNets and their comparisons with deep CNNs.

The front door for a notebook; each name is imported on first use (PEP 562), so ``import bagrepro``
loads no torch:

- ``create_model(name, pretrained=False)``: a zoo model (``list_models('bagnet*')``), its
  preprocessing in ``model.zoo_spec.preprocess``; ``register_model``: add your own (a decorator).
- ``dense_heatmaps(model, images, classes)``: a BagNet's exact heatmap, [B, 1, H, W], one value per
  pixel; ``patch_logits(model, images)``: its logits per q x q window, [B, classes, h, w].
- ``attribute(model, images, targets, method)``: an attribution method of the registry
  (``attribution_methods()``); ``register_attribution``: add your own (a decorator).
- ``benchmark_attribution(explain, name)``: score your ``explain(model, images, targets) -> maps``
  with the attribution benchmark beside every registered method; returns its tables (DataFrames).
- ``load_images(root)``: an ImageNet validation layout or any ImageFolder, as records and labels.

The layers underneath: ``bagrepro.core`` <- ``bagrepro.data``, ``bagrepro.models`` <-
``bagrepro.methods`` <- ``bagrepro.harness``; the demo world and zoo are the plugin ``bagrepro.demo``.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

#: public name -> the module that defines it
_PUBLIC = {
    "create_model": "bagrepro.models",
    "register_model": "bagrepro.models",
    "list_models": "bagrepro.models",
    "dense_heatmaps": "bagrepro.methods.heatmaps",
    "patch_logits": "bagrepro.methods.heatmaps",
    "attribute": "bagrepro.methods.attribution",
    "register_attribution": "bagrepro.methods.attribution",
    "attribution_methods": "bagrepro.methods.attribution",
    "benchmark_attribution": "bagrepro.harness.benchmark",
    "load_images": "bagrepro.data.imagenet",
}

__all__ = sorted(_PUBLIC)


def __getattr__(name: str):
    if name in _PUBLIC:
        value = getattr(importlib.import_module(_PUBLIC[name]), name)
        globals()[name] = value  # later look-ups skip this function
        return value
    raise AttributeError(f"module 'bagrepro' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_PUBLIC))
