"""Accuracy (Fig. 1B): top-1 / top-5 of every model on the profile's images.

Writes ``results/accuracy/``:
- ``predictions.csv``: one row per (model, image): true class, top-5 predicted classes, the true
  class's logit and probability, correct_top1 / correct_top5 (later experiments reuse these rows),
  then the true class's name (``true_class_name``: the ImageNet name of a synset, else the class
  folder's name);
- ``summary.csv``: per model top-1 / top-5 (%) beside the reference numbers and their sources (the
  paper gives top-5 only, for BagNet-17 and -33; torchvision documents the deep models), then
  ``top1_low``, ``top1_high``, ``top5_low``, ``top5_high``: their exact (Clopper-Pearson) 95 %
  intervals in %;
- ``per_class.csv``: per (model, class) top-1 / top-5 (%), for Fig. 7, then ``class_name``, then the
  same four interval columns (%);
- ``per_group.csv`` (the demo world): per (model, class group) top-1 / top-5 (%) and chance, then the
  same four interval columns (%).

The intervals count the correct images (expected hits under random tie-breaking can be fractional:
their sum is rounded to a whole number of images) out of ``n_images``
(:func:`bagrepro.core.metrics.with_accuracy_intervals`; figures draw them with
:func:`bagrepro.harness.plotting.error_bars`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from bagrepro.core import paper
from bagrepro.data.synsets import display_name
from bagrepro.core.metrics import with_accuracy_intervals
from bagrepro.harness.plotting import (
    OURS_COLOUR,
    PAPER_COLOUR,
    error_bars,
    new_figure,
    save_figure,
)
from bagrepro.harness.predictions import clean_predictions, clean_work
from bagrepro.harness.report import comparison
from bagrepro.harness.results import read_csv
from bagrepro.harness.registry import Experiment
from bagrepro.harness.context import RunContext

METRICS = ("top1", "top5")


def summarize(predictions: pd.DataFrame) -> pd.DataFrame:
    """Per model: images, top-1 / top-5 in %, the reference numbers beside them (``reference_top1``,
    ``reference_top5`` and their ``_source``: the paper's Fig. 1B top-5 for BagNet-17 and -33,
    torchvision's documented V1 accuracies for the deep networks; empty where no source gives one),
    ours - reference, then the exact 95 % intervals of top-1 / top-5 (%)."""
    summary = (predictions.groupby(["model", "role"], dropna=False, sort=False)
               .agg(n_images=("image_id", "size"), top1=("correct_top1", "mean"), top5=("correct_top5", "mean"))
               .reset_index())
    summary[["top1", "top5"]] *= 100
    references = summary["role"].map(lambda role: paper.reference_accuracy(role) if isinstance(role, str) else {})
    for metric in METRICS:
        summary[f"reference_{metric}"] = references.map(lambda refs: refs[metric][0] if metric in refs else np.nan)
        summary[f"reference_{metric}_source"] = references.map(lambda refs: refs[metric][1] if metric in refs else "")
    for metric in METRICS:
        summary[f"diff_{metric}"] = summary[metric] - summary[f"reference_{metric}"]
    return with_accuracy_intervals(summary)


def per_class(predictions: pd.DataFrame) -> pd.DataFrame:
    """Per (model, class): images and top-1 / top-5 in % (intervals appended by :func:`run`, after
    the class names)."""
    table = (predictions.groupby(["model", "role", "true_class"], dropna=False, sort=False)
             .agg(n_images=("image_id", "size"), top1=("correct_top1", "mean"), top5=("correct_top5", "mean"))
             .reset_index())
    table[["top1", "top5"]] *= 100
    return table


def with_class_names(table: pd.DataFrame, classes, column: str) -> pd.DataFrame:
    """``table`` with ``column`` appended: the display name of each row's ``true_class``."""
    names = dict(enumerate(display_name(c) for c in classes))
    return table.assign(**{column: table["true_class"].map(names)})


def per_group(predictions: pd.DataFrame, class_groups: list[str]) -> pd.DataFrame:
    """Top-1 / top-5 (%) per model and class group (plus 'all'); chance = 100 / classes in the group;
    then the exact 95 % intervals of top-1 / top-5 (%)."""
    frame = predictions.assign(group=predictions["true_class"].map(dict(enumerate(class_groups))))
    frame = pd.concat([frame, frame.assign(group="all")], ignore_index=True)
    table = (frame.groupby(["model", "role", "group"], dropna=False, sort=False)
             .agg(n_images=("image_id", "size"), top1=("correct_top1", "mean"), top5=("correct_top5", "mean"))
             .reset_index())
    table[["top1", "top5"]] *= 100
    sizes = {g: class_groups.count(g) for g in set(class_groups)} | {"all": len(class_groups)}
    table["chance_top1"] = 100 / table["group"].map(sizes)
    return with_accuracy_intervals(table)


def run(ctx: RunContext) -> None:
    images = ctx.images()
    predictions = clean_predictions(ctx, ctx.model_names)
    meta = {"classes": len(images.classes), "inference": "BagNets fused (BatchNorm folded)",
            "accuracy_metric": ctx.profile.accuracy_metric}  # what the contrasts compare (bagrepro.harness.contrasts)
    ctx.write_csv(with_class_names(predictions, images.classes, "true_class_name"), "predictions.csv", **meta)
    ctx.write_csv(summarize(predictions), "summary.csv", **meta)
    ctx.write_csv(with_accuracy_intervals(with_class_names(per_class(predictions), images.classes, "class_name")),
                  "per_class.csv", **meta)
    groups = getattr(images, "class_groups", None)
    if groups:  # the demo world: local-evidence classes against arrangement-defined ones
        ctx.write_csv(per_group(predictions, groups), "per_group.csv", **meta)


def make_figures(results_dir: Path, figures_dir: Path) -> list[Path]:
    """Fig. 1B: top-1 / top-5 per model, ours (with its exact 95 % interval as an error bar) beside
    the paper's reference."""
    summary = read_csv(results_dir / "summary.csv")
    fig, axes = new_figure(1, 2, figsize=(9, 3.2), sharey=True)
    x = np.arange(len(summary))
    for ax, metric in zip(axes, ("top1", "top5")):
        ax.bar(x - 0.2, summary[metric], 0.4, color=OURS_COLOUR, label="ours (95 % interval)",
               yerr=error_bars(summary, metric), capsize=2, error_kw={"lw": 0.8})
        ax.bar(x + 0.2, summary[f"reference_{metric}"].fillna(0), 0.4, color=PAPER_COLOUR,
               label="reference (BagNets: paper, top-5 only; deep: torchvision docs)")
        tops = summary.get(f"{metric}_high", summary[metric]).fillna(summary[metric])
        for xi, value, top in zip(x, summary[metric], tops):
            ax.text(xi - 0.2, top + 1, f"{value:.1f}", ha="center", fontsize=7)
        ax.set_xticks(x, summary["model"], rotation=30, ha="right")
        ax.set_title(f"{metric.replace('top', 'top-')} accuracy (%)")
        ax.set_ylim(0, 108)
    fig.legend(*axes[0].get_legend_handles_labels(), loc="outside right upper")  # clear of the bars
    fig.suptitle("Fig. 1B: accuracy (reference: the paper's top-5 of BagNet-17 / -33; torchvision V1 docs for deep "
                 "models; no bar: no source gives a number)", fontsize=8)
    return save_figure(fig, figures_dir / "fig1b_accuracy")


def report_table(results_dir: Path):
    summary = read_csv(results_dir / "summary.csv")
    return pd.concat([comparison(summary, ["model"], f"top-{k} (%)", f"top{k}", f"reference_top{k}") for k in (1, 5)],
                     ignore_index=True)



def plan(ctx: RunContext) -> list:
    """--plan: one forward pass per image and model."""
    return clean_work(ctx, ctx.model_names)


EXPERIMENT = Experiment(
    name="accuracy", title="top-1 / top-5 accuracy per model", paper_ref="Fig. 1B",
    open_choices=(
        "References: the paper gives top-5 only, for BagNet-17 (80.5 %) and BagNet-33 (87.6 %); BagNet-9 and every "
        "top-1 have no reference here. The deep networks compare with torchvision's documented IMAGENET1K_V1 "
        "accuracies (torchvision's docs, not the paper).",
    ),
    run=run, plan=plan, make_figures=make_figures, report_table=report_table, shardable=True,
    question="How accurate are bag-of-local-features models compared with deep networks on the same images?",
)

