"""Unreadable images in a user's data: one line and exit 2, --check-data, --skip-unreadable.

Real files written with PIL into an ImageFolder (good JPEGs and PNGs, the odd modes and shapes that
must go through, and three damaged files), run through the CLI with the custom profile and a tiny
user model registered from a file, as a user would. A CLI run decodes in DataLoader workers
(``default_workers()`` is at least 1), so the worker path is the one exercised.
"""

from __future__ import annotations

import json
import os
import shutil
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

import run_all
from bagrepro.data.imagenet import image_folder
from bagrepro.data.images import UnreadableImageError
from bagrepro.data.imagesets import FileImageSet, default_workers
from bagrepro.models import registry
from bagrepro.models.preprocess import Preprocess

MODEL = "unreadable_test_model"
CLASSES = ("cats", "dogs", "owls")
#: image id -> what must be in the reason
BAD = {"cats/truncated": "image file is truncated", "dogs/empty": "empty file (0 bytes)",
       "owls/x": "not an image file"}
#: images that must go through: CMYK, greyscale, RGBA, 16-bit PNG, 20 px, 40x2000 px
ODD = ("cats/cmyk", "cats/grey", "dogs/rgba", "dogs/deep16", "owls/tiny", "owls/wide")


def _pixels(generator, height, width):
    return generator.integers(0, 256, (height, width, 3), dtype=np.uint8)


def write_good(root) -> list[str]:
    """A small ImageFolder of readable images; returns their ids."""
    generator = np.random.default_rng(0)
    ids = []
    for label, name in enumerate(CLASSES):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(2):
            Image.fromarray(_pixels(generator, 24 + i, 30)).save(root / name / f"jpeg{i}.JPEG", quality=90)
            Image.fromarray(_pixels(generator, 26, 22 + i)).save(root / name / f"png{i}.png")
            ids += [f"{name}/jpeg{i}", f"{name}/png{i}"]
    Image.fromarray(_pixels(generator, 24, 24)).convert("CMYK").save(root / "cats" / "cmyk.jpg")
    Image.fromarray(_pixels(generator, 24, 24)).convert("L").save(root / "cats" / "grey.png")
    rgba = np.dstack([_pixels(generator, 24, 24), np.full((24, 24, 1), 100, np.uint8)])
    Image.fromarray(rgba, mode="RGBA").save(root / "dogs" / "rgba.png")
    deep = Image.fromarray(generator.integers(0, 65536, (24, 24)).astype(np.uint16))
    assert deep.mode.startswith("I;16")
    deep.save(root / "dogs" / "deep16.png")
    Image.fromarray(_pixels(generator, 20, 20)).save(root / "owls" / "tiny.png")
    Image.fromarray(_pixels(generator, 40, 2000)).save(root / "owls" / "wide.jpg")
    return sorted(ids + list(ODD))


def write_bad(root, which=tuple(BAD)) -> None:
    """The damaged files: a truncated JPEG, a zero-byte file, a text file named .JPEG."""
    if "cats/truncated" in which:
        whole = (root / "cats" / "jpeg0.JPEG").read_bytes()
        (root / "cats" / "truncated.JPEG").write_bytes(whole[: len(whole) // 2])
    if "dogs/empty" in which:
        (root / "dogs" / "empty.JPEG").write_bytes(b"")
    if "owls/x" in which:
        (root / "owls" / "x.JPEG").write_text("this is not a JPEG\n")


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """good: readable images only; bad: the same plus the three damaged files; the model file."""
    base = tmp_path_factory.mktemp("unreadable")
    good_ids = write_good(base / "good")
    shutil.copytree(base / "good", base / "bad")
    write_bad(base / "bad")
    model_file = base / "my_model.py"
    model_file.write_text(textwrap.dedent(f"""
        from torch import nn
        from bagrepro.models import register_model
        from bagrepro.models.preprocess import Preprocess

        @register_model("{MODEL}", num_classes=3, preprocess=Preprocess(resize=20, crop=16))
        def build(num_classes=3):
            return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                 nn.Linear(4, num_classes))
    """))
    return {"good": base / "good", "bad": base / "bad", "model": model_file, "good_ids": good_ids}


def run(folders, data, out, *extra) -> int:
    """The CLI on the custom profile with the user's model file, as a user would call it."""
    assert default_workers() >= 1  # the DataLoader decodes in worker processes
    try:
        return run_all.main(["--profile", "custom", "--data", str(data), "--register-models", str(folders["model"]),
                             "--models", MODEL, "--experiment", "accuracy", "--quiet", "--out", str(out), *extra])
    finally:
        registry.unregister_model(MODEL)


@pytest.mark.parametrize("bad_id", list(BAD))
def test_an_unreadable_image_stops_the_run_in_one_line(tmp_path, folders, capfd, bad_id):
    data = tmp_path / "data"
    shutil.copytree(folders["good"], data)
    write_bad(data, [bad_id])
    capfd.readouterr()
    assert run(folders, data, tmp_path / "out") == 2
    err = capfd.readouterr().err
    path = data / (bad_id + ".JPEG")
    assert err.count("\n") == 1 and err.startswith(f"error: cannot read image {path}: {BAD[bad_id]}"), err
    assert "--check-data" in err and "--skip-unreadable" in err
    assert "Traceback" not in err and "DataLoader worker" not in err
    assert not list((tmp_path / "out").rglob("predictions.csv"))


def test_check_data_lists_every_unreadable_file_at_once(tmp_path, folders, capfd):
    out = tmp_path / "out"
    capfd.readouterr()
    assert run(folders, folders["bad"], out, "--check-data") == 2
    lines = capfd.readouterr().out.splitlines()
    listed = [line for line in lines if ": " in line and line.startswith(str(folders["bad"]))]
    expected = [f"{folders['bad'] / (bad_id + '.JPEG')}: " for bad_id in BAD]
    assert len(listed) == 3 and all(line.startswith(e) for line, e in zip(listed, expected)), lines
    assert all(reason in line for line, reason in zip(listed, BAD.values()))
    total = len(folders["good_ids"]) + len(BAD)
    assert lines[-1] == f"checked {total} images in {folders['bad']}: 3 unreadable"
    assert not (out / "results").exists() and not (out / "figures").exists()

    assert run(folders, folders["good"], out, "--check-data") == 0
    assert capfd.readouterr().out.splitlines()[-1].endswith(": 0 unreadable")
    assert run_all.main(["--profile", "smoke", "--check-data", "--quiet", "--out", str(out)]) == 0
    assert "makes its own images: there are no image files to check" in capfd.readouterr().out


def test_check_data_on_an_imagenet_layout(tmp_path, capfd):
    """The paper profile's --data: an ImageNet layout (here one folder per synset)."""
    generator = np.random.default_rng(1)
    for number, wnid in enumerate(("n01440764", "n01443537"), start=1):
        (tmp_path / "val" / wnid).mkdir(parents=True)
        Image.fromarray(_pixels(generator, 24, 24)).save(tmp_path / "val" / wnid / f"ILSVRC2012_val_{number:08d}.JPEG")
    bad = tmp_path / "val" / "n01443537" / "ILSVRC2012_val_00000003.JPEG"
    bad.write_bytes(b"")
    capfd.readouterr()
    assert run_all.main(["--profile", "paper", "--data", str(tmp_path / "val"), "--check-data", "--quiet",
                         "--out", str(tmp_path / "out")]) == 2
    assert capfd.readouterr().out.splitlines()[-2:] == [
        f"{bad}: empty file (0 bytes)", f"checked 3 images in {tmp_path / 'val'}: 1 unreadable"]


def test_skip_unreadable_runs_on_the_readable_images(tmp_path, folders, capfd):
    out = tmp_path / "out"
    assert run(folders, folders["bad"], out, "--skip-unreadable") == 0
    results = out / "results" / "accuracy"
    predictions = pd.read_csv(results / "predictions.csv")
    assert sorted(predictions["image_id"]) == folders["good_ids"]  # the odd modes and shapes went through
    assert (predictions["true_class"] == predictions["image_id"].str.split("/").str[0].map(CLASSES.index)).all()
    skipped = pd.read_csv(results / "skipped.csv")
    assert list(skipped.columns) == ["image_id", "path", "reason"]
    assert skipped["image_id"].tolist() == list(BAD)
    assert skipped["path"].tolist() == [str(folders["bad"] / (i + ".JPEG")) for i in BAD]
    assert all(expected in reason for reason, expected in zip(skipped["reason"], BAD.values()))
    for table in ("predictions", "summary", "skipped"):
        meta = json.loads((results / f"{table}.meta.json").read_text())
        assert meta["skipped_images"] == 3 and meta["num_images"] == len(folders["good_ids"]), table
    report = (out / "figures" / "report.html").read_text()
    assert f"{len(folders['good_ids'])} images (3 unreadable skipped)" in report
    assert "3 unreadable image(s) left out" in capfd.readouterr().out

    # the same out folder, data without damaged files: no skipped.csv is left behind
    assert run(folders, folders["good"], out, "--skip-unreadable") == 0
    assert not (results / "skipped.csv").exists() and not (results / "skipped.meta.json").exists()
    assert json.loads((results / "predictions.meta.json").read_text())["skipped_images"] == 0
    assert "unreadable skipped" not in (out / "figures" / "report.html").read_text()


@pytest.mark.parametrize("workers", [0, 2])
def test_good_batches_are_torchs_own_and_a_bad_one_raises_its_line(folders, workers):
    transform = Preprocess(resize=20, crop=16).pil_transform()
    images = FileImageSet(image_folder(folders["good"]), transform, "good", workers=workers, hint="; hint")
    plain = torch.utils.data.DataLoader(image_folder(folders["good"], transform=transform), batch_size=4)
    ours = list(images.batches(4))
    assert len(ours) == len(plain)
    for (batch, labels, ids), (want, want_labels, want_ids) in zip(ours, plain):
        assert torch.equal(batch, want) and torch.equal(labels, want_labels) and ids == list(want_ids)

    damaged = FileImageSet(image_folder(folders["bad"]), transform, "bad", workers=workers, hint="; hint")
    with pytest.raises(UnreadableImageError) as info:
        for _ in damaged.batches(4):
            pass
    assert str(info.value) == (f"cannot read image {folders['bad'] / 'cats' / 'truncated.JPEG'}: "
                               f"{info.value.reason}; hint")
    assert info.value.reason.startswith("image file is truncated")


def test_a_paper_run_lists_every_unreadable_file_before_the_first_experiment(tmp_path, capfd):
    """The paper profile checks its data first: all bad files at once, before any model or GPU hour."""
    from tests.test_paper_rehearsal import write_imagenet_devkit_layout

    data = tmp_path / "val"
    data.mkdir()
    write_imagenet_devkit_layout(data)
    bad = [data / "ILSVRC2012_val_00000001.JPEG", data / "ILSVRC2012_val_00000003.JPEG"]
    bad[0].write_bytes(b"")
    bad[1].write_text("not a JPEG")
    capfd.readouterr()
    assert run_all.main(["--profile", "paper", "--data", str(data), "--models", "bagnet9", "--experiment", "accuracy",
                         "--quiet", "--out", str(tmp_path / "out")]) == 2
    captured = capfd.readouterr()
    assert all(str(path) in captured.out for path in bad)
    assert captured.err.count("\n") == 1 and "2 of " in captured.err and "--skip-unreadable" in captured.err
    assert not (tmp_path / "out" / "results" / "accuracy").exists()
    assert not (Path(os.environ["TORCH_HOME"]) / "hub").exists()  # no weights were fetched
