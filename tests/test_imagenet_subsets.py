"""A few of the 1000 ImageNet synsets, in each layout, scored against 1000-way models.

Each layout holds four real ILSVRC-2012 synsets, far apart in the class list (1000-way indices 3, 250,
517 and 999), with a few tiny JPEGs each. Labels must be the 1000-way indices (not 0..3), and a CLI run
of the custom profile with a user model that always answers 517 must score top-1 = the share of the
images of synset 517.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.io
from PIL import Image

import run_all
from bagrepro.data import synsets
from bagrepro.data.imagenet import detect_layout, image_folder, load_images, load_imagenet_val
from bagrepro.data.synsets import IMAGENET_NAMES, IMAGENET_WNIDS, class_name, display_name, imagenet_index
from bagrepro.core.errors import DataError
from bagrepro.models import registry

#: 1000-way index -> images of that synset in every layout
COUNTS = {3: 2, 250: 3, 517: 4, 999: 1}
TOTAL = sum(COUNTS.values())
LAYOUTS = ("imagefolder", "loc_solution_csv", "devkit_ground_truth", "torchvision_imagenet")
MODEL = "subset_test_crane"
GROUND_TRUTH = "ILSVRC2012_validation_ground_truth.txt"


def truth() -> dict[str, int]:
    """image id -> 1000-way label; the synsets interleaved over the image numbers."""
    labels = [index for index, count in COUNTS.items() for _ in range(count)]
    order = np.random.default_rng(0).permutation(len(labels))
    return {f"ILSVRC2012_val_{number:08d}": labels[i] for number, i in enumerate(order, start=1)}


def write_jpeg(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (18, 22, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, "JPEG")


def write_layout(root: Path, layout: str) -> Path:
    """``layout`` under ``root`` with the images of :func:`truth`; returns the folder to pass as --data."""
    labels = truth()
    if layout in ("imagefolder", "torchvision_imagenet"):
        folder = root / "val" if layout == "torchvision_imagenet" else root
        for n, (image_id, label) in enumerate(labels.items()):
            write_jpeg(folder / IMAGENET_WNIDS[label] / f"{image_id}.JPEG", n)
        if layout == "torchvision_imagenet":
            (root / "meta.bin").write_bytes(b"torchvision meta")
        return root
    flat = root / "val"
    for n, image_id in enumerate(labels):
        write_jpeg(flat / f"{image_id}.JPEG", n)
    if layout == "loc_solution_csv":
        rows = [f"{i},{IMAGENET_WNIDS[label]} 1 2 10 12" for i, label in labels.items()]
        (root / "LOC_val_solution.csv").write_text("\n".join(["ImageId,PredictionString", *rows]) + "\n")
    else:  # the devkit beside val/: ids shuffled against the sorted wnids (as the real devkit's are)
        write_devkit(root / "ILSVRC2012_devkit_t12" / "data", IMAGENET_WNIDS, labels)
    return root


def write_devkit(folder: Path, wnids, labels: dict[str, int]) -> None:
    ids = np.random.default_rng(1).permutation(len(wnids)) + 1
    rows = [(int(i), w, "words", 0) for i, w in zip(ids, wnids)]
    synsets_array = np.array(rows, dtype=[(f, "O") for f in ("ILSVRC2012_ID", "WNID", "words", "num_children")])
    folder.mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(folder / "meta.mat", {"synsets": synsets_array})
    id_of = {w: int(i) for i, w in zip(ids, wnids)}
    (folder / GROUND_TRUTH).write_text("".join(f"{id_of[IMAGENET_WNIDS[label]]}\n" for label in labels.values()))


# --------------------------------------------------------------------------------------------- the table


def test_the_shipped_table_is_the_1000_sorted_synsets_with_names():
    assert len(IMAGENET_WNIDS) == len(set(IMAGENET_WNIDS)) == 1000
    assert list(IMAGENET_WNIDS) == sorted(IMAGENET_WNIDS)
    assert len(IMAGENET_NAMES) == 1000 and all(IMAGENET_NAMES)
    assert IMAGENET_WNIDS[0] == "n01440764" and imagenet_index("n01440764") == 0 and class_name(0) == "tench"
    assert class_name(imagenet_index("n15075141")) == "toilet tissue" and imagenet_index("n15075141") == 999
    assert display_name("n01440764") == "tench" and display_name("cats") == "cats" and display_name(3) == "3"
    with pytest.raises(DataError, match="n01000000"):
        imagenet_index("n01000000")
    assert synsets.TABLE_PATH.name == "ilsvrc2012_classes.tsv"
    assert '"data/*.tsv"' in (Path(__file__).parents[1] / "pyproject.toml").read_text()  # shipped as package data


def test_the_table_module_is_torch_free():
    code = "import sys, bagrepro.data.synsets as s; s.class_name(0); print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                            cwd=Path(__file__).parents[1])
    assert result.stdout.strip() == "False"


def test_the_table_is_what_the_generator_makes():
    from bagrepro.data import make_ilsvrc2012_classes as make

    assert make.torchvision_names() == list(IMAGENET_NAMES)
    if make.DEFAULT_SOURCE.is_file():  # the devkit-order list it was made from, where present
        assert make.read_wnids(make.DEFAULT_SOURCE) == list(IMAGENET_WNIDS)


# --------------------------------------------------------------------------------------------- layouts


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("loader", [load_imagenet_val, load_images], ids=["paper", "custom"])
def test_a_subset_has_1000_way_labels_in_every_layout(tmp_path, layout, loader):
    root = write_layout(tmp_path, layout)
    assert detect_layout(root) == layout
    dataset = loader(root)
    assert dataset.layout == layout and dataset.classes == list(IMAGENET_WNIDS) and dataset.is_imagenet
    assert {r.image_id: r.label for r in dataset.records} == truth()
    assert dataset.describe("DIR") == f"{TOTAL} images of 4 of the 1000 ImageNet synsets from DIR ({layout})"
    limited = loader(root, limit=4, seed=0)
    assert sorted(r.label for r in limited.records) == sorted(COUNTS)  # balanced over the synsets present


@pytest.mark.parametrize("layout", LAYOUTS)
def test_custom_profile_scores_a_subset_against_a_1000_way_model(tmp_path, layout):
    """Top-1 of a model that always answers 517 (then 999) = share of synset 517; top-5 = 517 or 999."""
    data = write_layout(tmp_path / "data", layout)
    model_file = tmp_path / "crane_model.py"
    model_file.write_text(textwrap.dedent(f"""
        import torch
        from torch import nn
        from bagrepro.models import register_model
        from bagrepro.models.preprocess import Preprocess

        class Crane(nn.Module):
            def forward(self, x):
                logits = -torch.arange(1000, dtype=x.dtype, device=x.device) / 1000
                logits[517], logits[999] = 10.0, 5.0
                return logits.expand(x.shape[0], 1000)

        @register_model("{MODEL}", num_classes=1000, preprocess=Preprocess(resize=20, crop=16))
        def build(num_classes=1000):
            return Crane()
    """))
    out = tmp_path / "out"
    try:
        code = run_all.main(["--profile", "custom", "--data", str(data), "--register-models", str(model_file),
                             "--models", MODEL, "--experiment", "accuracy", "--quiet", "--out", str(out)])
    finally:
        registry.unregister_model(MODEL)
    assert code == 0
    results = out / "results" / "accuracy"
    predictions = pd.read_csv(results / "predictions.csv")
    assert len(predictions) == TOTAL
    assert dict(zip(predictions["image_id"], predictions["true_class"])) == truth()
    assert (predictions["pred_1"] == 517).all() and (predictions["pred_2"] == 999).all()
    summary = pd.read_csv(results / "summary.csv")
    assert summary["top1"].item() == pytest.approx(100 * COUNTS[517] / TOTAL)
    assert summary["top5"].item() == pytest.approx(100 * (COUNTS[517] + COUNTS[999]) / TOTAL)
    # names at the end of the columns: every existing column keeps its place
    assert list(predictions.columns)[-1] == "true_class_name"
    assert (predictions["true_class_name"] == predictions["true_class"].map(class_name)).all()
    per_class = pd.read_csv(results / "per_class.csv")
    assert list(per_class.columns)[:7] == ["model", "role", "true_class", "n_images", "top1", "top5", "class_name"]
    assert list(per_class.columns)[7:] == ["top1_low", "top1_high", "top5_low", "top5_high"]  # appended
    assert dict(zip(per_class["true_class"], per_class["n_images"])) == COUNTS
    assert per_class.set_index("true_class").loc[517, "class_name"] == "crane"
    meta = json.loads((results / "predictions.meta.json").read_text())
    assert meta["data"] == f"{TOTAL} images of 4 of the 1000 ImageNet synsets from {data} ({layout})"


# --------------------------------------------------------------------------------------------- not ImageNet


def test_a_folder_of_other_names_stays_its_own_class_list(tmp_path):
    for n, name in enumerate(["cats", "dogs", "n01440764"]):  # one wnid among user classes: still a user set
        write_jpeg(tmp_path / name / f"img{n}.jpg", n)
    dataset = load_images(tmp_path)
    assert dataset.classes == ["cats", "dogs", "n01440764"] and not dataset.is_imagenet
    assert [r.label for r in dataset.records] == [0, 1, 2]
    assert dataset.classes == image_folder(tmp_path).classes
    assert dataset.describe("DIR") == "3 images of 3 of 3 classes from DIR (imagefolder)"


@pytest.mark.parametrize("loader", [load_imagenet_val, load_images], ids=["paper", "custom"])
def test_wnid_folders_outside_the_1000_are_refused_naming_the_first(tmp_path, loader):
    for n, wnid in enumerate([IMAGENET_WNIDS[3], "n09999998", "n09999999"]):
        write_jpeg(tmp_path / wnid / f"ILSVRC2012_val_{n + 1:08d}.JPEG", n)
    with pytest.raises(DataError) as info:
        loader(tmp_path)
    message = str(info.value)
    assert "n09999998" in message and "n09999999" not in message and "\n" not in message


def test_a_devkit_of_other_synsets_is_refused(tmp_path):
    write_layout(tmp_path, "devkit_ground_truth")
    fake = [f"n{10_000_000 + 7 * i:08d}" for i in range(1000)]
    write_devkit(tmp_path / "ILSVRC2012_devkit_t12" / "data", fake, {})
    with pytest.raises(DataError) as info:
        load_imagenet_val(tmp_path)
    assert "meta.mat" in str(info.value) and "\n" not in str(info.value)
    assert "n10000000" in str(info.value)  # the first synset that is not one of the 1000
