"""Logit thresholding (Appendix A.1, Fig. A.4): how much of BagNet-33's accuracy survives when each
patch's evidence is clipped from below or reduced to one bit?

On BagNet-33's per-patch logits l [K, h, w] per image: (a) clip: values below a threshold t become t;
(b) binarise: below t -> 0, above -> 1; then average over space and score top-1 / top-5 for every t
of a grid (default 201 points over [-100, 100]). The patch logits are computed once per image; all
thresholds are swept at once from the sorted logits (mean of max(l, t) = (sum of l above t + t *
count below) / n), never one pass per threshold. Top-k is the expected accuracy under random
tie-breaking (binarised means tie often; a constant output scores k / K). Also the histogram of
patch logits over samples and classes.

Writes ``results/thresholding/accuracy.csv`` (mode, threshold, n_images, top1, top5; mode 'none' is
the unmodified model; then model, and ``top1_low``, ``top1_high``, ``top5_low``, ``top5_high``: exact
95 % intervals in %), ``histogram.csv`` (bin_left, bin_right, count) and ``summary.csv`` (per mode, the best
threshold and its gap to the unmodified model; the paper: 3-4 % top-5 for binarisation; then
``best_low``, ``best_high``, ``unmodified_low``, ``unmodified_high``: exact 95 % intervals in %, and
``gap_low``, ``gap_high`` in percentage points). The summary's and the figure's metric is the
profile's ``accuracy_metric`` (top-5 as in the paper; top-1 on the demo).

Intervals: accuracies are counts of correct images (expected hits under random tie-breaking, summed
and rounded to whole images) out of n_images, so they get exact (Clopper-Pearson) intervals. The sweep
keeps only these counts, not each image's answer, so the gap (unmodified - best, on the same images)
gets no paired bootstrap; its interval is the conservative (Bonferroni) one that needs no pairing:
with 97.5 % exact intervals [u_low, u_high] of the unmodified and [b_low, b_high] of the best
accuracy, both hold at once with probability >= 95 %, and then the gap lies in
[u_low - b_high, u_high - b_low]. The best threshold is taken as given (chosen on the same images,
its accuracy is optimistic by the selection; the intervals do not widen for that).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from bagrepro.core import paper
from bagrepro.methods.heatmaps import patch_logits
from bagrepro.core.metrics import exact_intervals, top_k_hits, with_accuracy_intervals
from bagrepro.harness.plan import Work
from bagrepro.harness.plotting import error_bars, new_figure, save_figure
from bagrepro.harness.results import read_csv
from bagrepro.harness.registry import Experiment
from bagrepro.harness.context import RunContext
from bagrepro.core.settings import our_setting, paper_setting

MODEL_ROLE = "bagnet33"


@dataclass(frozen=True)
class Settings:
    """The thresholds: ``count`` evenly spaced values from ``low`` to ``high`` (logits; the paper's
    Fig. A.4 spans -100 to 100)."""

    low: float = paper_setting(-100.0, "Appendix A.1 (Fig. A.4)", "thresholds from -100")
    high: float = paper_setting(100.0, "Appendix A.1 (Fig. A.4)", "to 100")
    count: int = our_setting(201, "the paper does not list its thresholds; steps of 1 logit")


def thresholded_scores(logits: torch.Tensor, thresholds: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Spatial means after clipping and after binarising, for every threshold at once.

    logits [B, K, h, w]; thresholds [T]. Returns (clip, binarise), each [T, B, K].
    """
    batch, classes = logits.shape[:2]
    values = logits.flatten(2).double().sort(-1).values.contiguous()  # [B, K, n]
    n = values.shape[-1]
    below = torch.searchsorted(values, thresholds.double().expand(batch, classes, -1).contiguous(), right=True)
    cumulative = torch.nn.functional.pad(values.cumsum(-1), (1, 0))  # [B, K, n + 1]
    sum_below = cumulative.gather(-1, below)
    total = cumulative[..., -1:]
    clip = (total - sum_below + thresholds.double() * below) / n
    binarise = (n - below).double() / n
    return clip.permute(2, 0, 1), binarise.permute(2, 0, 1)


def run(ctx: RunContext) -> None:
    grid = (ctx.settings.low, ctx.settings.high, ctx.settings.count)
    thresholds = torch.linspace(*grid[:2], int(grid[2]))
    bins = np.linspace(grid[0], grid[1], 101)
    name = ctx.role(MODEL_ROLE)
    metric = ctx.profile.accuracy_metric
    store = ctx.units({"grid": grid, "model": name})
    if not store.done("accuracy"):
        model = ctx.inference_model(name)
        hits = {mode: torch.zeros(len(thresholds), 2) for mode in ("clip", "binarise")}
        plain = torch.zeros(2)
        histogram = np.zeros(len(bins) + 1, dtype=np.int64)  # + underflow / overflow bins
        seen = 0
        for batch, labels, _ in ctx.progress(ctx.images().batches(ctx.batch_size), desc=name):
            inputs = model.zoo_spec.preprocess.normalize(batch.to(ctx.device, non_blocking=True))
            logits = patch_logits(model, inputs).cpu()
            clip, binarise = thresholded_scores(logits, thresholds)
            for mode, scores in (("clip", clip), ("binarise", binarise)):
                hits[mode] += torch.stack([top_k_hits(scores, labels, k).sum(-1) for k in (1, 5)], -1).double()
            pooled = logits.mean((2, 3))
            plain += torch.stack([top_k_hits(pooled, labels, k).sum() for k in (1, 5)]).double()
            histogram += np.bincount(np.digitize(logits.flatten().numpy(), bins), minlength=len(bins) + 1)
            seen += len(labels)
        rows = [{"mode": mode, "threshold": t, "n_images": seen, "top1": 100 * h[0] / seen, "top5": 100 * h[1] / seen}
                for mode, table in hits.items() for t, h in zip(thresholds.tolist(), table.tolist())]
        rows += [{"mode": "none", "threshold": np.nan, "n_images": seen,
                  "top1": 100 * plain[0].item() / seen, "top5": 100 * plain[1].item() / seen}]
        edges = np.concatenate([[-np.inf], bins, [np.inf]])
        store.save("histogram", pd.DataFrame({"bin_left": edges[:-1], "bin_right": edges[1:], "count": histogram}))
        store.save("accuracy", pd.DataFrame(rows))
    accuracy = with_accuracy_intervals(store.load("accuracy").assign(model=name))
    ctx.write_csv(accuracy, "accuracy.csv")
    ctx.write_csv(store.load("histogram").assign(model=name), "histogram.csv")
    ctx.write_csv(summarize(accuracy, metric), "summary.csv")


def summarize(accuracy: pd.DataFrame, metric: str = "top5") -> pd.DataFrame:
    """Per mode: the threshold with the best ``metric`` ('top1' or 'top5'), that accuracy, the
    unmodified model's, and the gap (percentage points); the paper's gap is a top-5 one. Then the
    95 % intervals: exact for the best and the unmodified accuracy (%), conservative for the gap
    (percentage points; see the module docstring). ``accuracy``: rows of accuracy.csv (metric in %,
    n_images)."""
    modes = ["clip", "binarise"]
    plain = accuracy[accuracy["mode"] == "none"].iloc[[0] * len(modes)]
    best = pd.concat([accuracy.loc[[accuracy.loc[accuracy["mode"] == mode, metric].idxmax()]] for mode in modes])
    paper_gap = "-".join(map(str, paper.THRESHOLDING_BINARISE_GAP_TOP5.values()))
    summary = pd.DataFrame({"mode": modes, "metric": metric, "best_threshold": best["threshold"].to_numpy(),
                            "best": best[metric].to_numpy(), "unmodified": plain[metric].to_numpy(),
                            "gap": plain[metric].to_numpy() - best[metric].to_numpy(),
                            "paper_gap_top5": [paper_gap if mode == "binarise" else "" for mode in modes],
                            "paper_gap_top5_source": [paper.THRESHOLDING_BINARISE_GAP_TOP5.source if mode == "binarise"
                                                      else "" for mode in modes]})
    counts = {name: (rows[metric].to_numpy() / 100 * rows["n_images"].to_numpy(), rows["n_images"].to_numpy())
              for name, rows in (("best", best), ("unmodified", plain))}  # correct images, images
    intervals = {}
    for name, (hits, images) in counts.items():
        intervals[f"{name}_low"], intervals[f"{name}_high"] = exact_intervals(hits, images)
    # both accuracies inside their 97.5 % intervals at once: probability >= 95 %, whatever their pairing
    (best_low, best_high), (plain_low, plain_high) = (exact_intervals(hits, images, level=0.975)
                                                      for hits, images in counts.values())
    intervals["gap_low"], intervals["gap_high"] = plain_low - best_high, plain_high - best_low
    return summary.assign(**intervals)


def make_figures(results_dir: Path, figures_dir: Path) -> list[Path]:
    """Fig. A.4: accuracy (the summary's metric) against the threshold (clip, binarise, unmodified;
    shaded: the exact 95 % intervals) and the logit histogram."""
    accuracy = read_csv(results_dir / "accuracy.csv")
    metric = read_csv(results_dir / "summary.csv")["metric"].iloc[0]
    histogram = read_csv(results_dir / "histogram.csv")
    fig, (left, right) = new_figure(1, 2, figsize=(8, 3))
    for mode in ("clip", "binarise"):
        rows = accuracy[accuracy["mode"] == mode]
        line, = left.plot(rows["threshold"], rows[metric], label=mode)
        if error_bars(rows, metric) is not None:
            left.fill_between(rows["threshold"], rows[f"{metric}_low"], rows[f"{metric}_high"], color=line.get_color(),
                              alpha=0.2, lw=0)
    plain = accuracy[accuracy["mode"] == "none"]
    left.axhline(plain[metric].iloc[0], color="k", ls="--", lw=0.8, label="unmodified (shaded: 95 % intervals)")
    if error_bars(plain, metric) is not None:
        left.axhspan(plain[f"{metric}_low"].iloc[0], plain[f"{metric}_high"].iloc[0], color="k", alpha=0.08, lw=0)
    left.set_xlabel("threshold on patch logits")
    left.set_ylabel(f"{metric.replace('top', 'top-')} accuracy (%)")
    left.legend()
    inner = histogram.iloc[1:-1]
    right.bar(inner["bin_left"], inner["count"], width=inner["bin_right"] - inner["bin_left"], align="edge")
    right.set_yscale("log")
    right.set_xlabel("patch logit")
    right.set_ylabel("count (samples x classes x patches)")
    fig.suptitle(f"Fig. A.4: thresholded patch logits of {accuracy['model'].iloc[0]}", fontsize=9)
    return save_figure(fig, figures_dir / "figA4_thresholding")


def report_table(results_dir: Path):
    summary = read_csv(results_dir / "summary.csv")
    table = summary[["mode", "best_threshold", "unmodified", "best"]].copy()
    metric = summary["metric"].iloc[0].replace("top", "top-")
    table["metric"] = f"{metric} gap of the best threshold (%)" + ("" if metric == "top-5" else ", paper: top-5")
    table["ours"] = summary["gap"]
    table["ours_low"] = summary.get("gap_low", float("nan"))  # conservative 95 % interval (module docstring)
    table["ours_high"] = summary.get("gap_high", float("nan"))
    table["reference"] = summary["paper_gap_top5"].fillna("")
    table["source"] = summary.get("paper_gap_top5_source", pd.Series("", index=summary.index)).fillna("")
    table["difference"] = float("nan")  # the paper gives a range (3-4 %), not a number
    return table



def plan(ctx: RunContext) -> list:
    """--plan: BagNet-33's patch logits, one pass per image."""
    count = len(ctx.images())
    return [Work(ctx.role(MODEL_ROLE), "patch logits", count, count)]


EXPERIMENT = Experiment(
    name="thresholding", title="clipping and binarising BagNet-33 patch logits", paper_ref="Fig. A.4",
    run=run, plan=plan, make_figures=make_figures, report_table=report_table, settings=Settings,
    question="How much accuracy survives when each patch's evidence is clipped or reduced to one bit?",
)
