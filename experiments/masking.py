"""Spatial sensitivity (Fig. 8, Table 1): how fast does masking the "most important" patches destroy
the leading class, for white-box heatmaps of the tested model against black-box BagNet heatmaps?

For every tested model (VGG-16, ResNet-50, ResNet-152, DenseNet-169 or the profile's stand-ins) and
image: the leading class is the one predicted on the clean image; a heatmap ranks the 8x8 patches
(attribution summed over each patch and its channels, sign convention ``sign``); patches are replaced
by their DC component (or ``fill``) one after another, k = 0..steps, and the leading class's
probability is recorded at every k. Heatmaps, each computed once per (image, tested model):
- white-box on the tested model (bagrepro.attribution): Saliency, Integrated Gradients, eps-LRP,
  DeepLIFT;
- black-box: the exact dense BagNet-9/17/33 heatmaps for the tested model's leading class;
- random order, several seeds.

Writes ``results/masking/curves.csv`` (model, role, image_id, method, seed, k, probability,
leading_class), ``table1.csv`` (mean probability at k = steps per model and method, the paper's
value and the difference) and ``example_heatmaps.npz`` (heatmaps of the first images, for the figure).
Forward passes per image and tested model: (steps + 1) per method and random seed, plus the
heatmaps' own (Saliency, eps-LRP: 1 forward + 1 backward; IG: ig_steps of each; DeepLIFT: 2 + 1;
a BagNet heatmap: one phase-folded pass of its BagNet).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import torch

from bagrepro import attribution, paper
from bagrepro.errors import MissingRoleError
from bagrepro.heatmaps import dense_heatmaps
from bagrepro.masking import grid_shape, masking_curves, patch_scores, ranks_from_scores
from bagrepro.plan import Work
from bagrepro.plotting import draw_heatmap, new_figure, save_figure
from bagrepro.profiles import BAGNET_ROLES
from bagrepro.report import comparison
from bagrepro.results import read_csv
from bagrepro.runner import Experiment, RunContext

EXAMPLES = 2  # images whose heatmaps are kept for the figure


@dataclass(frozen=True)
class Settings:
    """tested_roles: the deep networks whose leading class is masked (paper: VGG-16, ResNet-50,
    ResNet-152, DenseNet-169); num_images: images per model; steps: patches masked (Table 1: 100);
    patch: patch side in px (8); fill: what a masked patch becomes ('dc': its mean colour, as in the
    paper); sign: how a heatmap's values rank a patch ('signed' sum, as the released code does);
    random_seeds: random orders per image; white_box: attribution methods of the tested model
    (names in :mod:`bagrepro.attribution`'s registry; the paper's four by default); ig_steps:
    Integrated Gradients' Riemann steps (100, as DeepExplain); chunk_size: inputs per forward pass
    (memory, not results)."""

    tested_roles: tuple[str, ...] = ("vgg16", "resnet50", "resnet152", "densenet169")
    num_images: int = 100
    steps: int = paper.TABLE1_STEPS
    patch: int = paper.TABLE1_PATCH
    fill: Literal["dc", "zero", "blur"] = "dc"
    sign: Literal["signed", "positive", "absolute"] = "signed"
    random_seeds: int = 3
    white_box: tuple[str, ...] = attribution.PAPER_METHODS
    ig_steps: int = 100
    chunk_size: int = 64

    def __post_init__(self):
        for method in self.white_box:
            attribution.get_attribution(method)  # an unknown name: ConfigError naming the valid ones


def methods(settings: Settings, bagnet_roles=BAGNET_ROLES) -> list[tuple[str, int]]:
    """(method, seed) pairs: the white-box methods, the BagNets (those of ``bagnet_roles``), and random orders."""
    return ([(m, -1) for m in settings.white_box] + [(role, -1) for role in bagnet_roles]
            + [("random", seed) for seed in range(settings.random_seeds)])


def heatmap(ctx: RunContext, method: str, model, inputs: torch.Tensor, images: torch.Tensor,
            leading: torch.Tensor, settings: Settings) -> torch.Tensor:
    """Per-pixel heatmap [B, H, W] of ``method`` for the leading classes: a white-box attribution
    of the tested model (summed over channels), or a BagNet role's exact black-box heatmap."""
    if method in settings.white_box:
        with torch.enable_grad():
            maps = attribution.attribute(model, inputs, leading, method, ig_steps=settings.ig_steps)
        return maps.sum(1)
    bagnet = ctx.inference_model(ctx.role(method))
    return dense_heatmaps(bagnet, bagnet.zoo_spec.preprocess.normalize(images), targets=leading)[:, 0]


def unit_curves(ctx: RunContext, name: str, method: str, seed: int, settings: Settings,
                examples: dict) -> pd.DataFrame:
    """Masking curves of one tested model under one heatmap method, for every image; the heatmaps of
    the first EXAMPLES images go into ``examples`` (key 'model/method/image_id')."""
    model = ctx.model(name)  # as built: the white-box heatmaps need its gradients
    forward = ctx.inference_model(name)  # same outputs, faster: the leading class and the masking curves
    normalize = model.zoo_spec.preprocess.normalize
    images = ctx.images()
    count = min(settings.num_images, len(images))
    frames, done = [], 0
    for batch, _, ids in ctx.progress(images.subset(range(count)).batches(ctx.batch_size),
                                      desc=f"{name} {method}", unit="batch"):
        batch = batch.to(ctx.device, non_blocking=True)
        inputs = normalize(batch)
        with torch.inference_mode():
            leading = forward(inputs).argmax(1)
        patches = np.prod(grid_shape(*inputs.shape[-2:], settings.patch))
        if method == "random":
            generator = torch.Generator().manual_seed(seed * 1_000_003 + done)
            scores = torch.rand(len(batch), patches, generator=generator).to(ctx.device, non_blocking=True)
        else:
            maps = heatmap(ctx, method, model, inputs, batch, leading, settings)
            scores = patch_scores(maps[:, None], settings.patch, settings.sign)
            for index in range(max(0, min(EXAMPLES - done, len(batch)))):
                examples[f"{name}/{method}/{ids[index]}"] = maps[index].detach().cpu().numpy().astype(np.float16)
                examples[f"image/{ids[index]}"] = batch[index].cpu().numpy().astype(np.float16)
        steps = min(settings.steps, patches)
        curves = masking_curves(forward, inputs, ranks_from_scores(scores), leading, steps, settings.patch,
                                settings.fill, settings.chunk_size).cpu().numpy()
        frames.append(pd.DataFrame({
            "image_id": np.repeat(ids, steps + 1), "method": method, "seed": seed,
            "k": np.tile(np.arange(steps + 1), len(ids)), "probability": curves.ravel(),
            "leading_class": np.repeat(leading.cpu().numpy(), steps + 1),
        }))
        done += len(batch)
    return pd.concat(frames, ignore_index=True)


def table1(curves: pd.DataFrame) -> pd.DataFrame:
    """Mean leading-class probability at the last step per (model, method), beside the paper's Table 1."""
    last = curves[curves["k"] == curves.groupby("model")["k"].transform("max")]
    per_image = last.groupby(["model", "role", "method", "image_id"], dropna=False, sort=False)["probability"].mean()
    table = per_image.groupby(["model", "role", "method"], dropna=False, sort=False).agg(["mean", "sem", "size"])
    table = table.reset_index().rename(columns={"mean": "ours", "sem": "sem", "size": "n_images"})
    table["k"] = last.groupby("model")["k"].first().reindex(table["model"]).to_numpy()
    table["paper"] = [paper.table1_value(role, method) for role, method in zip(table["role"], table["method"])]
    table["paper"] = table["paper"].astype(float)
    table["difference"] = table["ours"] - table["paper"]
    return table


def tested_models(ctx: RunContext, settings: Settings) -> list[str]:
    """The models standing in for the tested roles; roles without a model in this run are left out
    with a line, and none left skips the experiment (MissingRoleError)."""
    tested = list(dict.fromkeys(ctx.role(role) for role in ctx.present_roles(settings.tested_roles)))
    if not tested:
        raise MissingRoleError(f"no model of this run stands in for a tested model ({', '.join(settings.tested_roles)})")
    return tested


def run(ctx: RunContext) -> None:
    settings = ctx.settings
    store = ctx.units(settings)
    tested = tested_models(ctx, settings)
    heatmap_methods = methods(settings, ctx.present_roles(BAGNET_ROLES))
    units = {f"{name}__{method}__{seed}": (name, method, seed) for name in tested for method, seed in heatmap_methods}

    def compute(unit: str) -> pd.DataFrame:
        name, method, seed = units[unit]
        unit_examples: dict[str, np.ndarray] = {}
        frame = unit_curves(ctx, name, method, seed, settings, unit_examples)
        frame.insert(0, "model", name)
        frame.insert(1, "role", ctx.profile.role_of(name))
        store.save_arrays(unit, unit_examples)
        return frame

    frames = ctx.map_units(store, list(units), compute)
    examples = {}
    for unit in units:
        examples.update(store.load_arrays(unit))
    curves = pd.concat(frames.values(), ignore_index=True)
    ctx.write_csv(curves, "curves.csv")
    ctx.write_csv(table1(curves), "table1.csv")
    ctx.write_npz(examples, "example_heatmaps.npz")



def make_figures(results_dir: Path, figures_dir: Path) -> list[Path]:
    """Fig. 8 top (curves with 95% bands, one panel per model) and bottom (example heatmaps)."""
    curves = read_csv(results_dir / "curves.csv")
    models = list(dict.fromkeys(curves["model"]))
    method_order = list(dict.fromkeys(curves["method"]))
    per_image = curves.groupby(["model", "method", "image_id", "k"], sort=False)["probability"].mean().reset_index()
    fig, axes = new_figure(1, len(models), figsize=(3.2 * len(models), 3.0), squeeze=False, sharey=True)
    for ax, model in zip(axes[0], models):
        for method in method_order:
            rows = per_image[(per_image["model"] == model) & (per_image["method"] == method)]
            stats = rows.groupby("k")["probability"].agg(["mean", "sem"])
            line, = ax.plot(stats.index, stats["mean"], label=method, lw=1.2,
                            ls="--" if method == "random" else "-")
            band = 1.96 * stats["sem"].fillna(0)
            ax.fill_between(stats.index, stats["mean"] - band, stats["mean"] + band, color=line.get_color(), alpha=0.15)
        ax.set_title(model)
        ax.set_xlabel("masked 8x8 patches")
    axes[0][0].set_ylabel("probability of the leading class")
    fig.legend(*axes[0][-1].get_legend_handles_labels(), loc="outside right upper", fontsize=7)  # clear of the curves
    fig.suptitle("Fig. 8: masking patches in heatmap order (mean, 95% band)", fontsize=9)
    paths = save_figure(fig, figures_dir / "fig8_masking_curves")

    examples_path = results_dir / "example_heatmaps.npz"
    if examples_path.is_file():
        paths += _example_figure(np.load(examples_path), figures_dir)
    return paths


def _example_figure(examples, figures_dir: Path) -> list[Path]:
    keys = [k for k in examples.files if not k.startswith("image/")]
    model, _, image_id = keys[0].split("/", 2)  # an image id may hold '/' (a class folder's file)
    shown = [k for k in keys if k.split("/", 2)[0] == model and k.split("/", 2)[2] == image_id]
    fig, axes = new_figure(1, len(shown) + 1, figsize=(1.6 * (len(shown) + 1), 1.9), squeeze=False)
    axes = axes[0]
    axes[0].imshow(np.clip(examples[f"image/{image_id}"].astype(np.float32).transpose(1, 2, 0), 0, 1))
    axes[0].set_title(image_id, fontsize=6)
    for ax, key in zip(axes[1:], shown):
        draw_heatmap(ax, examples[key], examples[f"image/{image_id}"].astype(np.float32), title=key.split("/")[1])
    for ax in axes:
        ax.axis("off")
    fig.suptitle(f"Fig. 8 (bottom): heatmaps for {model}'s leading class", fontsize=8)
    return save_figure(fig, figures_dir / "fig8_example_heatmaps")


def report_table(results_dir: Path):
    table = read_csv(results_dir / "table1.csv")
    return comparison(table, ["model", "method", "k"], "p(leading class) after k masked patches", "ours", "paper")



def plan(ctx: RunContext) -> list:
    """--plan: per tested model and heatmap method, the leading class and steps + 1 masked images per
    image; a white-box method's own passes on the tested model (one call per batch); a BagNet method's
    dense heatmaps on that BagNet."""
    settings = ctx.settings
    count = min(settings.num_images, len(ctx.images()))
    size = ctx.image_size
    steps = min(settings.steps, math.prod(grid_shape(size, size, settings.patch)))
    calls = [min(ctx.batch_size, count - start) for start in range(0, count, ctx.batch_size)]
    tested = tested_models(ctx, settings)
    bagnet_roles = ctx.present_roles(BAGNET_ROLES)
    work = []
    for name in tested:
        for method, seed in methods(settings, bagnet_roles):
            label = method if seed < 0 else f"{method} (seed {seed})"
            forward, backward = count * (steps + 2), 0
            if method in settings.white_box:
                cost = attribution.get_attribution(method)
                for images in calls:
                    f, b = cost.passes_for(images, ig_steps=settings.ig_steps)
                    forward, backward = forward + f, backward + b
            elif method != "random":
                work.append(Work(ctx.role(method), f"heatmaps for {name}", count, count, heatmap=count))
            work.append(Work(name, f"curves, {label}", count, forward, backward))
    return work


EXPERIMENT = Experiment(
    name="masking", title="spatial sensitivity: masking patches in heatmap order", paper_ref="Fig. 8, Table 1",
    run=run, plan=plan, make_figures=make_figures, report_table=report_table, settings=Settings, shardable=True,
    question="Do black-box BagNet heatmaps find the patches a deep network depends on better than its own "
             "white-box attributions?",
)
