"""Interactions between image parts (Fig. 6, eq. 1).

For separated masks delta_i, a bag-of-local-features model satisfies
``l(x) - l(x + sum_i delta_i) = sum_i (l(x) - l(x + delta_i))`` exactly when the masks are more than
q px apart. The paper's protocol: split the image into s x s patches and replace every second patch
in every second row with its DC component, "always around 1/4 of the image" masked; LHS: all masks at
once, RHS: the sum over single masks, for the leading class's logit. Here the grid covers the whole
image (:func:`bagrepro.methods.masking.separated_masks`): it is placed per axis so that about half of each
axis is masked, cells cut by the border are kept, clipped, and a clipped cell's DC component is the
mean of its pixels inside the image; masked cells are s px apart, the x axis of Fig. 6C. The
Pearson r of LHS against RHS across images, per model and distance, measures interactions (1 = none).

Writes ``results/interactions/terms.csv`` (model, role, receptive_field, image_id, patch_size,
min_distance, n_masks, masked_share, leading_class, lhs, rhs) and ``correlation.csv`` (Pearson r per
model and patch size, with its 95 % paired bootstrap interval over images, ``pearson_r_low/high``,
and the share of the image the masks cover, ``masked_share``).
Forward passes per image and model: 1 + the sum over sizes of (2 + number of masks).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import torch
from scipy import stats

from bagrepro.methods.masking import interaction_terms, masked_share, separated_masks
from bagrepro.core.metrics import pearson_interval
from bagrepro.harness.plan import Work
from bagrepro.harness.plotting import new_figure, save_figure
from bagrepro.harness.report import comparison
from bagrepro.harness.results import read_csv
from bagrepro.harness.registry import Experiment
from bagrepro.harness.context import RunContext
from bagrepro.core.settings import mechanics_setting, our_setting, paper_setting


@dataclass(frozen=True)
class Settings:
    """patch_sizes: mask sides s in px, also the distance between masked cells (Fig. 6C's x axis);
    the default 8, 16, ..., 64 is our choice: the paper lists no sizes, its figure's axis spans
    distances of about 10-70 px. num_images: images per model, our choice (the paper gives no count).
    fill: what a masked cell becomes; 'dc' (its per-channel mean colour) is the paper's, eq. 1's
    protocol. chunk_size: inputs per forward pass (memory only)."""

    patch_sizes: tuple[int, ...] = our_setting((8, 16, 24, 32, 40, 48, 56, 64),
                                               "the paper lists no sizes; its Fig. 6C spans distances of about "
                                               "10-70 px")
    num_images: int = our_setting(250, "the paper gives no image count")
    fill: Literal["dc", "zero", "blur"] = paper_setting("dc", "Fig. 6", "each masked patch is replaced by its DC "
                                                                        "component")
    chunk_size: int = mechanics_setting(64)


def tested_sizes(side: int, patch_sizes) -> dict[int, tuple[int, float]]:
    """patch size -> (number of masks, masked share) on ``side`` px images, for the sizes with two or
    more masks (with one, both sides of eq. 1 are the same number: nothing is tested)."""
    geometry = {size: (len(separated_masks(side, side, size)), masked_share(side, side, size)) for size in patch_sizes}
    return {size: shape for size, shape in geometry.items() if shape[0] >= 2}


def model_terms(ctx: RunContext, name: str, settings: Settings) -> pd.DataFrame:
    """LHS and RHS of eq. 1 for one model, every image and patch size."""
    model = ctx.inference_model(name)
    normalize = model.zoo_spec.preprocess.normalize
    frames = []
    images = ctx.images()
    count = min(settings.num_images, len(images))
    sizes = tested_sizes(ctx.image_size, settings.patch_sizes)
    for batch, _, ids in ctx.progress(images.subset(range(count)).batches(ctx.batch_size), desc=name, unit="batch"):
        inputs = normalize(batch.to(ctx.device, non_blocking=True))
        with torch.inference_mode():
            leading = model(inputs).argmax(1)
        for size, (n_masks, share) in sizes.items():
            lhs, rhs = interaction_terms(model, inputs, leading, size, settings.fill, settings.chunk_size)
            frames.append(pd.DataFrame({
                "image_id": ids, "patch_size": size, "min_distance": size, "n_masks": n_masks, "masked_share": share,
                "leading_class": leading.cpu().numpy(), "lhs": lhs.cpu().numpy(), "rhs": rhs.cpu().numpy(),
            }))
    return pd.concat(frames, ignore_index=True)


def correlations(terms: pd.DataFrame) -> pd.DataFrame:
    """Pearson r of LHS against RHS per (model, patch size), the largest |LHS - RHS| and |term|,
    the masked share, and the r's 95 % interval (``pearson_r_low/high``: percentile bootstrap over images, each
    resample drawing whole images, i.e. (LHS, RHS) pairs; NaN with fewer than three images)."""
    rows = []
    for (model, role, size), group in terms.groupby(["model", "role", "patch_size"], dropna=False, sort=False):
        enough = len(group) > 2
        r = stats.pearsonr(group["lhs"], group["rhs"]).statistic if enough else np.nan
        low, high = pearson_interval(group["lhs"].to_numpy(), group["rhs"].to_numpy()) if enough else (np.nan, np.nan)
        scale = np.abs(group[["lhs", "rhs"]].to_numpy()).max()
        rows.append({"model": model, "role": role, "patch_size": size, "min_distance": group["min_distance"].iloc[0],
                     "n_images": len(group), "pearson_r": r,
                     "max_abs_difference": float(np.abs(group["lhs"] - group["rhs"]).max()),
                     "max_abs_term": float(scale),
                     "masked_share": group["masked_share"].iloc[0] if "masked_share" in group else np.nan,
                     "pearson_r_low": low, "pearson_r_high": high})
    return pd.DataFrame(rows)


def run(ctx: RunContext) -> None:
    settings = ctx.settings

    def compute(name: str) -> pd.DataFrame:
        frame = model_terms(ctx, name, settings)
        frame.insert(0, "model", name)
        frame.insert(1, "role", ctx.profile.role_of(name))
        frame.insert(2, "receptive_field", ctx.model(name).zoo_spec.receptive_field)
        return frame

    frames = ctx.map_units(ctx.units(settings), ctx.model_names, compute)
    terms = pd.concat(frames.values(), ignore_index=True)
    ctx.write_csv(terms, "terms.csv")
    ctx.write_csv(correlations(terms), "correlation.csv")


def make_figures(results_dir: Path, figures_dir: Path) -> list[Path]:
    """Fig. 6C (r against the distance between masks, per model, with its 95 % interval as a band)
    and Fig. 6A (LHS vs RHS scatter)."""
    correlation = read_csv(results_dir / "correlation.csv")
    terms = read_csv(results_dir / "terms.csv")
    models = list(dict.fromkeys(correlation["model"]))
    fig, ax = new_figure(figsize=(5.5, 3.5))
    for model in models:
        rows = correlation[correlation["model"] == model]
        line, = ax.plot(rows["min_distance"], rows["pearson_r"], marker="o", label=model)
        if {"pearson_r_low", "pearson_r_high"} <= set(rows.columns):  # a correlation.csv of an older run has none
            ax.fill_between(rows["min_distance"], rows["pearson_r_low"], rows["pearson_r_high"],
                            color=line.get_color(), alpha=0.15, lw=0)
        q = terms.loc[terms["model"] == model, "receptive_field"].iloc[0]
        if not np.isnan(q):
            ax.axvline(q, color=ax.lines[-1].get_color(), lw=0.6, ls=":")
    ax.set_xlabel("minimum distance between masked patches (px)")
    ax.set_ylabel("Pearson r (LHS, RHS of eq. 1)")
    ax.set_title("Fig. 6C: interactions between image parts (band: 95 % interval; dotted: BagNet q)", fontsize=9)
    ax.legend(fontsize=7)
    paths = save_figure(fig, figures_dir / "fig6c_interactions")

    size = sorted(terms["patch_size"].unique())[len(terms["patch_size"].unique()) // 2]
    fig, axes = new_figure(1, len(models), figsize=(2.3 * len(models), 2.5), squeeze=False)
    for ax, model in zip(axes[0], models):
        rows = terms[(terms["model"] == model) & (terms["patch_size"] == size)]
        ax.scatter(rows["rhs"], rows["lhs"], s=6)
        low, high = rows[["lhs", "rhs"]].min().min(), rows[["lhs", "rhs"]].max().max()
        ax.plot([low, high], [low, high], color="k", lw=0.6)
        r = correlation[(correlation["model"] == model) & (correlation["patch_size"] == size)]
        ax.set_title(f"{model}\nr = {_with_interval(r.iloc[0])}" if len(r) else model, fontsize=8)
        ax.set_xlabel("RHS (sum of single masks)")
    axes[0][0].set_ylabel("LHS (all masks)")
    fig.suptitle(f"Fig. 6A: LHS against RHS at {size} px patches", fontsize=9)
    return paths + save_figure(fig, figures_dir / "fig6a_scatter")


def _with_interval(row: pd.Series) -> str:
    """'0.987 [0.962, 0.996]' for one correlation.csv row (the r alone where it has no interval)."""
    low, high = row.get("pearson_r_low", np.nan), row.get("pearson_r_high", np.nan)
    interval = "" if pd.isna(low) or pd.isna(high) else f" [{low:.3f}, {high:.3f}]"
    return f"{row['pearson_r']:.3f}{interval}"


def report_table(results_dir: Path):
    return comparison(read_csv(results_dir / "correlation.csv"), ["model", "patch_size"],
                      "Pearson r (LHS, RHS); paper: 1 for BagNet-q beyond q px, qualitative otherwise",
                      "pearson_r", "paper")



def plan(ctx: RunContext) -> list:
    """--plan: per image and model, the leading class, then per patch size with two or more masks
    the clean image, all masks at once and each mask alone."""
    settings = ctx.settings
    count = min(settings.num_images, len(ctx.images()))
    per_image = 1 + sum(2 + masks for masks, _ in tested_sizes(ctx.image_size, settings.patch_sizes).values())
    return [Work(name, "eq. 1 terms", count, count * per_image) for name in ctx.model_names]


EXPERIMENT = Experiment(
    name="interactions", title="non-linear interactions between image parts (eq. 1)", paper_ref="Fig. 6",
    open_choices=(
        "The grid covers the whole image: per axis it starts where about half of the axis is masked (a quarter of "
        "the image), cells cut by the border are kept, clipped, and a clipped cell's DC component is the mean of "
        "its pixels in the image (ours: the paper says 'always around 1/4 of the image is masked').",
        "l is the logit of the class the model predicts on the clean image, and r is the Pearson correlation of "
        "LHS and RHS across images, per model and distance (our reading).",
    ),
    run=run, plan=plan, make_figures=make_figures, report_table=report_table, settings=Settings, shardable=True,
    question="Does masking several separated parts change the logit by the sum of the single-part changes?",
)
