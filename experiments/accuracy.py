"""Accuracy (Fig. 1B): top-1 / top-5 of every model on the profile's images.

Writes ``results/accuracy/``:
- ``predictions.csv``: one row per (model, image): true class, top-5 predicted classes, the true
  class's logit and probability, correct_top1 / correct_top5 (later experiments reuse these rows),
  then the true class's name (``true_class_name``: the ImageNet name of a synset, else the class
  folder's name);
- ``summary.csv``: per model top-1 / top-5 (%) beside the paper's reference numbers;
- ``per_class.csv``: per (model, class) top-1 / top-5 (%), for Fig. 7, then ``class_name``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from bagrepro import paper
from bagrepro.plotting import OURS_COLOUR, PAPER_COLOUR, new_figure, save_figure
from bagrepro.predictions import clean_predictions, clean_work
from bagrepro.report import comparison
from bagrepro.data.synsets import display_name
from bagrepro.results import read_csv
from bagrepro.runner import Experiment, RunContext


def summarize(predictions: pd.DataFrame) -> pd.DataFrame:
    """Per model: images, top-1 / top-5 in %, and the paper's reference numbers beside them."""
    summary = (predictions.groupby(["model", "role"], dropna=False, sort=False)
               .agg(n_images=("image_id", "size"), top1=("correct_top1", "mean"), top5=("correct_top5", "mean"))
               .reset_index())
    summary[["top1", "top5"]] *= 100
    reference = summary["role"].map(lambda role: paper.reference_accuracy(role) if isinstance(role, str) else None)
    summary["paper_top1"] = reference.map(lambda ref: ref[0] if ref else np.nan)
    summary["paper_top5"] = reference.map(lambda ref: ref[1] if ref else np.nan)
    summary["diff_top1"] = summary["top1"] - summary["paper_top1"]
    summary["diff_top5"] = summary["top5"] - summary["paper_top5"]
    return summary


def per_class(predictions: pd.DataFrame) -> pd.DataFrame:
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
    """Top-1 / top-5 (%) per model and class group (plus 'all'); chance = 100 / classes in the group."""
    frame = predictions.assign(group=predictions["true_class"].map(dict(enumerate(class_groups))))
    frame = pd.concat([frame, frame.assign(group="all")], ignore_index=True)
    table = (frame.groupby(["model", "role", "group"], dropna=False, sort=False)
             .agg(n_images=("image_id", "size"), top1=("correct_top1", "mean"), top5=("correct_top5", "mean"))
             .reset_index())
    table[["top1", "top5"]] *= 100
    sizes = {g: class_groups.count(g) for g in set(class_groups)} | {"all": len(class_groups)}
    table["chance_top1"] = 100 / table["group"].map(sizes)
    return table


def run(ctx: RunContext) -> None:
    images = ctx.images()
    predictions = clean_predictions(ctx, ctx.model_names)
    meta = {"classes": len(images.classes), "inference": "BagNets fused (BatchNorm folded)"}
    ctx.write_csv(with_class_names(predictions, images.classes, "true_class_name"), "predictions.csv", **meta)
    ctx.write_csv(summarize(predictions), "summary.csv", **meta)
    ctx.write_csv(with_class_names(per_class(predictions), images.classes, "class_name"), "per_class.csv", **meta)
    groups = getattr(images, "class_groups", None)
    if groups:  # the demo world: local-evidence classes against arrangement-defined ones
        ctx.write_csv(per_group(predictions, groups), "per_group.csv", **meta)


def make_figures(results_dir: Path, figures_dir: Path) -> list[Path]:
    """Fig. 1B: top-1 / top-5 per model, ours beside the paper's reference."""
    summary = read_csv(results_dir / "summary.csv")
    fig, axes = new_figure(1, 2, figsize=(9, 3.2), sharey=True)
    x = np.arange(len(summary))
    for ax, metric in zip(axes, ("top1", "top5")):
        ax.bar(x - 0.2, summary[metric], 0.4, color=OURS_COLOUR, label="ours")
        ax.bar(x + 0.2, summary[f"paper_{metric}"].fillna(0), 0.4, color=PAPER_COLOUR, label="paper / reference")
        for xi, value in zip(x, summary[metric]):
            ax.text(xi - 0.2, value + 1, f"{value:.1f}", ha="center", fontsize=7)
        ax.set_xticks(x, summary["model"], rotation=30, ha="right")
        ax.set_title(f"{metric.replace('top', 'top-')} accuracy (%)")
        ax.set_ylim(0, 105)
    fig.legend(*axes[0].get_legend_handles_labels(), loc="outside right upper")  # clear of the bars
    fig.suptitle("Fig. 1B: accuracy (paper: released BagNets; torchvision V1 docs for deep models)", fontsize=9)
    return save_figure(fig, figures_dir / "fig1b_accuracy")


def report_table(results_dir: Path):
    summary = read_csv(results_dir / "summary.csv")
    return pd.concat([comparison(summary, ["model"], f"top-{k} (%)", f"top{k}", f"paper_top{k}") for k in (1, 5)],
                     ignore_index=True)



def plan(ctx: RunContext) -> list:
    """--plan: one forward pass per image and model."""
    return clean_work(ctx, ctx.model_names)


EXPERIMENT = Experiment(
    name="accuracy", title="top-1 / top-5 accuracy per model", paper_ref="Fig. 1B",
    run=run, plan=plan, make_figures=make_figures, report_table=report_table, shardable=True,
    question="How accurate are bag-of-local-features models compared with deep networks on the same images?",
)

