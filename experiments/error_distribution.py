"""Error distribution (Fig. 7): do BagNets and deep networks get the same classes right?

Per-class top-5 accuracy of BagNet-33 against VGG-16, ResNet-50, ResNet-152 and DenseNet-169, and of
VGG-11 against VGG-16 (profile stand-ins elsewhere; a pair the stand-ins collapse onto one model or
onto an earlier pair is left out), from the accuracy experiment's per-image rows
(reused, computed only where missing). Per pair: Pearson r of the per-class accuracies and, beyond
the paper, Cohen's kappa error consistency of top-1 correctness per image (Geirhos et al. 2020).

Writes ``results/error_distribution/per_class.csv`` (pair, model_x, model_y, class, accuracy_x,
accuracy_y) and ``pairs.csv`` (pair, model_x, model_y, metric, Pearson r of per-class accuracy, kappa,
top-1 of x and y in %, images, classes; then the 95 % intervals: ``pearson_r_per_class_low`` /
``_high`` (percentile bootstrap over classes, the rows r is computed on),
``kappa_top1_low`` / ``_high`` (paired percentile bootstrap over images: both models' answers on an
image are drawn together), ``top1_x_low`` / ``_high``, ``top1_y_low`` / ``_high`` (exact, in %)).
The per-class metric is the profile's ``accuracy_metric`` (top-5 as in the paper; top-1 on the demo).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from bagrepro.core.metrics import (
    bootstrap_interval,
    error_consistency,
    exact_intervals,
    pearson_interval,
)
from bagrepro.harness.plotting import new_figure, save_figure
from bagrepro.harness.predictions import clean_predictions, clean_work
from bagrepro.harness.report import comparison
from bagrepro.harness.results import read_csv
from bagrepro.harness.registry import Experiment
from bagrepro.harness.context import RunContext

PAIRS = (("bagnet33", "vgg16"), ("bagnet33", "resnet50"), ("bagnet33", "resnet152"),
         ("bagnet33", "densenet169"), ("vgg11", "vgg16"))


def compare(predictions: pd.DataFrame, x: str, y: str, metric: str = "top5") -> tuple[pd.DataFrame, dict]:
    """Per-class accuracy (``metric``: 'top5' as in the paper, or 'top1') of models x and y, and the
    pair's r (NaN where either is constant) and kappa, then their 95 % intervals: r bootstrapped over
    classes, kappa over images (paired), top-1 of x and y (%) exact. An interval is NaN where its
    number is, or where a resample leaves it undefined (e.g. both models right on every drawn image)."""
    a = predictions[predictions["model"] == x].set_index("image_id")
    b = predictions[predictions["model"] == y].set_index("image_id").reindex(a.index)
    per_class = pd.DataFrame({
        "class": a["true_class"],
        "accuracy_x": a[f"correct_{metric}"].astype(float) * 100,
        "accuracy_y": b[f"correct_{metric}"].astype(float) * 100,
    }).groupby("class").mean().reset_index()
    constant = per_class["accuracy_x"].nunique() < 2 or per_class["accuracy_y"].nunique() < 2
    r = np.nan if constant or len(per_class) < 3 else stats.pearsonr(per_class["accuracy_x"],
                                                                      per_class["accuracy_y"]).statistic
    summary = {"metric": metric, "pearson_r_per_class": r, "kappa_top1": error_consistency(a["correct_top1"], b["correct_top1"]),
               "top1_x": a["correct_top1"].mean() * 100, "top1_y": b["correct_top1"].mean() * 100,
               "n_images": len(a), "n_classes": len(per_class)}
    summary["pearson_r_per_class_low"], summary["pearson_r_per_class_high"] = (
        (np.nan, np.nan) if np.isnan(r) else pearson_interval(per_class["accuracy_x"], per_class["accuracy_y"]))
    right_x, right_y = a["correct_top1"].astype(bool).to_numpy(), b["correct_top1"].astype(bool).to_numpy()
    summary["kappa_top1_low"], summary["kappa_top1_high"] = (
        (np.nan, np.nan) if np.isnan(summary["kappa_top1"]) else bootstrap_interval(error_consistency, right_x, right_y))
    for name, rows in (("top1_x", a), ("top1_y", b)):
        (summary[f"{name}_low"],), (summary[f"{name}_high"],) = exact_intervals(rows["correct_top1"].sum(), len(rows))
    return per_class, summary


def distinct_pairs(role_to_model, log=print) -> list[tuple[str, str, str]]:
    """The paper's pairs as (model_x, model_y, 'role vs role'), resolved through the profile's
    stand-ins. A pair whose two roles share one stand-in, or that resolves to the same two models as
    an earlier pair, says nothing new (r = kappa = 1, or a duplicate panel): it is left out, with a
    line that says so."""
    pairs, seen = [], set()
    for x_role, y_role in PAIRS:
        x, y = role_to_model(x_role), role_to_model(y_role)
        label = f"{x_role} vs {y_role}"
        if x == y or (x, y) in seen:
            log(f"[error_distribution] {label}: left out, this profile's stand-ins make it {x} vs {y} again")
            continue
        seen.add((x, y))
        pairs.append((x, y, label))
    return pairs


def run(ctx: RunContext) -> None:
    pairs = distinct_pairs(ctx.role, log=lambda line: None if ctx.quiet else print(line))
    names = list(dict.fromkeys(name for x, y, _ in pairs for name in (x, y)))
    predictions = clean_predictions(ctx, names)
    metric = ctx.profile.accuracy_metric
    class_rows, pair_rows = [], []
    for x, y, label in pairs:
        per_class, summary = compare(predictions, x, y, metric)
        class_rows.append(per_class.assign(pair=label, model_x=x, model_y=y))
        pair_rows.append({"pair": label, "model_x": x, "model_y": y, **summary})
    columns = ["pair", "model_x", "model_y", "class", "accuracy_x", "accuracy_y"]
    ctx.write_csv(pd.concat(class_rows, ignore_index=True)[columns], "per_class.csv", source="clean predictions")
    ctx.write_csv(pd.DataFrame(pair_rows), "pairs.csv", source="clean predictions")


def _with_interval(row: pd.Series, column: str) -> str:
    """'value [low, high]' (2 decimals) of ``row[column]`` and its 95 % interval columns; the value
    alone where the row has no (finite) interval."""
    low, high = row.get(f"{column}_low", np.nan), row.get(f"{column}_high", np.nan)
    text = f"{row[column]:.2f}"
    return text if pd.isna(low) or pd.isna(high) else f"{text} [{low:.2f}, {high:.2f}]"


def make_figures(results_dir: Path, figures_dir: Path) -> list[Path]:
    """Fig. 7: per-class top-5 scatter per pair, with r and kappa and their 95 % intervals on each panel."""
    per_class = read_csv(results_dir / "per_class.csv")
    pairs = read_csv(results_dir / "pairs.csv")
    fig, axes = new_figure(1, len(pairs), figsize=(2.4 * len(pairs), 2.6), squeeze=False)
    lowest = per_class[["accuracy_x", "accuracy_y"]].min().min()
    low = max(0.0, min(40.0, np.floor(lowest / 10) * 10))  # the paper's 40-100 %, wider only if needed
    for ax, (_, pair) in zip(axes[0], pairs.iterrows()):
        rows = per_class[per_class["pair"] == pair["pair"]]
        ax.scatter(rows["accuracy_y"], rows["accuracy_x"], s=5, alpha=0.5)
        ax.plot([low, 100], [low, 100], color="k", lw=0.5)
        ax.set_xlim(low - 2, 102)
        ax.set_ylim(low - 2, 102)
        ax.set_xlabel(f"{pair['model_y']} {pair['metric']} (%)", fontsize=7)
        ax.set_ylabel(f"{pair['model_x']} {pair['metric']} (%)", fontsize=7)
        ax.set_title(f"r = {_with_interval(pair, 'pearson_r_per_class')}\n"
                     f"kappa = {_with_interval(pair, 'kappa_top1')}", fontsize=7)
    fig.suptitle(f"Fig. 7: per-class {pairs['metric'].iloc[0]} accuracy (paper: top-5, axes 40-100 %)", fontsize=9)
    return save_figure(fig, figures_dir / "fig7_error_distribution")


def report_table(results_dir: Path):
    pairs = read_csv(results_dir / "pairs.csv")
    return pd.concat([comparison(pairs, ["pair", "metric"], "Pearson r of per-class accuracy", "pearson_r_per_class",
                                 "paper"),
                      comparison(pairs, ["pair", "metric"], "error consistency kappa (top-1)", "kappa_top1",
                                 "paper")],
                     ignore_index=True)



def plan(ctx: RunContext) -> list:
    """--plan: the clean predictions of the models in the pairs (nothing else)."""
    pairs = distinct_pairs(ctx.role, log=lambda line: None)
    return clean_work(ctx, list(dict.fromkeys(name for x, y, _ in pairs for name in (x, y))))


EXPERIMENT = Experiment(
    name="error_distribution", title="per-class accuracy of BagNet-33 against deep networks",
    paper_ref="Fig. 7", open_choices=(
        "Cohen's kappa error consistency (Geirhos et al. 2020) is an addition of ours; the paper shows the "
        "per-class scatter only.",
    ), run=run, plan=plan, make_figures=make_figures, report_table=report_table, needs=("accuracy",),
    question="Do BagNet-33 and deep networks find the same classes hard?",
)
