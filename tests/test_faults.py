"""Faults: runs killed with -9 and resumed, two runs on one folder, damaged units and caches, an
output folder that cannot be written, a weights download cut off half way. Each case: what the user
sees (one line), the exit code, and what is kept."""

from __future__ import annotations

import http.server
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import run_all
from bagrepro.harness.lock import LOCK_NAME

ROOT = Path(__file__).resolve().parent.parent

#: a smoke run small enough to kill several times: 13 units over three experiments
TINY_RUN = """
import dataclasses, sys
sys.path.insert(0, {root!r})
import run_all
from bagrepro.harness import profiles
settings = {{"interactions": {{"patch_sizes": (16,), "num_images": 4}},
            "masking": {{"num_images": 2, "steps": 4, "random_seeds": 1, "tested_roles": ("vgg16",),
                        "white_box": ("saliency",)}}}}
profiles.register_profile(dataclasses.replace(profiles.PROFILES["smoke"], name="faults", num_images=8,
                                              settings=profiles.frozen(settings)))
sys.exit(run_all.main(["--profile", "faults", "--models", "smoke_bagnet9", "smoke_bagnet17", "smoke_bagnet33",
                       "smoke_vgg16", "--experiment", "accuracy", "--experiment", "interactions",
                       "--experiment", "masking", "--quiet", "--out", sys.argv[1]]))
"""


def tiny_run(out: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", TINY_RUN.format(root=str(ROOT)), str(out)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finished_units(out: Path) -> int:
    return len(list((out / "results").glob("*/.units/*/*.csv")))


def csvs(out: Path) -> dict[str, pd.DataFrame]:
    return {str(p.relative_to(out)): pd.read_csv(p) for p in sorted((out / "results").glob("*/*.csv"))}


def test_killed_runs_resume_to_the_same_csvs(tmp_path):
    reference = tiny_run(tmp_path / "reference")
    assert reference.wait(timeout=600) == 0, reference.stderr.read()
    out = tmp_path / "killed"
    for kill_after in (1, 5, 10):  # kill -9 as soon as the k-th unit is done (mid-experiment each time)
        run = tiny_run(out)
        while finished_units(out) < kill_after and run.poll() is None:
            time.sleep(0.05)
        os.kill(run.pid, signal.SIGKILL)
        run.wait()
        assert finished_units(out) >= kill_after
        assert (out / LOCK_NAME).exists()  # a killed run leaves its lock: the next run takes it over
    resumed = tiny_run(out)
    assert resumed.wait(timeout=600) == 0, resumed.stderr.read()
    expected, got = csvs(tmp_path / "reference"), csvs(out)
    assert expected.keys() == got.keys() and len(got) >= 7
    for name in expected:
        pd.testing.assert_frame_equal(expected[name], got[name], obj=name)
    assert not list(out.rglob("*.tmp")) and not (out / LOCK_NAME).exists()


# ---- two runs on one folder, and the lock of a killed run ------------------------------------------
SMOKE = ["--profile", "smoke", "--experiment", "thresholding", "--models", "smoke_bagnet33", "--quiet"]


def write_lock(out: Path, pid: int, host: str | None = None) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / LOCK_NAME).write_text(json.dumps({"host": host or socket.gethostname(), "pid": pid,
                                             "started": "2026-12-01 10:00:00 UTC"}))


def test_a_second_run_on_a_folder_in_use_fails_in_one_line(tmp_path, capsys):
    write_lock(tmp_path, os.getpid())  # a live run holds the folder
    assert run_all.main([*SMOKE, "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is in use by another run" in err and f"PID {os.getpid()}" in err
    assert not (tmp_path / "results").exists() and (tmp_path / LOCK_NAME).exists()  # the holder's lock stays
    write_lock(tmp_path, os.getpid(), host="another-machine")  # another host: never taken over
    assert run_all.main([*SMOKE, "--out", str(tmp_path)]) == 2
    assert "host another-machine" in capsys.readouterr().err


def test_a_stale_lock_and_stale_temporary_files_are_cleared(tmp_path, capsys):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    write_lock(tmp_path, dead.pid)
    stale = [tmp_path / "figures" / "x" / ".fig.png.ab12.tmp", tmp_path / "results" / "y" / ".t.csv.cd34.tmp"]
    for path in stale:
        path.parent.mkdir(parents=True)
        path.write_text("half")
    assert run_all.main([*SMOKE, "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert f"taking over the stale lock of PID {dead.pid}" in out and "removed 2 temporary file(s)" in out
    assert not any(path.exists() for path in stale) and not (tmp_path / LOCK_NAME).exists()


def test_the_lock_is_released_when_a_run_fails(tmp_path):
    assert run_all.main([*SMOKE, "--data", str(tmp_path), "--out", str(tmp_path)]) == 2  # smoke takes no --data
    assert not (tmp_path / LOCK_NAME).exists()


def test_an_output_folder_that_cannot_be_written(tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    assert run_all.main([*SMOKE, "--out", str(blocker / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"cannot create the output folder {blocker / 'out'}" in err
    if os.geteuid() != 0:  # root writes into read-only folders: only checkable as another user
        readonly = tmp_path / "readonly"
        readonly.mkdir(mode=0o555)
        assert run_all.main([*SMOKE, "--out", str(readonly)]) == 2
        assert "cannot write in the output folder" in capsys.readouterr().err


# ---- damaged state ---------------------------------------------------------------------------------
ACCURACY = ["--profile", "smoke", "--experiment", "accuracy", "--models", "smoke_bagnet9", "smoke_vgg16", "--quiet"]


@pytest.mark.parametrize("damage", ["truncated", "corrupted", "no_checksum"])
def test_a_damaged_unit_is_reported_and_computed_again(tmp_path, capsys, damage):
    assert run_all.main([*ACCURACY, "--out", str(tmp_path)]) == 0
    first = pd.read_csv(tmp_path / "results" / "accuracy" / "predictions.csv")
    (unit,) = (tmp_path / "results" / "accuracy" / ".units").glob("*/smoke_vgg16.csv")
    data = unit.read_bytes()
    if damage == "truncated":
        unit.write_bytes(data[: len(data) // 2])
    elif damage == "corrupted":  # same length, one digit changed: only a checksum can tell
        position = data.index(b"0.", len(data) // 2)
        unit.write_bytes(data[:position] + b"9" + data[position + 1:])
    else:
        unit.with_name(unit.name + ".sha256").unlink()
    capsys.readouterr()
    assert run_all.main([*ACCURACY, "--out", str(tmp_path)]) == 0
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{unit} is damaged" in err and "computing it again" in err
    pd.testing.assert_frame_equal(first, pd.read_csv(tmp_path / "results" / "accuracy" / "predictions.csv"))


def test_a_damaged_cached_heatmap_is_computed_again(capsys):
    from bagrepro.methods.heatmap_cache import cached_heatmaps
    from bagrepro.models import create_model
    from bagrepro.models.fast import fuse_for_inference

    model = fuse_for_inference(create_model("smoke_bagnet9"))
    images, targets = torch.rand(2, 3, 24, 24), torch.tensor([1, 3])
    first = cached_heatmaps(model, images, ["a", "b"], targets)
    (path, *_), = [sorted(Path(os.environ["BAGREPRO_CACHE"], "heatmaps", "smoke_bagnet9").glob("*.npz"))]
    for damaged in (path.read_bytes()[:40], b"", np.zeros(3).tobytes()):
        path.write_bytes(damaged)
        capsys.readouterr()
        again = cached_heatmaps(model, images, ["a", "b"], targets)
        assert torch.equal(first, again)
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"cached heatmap {path} is damaged" in err


def test_a_damaged_demo_world_is_generated_again(capsys):
    import dataclasses

    from bagrepro.demo import store

    config = dataclasses.replace(store.DEMO_WORLD, train_per_class=2, val_per_class=1, test_per_class=1)
    first = store.make_world(config)
    first_train_masks = first.train.masks
    path = store.world_path(config, "test")
    assert len(first.test)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    capsys.readouterr()
    again = store.make_world(config)
    assert len(again.test)  # a split is read (and found damaged) when first used
    assert "is damaged" in capsys.readouterr().err
    assert np.array_equal(first.test.images, again.test.images) and np.array_equal(first_train_masks, again.train.masks)
    assert store.make_world(config).test.images.shape == first.test.images.shape  # and cached again


def test_a_damaged_demo_model_is_trained_again(capsys):
    import dataclasses

    from bagrepro.demo import store, training, zoo

    world = store.make_world(dataclasses.replace(store.DEMO_WORLD, train_per_class=3, val_per_class=1,
                                                 test_per_class=1))
    recipe = dataclasses.replace(zoo.DEMO_ZOO["demo_bagnet9"].recipe, epochs=1, batch_size=12,
                                 bn_recalibration_images=12)
    first = training.get_trained("demo_bagnet9", world, recipe, progress=False).state_dict()
    path = training.model_path("demo_bagnet9", world, recipe)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte: torch.load alone may not notice
    path.write_bytes(bytes(data))
    capsys.readouterr()
    again = training.get_trained("demo_bagnet9", world, recipe, progress=False).state_dict()
    assert f"cached trained model {path} is damaged" in capsys.readouterr().err
    assert all(torch.equal(first[key], again[key]) for key in first)  # retrained: the same weights


def test_a_download_cut_off_half_way_is_not_kept(tmp_path, monkeypatch):
    from bagrepro.core.errors import WeightsError
    from bagrepro.models import weights as W

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    payload = os.urandom(1 << 16)

    class CutOff(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802  (http.server's name)
            self.send_response(200)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload[: len(payload) // 3])  # then the connection drops

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), CutOff)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        for name in ("tiny-0123456789.pth", "tiny.pth"):  # with a hash in its name, and without
            spec = W.WeightsSpec(f"http://127.0.0.1:{server.server_address[1]}/{name}")
            with pytest.raises(WeightsError) as error:
                W.resolve_weights_file(spec, progress=False)
            assert "\n" not in str(error.value) and spec.url in str(error.value)
            assert not W.cache_path(spec).exists()
            assert not [p for p in W.cache_path(spec).parent.glob("*") if p.is_file()]
    finally:
        server.shutdown()
        server.server_close()


def test_a_lock_being_written_is_respected_and_an_old_unreadable_one_is_taken_over(tmp_path, capsys):
    (tmp_path / LOCK_NAME).write_text("")  # a run that created its lock a moment ago and writes it now
    assert run_all.main([*SMOKE, "--out", str(tmp_path)]) == 2
    assert "is in use by another run" in capsys.readouterr().err
    old = time.time() - 60  # the same half-written lock a minute later: its run was killed
    os.utime(tmp_path / LOCK_NAME, (old, old))
    assert run_all.main([*SMOKE, "--out", str(tmp_path)]) == 0
    assert not (tmp_path / LOCK_NAME).exists()
