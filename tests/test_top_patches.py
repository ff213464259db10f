"""Streaming top-k (Fig. 3) against a brute-force top-k over all patch logits of a small set."""

from __future__ import annotations

import torch

from bagrepro.patches import RunningTopK, crop_patches, patch_records
from bagrepro.models.bagnet import reduced_bagnet, randomise_batchnorm
from bagrepro.heatmaps import patch_logits


def test_streaming_top_k_equals_brute_force_over_the_data_set():
    model = randomise_batchnorm(reduced_bagnet(9, width=4), seed=0, calibration_size=40)
    images = torch.randn(11, 3, 33, 41)
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 1])
    classes = torch.tensor([2, 0])
    k = 4
    top = RunningTopK(2 * len(classes), k, record_width=3)
    seen = 0
    for start in range(0, len(images), 3):  # batches of 3: the running top-k crosses batch borders
        batch, batch_labels = images[start:start + 3], labels[start:start + 3]
        logits = patch_logits(model, batch, classes)
        b, c, h, w = logits.shape
        scores = logits.permute(1, 0, 2, 3).reshape(c, b, h * w)
        same = (batch_labels[None, :] == classes[:, None])[:, :, None]
        grouped = torch.stack([scores.masked_fill(~same, -torch.inf), scores.masked_fill(same, -torch.inf)], 1)
        top.update(grouped.reshape(2 * c, b * h * w), patch_records(seen, b, h, w))
        seen += b
    everything = patch_logits(model, images, classes)  # [N, C, h, w], all at once
    for c, cls in enumerate(classes.tolist()):
        for g, in_group in enumerate((labels == cls, labels != cls)):
            values = everything[in_group, c].flatten()
            expected = values.topk(k).values.double()
            assert torch.allclose(top.values[2 * c + g], expected, atol=1e-6)
            for value, (image, i, j) in zip(top.values[2 * c + g], top.records[2 * c + g].tolist()):
                assert bool(in_group[image])  # the patch comes from the right group of images
                assert abs(everything[image, c, i, j].item() - value.item()) < 1e-6


def test_crops_are_the_receptive_fields():
    images = torch.rand(2, 3, 40, 48)
    crops = crop_patches(images, torch.tensor([[1, 2], [2, 0]]), 17)
    assert torch.equal(crops[0], images[0, :, 8:25, 16:33]) and torch.equal(crops[1], images[1, :, 16:33, 0:17])
