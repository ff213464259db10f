"""The inference path: a BagNet with the same outputs and less work.

- every BatchNorm is folded into the convolution before it (torch's ``fuse_conv_bn_eval``), so a
  block is three convolutions with bias instead of three convolutions plus three normalisation
  passes over memory;
- the stem's 1x1 conv (3 -> 64) and 3x3 conv (64 -> 64) have no non-linearity or padding between
  them, so they compose into one 3x3 conv (3 -> 64): the stem's cost drops from 64x64x9 to 3x64x9
  multiply-adds per pixel (about a ninth of a 224 px forward pass);
- weights and activations in channels-last memory format, which is what oneDNN's CPU convolutions
  prefer.

Outputs equal the eager model's up to float32 rounding (checked in tests and bench/throughput.py).
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from bagrepro.models.bagnet import BagNet


def _compose_1x1_then_conv(first: nn.Conv2d, second: nn.Conv2d) -> nn.Conv2d:
    """One conv equal to ``second(first(x))`` where ``first`` is a bias-free 1x1 conv."""
    merged = nn.Conv2d(first.in_channels, second.out_channels, second.kernel_size,
                       stride=second.stride, padding=second.padding, bias=second.bias is not None)
    # second.weight [O, M, k, k] . first.weight [M, I, 1, 1] -> [O, I, k, k]
    merged.weight.data = torch.einsum("omhw,mi->oihw", second.weight, first.weight[:, :, 0, 0])
    if second.bias is not None:
        merged.bias.data = second.bias.detach().clone()
    return merged.eval()


def fuse_bagnet(model: BagNet) -> BagNet:
    """A copy of ``model`` (eval mode) with BatchNorm folded, the stem composed, channels-last.

    The copy keeps the BagNet interface (``features``, ``patch_logits``, ``forward``, the dense
    heatmaps): folded BatchNorms become ``nn.Identity`` and the composed stem's 1x1 conv too.
    Expects inputs in any memory format; returns the same numbers as ``model``.
    """
    fused = copy.deepcopy(model).eval()
    if fused.conv1.bias is not None or fused.conv1.kernel_size != (1, 1):
        raise ValueError("fuse_bagnet expects the released stem (bias-free 1x1 conv1)")
    fused.conv2 = fuse_conv_bn_eval(_compose_1x1_then_conv(fused.conv1, fused.conv2), fused.bn1)
    fused.conv1, fused.bn1 = nn.Identity(), nn.Identity()
    for layer in fused.layers:
        for block in layer:
            for conv_name, norm_name in (("conv1", "bn1"), ("conv2", "bn2"), ("conv3", "bn3")):
                setattr(block, conv_name, fuse_conv_bn_eval(getattr(block, conv_name), getattr(block, norm_name)))
                setattr(block, norm_name, nn.Identity())
            if block.downsample is not None:
                block.downsample[0] = fuse_conv_bn_eval(block.downsample[0], block.downsample[1])
                block.downsample[1] = nn.Identity()
    return fused.to(memory_format=torch.channels_last)


def fuse_for_inference(model: nn.Module) -> nn.Module:
    """The inference copy of any model (eval mode; same outputs up to float32 rounding).

    A BagNet goes through :func:`fuse_bagnet`. Another model is traced with torch.fx and each
    Conv2d -> BatchNorm2d pair folded into one conv (torch's ``fx.experimental.optimization.fuse``,
    which works on the torchvision VGG / ResNet / DenseNet graphs), then put in channels-last; a model
    that torch.fx cannot trace (data-dependent control flow) is returned as it is. The copy keeps
    the original's ``zoo_spec`` and ``weights_source``. Use it for forward passes only: attribution
    methods need the model as built (its gradients, its ReLU modules).
    """
    if isinstance(model, BagNet):
        fused = fuse_bagnet(model)
    else:
        from torch.fx.experimental.optimization import fuse

        try:
            fused = fuse(copy.deepcopy(model).eval(), inplace=True).to(memory_format=torch.channels_last)
        except Exception:  # noqa: BLE001 - untraceable user model: its eager form is the inference form
            return model
    for attribute in ("zoo_spec", "weights_source"):
        if hasattr(model, attribute):
            setattr(fused, attribute, getattr(model, attribute))
    return fused


#: --precision: the forward passes' arithmetic (fp32: as built; bf16: autocast to bfloat16)
PRECISIONS = ("fp32", "bf16")


def with_precision(model: nn.Module, precision: str) -> nn.Module:
    """``model`` whose ``forward`` runs under ``torch.autocast(bfloat16)`` (on the device of its
    parameters: CUDA or CPU) and returns float32, for ``precision='bf16'``; the model itself for
    'fp32'. For inference copies: only ``forward`` changes, so what calls a BagNet's layers directly
    (the dense heatmaps, the patch logits) stays exact in float32. Changes ``model`` in place: give
    it a model no gradient path uses (an inference copy)."""
    if precision == "fp32":
        return model
    if precision != "bf16":
        raise ValueError(f"unknown precision {precision!r}; use one of {', '.join(PRECISIONS)}")
    device_type = next(model.parameters()).device.type
    plain = model.forward

    def forward(*args, **kwargs):
        with torch.autocast(device_type, dtype=torch.bfloat16):
            return plain(*args, **kwargs).float()

    model.forward = forward
    return model
