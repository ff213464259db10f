"""Runtime (Sec. 4.1): inference images/s per model, relative to ResNet-50 measured in the same run.

The paper: about 155 images/s for every BagNet against 570 for ResNet-50 (0.27x) at batch 64, 224 px,
on a GPU. Every model runs as built ("eager") and through bagrepro's inference path
("fused": BatchNorm folded, channels-last; a BagNet's stem composed into one conv). Repeats are interleaved
across models so that machine load affects all of them alike; the median is reported.

Writes ``results/runtime/throughput.csv`` (one row per model, path and repeat) and
``summary.csv`` (median images/s, ratio to the reference model, the paper's ratio; then
``images_per_s_low`` / ``_high`` (images/s) and ``relative_to_reference_low`` / ``_high`` (a ratio):
95 % intervals).

Intervals: every repeat is one timed batch per model and path, so the repeats are the samples. A
percentile bootstrap over repeats resamples whole repeats: a model's time and the reference's time
from the same repeat (measured back to back, under the same machine load) stay together, and the
ratio of the resampled medians is the statistic. With few repeats (the default 3) the interval is
coarse, at most the range of the per-repeat values; with one repeat there is none (NaN).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from bagrepro.core import paper
from bagrepro.core.metrics import bootstrap_interval
from bagrepro.harness.plan import Work
from bagrepro.harness.plotting import (
    OURS_COLOUR,
    PAPER_COLOUR,
    error_bars,
    new_figure,
    save_figure,
)
from bagrepro.harness.report import comparison
from bagrepro.harness.results import read_csv
from bagrepro.harness.registry import Experiment
from bagrepro.harness.context import RunContext
from bagrepro.core.settings import our_setting, paper_setting


@dataclass(frozen=True)
class Settings:
    """batch_size: images per timed batch (the paper: 64; ``--batch-size`` overrides it); repeats:
    timed passes per model (the median is reported); warmup: untimed passes per model first."""

    batch_size: int = paper_setting(64, "Sec. 4.1", "batch 64")
    repeats: int = our_setting(3, "the paper does not say how it timed; the median of 3 timed batches")
    warmup: int = our_setting(1, "untimed batches first, so that start-up costs are not timed")


def _time_batch(model, batch: torch.Tensor) -> float:
    if batch.is_cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    with torch.inference_mode():
        model(batch)
    if batch.is_cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - start


def timed_batch_size(ctx: RunContext) -> int:
    """The run's --batch-size (a number, or the one 'auto' chose) when given, else the setting's."""
    return ctx.batch_size if ctx.options.batch_size else ctx.settings.batch_size


def run(ctx: RunContext) -> None:
    batch_size = timed_batch_size(ctx)
    repeats, warmup = ctx.settings.repeats, ctx.settings.warmup
    reference = ctx.role(paper.RUNTIME_REFERENCE)
    names = ctx.model_names + ([reference] if reference not in ctx.model_names else [])
    size = ctx.image_size
    store = ctx.units({"batch_size": batch_size, "repeats": repeats, "size": size, "models": names})

    def measure(_unit: str) -> pd.DataFrame:
        generator = torch.Generator().manual_seed(ctx.seed)
        batch = torch.randn(batch_size, 3, size, size, generator=generator).to(ctx.device, non_blocking=True)
        runs = [(name, "eager", ctx.model(name)) for name in names]
        runs += [(name, "fused", ctx.inference_model(name)) for name in names
                 if ctx.inference_model(name) is not ctx.model(name)]  # an untraceable model has no fused form
        inputs = {"eager": batch, "fused": batch.contiguous(memory_format=torch.channels_last)}
        for name, path, model in ctx.progress(runs, desc="warm-up"):
            for _ in range(warmup):
                _time_batch(model, inputs[path])
        rows = []
        for repeat in ctx.progress(range(repeats), desc="repeats"):
            for name, path, model in runs:
                seconds = _time_batch(model, inputs[path])
                rows.append({"model": name, "role": ctx.profile.role_of(name), "path": path, "repeat": repeat,
                             "batch_size": batch_size, "image_size": size, "seconds": seconds,
                             "images_per_s": batch_size / seconds})
        return pd.DataFrame(rows)

    # one unit: under torchrun rank 0 measures while the other ranks wait, so that no other work
    # shares the machine's CPU with the timing
    throughput = ctx.map_units(store, ["all"], measure)["all"]
    throughput["reference_model"] = reference
    meta = {"batch_size": batch_size, "image_size": size}
    ctx.write_csv(throughput, "throughput.csv", **meta)
    ctx.write_csv(summarize(throughput), "summary.csv", **meta)


def _median(images_per_s, axis=-1):
    return np.median(images_per_s, axis=axis)


def _ratio_of_medians(images_per_s, reference_images_per_s, axis=-1):
    return np.median(images_per_s, axis=axis) / np.median(reference_images_per_s, axis=axis)


def summarize(throughput: pd.DataFrame) -> pd.DataFrame:
    """Median images/s per (model, path); ratio to the reference model's eager median; then 95 %
    intervals of both, bootstrapped over repeats (paired with the reference's repeat for the ratio;
    see the module docstring)."""
    summary = (throughput.groupby(["model", "role", "path"], dropna=False, sort=False)
               .agg(images_per_s=("images_per_s", "median"), repeats=("repeat", "size")).reset_index())
    reference = throughput["reference_model"].iloc[0]
    base = summary.loc[(summary["model"] == reference) & (summary["path"] == "eager"), "images_per_s"].iloc[0]
    summary["relative_to_reference"] = summary["images_per_s"] / base
    summary["reference_model"] = reference
    paper_ratio = summary["role"].map(lambda role: paper.runtime_ratio(role) if isinstance(role, str) else np.nan)
    summary["paper_relative"] = paper_ratio.where(summary["path"] == "eager")  # the paper ran models as built
    summary["paper_relative_source"] = np.where(summary["paper_relative"].notna(), paper.RUNTIME_RATIO_SOURCE, "")
    # images/s per repeat: one row per (model, path), one column per repeat
    per_repeat = throughput.pivot_table(index=["model", "path"], columns="repeat", values="images_per_s")
    reference_per_repeat = per_repeat.loc[(reference, "eager")].to_numpy()
    intervals = {name: [] for name in ("images_per_s_low", "images_per_s_high",
                                       "relative_to_reference_low", "relative_to_reference_high")}
    for model, path in zip(summary["model"], summary["path"]):
        timed = per_repeat.loc[(model, path)].to_numpy()
        both = ~np.isnan(timed) & ~np.isnan(reference_per_repeat)  # repeats that timed both
        for name, bounds in (("images_per_s", bootstrap_interval(_median, timed[~np.isnan(timed)])),
                             ("relative_to_reference", bootstrap_interval(_ratio_of_medians, timed[both],
                                                                          reference_per_repeat[both]))):
            intervals[f"{name}_low"].append(bounds[0])
            intervals[f"{name}_high"].append(bounds[1])
    return summary.assign(**intervals)


def make_figures(results_dir: Path, figures_dir: Path) -> list[Path]:
    """Throughput relative to ResNet-50: ours (eager and fused; error bars: the 95 % intervals over
    repeats) beside the paper's ratio."""
    summary = read_csv(results_dir / "summary.csv")
    models = list(dict.fromkeys(summary["model"]))
    fig, ax = new_figure(figsize=(6.5, 3.2))
    x = np.arange(len(models))
    for offset, path, colour, hatch in ((-0.27, "eager", OURS_COLOUR, None), (0.0, "fused", "#ff7f0e", "//")):
        rows = summary[summary["path"] == path].set_index("model").reindex(models)
        ax.bar(x + offset, rows["relative_to_reference"].fillna(0), 0.27, color=colour, hatch=hatch,
               label=f"ours ({path})", yerr=error_bars(rows, "relative_to_reference"), capsize=2, error_kw={"lw": 0.8})
    paper_ratio = summary[summary["path"] == "eager"].set_index("model").reindex(models)["paper_relative"]
    ax.bar(x + 0.27, paper_ratio.fillna(0), 0.27, color=PAPER_COLOUR, label="paper (GPU)")
    ax.axhline(1.0, color="k", lw=0.6)
    ax.set_xticks(x, models, rotation=30, ha="right")
    ax.set_ylabel(f"images/s relative to {summary['reference_model'].iloc[0]}")
    ax.legend()
    ax.set_title("Runtime (Sec. 4.1): throughput relative to ResNet-50, same run\n"
                 "(error bars: 95 % intervals over the timed repeats)", fontsize=9)
    return save_figure(fig, figures_dir / "runtime_relative")


def report_table(results_dir: Path):
    return comparison(read_csv(results_dir / "summary.csv"), ["model", "path"], "images/s relative to ResNet-50",
                      "relative_to_reference", "paper_relative")



def plan(ctx: RunContext) -> list:
    """--plan: warm-up and timed batches per model, as built and through its inference copy."""
    batch_size = timed_batch_size(ctx)
    passes = (ctx.settings.warmup + ctx.settings.repeats) * batch_size * 2
    reference = ctx.role(paper.RUNTIME_REFERENCE)
    names = ctx.model_names + ([reference] if reference not in ctx.model_names else [])
    return [Work(name, "timed batches (eager + fused)", batch_size, passes) for name in names]


EXPERIMENT = Experiment(
    name="runtime", title="inference throughput relative to ResNet-50", paper_ref="Sec. 4.1",
    run=run, plan=plan, make_figures=make_figures, report_table=report_table, settings=Settings, shardable=True,
    question="How fast is a BagNet at inference relative to ResNet-50, measured in the same run?",
)
