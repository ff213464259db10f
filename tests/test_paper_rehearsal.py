"""A rehearsal of the paper profile, offline: released-format checkpoints saved from random weights,
an ImageNet devkit layout built from images the test writes, the full-size models at 224 px.

The released files' names carry the SHA-256 prefix of the released bytes, which random weights cannot
reproduce; the rehearsal therefore re-points each zoo entry's URL at a local ``file://`` checkpoint
named with its own hash (the same download-verify-load path), or uses ``--weights-dir``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json

import numpy as np
import pandas as pd
import pytest
import scipy.io
import torch
from PIL import Image

import run_all
from bagrepro.data.synsets import IMAGENET_WNIDS
from bagrepro.models import create_model, get_spec, registry
from bagrepro.models.weights import WeightsSpec, cache_path

NUM_SYNSETS = 1000
IMAGES = 4


def write_imagenet_devkit_layout(root, seed=0):
    """A flat validation folder of JPEGs (non-square, one greyscale) + ground truth + a 1000-synset devkit
    whose ILSVRC2012 ids are shuffled against the sorted wnids. Returns the sorted-wnid labels."""
    generator = np.random.default_rng(seed)
    wnids = list(IMAGENET_WNIDS)  # a devkit must hold the 1000 ILSVRC-2012 synsets
    ids = generator.permutation(NUM_SYNSETS) + 1
    synsets = np.array([(int(i), w, "words", 0) for i, w in zip(ids, wnids)],
                       dtype=[(f, "O") for f in ("ILSVRC2012_ID", "WNID", "words", "num_children")])
    devkit = root / "ILSVRC2012_devkit_t12" / "data"
    devkit.mkdir(parents=True)
    scipy.io.savemat(devkit / "meta.mat", {"synsets": synsets})
    labels = generator.integers(0, NUM_SYNSETS, IMAGES)
    (root / "ILSVRC2012_validation_ground_truth.txt").write_text("".join(f"{ids[label]}\n" for label in labels))
    for number in range(1, IMAGES + 1):
        pixels = generator.integers(0, 256, (300, 260 + 20 * number, 3), dtype=np.uint8)
        image = Image.fromarray(pixels)
        (image.convert("L") if number == 2 else image).save(root / f"ILSVRC2012_val_{number:08d}.JPEG")
    return labels


def save_released_format(name, folder, stem):
    """A released-format checkpoint (plain state_dict) of random weights, named <stem>-<sha256[:8]>.pth."""
    torch.manual_seed(1)
    path = folder / f"{stem}.pth"
    torch.save(create_model(name).state_dict(), path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:8]
    named = folder / f"{stem}-{digest}.pth"
    path.rename(named)
    return named


@pytest.fixture
def local_weights(tmp_path, monkeypatch):
    """bagnet33 and resnet50 re-pointed at file:// checkpoints; returns {name: path}."""
    folder = tmp_path / "mirror"
    folder.mkdir()
    paths = {}
    for name, stem in (("bagnet33", "bagnet32"), ("resnet50", "resnet50")):
        paths[name] = save_released_format(name, folder, stem)
        spec = dataclasses.replace(get_spec(name), weights=WeightsSpec(paths[name].as_uri()))
        monkeypatch.setitem(registry._REGISTRY, name, spec)
    return paths


def test_paper_profile_end_to_end_on_released_format_checkpoints(tmp_path, local_weights):
    data = tmp_path / "val"
    data.mkdir()
    labels = write_imagenet_devkit_layout(data)
    out = tmp_path / "run"
    args = ["--profile", "paper", "--data", str(data), "--models", "bagnet33", "resnet50",
            "--experiment", "accuracy", "--quiet", "--out", str(out), "--batch-size", "2"]
    assert run_all.main(args) == 0
    predictions = pd.read_csv(out / "results" / "accuracy" / "predictions.csv")
    assert len(predictions) == 2 * IMAGES
    by_id = predictions[predictions["model"] == "bagnet33"].set_index("image_id")["true_class"]
    assert by_id.tolist() == labels.tolist()  # devkit ids mapped through the wnid to the sorted index
    assert predictions["pred_5"].between(0, NUM_SYNSETS - 1).all()
    meta = json.loads((out / "results" / "accuracy" / "predictions.meta.json").read_text())
    for name, path in local_weights.items():
        cached = cache_path(get_spec(name).weights)
        assert cached.is_file() and cached.read_bytes() == path.read_bytes()  # downloaded once into the hub cache
        assert str(cached) in meta["models"][name]
    assert meta["num_images"] == IMAGES and "devkit_ground_truth" in meta["data"]

    # the same checkpoints given with --weights-dir (nothing downloaded) give the same predictions
    for name in local_weights:
        cache_path(get_spec(name).weights).unlink()
    args[args.index("--out") + 1] = str(tmp_path / "run2")
    assert run_all.main([*args, "--weights-dir", str(tmp_path / "mirror")]) == 0
    again = pd.read_csv(tmp_path / "run2" / "results" / "accuracy" / "predictions.csv")
    pd.testing.assert_frame_equal(predictions, again)


def test_offline_without_weights_is_one_clear_error(tmp_path, monkeypatch, capsys):
    url = "http://127.0.0.1:9/models/bagnet8-34f4ccd2.pth.tar"  # port 9 (discard): refused
    monkeypatch.setitem(registry._REGISTRY, "bagnet9",
                        dataclasses.replace(get_spec("bagnet9"), weights=WeightsSpec(url)))
    data = tmp_path / "val"
    data.mkdir()
    write_imagenet_devkit_layout(data)
    code = run_all.main(["--profile", "paper", "--data", str(data), "--models", "bagnet9", "--experiment",
                         "accuracy", "--quiet", "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert url in err and str(cache_path(get_spec("bagnet9").weights)) in err and "--weights-dir" in err
    assert not (tmp_path / "run" / "results" / "accuracy" / "predictions.csv").exists()
