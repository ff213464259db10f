"""Logit correlation (Fig. 1C): how linearly do BagNet logits follow VGG-16's?

Pearson correlation between each BagNet's logits and VGG-16's (or the profile's stand-in) on the same
images: pooled over all (image, class) pairs, and per image across classes. The paper: 0.70
(BagNet-9), 0.79 (BagNet-17), 0.88 (BagNet-33).

Writes ``results/logit_correlation/per_image.csv`` (model, role, reference, image_id, pearson_r)
and ``summary.csv`` (pooled r, mean per-image r, the paper's value). Forward passes per image: one
per BagNet plus one of the reference.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch

from bagrepro import paper
from bagrepro.plotting import OURS_COLOUR, PAPER_COLOUR, new_figure, save_figure
from bagrepro.plan import Work
from bagrepro.profiles import BAGNET_ROLES
from bagrepro.report import comparison
from bagrepro.results import read_csv
from bagrepro.runner import Experiment, RunContext

REFERENCE_ROLE = "vgg16"


@dataclass(frozen=True)
class Settings:
    """num_images: the first N images of the run (None: all of them, as in the paper)."""

    num_images: int | None = None


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
        })

    store = ctx.units({"count": count, "reference": reference})
    frames = ctx.map_units(store, list(roles), compute)
    per_image = pd.concat(frames.values(), ignore_index=True)
    summary = (per_image.groupby(["model", "role", "reference"], sort=False)
               .agg(n_images=("image_id", "size"), pooled_r=("pooled_r", "first"),
                    mean_per_image_r=("pearson_r", "mean")).reset_index())
    summary["paper_r"] = summary["role"].map(paper.LOGIT_CORRELATION_WITH_VGG16)
    summary["difference"] = summary["pooled_r"] - summary["paper_r"]
    ctx.write_csv(per_image.drop(columns="pooled_r"), "per_image.csv", reference=reference)
    ctx.write_csv(summary, "summary.csv", reference=reference)


def make_figures(results_dir: Path, figures_dir: Path) -> list[Path]:
    """Fig. 1C: correlation with the reference's logits against the patch size q."""
    summary = read_csv(results_dir / "summary.csv")
    q = summary["role"].str.extract(r"(\d+)$")[0].astype(int)
    fig, ax = new_figure(figsize=(4, 3))
    ax.plot(q, summary["pooled_r"], marker="o", color=OURS_COLOUR, label="ours (pooled)")
    ax.plot(q, summary["mean_per_image_r"], marker="s", ls=":", color=OURS_COLOUR, label="ours (mean per image)")
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
    run=run, plan=plan, make_figures=make_figures, report_table=report_table, settings=Settings, shardable=True,
    question="How linearly do BagNet logits follow a deep network's logits on the same images?",
)
