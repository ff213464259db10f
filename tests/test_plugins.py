"""--plugin FILE.py: one file registers a model, an attribution method and an experiment; the
benchmark scores the plugin's method beside the package's (found in its CSVs); the notebook
function does the same for a callable; bad plugin files fail in one line."""

from __future__ import annotations

import textwrap

import pandas as pd
import pytest

import run_all
from bagrepro.harness.benchmark import benchmark_attribution
from bagrepro.harness.plugins import load_plugin
from bagrepro.harness.profiles import PROFILES
from bagrepro.methods.attribution import attribution_methods, get_attribution, unregister_attribution

PLUGIN = '''
import torch
from bagrepro.methods.attribution import register_attribution

@register_attribution("plugin_abs_gradient", passes="1 forward + 1 backward")
def plugin_abs_gradient(net, images, targets, *, plugin_power: float = 1.0):
    """|d logit / d x| ** plugin_power (plugin_power = 1.0: ours, a test plugin)."""
    images = images.requires_grad_(True)
    logits = net(images).gather(1, targets[:, None]).sum()
    (gradient,) = torch.autograd.grad(logits, images)
    return gradient.abs() ** plugin_power
'''


@pytest.fixture
def plugin_file(tmp_path):
    path = tmp_path / "my_method.py"
    path.write_text(PLUGIN)
    yield path
    if "plugin_abs_gradient" in attribution_methods():
        unregister_attribution("plugin_abs_gradient")


def test_a_plugin_method_is_scored_beside_the_others(plugin_file, tmp_path, capsys):
    code = run_all.main(["--plugin", str(plugin_file), "--profile", "smoke", "--models", "smoke_bagnet9",
                         "--experiment", "attribution_truth", "--out", str(tmp_path / "run"), "--quiet"])
    assert code == 0
    assert "registered 1 attribution method (plugin_abs_gradient)" in capsys.readouterr().out
    results = tmp_path / "run" / "results" / "attribution_truth"
    per_image = pd.read_csv(results / "per_image.csv")
    scored = per_image[per_image["method"] == "plugin_abs_gradient"]
    assert set(scored["part"]) == {"A", "C"}  # a BagNet: the exact truth and the deletion proxies
    assert scored["value"].notna().all() and len(set(scored["image_id"])) == 4
    assert {"saliency", "integrated_gradients"} <= set(per_image["method"])
    summary = pd.read_csv(results / "summary.csv")
    assert "plugin_abs_gradient" in set(summary["method"])
    proxies = pd.read_csv(results / "proxies.csv")
    exact = per_image.query("part == 'A' and metric == 'spearman' and method != 'random'").dropna(subset=["value"])
    assert (proxies["n_methods"] == exact["method"].nunique()).all()  # every method with an exact score
    assert "plugin_abs_gradient" in set(exact["method"])
    assert proxies["kendall_tau"].between(-1, 1).all()
    assert (proxies["kendall_tau_low"] <= proxies["kendall_tau_high"]).all()


def test_a_plugin_registers_models_methods_and_experiments(tmp_path):
    path = tmp_path / "everything.py"
    path.write_text(PLUGIN + textwrap.dedent('''
        from bagrepro.models import register_model
        from bagrepro.models.bagnet import reduced_bagnet
        from bagrepro.harness.registry import Experiment, register_experiment

        @register_model("plugin_bagnet", num_classes=10, receptive_field=9)
        def plugin_bagnet(num_classes=10):
            return reduced_bagnet(9, width=8, blocks=1, num_classes=num_classes)

        register_experiment(Experiment(name="plugin_experiment", title="a plugin's experiment", paper_ref="-",
                                       run=lambda ctx: None, make_figures=lambda results, figures: []))
    '''))
    try:
        added = load_plugin(path)
        assert added == {"models": ["plugin_bagnet"], "attribution methods": ["plugin_abs_gradient"],
                         "experiments": ["plugin_experiment"]}
        assert get_attribution("plugin_abs_gradient").family == "your method"
    finally:
        from bagrepro.harness import registry
        from bagrepro.models import registry as models

        registry._EXPERIMENTS.pop("plugin_experiment", None)
        models._REGISTRY.pop("plugin_bagnet", None)
        if "plugin_abs_gradient" in attribution_methods():
            unregister_attribution("plugin_abs_gradient")


@pytest.mark.parametrize("source, message", [
    ("x = 1\n", "registered nothing"),
    ("import torch\n\nraise ValueError('broken on purpose')\n", "(line 3): ValueError: broken on purpose"),
])
def test_a_bad_plugin_fails_in_one_line(tmp_path, capsys, source, message):
    path = tmp_path / "bad.py"
    path.write_text(source)
    assert run_all.main(["--plugin", str(path), "--list"]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("error: ") and message in error and str(path) in error and "\n" not in error


def test_the_notebook_function_returns_the_benchmark_tables(tmp_path):
    def mean_colour_distance(model, images, targets):
        """Distance of each pixel from the image's mean colour (a test method, no model)."""
        return (images - images.mean((2, 3), keepdim=True)).norm(dim=1)

    profiles_before = set(PROFILES)
    try:
        tables = benchmark_attribution(mean_colour_distance, "colour_distance", profile="smoke",
                                       methods=("saliency", "integrated_gradients", "occlusion"),
                                       models=["smoke_bagnet9", "smoke_bagnet17"], out=tmp_path / "nb")
    finally:
        if "colour_distance" in attribution_methods():
            unregister_attribution("colour_distance")
    assert {"per_image", "summary", "rankings", "proxies", "leaderboard"} <= set(tables)
    # the profile derived for the call names the method: it does not outlive the call
    assert set(PROFILES) == profiles_before
    assert set(tables["per_image"]["method"]) == {"saliency", "integrated_gradients", "occlusion",
                                                  "colour_distance", "random"}
    board = tables["leaderboard"]
    assert "colour_distance" in set(board["method"]) and list(board["rank"]) == list(range(1, len(board) + 1))
    # ranked by Part A's Spearman r (mean over the two BagNets), best first
    part_a = tables["summary"].query("part == 'A' and metric == 'spearman'").groupby("method")["mean"].mean()
    assert list(board["method"][:len(part_a)]) == list(part_a.sort_values(ascending=False).index)
