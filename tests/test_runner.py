"""The CLI, the runner's contracts (CSVs, sidecars, resume, errors) and the zoo registry."""

from __future__ import annotations

import json
import textwrap

import numpy as np

import pandas as pd
import pytest
import torch
from PIL import Image
from torch import nn

import run_all
from bagrepro.core.errors import ConfigError
from bagrepro.models import create_model, get_spec, list_models, register_model, register_models_from_file, unregister_model
from bagrepro.models import registry
from bagrepro.harness.results import UnitStore, write_csv

SMOKE_ACCURACY = ["--profile", "smoke", "--experiment", "accuracy", "--quiet"]


def run_cli(tmp_path, *args) -> int:
    return run_all.main([*args, "--out", str(tmp_path)])


# ---- registry -------------------------------------------------------------------------------------
def test_registry_lists_paper_models_with_their_specs():
    assert list_models("bagnet*") == ["bagnet17", "bagnet33", "bagnet9"]
    assert {"vgg11", "vgg16", "resnet50", "resnet152", "densenet169"} <= set(list_models())
    assert [get_spec(f"bagnet{q}").receptive_field for q in (9, 17, 33)] == [9, 17, 33]
    assert get_spec("resnet50").receptive_field is None
    # V1 weights, named explicitly (V2 would silently change every result)
    assert get_spec("resnet50").weights.filename == "resnet50-0676ba61.pth"
    assert get_spec("bagnet33").weights.expected_prefix == "2ddd53ed"
    assert get_spec("vgg16").preprocess.crop == 224 and get_spec("vgg16").preprocess.resize == 256


def test_registry_refuses_duplicates_and_unknown_names():
    with pytest.raises(ConfigError, match="already registered"):
        register_model("bagnet33")(lambda num_classes=1000: nn.Identity())
    with pytest.raises(ConfigError, match="unknown model 'bagnet34'.*bagnet33"):
        create_model("bagnet34")


def test_user_model_file_registers_with_one_call(tmp_path):
    source = tmp_path / "my_models.py"
    source.write_text(textwrap.dedent("""
        from torch import nn
        from bagrepro.models import register_model

        @register_model("user_linear_test", num_classes=10)
        def user_linear_test(num_classes=10):
            return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, num_classes))
    """))
    try:
        assert register_models_from_file(source) == ["user_linear_test"]
        model = create_model("user_linear_test")
        assert model(torch.rand(2, 3, 8, 8)).shape == (2, 10)
        assert not model.training and model.weights_source.startswith("random init")
    finally:
        registry.unregister_model("user_linear_test")


def test_random_weights_depend_on_name_and_seed_only():
    torch.manual_seed(1)
    first = create_model("smoke_bagnet9").state_dict()
    after = torch.rand(3)
    torch.manual_seed(1)
    create_model("smoke_vgg16")  # another model built first, the global stream elsewhere
    torch.rand(5)
    again = create_model("smoke_bagnet9").state_dict()
    assert all(torch.equal(first[key], again[key]) for key in first)
    torch.manual_seed(1)
    create_model("smoke_resnet50")
    assert torch.equal(torch.rand(3), after)  # building a model does not move the global stream
    other = create_model("smoke_bagnet9", init_seed=1).state_dict()
    assert not torch.equal(first["conv1.weight"], other["conv1.weight"])


# ---- results I/O ----------------------------------------------------------------------------------
def test_write_csv_is_atomic(tmp_path):
    path = tmp_path / "table.csv"
    write_csv(pd.DataFrame({"a": [1]}), path, {"k": 1})

    class Broken(pd.DataFrame):
        def to_csv(self, *args, **kwargs):
            open(args[0], "w").write("half a row")
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        write_csv(Broken({"a": [2]}), path)
    assert pd.read_csv(path)["a"].tolist() == [1]  # the old file is intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["table.csv", "table.meta.json"]  # no temp file left


# ---- the accuracy experiment through the CLI --------------------------------------------------------
def test_smoke_accuracy_writes_csvs_sidecar_and_figure(tmp_path):
    assert run_cli(tmp_path, *SMOKE_ACCURACY) == 0
    results = tmp_path / "results" / "accuracy"
    predictions = pd.read_csv(results / "predictions.csv")
    summary = pd.read_csv(results / "summary.csv")
    models = list(dict.fromkeys(predictions["model"]))
    assert len(models) == 6 and len(predictions) == 6 * 24
    assert predictions.groupby("model")["image_id"].nunique().eq(24).all()
    # top-1 correct implies top-5 correct; the summary is derived from the per-image rows
    assert (predictions["correct_top5"] | ~predictions["correct_top1"]).all()
    recomputed = predictions.groupby("model", sort=False)["correct_top5"].mean().mul(100)
    assert summary.set_index("model")["top5"].reindex(recomputed.index).tolist() == pytest.approx(recomputed.tolist())
    # the paper gives BagNet-33's top-5 only (Fig. 1B), torchvision documents the deep models
    bagnet33 = summary[summary["model"] == "smoke_bagnet33"].iloc[0]
    assert bagnet33["reference_top5"] == 87.6 and bagnet33["reference_top5_source"] == "paper, Fig. 1B"
    assert pd.isna(bagnet33["reference_top1"]) and pd.isna(summary.loc[summary["role"] == "bagnet9", "reference_top5"]).all()
    assert (summary.loc[summary["role"] == "resnet50", "reference_top1_source"] == "torchvision docs (IMAGENET1K_V1)").all()
    meta = json.loads((results / "predictions.meta.json").read_text())
    assert meta["profile"] == "smoke" and meta["seed"] == 0 and meta["num_images"] == 24
    assert {"torch", "torchvision", "python"} <= set(meta["packages"]) and meta["commit"]
    assert (tmp_path / "figures" / "accuracy" / "fig1b_accuracy.png").stat().st_size > 10_000
    assert (tmp_path / "figures" / "accuracy" / "fig1b_accuracy.pdf").is_file()


def test_accuracy_of_a_constant_model_is_the_class_share(tmp_path):
    """A model whose logits are 9, 8, ..., 0 for classes 0..9 on every image: top-1 = share of class 0,
    top-5 = share of classes 0-4."""

    class Constant(nn.Module):
        def forward(self, x):
            return torch.arange(9, -1, -1, dtype=x.dtype).expand(x.shape[0], 10)

    register_model("constant_test", num_classes=10, preprocess=get_spec("smoke_vgg16").preprocess)(
        lambda num_classes=10: Constant())
    try:
        assert run_cli(tmp_path, *SMOKE_ACCURACY, "--models", "constant_test", "--limit", "23") == 0
    finally:
        registry.unregister_model("constant_test")
    predictions = pd.read_csv(tmp_path / "results" / "accuracy" / "predictions.csv")
    assert len(predictions) == 23
    assert predictions["correct_top1"].mean() == pytest.approx((predictions["true_class"] == 0).mean())
    assert predictions["correct_top5"].mean() == pytest.approx((predictions["true_class"] < 5).mean())
    assert (predictions["pred_1"] == 0).all() and (predictions["pred_5"] == 4).all()


def test_finished_units_are_reused_and_force_recomputes(tmp_path, monkeypatch):
    from bagrepro.harness import predictions

    assert run_cli(tmp_path, *SMOKE_ACCURACY, "--models", "smoke_bagnet9", "smoke_vgg16") == 0
    first = pd.read_csv(tmp_path / "results" / "accuracy" / "predictions.csv")

    def must_not_run(*args, **kwargs):
        raise AssertionError("a finished unit was recomputed")

    monkeypatch.setattr(predictions, "predict", must_not_run)
    assert run_cli(tmp_path, *SMOKE_ACCURACY, "--models", "smoke_bagnet9", "smoke_vgg16") == 0
    pd.testing.assert_frame_equal(first, pd.read_csv(tmp_path / "results" / "accuracy" / "predictions.csv"))
    with pytest.raises(AssertionError, match="recomputed"):
        run_cli(tmp_path, *SMOKE_ACCURACY, "--models", "smoke_bagnet9", "smoke_vgg16", "--force")


def test_interrupted_run_keeps_finished_units_and_no_half_written_csv(tmp_path, monkeypatch):
    from bagrepro.harness import predictions

    original = predictions.predict

    def interrupted_on_second_model(ctx, model, images, desc):
        if desc == "smoke_vgg16":
            raise KeyboardInterrupt
        return original(ctx, model, images, desc)

    monkeypatch.setattr(predictions, "predict", interrupted_on_second_model)
    assert run_cli(tmp_path, *SMOKE_ACCURACY, "--models", "smoke_bagnet9", "smoke_vgg16") == 130
    results = tmp_path / "results" / "accuracy"
    assert not (results / "predictions.csv").exists()
    units = list(results.glob(".units/*/*.csv"))
    assert [u.stem for u in units] == ["smoke_bagnet9"]
    assert not list(results.rglob("*.tmp"))


def test_same_seed_gives_identical_csv(tmp_path):
    for out in ("a", "b"):
        assert run_all.main([*SMOKE_ACCURACY, "--models", "smoke_bagnet17", "--out", str(tmp_path / out)]) == 0
    a, b = (pd.read_csv(tmp_path / out / "results" / "accuracy" / "predictions.csv") for out in ("a", "b"))
    pd.testing.assert_frame_equal(a, b)


@pytest.mark.parametrize("args, message", [
    (["--experiment", "nope"], "unknown experiment 'nope'; experiments: accuracy"),
    (["--models", "nope"], "unknown model 'nope'; registered models:"),
    (["--models", "zz*"], "no registered model matches 'zz*'"),
    (["--profile", "nope"], "unknown profile 'nope'; profiles:"),
    (["--profile", "paper", "--experiment", "accuracy"], "needs --data DIR"),
    (["--profile", "smoke", "--models", "bagnet33", "--experiment", "accuracy"], "has 1000 classes but the data has 10"),
    (["--register-models", "/nonexistent/models.py"], "plugin file /nonexistent/models.py does not exist"),
])
def test_user_errors_are_one_line_and_exit_2(tmp_path, capsys, args, message):
    assert run_cli(tmp_path, "--quiet", *args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1
    assert not (tmp_path / "results" / "accuracy" / "predictions.csv").exists()


def test_list_and_figures_only(tmp_path, capsys):
    assert run_cli(tmp_path, "--list") == 0
    listing = capsys.readouterr().out
    assert "accuracy" in listing and "Fig. 1B" in listing and "bagnet33" in listing and "q=33" in listing
    # figures from CSVs alone: run once, delete the figures, rebuild them without models
    assert run_cli(tmp_path, *SMOKE_ACCURACY, "--models", "smoke_bagnet9") == 0
    figure = tmp_path / "figures" / "accuracy" / "fig1b_accuracy.png"
    figure.unlink()
    assert run_cli(tmp_path, "--figures-only", "--experiment", "accuracy") == 0
    assert figure.is_file()


def test_units_are_keyed_by_config(tmp_path):
    store_a, store_b = UnitStore(tmp_path / "a"), UnitStore(tmp_path / "b")
    store_a.save("model/x", pd.DataFrame({"v": [1]}))
    assert store_a.done("model/x") and not store_b.done("model/x")
    assert store_a.load("model/x")["v"].tolist() == [1]


def test_custom_profile_runs_a_user_model_on_a_user_image_folder(tmp_path):
    """One flag registers the model, --data points at an ImageFolder: the researcher's own setting."""
    import numpy as np
    from PIL import Image

    data = tmp_path / "my_data"
    generator = np.random.default_rng(0)
    for index in range(6):
        folder = data / ("cats" if index % 2 else "dogs")
        folder.mkdir(parents=True, exist_ok=True)
        pixels = generator.integers(0, 256, (40 + index, 50, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"img{index}.png")
    source = tmp_path / "my_models.py"
    source.write_text(textwrap.dedent("""
        from torch import nn
        from bagrepro.models.preprocess import Preprocess
        from bagrepro.models import register_model

        @register_model("user_folder_test", num_classes=2, preprocess=Preprocess(resize=36, crop=32))
        def user_folder_test(num_classes=2):
            return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                 nn.Linear(4, num_classes))
    """))
    try:
        code = run_cli(tmp_path, "--profile", "custom", "--data", str(data), "--register-models", str(source),
                       "--models", "user_folder_test", "--experiment", "accuracy", "--quiet")
    finally:
        registry.unregister_model("user_folder_test")
    assert code == 0
    predictions = pd.read_csv(tmp_path / "results" / "accuracy" / "predictions.csv")
    assert sorted(predictions["image_id"]) == sorted(f"{'cats' if i % 2 else 'dogs'}/img{i}" for i in range(6))
    assert (predictions["true_class"] == predictions["image_id"].str.startswith("dogs").astype(int)).all()


# ---- --plan and the device paths a CPU can test ------------------------------------------------------
def test_plan_prints_every_unit_and_an_estimate_and_writes_nothing(tmp_path, capsys):
    assert run_cli(tmp_path, "--profile", "smoke", "--plan", "--experiment", "accuracy", "--experiment", "masking") == 0
    output = capsys.readouterr().out
    assert "plan: profile 'smoke', 24 generated" in output and "device cpu" in output
    assert "accuracy           smoke_bagnet9        clean predictions" in output
    assert "curves, integrated_gradients" in output and "heatmaps for smoke_vgg16" in output
    assert "calibration (ms per image" in output and output.rstrip().splitlines()[-1].startswith("total")
    # Table 1's sample size: the paper's VGG-16 difference and the images that resolve it
    assert "[masking] Table 1 sample size" in output and "vgg16: bagnet17 - deeplift = -0.011 (paper, Table 1)" in output
    assert not (tmp_path / "results").exists() and not (tmp_path / "figures").exists()


def test_cpu_runs_do_not_pin_memory_and_cuda_is_refused_in_one_line(tmp_path, capsys):
    from bagrepro.data.imagenet import image_folder
    from bagrepro.data.imagesets import FileImageSet
    from bagrepro.models.preprocess import Preprocess
    from bagrepro.harness.context import RunContext
    from bagrepro.harness.sources import RunOptions

    data = tmp_path / "data"
    for name in ("a", "b"):
        (data / name).mkdir(parents=True)
        for index in range(3):
            Image.fromarray(np.full((20, 24, 3), 40 * index, np.uint8)).save(data / name / f"{index}.png")
    register_model("test_plain_cnn", num_classes=2, preprocess=Preprocess(resize=16, crop=16))(
        lambda num_classes=2: torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1),
                                                  torch.nn.Flatten(), torch.nn.Linear(4, num_classes)))
    try:
        ctx = RunContext(RunOptions(profile="custom", data=str(data), models=["test_plain_cnn"], device="cpu"))
        assert ctx.images().pin_memory is False and ctx.image_size == 16  # the crop, nothing decoded
    finally:
        unregister_model("test_plain_cnn")
    plain = list(FileImageSet(image_folder(data), Preprocess(resize=16, crop=16).pil_transform(), "x", workers=0)
                 .batches(4))
    pinned = list(FileImageSet(image_folder(data), Preprocess(resize=16, crop=16).pil_transform(), "x", workers=0,
                               pin_memory=True).batches(4))  # without a GPU torch leaves the memory pageable
    assert all(torch.equal(a[0], b[0]) for a, b in zip(plain, pinned))
    if not torch.cuda.is_available():
        assert run_cli(tmp_path, "--profile", "smoke", "--device", "cuda", "--experiment", "accuracy") == 2
        error = capsys.readouterr().err.strip()
        assert error == "error: device 'cuda' asked for, but torch sees no CUDA GPU on this machine"


def test_batch_size_auto_is_chosen_from_memory_and_used(tmp_path, capsys):
    assert run_cli(tmp_path, "--profile", "smoke", "--batch-size", "auto", "--experiment", "accuracy", "--quiet") == 0
    line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("[batch]"))
    chosen = int(line.split("auto: ")[1].split()[0])
    assert 1 <= chosen <= 256 and "free on cpu" in line
    meta = json.loads((tmp_path / "results" / "accuracy" / "summary.meta.json").read_text())
    assert meta["config"]["batch_size"] == chosen
    with pytest.raises(SystemExit) as exit_info:
        run_all.parse_args(["--batch-size", "0"])
    assert exit_info.value.code == 2


def test_plan_with_force_plans_everything_and_deletes_nothing(tmp_path, capsys):
    assert run_cli(tmp_path, "--profile", "smoke", "--experiment", "accuracy", "--quiet") == 0
    units = sorted((tmp_path / "results" / "accuracy" / ".units").rglob("*.csv"))
    assert units
    capsys.readouterr()
    assert run_cli(tmp_path, "--profile", "smoke", "--experiment", "accuracy", "--plan") == 0
    assert "clean predictions" not in capsys.readouterr().out  # finished: nothing to do
    assert run_cli(tmp_path, "--profile", "smoke", "--experiment", "accuracy", "--plan", "--force") == 0
    assert "clean predictions" in capsys.readouterr().out  # --force would recompute them ...
    assert sorted((tmp_path / "results" / "accuracy" / ".units").rglob("*.csv")) == units  # ... --plan did not


def test_a_plain_run_selects_the_papers_experiments_and_all_adds_the_extensions():
    from bagrepro.harness.registry import discover_experiments, select_experiments

    registry = discover_experiments()
    extensions = {name for name, experiment in registry.items() if not experiment.in_default_run}
    assert "attribution_truth" in extensions and "masking" not in extensions
    assert {e.name for e in select_experiments([])} == set(registry) - extensions
    assert {e.name for e in select_experiments(["all"])} == set(registry)
    assert [e.name for e in select_experiments(["attribution_truth"])] == ["attribution_truth"]
