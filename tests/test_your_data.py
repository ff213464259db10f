"""Training the zoo on your data (``--profile custom --data DIR --train``), the reproducibility
report's protocol: a generated train/ val/ test/ folder, the smoke architectures (narrow, trained
from scratch at 48 px for one epoch), through the CLI as a user would call it; a training killed
after its first epoch resumes from the checkpoint to the same weights as an uninterrupted one; the
training loop's crops, the new head on ImageNet-style weights, and the one-line errors."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

import run_all
from bagrepro.core import paper
from bagrepro.methods import training
from bagrepro.harness import tuning
from bagrepro.core.errors import ConfigError, DataError
from bagrepro.models import get_spec, register_model, unregister_model
from bagrepro.models.weights import WeightsSpec
from bagrepro.core.recipe import TrainRecipe

ROOT = Path(__file__).resolve().parent.parent
CLASSES = ("coast", "forest", "street")  # not synsets: the data's own three classes
#: the smoke zoo trained from scratch, small and quick (one epoch, 48 px inputs from 55 px images)
MODELS = ["smoke_bagnet9", "smoke_bagnet17", "smoke_bagnet33", "smoke_vgg16", "smoke_resnet50", "smoke_densenet169"]
RECIPE = ["epochs=1", "image_size=48", "batch_size=8", "bn_recalibration_images=16"]


def make_split_folder(root: Path, per_split=(12, 4, 5), size: int = 60) -> Path:
    """``root/{train,val,test}/<class>/*.png``: per class a stripe orientation and colour, plus noise."""
    rng = np.random.default_rng(0)
    rows, cols = np.mgrid[0:size, 0:size] / size
    for split, count in zip(tuning.SPLITS, per_split):
        for label, name in enumerate(CLASSES):
            (root / split / name).mkdir(parents=True, exist_ok=True)
            for index in range(count):
                angle = label * np.pi / 3 + rng.normal(0, 0.1)
                stripes = 0.5 + 0.5 * np.sin(12 * (np.cos(angle) * rows + np.sin(angle) * cols))
                colour = np.eye(3)[label] * 0.5 + 0.25
                image = np.clip(stripes[..., None] * colour + 0.15 * rng.standard_normal((size, size, 3)), 0, 1)
                Image.fromarray((image * 255).astype(np.uint8)).save(root / split / name / f"{name}_{index:02d}.png")
    return root


@pytest.fixture(scope="module")
def your_data(tmp_path_factory):
    return make_split_folder(tmp_path_factory.mktemp("scenes"))


def cli(out: Path, data: Path, *extra: str) -> int:
    return run_all.main(["--profile", "custom", "--data", str(data), "--train", "--from-scratch", "--models", *MODELS,
                         "--recipe", *RECIPE, "--quiet", "--out", str(out), *extra])


def test_train_then_accuracy_and_scrambling_on_the_test_split(your_data, tmp_path, capsys):
    out = tmp_path / "run"
    assert cli(out, your_data, "--experiment", "accuracy", "--experiment", "scrambling") == 0
    trained = pd.read_csv(out / "results" / "training" / "models.csv")
    assert list(trained["model"]) == [f"tuned_{m}" for m in MODELS]
    assert (trained["train_images"] == 12 * 3).all() and (trained["val_images"] == 4 * 3).all()
    assert trained["val_top1"].between(0, 1).all() and (trained["from_scratch"]).all()
    assert dict(zip(trained["model"], trained["role"]))["tuned_smoke_resnet50"] == "resnet50"
    # the experiments ran on the test split with the data's own classes and the trained models
    predictions = pd.read_csv(out / "results" / "accuracy" / "predictions.csv")
    assert set(predictions["model"]) == set(trained["model"])
    assert len(predictions) == len(MODELS) * 5 * 3
    assert set(predictions["true_class_name"]) == set(CLASSES)
    assert predictions["image_id"].str.startswith(CLASSES).all()
    scrambled = pd.read_csv(out / "results" / "scrambling" / "table.csv")
    assert {4} <= set(scrambled["grid"]) and set(scrambled["model"]) == set(trained["model"])
    # the report sets the reproducibility report's 15-scene table beside ours, with intervals
    report = (out / "figures" / "report.html").read_text()
    assert "Trained on your data" in report and f"{paper.REPRODUCIBILITY_15SCENE['bagnet33'][1]:.3f}" in report
    assert "(n=15)" in report and "(n=12)" in report  # test and validation images
    # a second run trains nothing: every model comes from the cache
    capsys.readouterr()
    assert run_all.main(["--profile", "custom", "--data", str(your_data), "--train", "--from-scratch", "--models",
                         *MODELS, "--recipe", *RECIPE, "--out", str(out), "--experiment", "accuracy"]) == 0
    said = capsys.readouterr().out
    assert said.count("trained weights from the cache") == len(MODELS) and "epochs on" not in said


def test_roles_without_a_model_are_skipped_with_a_line(your_data, tmp_path, capsys):
    """Only the BagNets trained: an experiment that needs VGG-16 says so and is skipped, masking has
    none of its tested models and is skipped, one that needs BagNet-33 alone runs, and scrambling
    scrambles the tiles without VGG-16's textures (the reproducibility report's protocol)."""
    code = run_all.main(["--profile", "custom", "--data", str(your_data), "--train", "--from-scratch", "--models",
                         "smoke_bagnet9", "smoke_bagnet17", "smoke_bagnet33", "--recipe", *RECIPE,
                         "--experiment", "logit_correlation", "--experiment", "masking", "--experiment", "thresholding",
                         "--experiment", "scrambling",
                         "--out", str(tmp_path), "--quiet"])
    assert code == 0
    said = capsys.readouterr().out
    assert "[logit_correlation] skipped: no model of this run stands in for the paper's 'vgg16'" in said
    assert "[masking] skipped" in said
    assert any((tmp_path / "results" / "thresholding").glob("*.csv"))
    assert not (tmp_path / "results" / "logit_correlation").exists()
    assert "[scrambling] no VGG stands in for VGG-19 or VGG-16: no textures, tiles only" in said
    scrambled = pd.read_csv(tmp_path / "results" / "scrambling" / "table.csv")
    assert set(scrambled["method"]) == {"tiles"} and len(set(scrambled["model"])) == 3


def _weights_digest(path: Path) -> str:
    state = torch.load(path, map_location="cpu", weights_only=True)
    return hashlib.sha256(b"".join(state[k].contiguous().numpy().tobytes() for k in sorted(state))).hexdigest()


def test_a_killed_training_resumes_from_its_last_epoch(your_data, tmp_path):
    """Kill the CLI once the first epoch's checkpoint is on disk; the same command resumes after
    that epoch and ends with the weights of a training that was never interrupted."""
    recipe = ["epochs=3", "image_size=48", "batch_size=4", "bn_recalibration_images=8"]
    command = [sys.executable, str(ROOT / "run_all.py"), "--profile", "custom", "--data", str(your_data), "--train",
               "--from-scratch", "--models", "smoke_resnet50", "--recipe", *recipe, "--experiment", "accuracy",
               "--quiet"]
    killed_cache, clean_cache = tmp_path / "killed", tmp_path / "clean"
    env = {**os.environ, "BAGREPRO_CACHE": str(killed_cache)}
    process = subprocess.Popen([*command, "--out", str(tmp_path / "a")], env=env, cwd=ROOT,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not list((killed_cache / "trained").glob("*.epoch.pt")) and time.monotonic() < deadline:
        assert process.poll() is None, "the training ended before its first checkpoint was seen"
        time.sleep(0.05)
    process.kill()
    process.wait()
    checkpoint = torch.load(next((killed_cache / "trained").glob("*.epoch.pt")), weights_only=True)
    assert 1 <= checkpoint["epoch"] < 3
    assert not list((killed_cache / "trained").glob("*-*.pt.json"))  # no finished weights yet
    resumed = subprocess.run([*command, "--out", str(tmp_path / "a")], env=env, cwd=ROOT, capture_output=True,
                             text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming train tuned_smoke_resnet50 after epoch {checkpoint['epoch']} of 3" in resumed.stdout
    assert not list((killed_cache / "trained").glob("*.epoch.pt"))  # removed once the weights are saved
    clean = subprocess.run([*command, "--out", str(tmp_path / "b")], env={**os.environ, "BAGREPRO_CACHE": str(clean_cache)},
                           cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert clean.returncode == 0, clean.stderr
    [killed_weights] = (killed_cache / "trained").glob("tuned_smoke_resnet50-*[!t].pt")
    [clean_weights] = (clean_cache / "trained").glob("tuned_smoke_resnet50-*[!t].pt")
    assert killed_weights.name == clean_weights.name  # the same key
    assert _weights_digest(killed_weights) == _weights_digest(clean_weights)
    record = json.loads(killed_weights.with_suffix(".json").read_text())
    assert len(record["val_top1_per_epoch"]) == 3 - checkpoint["epoch"]  # the epochs this process ran


def test_random_crops_are_windows_of_the_image_and_evaluation_takes_the_centre():
    side, crop, count = 12, 8, 64
    rows, cols = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
    image = torch.stack([rows, cols, torch.zeros_like(rows)], -1).to(torch.uint8)
    data = training.TrainingImages(image.expand(count, -1, -1, -1).contiguous(), torch.zeros(count, dtype=torch.long), crop)
    recipe = TrainRecipe(random_crop=True, hflip=False, vflip=False)
    identity = lambda x: x * 255  # noqa: E731  back to pixel coordinates
    crops = data.inputs(torch.arange(count), identity, recipe, torch.Generator().manual_seed(0)).round().long()
    top, left = crops[:, 0, 0, 0], crops[:, 1, 0, 0]
    assert torch.equal(crops[:, 0], top[:, None, None] + torch.arange(crop)[None, :, None].expand(count, crop, crop))
    assert torch.equal(crops[:, 1], left[:, None, None] + torch.arange(crop)[None, None, :].expand(count, crop, crop))
    assert top.min() >= 0 and top.max() <= side - crop and len(set(top.tolist())) > 1  # random, within bounds
    centre = data.inputs(torch.arange(2), identity).round().long()
    assert (centre[:, 0, 0, 0] == (side - crop) // 2).all() and (centre[:, 1, 0, 0] == (side - crop) // 2).all()


def test_fine_tuning_keeps_the_imagenet_weights_and_makes_a_new_head(tmp_path, monkeypatch):
    """A base with released-format weights (a file:// URL named by its hash): every tensor but the
    classifier is the released one, the head is new and has the data's classes."""
    source = get_spec("smoke_resnet50").builder(num_classes=1000)
    torch.save(source.state_dict(), tmp_path / "tmp.pth")
    digest = hashlib.sha256((tmp_path / "tmp.pth").read_bytes()).hexdigest()[:8]
    released = tmp_path / f"tinyresnet-{digest}.pth"
    (tmp_path / "tmp.pth").rename(released)
    register_model("test_tiny_resnet", weights=WeightsSpec(released.as_uri()))(
        lambda num_classes=1000: get_spec("smoke_resnet50").builder(num_classes=num_classes))
    try:
        lines = []
        model = tuning.with_new_head("test_tiny_resnet", 3, pretrained=True, progress=False, log=lines.append)
    finally:
        unregister_model("test_tiny_resnet")
    released_state, state = source.state_dict(), model.state_dict()
    assert state["fc.weight"].shape == (3, released_state["fc.weight"].shape[1])
    assert all(torch.equal(state[key], released_state[key]) for key in state if not key.startswith("fc."))
    assert "new head: fc.bias, fc.weight" in lines[0]


def test_bad_input_is_one_line(your_data, tmp_path):
    with pytest.raises(DataError, match=r"needs .*/train/ and .*/val/ ImageFolders.* has no val/"):
        tuning.load_your_data(_only_train(tmp_path))
    with pytest.raises(ConfigError, match="--recipe has no setting 'epoch'; settings: .*epochs"):
        tuning.parse_recipe(["epoch=3"])
    with pytest.raises(ConfigError, match="setting 'lr' must be float"):
        tuning.parse_recipe(["lr=fast"])
    assert tuning.parse_recipe(["epochs=3", "optimizer=adamw"]).epochs == 3
    with pytest.raises(ConfigError, match="has no ImageNet weights to fine-tune from; add --from-scratch"):
        tuning.prepare(your_data, ["smoke_bagnet9"], None, False, torch.device("cpu"))
    assert run_all.main(["--profile", "demo", "--train", "--out", str(tmp_path)]) == 2
    assert run_all.main(["--profile", "custom", "--data", str(your_data), "--recipe", "epochs=1",
                         "--models", "smoke_bagnet9", "--out", str(tmp_path)]) == 2


def _only_train(tmp_path: Path) -> Path:
    root = tmp_path / "only_train"
    (root / "train" / "a").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(root / "train" / "a" / "x.png")
    return root


def test_a_class_the_train_split_lacks_is_an_error(your_data, tmp_path):
    import shutil

    root = tmp_path / "extra"
    shutil.copytree(your_data, root)
    (root / "test" / "desert").mkdir()
    Image.new("RGB", (8, 8)).save(root / "test" / "desert" / "x.png")
    with pytest.raises(DataError, match="test has class folder.*the train split lacks: desert"):
        tuning.load_your_data(root)
