"""Exact BagNet heatmaps: stride-1 (one value per pixel) and native stride-8 patch logits.

The released method (paper.md section 2) zero-pads the normalised image by (q-1)//2 on each side,
cuts the q x q patch centred on every pixel and runs each patch through the network: heatmap value
at (r, c) = target logit of the patch covering padded rows [r, r+q) and columns [c, c+q). That is
H*W forward passes of a q x q input.

Here the same numbers come from whole-image passes. A BagNet is a stack of valid convolutions, so on
the padded image its output (i, j) is exactly the logit of the patch at padded offset (8i, 8j). The
other 63 offsets (8i + a, 8j + b) would need the image shifted by (a, b). Instead of 64 shifted
passes, each strided block is evaluated at stride 1 and its output is split into its 2x2 stride
phases, which are folded into the batch ("space to batch"); the following layers then run on the
phase batch at their usual resolution. Layers before a stride are computed once, not 64 times, and
the last layers do exactly the work of one distinct patch per output pixel. Interleaving the phases
back gives the dense map. No library offers this for valid-convolution networks (torch's dilated
convolutions would need every later kernel re-dilated), so it is written here.

Layouts: images [B, 3, H, W] normalised; heatmaps [B, K, H, W] where K indexes the requested classes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from bagrepro.models.bagnet import BAGNET_STRIDE, BagNet, Bottleneck, head_logits

ClassSpec = int | list[int] | torch.Tensor | None


def _class_index(classes: ClassSpec, targets: torch.Tensor | None, batch: int, device) -> torch.Tensor | None:
    """A class request as None (all classes), [K] (the same K for every image) or [B, K] (per image).

    ``classes`` (an int, a list or a 1-D tensor) is shared by every image; ``targets`` ([B], or
    [B, K]) gives each image its own classes, e.g. its predicted class. Never both.
    """
    if targets is not None:
        if classes is not None:
            raise ValueError("give either classes (shared) or targets (per image), not both")
        index = torch.as_tensor(targets, dtype=torch.long, device=device)
        index = index[:, None] if index.dim() == 1 else index
        if index.dim() != 2 or len(index) != batch:
            raise ValueError(f"targets must be [B] or [B, K] with B = {batch}, got {tuple(index.shape)}")
        return index
    if classes is None:
        return None
    index = torch.as_tensor(classes, dtype=torch.long, device=device).reshape(-1)
    return index


def _check_eval(model: BagNet) -> None:
    if model.training:
        raise ValueError("BagNet heatmaps need the model in eval mode (call model.eval()): in training mode "
                         "BatchNorm would mix the statistics of the phase-shifted copies")


def _space_to_batch(x: torch.Tensor) -> torch.Tensor:
    """[N, C, H, W] -> [4N, C, H//2, W//2], phases (a, b) outermost: batch index = (2a + b) * N + n.

    Odd trailing rows/columns are dropped; the caller pads the input so they are never needed.
    """
    n, c, h, w = x.shape
    x = x[:, :, : h - h % 2, : w - w % 2]
    x = x.reshape(n, c, h // 2, 2, w // 2, 2).permute(3, 5, 0, 1, 2, 4)
    return x.reshape(4 * n, c, h // 2, w // 2)


def _conv_at_stride_one(conv: torch.nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    return F.conv2d(x, conv.weight, conv.bias, stride=1, padding=0)


def _block_dense(block: Bottleneck, x: torch.Tensor) -> torch.Tensor:
    """A Bottleneck evaluated at stride 1, then split into stride phases if it was strided."""
    stride = block.conv2.stride[0]
    if stride == 1:
        return block(x)
    if stride != 2:
        raise ValueError(f"dense heatmaps need strides 1 or 2, got a block with stride {stride}")
    out = block.relu(block.bn1(block.conv1(x)))
    out = block.relu(block.bn2(_conv_at_stride_one(block.conv2, out)))
    out = block.bn3(block.conv3(out))
    conv, norm = block.downsample[0], block.downsample[1]
    residual = norm(_conv_at_stride_one(conv, x))
    out = block.relu(out + residual[:, :, : out.shape[-2], : out.shape[-1]])
    return _space_to_batch(out)


def _dense_length(model: BagNet, length: int) -> int:
    """Side of the dense map the phase pipeline yields for a padded input side ``length``."""
    length -= 2  # stem 3x3
    for k3, stride in zip(model.config.kernel3, model.config.strides):
        length -= 2 if k3 else 0
        length //= stride
    return length * BAGNET_STRIDE


def _padding(model: BagNet, height: int, width: int) -> tuple[int, int, int, int]:
    """(left, right, top, bottom) zero padding: (q-1)//2 before, enough after for every pixel.

    The released method pads (q-1)//2 on each side; the extra bottom/right zeros only add dense
    positions beyond the image, which are cropped away (valid convolutions: a position's value
    depends on its own window only).
    """
    q = model.receptive_field
    before = (q - 1) // 2

    def after(size: int) -> int:
        extra = q - 1 - before
        while _dense_length(model, size + before + extra) < size:
            extra += 1
        return extra

    return before, after(width), before, after(height)


def _features_dense(model: BagNet, padded: torch.Tensor) -> torch.Tensor:
    """padded [B, 3, P, Q] -> phase-folded features [S*S*B, C, h, w], S = total stride."""
    x = model.stem(padded)
    for layer in model.layers:
        for block in layer:
            x = _block_dense(block, x)
    return x


def _batch_to_space(x: torch.Tensor, batch: int) -> torch.Tensor:
    """Undo the nested phase folding: [S*S*B, K, h, w] -> [B, K, h*S, w*S].

    After three splits the batch index is (a3, b3, a2, b2, a1, b1, n); the dense row is
    8i + 4 a3 + 2 a2 + a1 (and likewise for columns).
    """
    levels = BAGNET_STRIDE.bit_length() - 1
    _, k, h, w = x.shape
    x = x.reshape(*([2, 2] * levels), batch, k, h, w)
    row_phases = list(range(0, 2 * levels, 2))  # a3, a2, a1
    col_phases = list(range(1, 2 * levels, 2))  # b3, b2, b1
    n_dim = 2 * levels
    x = x.permute(n_dim, n_dim + 1, n_dim + 2, *row_phases, n_dim + 3, *col_phases)
    return x.reshape(batch, k, h * BAGNET_STRIDE, w * BAGNET_STRIDE)


@torch.inference_mode()
def dense_heatmaps(model: BagNet, images: torch.Tensor, classes: ClassSpec = None, *,
                   targets: torch.Tensor | None = None, chunk_size: int = 1) -> torch.Tensor:
    """Exact stride-1 heatmaps, identical to the released per-patch method.

    model: a BagNet in eval mode. images: [B, 3, H, W], normalised (padding is zero in this space).
    classes: None for all classes, or an int / list / 1-D tensor of K classes shared by every image;
    targets: instead, per-image classes [B] (e.g. the predicted class) or [B, K].
    chunk_size: images per phase-folded pass (each image becomes 64 phase images; about 1.5 GB peak
    per 224 px image for BagNet-33).
    Returns [B, K, H, W] float32 logits: value at (r, c) = logit of the q x q patch centred there.
    """
    _check_eval(model)
    batch, _, height, width = images.shape
    index = _class_index(classes, targets, batch, images.device)
    pad = _padding(model, height, width)
    chunks = []
    for start in range(0, batch, chunk_size):
        chunk = images[start:start + chunk_size]
        features = _features_dense(model, F.pad(chunk, pad))
        chunk_index = index
        if index is not None and index.dim() == 2:
            # each phase image belongs to image n = batch index mod len(chunk)
            chunk_index = index[start:start + chunk_size].repeat(BAGNET_STRIDE ** 2, 1)
        logits = head_logits(features, model.fc, chunk_index)
        chunks.append(_batch_to_space(logits, len(chunk))[:, :, :height, :width])
    return torch.cat(chunks)


@torch.inference_mode()
def patch_logits(model: BagNet, images: torch.Tensor, classes: ClassSpec = None, *,
                 targets: torch.Tensor | None = None) -> torch.Tensor:
    """Native stride-8 patch logits, no padding: [B, K, H', W'], H' = (H - q) // 8 + 1.

    Entry (i, j) is the logit of the patch at input rows [8i, 8i+q), columns [8j, 8j+q).
    classes / targets: as in :func:`dense_heatmaps`.
    """
    _check_eval(model)
    index = _class_index(classes, targets, images.shape[0], images.device)
    return head_logits(model.features(images), model.fc, index)
