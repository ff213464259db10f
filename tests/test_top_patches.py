"""Streaming top-k (Fig. 3) against a brute-force top-k over all patch logits of a small set, and
the top_patches experiment's own output (through the CLI) against the same brute force."""

from __future__ import annotations

import pandas as pd
import torch

import run_all
from bagrepro.data.imagesets import smoke_images
from bagrepro.models import create_model
from bagrepro.models.bagnet import BAGNET_STRIDE
from bagrepro.models.fast import fuse_for_inference
from bagrepro.harness.profiles import get_profile

from bagrepro.methods.patches import RunningTopK, crop_patches, patch_records
from bagrepro.models.bagnet import reduced_bagnet, randomise_batchnorm
from bagrepro.methods.heatmaps import patch_logits


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


def test_the_experiments_patches_are_the_brute_force_top_k(tmp_path):
    """The experiment streams every image once per BagNet; its CSV must list, per class and group,
    exactly the k highest native patch logits over the whole data set, with their places."""
    assert run_all.main(["--profile", "smoke", "--experiment", "top_patches", "--classes", "3", "7",
                         "--quiet", "--out", str(tmp_path)]) == 0
    patches = pd.read_csv(tmp_path / "results" / "top_patches" / "patches.csv")
    profile = get_profile("smoke")
    images = smoke_images(profile.num_images, profile.image_size, profile.num_classes, seed=0)
    position = {image_id: i for i, image_id in enumerate(images.image_ids)}
    assert set(patches["class"]) == {3, 7} and set(patches["role"]) == {"bagnet9", "bagnet17", "bagnet33"}
    for name, rows in patches.groupby("model"):
        model = fuse_for_inference(create_model(name, init_seed=0))
        with torch.inference_mode():
            logits = patch_logits(model, model.zoo_spec.preprocess.normalize(images.images))  # [N, K, h, w]
        for (cls, group), chosen in rows.groupby(["class", "group"]):
            in_group = (images.labels == cls) if group == "same" else (images.labels != cls)
            expected = logits[in_group, cls].flatten().topk(len(chosen)).values
            assert torch.allclose(torch.tensor(chosen.sort_values("rank")["logit"].to_numpy(), dtype=torch.float32),
                                  expected.float(), atol=1e-5)
            for _, patch in chosen.iterrows():  # each listed place holds the listed logit
                index = position[patch["image_id"]]
                assert bool(in_group[index]) and images.labels[index] == patch["true_class"]
                value = logits[index, cls, patch["row"] // BAGNET_STRIDE, patch["col"] // BAGNET_STRIDE]
                assert abs(value.item() - patch["logit"]) < 1e-5


def test_imagenet_runs_show_the_papers_classes_by_default():
    from bagrepro.data import synsets
    from experiments.top_patches import paper_classes

    wnids = list(synsets.IMAGENET_WNIDS)
    chosen = paper_classes(wnids)
    assert [synsets.class_name(i) for i in chosen] == ["book jacket", "typewriter keyboard", "tench", "flamingo",
                                                       "groom"]
    assert paper_classes(wnids[:500]) == []  # a data set without them all: a seeded choice instead
    assert paper_classes([f"class{i}" for i in range(10)]) == []
