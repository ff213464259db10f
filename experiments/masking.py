"""Spatial sensitivity (Fig. 8, Table 1): how fast does masking the "most important" patches destroy
the leading class, for white-box heatmaps of the tested model against black-box BagNet heatmaps?

For every tested model (VGG-16, ResNet-50, ResNet-152, DenseNet-169 or the profile's stand-ins) and
image: the leading class is the one predicted on the clean image; a heatmap ranks the 8x8 patches
(attribution summed over each patch and its channels, sign convention ``sign``); patches are replaced
by their DC component (or ``fill``) one after another, k = 0..steps, and the leading class's
probability is recorded at every k. Heatmaps, each computed once per (image, tested model):
- white-box on the tested model (bagrepro.methods.attribution): Saliency, Integrated Gradients, eps-LRP,
  DeepLIFT;
- black-box: the exact dense BagNet-9/17/33 heatmaps for the tested model's leading class;
- random order, several seeds.

Writes ``results/masking/curves.csv`` (model, role, image_id, method, seed, k, probability,
leading_class), ``table1.csv`` (mean probability at k = steps per model and method, the paper's
value, the difference, and ours' 95 % bootstrap interval over images ``ours_low/high``),
``comparisons.csv`` (per tested model, each BagNet heatmap against each white-box method at
k = steps: the mean paired difference of p(leading class) over images with its 95 % interval and
whether the sample resolves its sign) and ``example_heatmaps.npz`` (heatmaps of the first images,
for the figure). Random orders count per image as the mean over their seeds; every interval
resamples images, never seeds.
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

from bagrepro.methods import attribution
from bagrepro.core import paper
from bagrepro.core.errors import MissingRoleError
from bagrepro.methods.heatmaps import dense_heatmaps
from bagrepro.methods.masking import grid_shape, masking_curves, patch_scores, ranks_from_scores
from bagrepro.core.metrics import (
    BOOTSTRAP_RESAMPLES,
    BOOTSTRAP_SEED,
    images_to_resolve,
    mean_interval,
    resolution,
)
from bagrepro.harness.plan import Work
from bagrepro.harness.plotting import draw_heatmap, new_figure, save_figure
from bagrepro.harness.profiles import BAGNET_ROLES
from bagrepro.harness.report import comparison
from bagrepro.harness.results import read_csv
from bagrepro.harness.registry import Experiment
from bagrepro.harness.context import RunContext
from bagrepro.core.settings import mechanics_setting, our_setting, paper_setting

EXAMPLES = 2  # images whose heatmaps are kept for the figure


@dataclass(frozen=True)
class Settings:
    """How Fig. 8 / Table 1 are measured; each field says whose its default is (``--list``).

    tested_roles: the deep networks whose leading class is masked; num_images: images per tested
    model; steps: patches masked; patch: patch side in px; fill: what a masked patch becomes ('dc':
    its mean colour, 'zero', 'blur'); sign: how a heatmap's pixel values rank a patch ('signed' sum,
    'positive', 'absolute'); random_seeds: random orders per image; white_box: attribution methods of
    the tested model (names in :mod:`bagrepro.methods.attribution`'s registry); ig_steps: Integrated
    Gradients' Riemann steps; chunk_size: inputs per forward pass; engine: how the curves are
    computed, 'incremental' (each step recomputes only the part of every layer its newly masked
    patch reaches, :mod:`bagrepro.methods.incremental`; a model torch.fx cannot trace falls back to full
    passes with a log line) or 'batched' (a full forward pass per image and step); the same curves
    to float rounding."""

    tested_roles: tuple[str, ...] = paper_setting(("vgg16", "resnet50", "resnet152", "densenet169"), "Table 1")
    num_images: int = our_setting(100, "the paper gives no image count; Table 1's smallest differences need far "
                                       "more (--plan prints the n that resolves them; the paper profile sets it)")
    steps: int = paper_setting(paper.TABLE1_STEPS, "Table 1", "100 masked patches")
    patch: int = paper_setting(paper.TABLE1_PATCH, "Table 1", "8 x 8 px patches")
    fill: Literal["dc", "zero", "blur"] = our_setting(
        "dc", "the paper does not state Fig. 8's fill; the DC component, as in eq. 1's protocol (Fig. 6)")
    sign: Literal["signed", "positive", "absolute"] = our_setting(
        "signed", "the paper does not say how pixel attributions become a patch score; the signed sum over "
                  "the patch's pixels and channels")
    random_seeds: int = our_setting(3, "random orders per image (each image counts their mean)")
    white_box: tuple[str, ...] = paper_setting(attribution.PAPER_METHODS, "Table 1",
                                               "Saliency, Integrated Gradients, eps-LRP, DeepLIFT (rescale)")
    ig_steps: int = our_setting(100, "the paper computed its maps with DeepExplain and states no step count; "
                                     "DeepExplain's default is 100")
    chunk_size: int = mechanics_setting(64)
    engine: Literal["incremental", "batched"] = mechanics_setting("incremental", "speed: the same curves to float "
                                                                  "rounding")

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
                                settings.fill, settings.chunk_size, settings.engine).cpu().numpy()
        frames.append(pd.DataFrame({
            "image_id": np.repeat(ids, steps + 1), "method": method, "seed": seed,
            "k": np.tile(np.arange(steps + 1), len(ids)), "probability": curves.ravel(),
            "leading_class": np.repeat(leading.cpu().numpy(), steps + 1),
        }))
        done += len(batch)
    return pd.concat(frames, ignore_index=True)


def last_step_per_image(curves: pd.DataFrame) -> pd.DataFrame:
    """p(leading class) at each model's last step k (Table 1's point), per (model, role, method,
    image): one row per image and method, a random order's seeds averaged (so that a bootstrap
    over these rows resamples images, not seeds). Columns model, role, method, image_id, k,
    probability."""
    last = curves[curves["k"] == curves.groupby("model")["k"].transform("max")]
    return (last.groupby(["model", "role", "method", "image_id"], dropna=False, sort=False)
            .agg(k=("k", "first"), probability=("probability", "mean")).reset_index())


def table1(curves: pd.DataFrame) -> pd.DataFrame:
    """Mean leading-class probability at the last step per (model, method), beside the paper's Table 1,
    with ours' 95 % interval (``ours_low/high``: percentile bootstrap of the mean over images)."""
    per_image = last_step_per_image(curves)
    groups = per_image.groupby(["model", "role", "method"], dropna=False, sort=False)
    table = groups["probability"].agg(["mean", "sem", "size"])
    table = table.reset_index().rename(columns={"mean": "ours", "sem": "sem", "size": "n_images"})
    table["k"] = per_image.groupby("model")["k"].first().reindex(table["model"]).to_numpy()
    table["paper"] = [table1_reference(role, method, k) for role, method, k
                      in zip(table["role"], table["method"], table["k"])]
    table["paper"] = table["paper"].astype(float)
    table["paper_source"] = np.where(table["paper"].notna(), paper.TABLE1.source, "")
    table["difference"] = table["ours"] - table["paper"]
    intervals = [mean_interval(values) for values in groups["probability"].apply(np.asarray)]  # one per row
    table["ours_low"] = [low for low, _ in intervals]
    table["ours_high"] = [high for _, high in intervals]
    return table


def comparisons(curves: pd.DataFrame, bagnet_methods=BAGNET_ROLES) -> pd.DataFrame:
    """Table 1's method comparisons, paired over images: per tested model, each BagNet heatmap method
    (those of ``bagnet_methods`` in the curves) against each white-box method (every other method
    but 'random'), at the model's last step k.

    Columns: model, role, k, bagnet_method, white_box_method, n_images (images both have),
    bagnet_p and white_box_p (their mean p(leading class) on those images), bagnet_minus_white_box
    (mean of the per-image differences = bagnet_p - white_box_p; lower p = the better attribution,
    so < 0: the BagNet heatmap is better), its 95 % interval ``bagnet_minus_white_box_low/high``
    (percentile bootstrap over images of the mean difference: a resample draws whole images, both
    methods' values with them), ``resolved`` (:func:`bagrepro.core.metrics.resolution`: 'below' = the
    sample resolves the BagNet heatmap as better, 'above' = as worse) and paper_bagnet_minus_white_box
    (the paper's Table 1 difference, to its 3 decimals; NaN where it lacks either value or k is not
    Table 1's 100) with its ``_source``."""
    per_image = last_step_per_image(curves)
    columns = ["model", "role", "k", "bagnet_method", "white_box_method", "n_images", "bagnet_p", "white_box_p",
               "bagnet_minus_white_box", "bagnet_minus_white_box_low", "bagnet_minus_white_box_high", "resolved",
               "paper_bagnet_minus_white_box", "paper_bagnet_minus_white_box_source"]
    rows = []
    for (model, role), images in per_image.groupby(["model", "role"], dropna=False, sort=False):
        by_method = images.pivot(index="image_id", columns="method", values="probability")  # [images, methods]
        methods_here = list(dict.fromkeys(images["method"]))
        bagnets = [m for m in methods_here if m in bagnet_methods]
        white_box = [m for m in methods_here if m not in bagnet_methods and m != "random"]
        for bagnet in bagnets:
            for white in white_box:
                pair = by_method[[bagnet, white]].dropna().to_numpy()  # [N, 2]: the images both have
                differences = pair[:, 0] - pair[:, 1]
                low, high = mean_interval(differences)
                paper_difference = (paper.table1_difference(role, bagnet, white)
                                    if int(images["k"].iloc[0]) == paper.TABLE1_STEPS else None)
                rows.append({
                    "model": model, "role": role, "k": images["k"].iloc[0], "bagnet_method": bagnet,
                    "white_box_method": white, "n_images": len(pair), "bagnet_p": pair[:, 0].mean(),
                    "white_box_p": pair[:, 1].mean(), "bagnet_minus_white_box": differences.mean(),
                    "bagnet_minus_white_box_low": low, "bagnet_minus_white_box_high": high,
                    "resolved": resolution(low, high),
                    "paper_bagnet_minus_white_box": np.nan if paper_difference is None else paper_difference,
                    "paper_bagnet_minus_white_box_source": ("" if paper_difference is None
                                                            else paper.TABLE1_DIFFERENCE_SOURCE),
                })
    return pd.DataFrame(rows, columns=columns)


def table1_reference(role, method: str, k: int) -> float | None:
    """The paper's Table 1 entry for a tested model role and heatmap method, only where the run's
    last step is Table 1's (k = 100 masked patches); None otherwise (a probability after fewer
    patches is not comparable with it)."""
    return paper.table1_value(role, method) if int(k) == paper.TABLE1_STEPS else None


def bootstrap_mean_band(values: np.ndarray, level: float = 0.95, resamples: int = BOOTSTRAP_RESAMPLES,
                        seed: int = BOOTSTRAP_SEED) -> tuple[np.ndarray, np.ndarray]:
    """Percentile bootstrap ``level`` interval of the mean over images at every k: values [N, K]
    (an image per row, e.g. p(leading class) after k = 0..K-1 masked patches) -> (low [K], high [K]).

    Not :func:`bagrepro.core.metrics.bootstrap_interval` once per k: one seeded set of resamples serves
    every k (each resample is one draw of images, its counts [resamples, N] multinomial), so the
    band is one curve of the same resampled image sets rather than K independent draws, and all K
    means of all resamples are one matrix product (counts @ values / N). Same method (percentile),
    resamples and seed as the shared intervals; NaN with fewer than two images."""
    values = np.asarray(values, dtype=np.float64)
    n = len(values)
    if n < 2:
        nan = np.full(values.shape[1:], np.nan)
        return nan, nan.copy()
    counts = np.random.default_rng(seed).multinomial(n, np.full(n, 1.0 / n), size=resamples)  # [resamples, N]
    means = counts @ values / n  # [resamples, K]
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(means, [tail, 100 - tail], axis=0)
    return low, high


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
    ctx.write_csv(comparisons(curves), "comparisons.csv")
    ctx.write_npz(examples, "example_heatmaps.npz")



def make_figures(results_dir: Path, figures_dir: Path) -> list[Path]:
    """Fig. 8 top (mean curves with 95 % bootstrap bands over images, one panel per model) and bottom
    (example heatmaps)."""
    curves = read_csv(results_dir / "curves.csv")
    models = list(dict.fromkeys(curves["model"]))
    method_order = list(dict.fromkeys(curves["method"]))
    per_image = curves.groupby(["model", "method", "image_id", "k"], sort=False)["probability"].mean().reset_index()
    fig, axes = new_figure(1, len(models), figsize=(3.2 * len(models), 3.0), squeeze=False, sharey=True)
    for ax, model in zip(axes[0], models):
        for method in method_order:
            rows = per_image[(per_image["model"] == model) & (per_image["method"] == method)]
            by_k = rows.pivot(index="image_id", columns="k", values="probability").dropna()  # [images, k]
            line, = ax.plot(by_k.columns, by_k.mean().to_numpy(), label=method, lw=1.2,
                            ls="--" if method == "random" else "-")
            low, high = bootstrap_mean_band(by_k.to_numpy())
            ax.fill_between(by_k.columns, low, high, color=line.get_color(), alpha=0.15, lw=0)
        ax.set_title(model)
        ax.set_xlabel("masked 8x8 patches")
    axes[0][0].set_ylabel("probability of the leading class")
    fig.legend(*axes[0][-1].get_legend_handles_labels(), loc="outside right upper", fontsize=7)  # clear of the curves
    fig.suptitle("Fig. 8: masking patches in heatmap order (mean over images, 95 % bootstrap band)", fontsize=9)
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
    """Table 1 (ours with its interval beside the paper's), then its method comparisons: per model,
    BagNet heatmap minus white-box method, paired over images, with ``resolved`` saying whether the
    sample resolves the sign ('below': the BagNet heatmap is better)."""
    table = comparison(read_csv(results_dir / "table1.csv"), ["model", "method", "k"],
                       "p(leading class) after k masked patches", "ours", "paper")
    path = results_dir / "comparisons.csv"
    if not path.is_file():  # results of a run before the comparisons existed
        return table
    pairs = read_csv(path)
    pairs["method"] = pairs["bagnet_method"] + " - " + pairs["white_box_method"]
    differences = comparison(pairs, ["model", "method", "k"],
                             "difference of p(leading class), paired over images (< 0: BagNet heatmap better)",
                             "bagnet_minus_white_box", "paper_bagnet_minus_white_box")
    differences["resolved"] = pairs["resolved"].fillna("").to_numpy()
    table["resolved"] = ""
    return pd.concat([table, differences], ignore_index=True)



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
                    f, b = cost.passes_for(images, image_size=size, ig_steps=settings.ig_steps)
                    forward, backward = forward + f, backward + b
            elif method != "random":
                work.append(Work(ctx.role(method), f"heatmaps for {name}", count, count, heatmap=count))
            work.append(Work(name, f"curves, {label}", count, forward, backward))
    return work


#: per-image standard deviations of a paired difference of p(leading class) that --plan assumes when
#: the output folder has no masking curves to measure it on (ours: probabilities lie in [0, 1])
ASSUMED_SPREADS = (0.1, 0.2, 0.3)


def paper_differences(roles) -> list[tuple[str, str, str, float]]:
    """For each tested role, the difference Table 1's finding rests on: its best BagNet heatmap
    minus its best white-box method, (role, bagnet method, white-box method, difference)."""
    found = []
    for role in roles:
        row = paper.TABLE1.get(role)
        if row is None:
            continue
        bagnet = min(BAGNET_ROLES, key=row.get)
        white = min((m for m in paper.TABLE1_METHODS if m not in BAGNET_ROLES), key=row.get)
        found.append((role, bagnet, white, paper.table1_difference(role, bagnet, white)))
    return found


def measured_spread(results_dir: Path) -> float | None:
    """The largest per-image SD of a BagNet-minus-white-box difference at the last step in this output
    folder's masking curves (a run of the same models), or None when there are none."""
    path = results_dir / "curves.csv"
    if not path.is_file():
        return None
    per_image = last_step_per_image(read_csv(path))
    spreads = []
    for _, images in per_image.groupby("model", sort=False):
        wide = images.pivot_table(index="image_id", columns="method", values="probability")
        for bagnet in (m for m in wide.columns if m in BAGNET_ROLES):
            for white in (m for m in wide.columns if m not in BAGNET_ROLES and m != "random"):
                differences = (wide[bagnet] - wide[white]).dropna()
                if len(differences) > 1:
                    spreads.append(float(differences.std(ddof=1)))
    return max(spreads) if spreads else None


def plan_notes(ctx: RunContext) -> list[str]:
    """--plan: the images Table 1's comparisons need to resolve the paper's differences at the
    report's interval (95 %, over images), beside this run's ``num_images``."""
    settings = ctx.settings
    spread = measured_spread(ctx.results_dir())
    spreads = (spread,) if spread is not None else ASSUMED_SPREADS
    origin = ("SD measured on this folder's curves" if spread is not None
              else "SD assumed (no masking curves of two or more images in this folder; a small run measures it)")
    lines = [f"Table 1 sample size: images for a 95 % interval of a paired difference to exclude 0, "
             f"n = (1.96 SD / difference)^2, per-image {origin}; this run: {settings.num_images} images"]
    for role, bagnet, white, difference in paper_differences(settings.tested_roles):
        needed = ", ".join(f"SD {sd:.3g}: {images_to_resolve(difference, sd)}" for sd in spreads)
        lines.append(f"  {role}: {bagnet} - {white} = {difference:+.3f} ({paper.TABLE1.source}) -> n = {needed}")
    return lines


EXPERIMENT = Experiment(
    name="masking", title="spatial sensitivity: masking patches in heatmap order", paper_ref="Fig. 8, Table 1",
    open_choices=(
        "The leading class is the class the tested model predicts on the clean image (our reading of Fig. 8).",
        "The 8 px grid starts at the top-left corner; rows and columns that do not fill a whole patch are never "
        "masked (ours; 224 px holds 28 whole patches per side, so none is left over there).",
        "The paper's Table 1 values compare only where the run's last step is theirs (k = 100); a run of fewer "
        "steps shows no reference.",
    ),
    run=run, plan=plan, plan_notes=plan_notes, make_figures=make_figures, report_table=report_table,
    settings=Settings, shardable=True,
    question="Do black-box BagNet heatmaps find the patches a deep network depends on better than its own "
             "white-box attributions?",
)
