"""Logit correlation (Fig. 1C): how linearly do BagNet logits follow VGG-16's?

Pearson correlation between each BagNet's logits and VGG-16's (or the profile's stand-in) on the same
images: pooled over all (image, class) pairs, and per image across classes. The paper: 0.70
(BagNet-9), 0.79 (BagNet-17), 0.88 (BagNet-33).

Writes ``results/logit_correlation/per_image.csv`` (model, role, reference, image_id, pearson_r)
and ``summary.csv`` (pooled r, mean per-image r, the paper's value, and 95 % bootstrap intervals over
images of both rs: ``pooled_r_low/high``, ``mean_per_image_r_low/high``). Forward passes per image:
one per BagNet plus one of the reference.

The pooled r of a resample of images is computed from per-image sums (:func:`pearson_sums`), so no
logits are kept: the pooled r only needs the totals of a, b, a^2, b^2, ab and the count of pairs.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from bagrepro.core import paper
from bagrepro.core.metrics import bootstrap_interval, mean_interval
from bagrepro.harness.plan import Work
from bagrepro.harness.plotting import OURS_COLOUR, PAPER_COLOUR, error_bars, new_figure, save_figure
from bagrepro.harness.profiles import BAGNET_ROLES
from bagrepro.harness.report import comparison
from bagrepro.harness.results import read_csv
from bagrepro.harness.registry import Experiment
from bagrepro.harness.context import RunContext
from bagrepro.core.settings import our_setting

REFERENCE_ROLE = "vgg16"

#: per-image sums of a unit's frame (a: the BagNet's logits, b: the reference's, over the K classes)
PEARSON_SUMS = ("sum_a", "sum_b", "sum_aa", "sum_bb", "sum_ab", "n_classes")
#: what a unit's frame holds; part of the unit store's key, so that units written before the
#: frame carried :data:`PEARSON_SUMS` are computed again rather than reused
UNIT_FORMAT = "pearson_r, pooled_r and the Pearson sums"


@dataclass(frozen=True)
class Settings:
    """num_images: the first N images of the run (None: all of them)."""

    num_images: int | None = our_setting(None, "the paper gives no image count for Fig. 1C; all the run's images")


def all_logits(ctx: RunContext, name: str, count: int) -> tuple[torch.Tensor, list[str]]:
    """Logits [N, K] (float64) of one model on the first ``count`` images, and their ids."""
    model = ctx.inference_model(name)
    normalize = model.zoo_spec.preprocess.normalize
    chunks, ids = [], []
    with torch.inference_mode():
        for batch, _, batch_ids in ctx.progress(ctx.images().subset(range(count)).batches(ctx.batch_size), desc=name):
            chunks.append(model(normalize(batch.to(ctx.device, non_blocking=True))).double().cpu())
            ids += batch_ids
    return torch.cat(chunks), ids


def pearson_rows(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pearson r of each row of a [N, K] with the same row of b: [N]."""
    a = a - a.mean(1, keepdim=True)
    b = b - b.mean(1, keepdim=True)
    return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1))


def pearson_sums(a: torch.Tensor, b: torch.Tensor) -> dict[str, np.ndarray]:
    """Per-row sums of a [N, K] and b [N, K] (logits, float64): sum a, sum b, sum a^2, sum b^2,
    sum ab over the K classes and K itself, each [N] (keys :data:`PEARSON_SUMS`)."""
    sums = {"sum_a": a.sum(1), "sum_b": b.sum(1), "sum_aa": (a * a).sum(1), "sum_bb": (b * b).sum(1),
            "sum_ab": (a * b).sum(1)}
    sums = {key: value.double().cpu().numpy() for key, value in sums.items()}
    sums["n_classes"] = np.full(len(a), a.shape[1], dtype=np.float64)
    return sums


def pooled_pearson_from_sums(sum_a, sum_b, sum_aa, sum_bb, sum_ab, n_classes, axis=-1):
    """Pearson r over all (image, class) pairs of the images along ``axis`` (per-image sums as
    :func:`pearson_sums` makes them, [..., N] each): r = cov / sqrt(var_a var_b) from the totals,
    e.g. cov * n = S_ab - S_a S_b / n with n = the total count of pairs. Vectorised over the
    leading axes (one r per bootstrap resample); float64."""
    total = {name: np.sum(values, axis=axis) for name, values in zip(
        PEARSON_SUMS, (sum_a, sum_b, sum_aa, sum_bb, sum_ab, n_classes))}
    n = total["n_classes"]
    covariance = total["sum_ab"] - total["sum_a"] * total["sum_b"] / n
    variance_a = total["sum_aa"] - total["sum_a"] ** 2 / n
    variance_b = total["sum_bb"] - total["sum_b"] ** 2 / n
    return covariance / np.sqrt(variance_a * variance_b)


def summarise(per_image: pd.DataFrame) -> pd.DataFrame:
    """One row per (model, role, reference): images, the pooled and the mean per-image r, the
    paper's r, pooled - paper, then the 95 % intervals: the pooled r's (bootstrap over images,
    the pooled r of each resample from the summed :data:`PEARSON_SUMS`) and the mean per-image
    r's (bootstrap of the mean). ``per_image``: the units' frames (pearson_r, pooled_r and the
    sums per image)."""
    keys = ["model", "role", "reference"]
    summary = (per_image.groupby(keys, sort=False)
               .agg(n_images=("image_id", "size"), pooled_r=("pooled_r", "first"),
                    mean_per_image_r=("pearson_r", "mean")).reset_index())
    summary["paper_r"] = summary["role"].map(paper.LOGIT_CORRELATION_WITH_VGG16)
    summary["paper_r_source"] = np.where(summary["paper_r"].notna(), paper.LOGIT_CORRELATION_WITH_VGG16.source, "")
    summary["difference"] = summary["pooled_r"] - summary["paper_r"]
    intervals = {"pooled_r_low": [], "pooled_r_high": [], "mean_per_image_r_low": [], "mean_per_image_r_high": []}
    for _, images in per_image.groupby(keys, sort=False):  # a loop over models; the bootstraps are vectorised
        low, high = bootstrap_interval(pooled_pearson_from_sums, *(images[name].to_numpy() for name in PEARSON_SUMS))
        intervals["pooled_r_low"].append(low)
        intervals["pooled_r_high"].append(high)
        low, high = mean_interval(images["pearson_r"].to_numpy())
        intervals["mean_per_image_r_low"].append(low)
        intervals["mean_per_image_r_high"].append(high)
    for column, values in intervals.items():
        summary[column] = values
    return summary


def run(ctx: RunContext) -> None:
    wanted = ctx.settings.num_images
    count = len(ctx.images()) if wanted is None else min(wanted, len(ctx.images()))
    reference = ctx.role(REFERENCE_ROLE)
    roles = {ctx.role(role): role for role in BAGNET_ROLES}
    reference_logits = functools.cache(lambda: all_logits(ctx, reference, count))  # once, only if needed

    def compute(name: str) -> pd.DataFrame:
        reference_values, ids = reference_logits()
        logits, _ = all_logits(ctx, name, count)
        pooled = pearson_rows(logits.reshape(1, -1), reference_values.reshape(1, -1))[0].item()
        return pd.DataFrame({
            "model": name, "role": roles[name], "reference": reference, "image_id": ids,
            "pearson_r": pearson_rows(logits, reference_values).numpy(), "pooled_r": pooled,
            **pearson_sums(logits, reference_values),
        })

    store = ctx.units({"count": count, "reference": reference, "unit_format": UNIT_FORMAT})
    frames = ctx.map_units(store, list(roles), compute)
    per_image = pd.concat(frames.values(), ignore_index=True)
    ctx.write_csv(per_image.drop(columns=["pooled_r", *PEARSON_SUMS]), "per_image.csv", reference=reference)
    ctx.write_csv(summarise(per_image), "summary.csv", reference=reference)


def make_figures(results_dir: Path, figures_dir: Path) -> list[Path]:
    """Fig. 1C: correlation with the reference's logits against the patch size q (ours with 95 %
    bootstrap intervals over images as error bars)."""
    summary = read_csv(results_dir / "summary.csv")
    q = summary["role"].str.extract(r"(\d+)$")[0].astype(int)
    fig, ax = new_figure(figsize=(4, 3))
    ax.errorbar(q, summary["pooled_r"], yerr=error_bars(summary, "pooled_r"), marker="o", capsize=3,
                color=OURS_COLOUR, label="ours (pooled, 95 % interval)")
    ax.errorbar(q, summary["mean_per_image_r"], yerr=error_bars(summary, "mean_per_image_r"), marker="s",
                ls=":", capsize=3, color=OURS_COLOUR, label="ours (mean per image)")
    ax.plot(q, summary["paper_r"], marker="o", color=PAPER_COLOUR, label="paper")
    ax.set_xticks(q, [f"BagNet-{v}" for v in q])
    ax.set_ylabel(f"Pearson r with {summary['reference'].iloc[0]} logits")
    ax.set_ylim(0, 1)
    ax.legend()
    ax.set_title("Fig. 1C: logit correlation")
    return save_figure(fig, figures_dir / "fig1c_logit_correlation")


def report_table(results_dir: Path):
    return comparison(read_csv(results_dir / "summary.csv"), ["model", "reference"], "Pearson r of logits (pooled)",
                      "pooled_r", "paper_r")



def plan(ctx: RunContext) -> list:
    """--plan: one forward pass per image for each BagNet and for VGG-16."""
    wanted = ctx.settings.num_images
    count = len(ctx.images()) if wanted is None else min(wanted, len(ctx.images()))
    names = dict.fromkeys([ctx.role(REFERENCE_ROLE), *(ctx.role(role) for role in BAGNET_ROLES)])
    return [Work(name, "logits", count, count) for name in names]


EXPERIMENT = Experiment(
    name="logit_correlation", title="correlation of BagNet and VGG-16 logits", paper_ref="Fig. 1C",
    open_choices=(
        "The paper does not say over what it correlates: we pool every (image, class) logit pair (compared with "
        "its numbers) and also report the mean of per-image correlations over the classes (ours).",
    ),
    run=run, plan=plan, make_figures=make_figures, report_table=report_table, settings=Settings, shardable=True,
    question="How linearly do BagNet logits follow a deep network's logits on the same images?",
)
