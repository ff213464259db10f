"""Scrambling (Fig. 5 and the reproducibility report's table): accuracy when the global arrangement
of an image is destroyed but its local content kept.

- Tile scrambling: an n x n grid of tiles (n in 2, 4, 8 by default) shuffled by a seeded permutation
  per image; the report scrambled 4x4 tiles: ResNet-50 0.907 -> 0.50, DenseNet-169 0.922 -> 0.58,
  BagNet-33 0.925 -> 0.90.
- Texturisation (Gatys et al. 2015): a texture with the same VGG Gram matrices as the image,
  classified by every model; the paper: VGG-16 90.1 % -> 79.4 % top-5. Faithful textures need a VGG
  with real weights; on profiles without one (smoke, demo) it runs with few steps on the profile's
  VGG stand-in, and the outputs say so (``texture_note``).

Clean accuracy comes from the shared clean predictions (:mod:`bagrepro.predictions`: reused, computed
only where missing).
Writes ``results/scrambling/predictions.csv`` (model, role, image_id, method, grid, correct_top1,
correct_top5), ``table.csv`` (clean, scrambled and the drop per model and method as fractions, the
report's numbers beside; then per metric (top1, top5) the 95 % intervals ``clean_<m>_low``,
``clean_<m>_high``, ``manipulated_<m>_low``, ``manipulated_<m>_high`` (exact, Clopper-Pearson, as
fractions) and ``drop_<m>_low``, ``drop_<m>_high`` (a paired percentile bootstrap over images of
the mean clean - manipulated correctness, as a fraction)) and ``examples.npz`` (a few clean /
scrambled / texturised images for the figure).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from bagrepro import paper
from bagrepro.metrics import exact_intervals, mean_interval
from bagrepro.plan import Work
from bagrepro.plotting import error_bars, new_figure, save_figure
from bagrepro.predictions import clean_predictions, clean_work, score_batch
from bagrepro.report import comparison
from bagrepro.results import read_csv
from bagrepro.runner import Experiment, RunContext
from bagrepro.scrambling import scramble_tiles, texturise

EXAMPLES = 3


@dataclass(frozen=True)
class Settings:
    """grids: tiles per side (the report: 4x4; Fig. 5 also shows 2x2 and 8x8); texture_steps,
    texture_lr: Adam steps and learning rate of the Gatys texture synthesis on VGG-16's Gram
    matrices; texture_images: the first N images are texturised (synthesis is expensive);
    texture_note: a caveat shown beside the texture numbers (e.g. a stand-in VGG)."""

    grids: tuple[int, ...] = (2, 4, 8)
    texture_steps: int = 300
    texture_images: int = 200
    texture_lr: float = 0.05
    texture_note: str = ""


def texturer(ctx: RunContext) -> str | None:
    """The model whose Gram matrices make the textures (VGG-16's stand-in), or None when the run has
    none: then only the tiles are scrambled (the reproducibility report's protocol needs no VGG)."""
    return ctx.role("vgg16") if ctx.present_roles(("vgg16",)) else None


def textures(ctx: RunContext, settings: Settings, store, texturer: str | None) -> dict:
    """Texturised versions of the first ``texture_images`` images (computed once, kept in the unit
    store as the arrays of the unit ``textures__<texturer>``): images [N, 3, H, W], labels [N], ids;
    none without a texturer."""
    if texturer is None:
        size = ctx.image_size
        return {"images": torch.zeros(0, 3, size, size), "labels": torch.zeros(0, dtype=torch.long), "ids": []}
    unit = f"textures__{texturer}"
    if not store.has_arrays(unit):
        vgg = ctx.model(texturer)
        count = min(settings.texture_images, len(ctx.images()))
        images, labels, ids = [], [], []
        for index, (batch, batch_labels, batch_ids) in enumerate(ctx.progress(
                ctx.images().subset(range(count)).batches(ctx.batch_size), desc=f"textures ({texturer})")):
            images.append(texturise(batch.to(ctx.device, non_blocking=True), vgg, vgg.zoo_spec.preprocess.normalize,
                                    settings.texture_steps, settings.texture_lr, ctx.seed + index).cpu())
            labels.append(batch_labels)
            ids += batch_ids
        store.save_arrays(unit, {"images": torch.cat(images).numpy(), "labels": torch.cat(labels).numpy(),
                                 "ids": np.array(ids)})
    arrays = store.load_arrays(unit)
    return {"images": torch.from_numpy(arrays["images"]), "labels": torch.from_numpy(arrays["labels"]),
            "ids": arrays["ids"].tolist()}


def model_rows(ctx: RunContext, name: str, settings: Settings, texture_set: dict) -> pd.DataFrame:
    """Scrambled (every grid) and texturised predictions of one model."""
    model = ctx.inference_model(name)
    frames = []
    for index, (batch, labels, ids) in enumerate(ctx.progress(ctx.images().batches(ctx.batch_size), desc=name)):
        batch = batch.to(ctx.device, non_blocking=True)
        for grid in settings.grids:
            frame = score_batch(model, scramble_tiles(batch, grid, ctx.seed * 1000 + index), labels)
            frames.append(frame.assign(image_id=ids, method="tiles", grid=grid))
    images, labels = texture_set["images"], texture_set["labels"]
    for start in range(0, len(labels), ctx.batch_size):
        chunk = images[start:start + ctx.batch_size].to(ctx.device, non_blocking=True)
        frame = score_batch(model, chunk, labels[start:start + ctx.batch_size])
        frames.append(frame.assign(image_id=texture_set["ids"][start:start + ctx.batch_size], method="texture", grid=0))
    return pd.concat(frames, ignore_index=True)


def run(ctx: RunContext) -> None:
    settings = ctx.settings
    store = ctx.units(settings)
    vgg = texturer(ctx)
    texture_set = ctx.main_first(lambda: textures(ctx, settings, store, vgg))
    frames = ctx.map_units(store, ctx.model_names, lambda name: model_rows(ctx, name, settings, texture_set).assign(
        model=name, role=ctx.profile.role_of(name))).values()
    clean = clean_predictions(ctx, ctx.model_names).assign(method="clean", grid=0)
    columns = ["model", "role", "image_id", "method", "grid", "correct_top1", "correct_top5"]
    predictions = pd.concat([clean[columns], *[f[columns] for f in frames]], ignore_index=True)
    ctx.write_csv(predictions, "predictions.csv", texturiser=vgg)
    ctx.write_csv(table(predictions, settings.texture_note), "table.csv", texturiser=vgg)
    _save_examples(ctx, settings, texture_set)


def table(predictions: pd.DataFrame, texture_note: str = "") -> pd.DataFrame:
    """Per model and manipulation: clean and manipulated top-1/top-5 (fractions), drop, report/paper
    numbers, then the 95 % intervals (fractions): exact for clean and manipulated accuracy, a paired
    bootstrap over images for the drop (each image's clean minus manipulated correctness, so that
    the clean and manipulated answers on one image stay together).

    Clean accuracy is taken on the same images as the manipulated one (textures use a subset)."""
    rows, drop_intervals = [], {f"drop_{metric}_{bound}": [] for metric in ("top1", "top5") for bound in ("low", "high")}
    for (model, role), group in predictions.groupby(["model", "role"], dropna=False, sort=False):
        clean = group[group["method"] == "clean"].set_index("image_id")
        for (method, grid), manipulated in group[group["method"] != "clean"].groupby(["method", "grid"], sort=False):
            same = clean.loc[manipulated["image_id"]]
            row = {"model": model, "role": role, "method": method, "grid": grid, "n_images": len(manipulated)}
            for metric in ("top1", "top5"):
                row[f"clean_{metric}"] = same[f"correct_{metric}"].mean()
                row[f"manipulated_{metric}"] = manipulated[f"correct_{metric}"].mean()
                row[f"drop_{metric}"] = row[f"clean_{metric}"] - row[f"manipulated_{metric}"]
                drop_per_image = (same[f"correct_{metric}"].to_numpy(float)
                                  - manipulated[f"correct_{metric}"].to_numpy(float))
                low, high = mean_interval(drop_per_image)
                drop_intervals[f"drop_{metric}_low"].append(low)
                drop_intervals[f"drop_{metric}_high"].append(high)
            report = paper.SCRAMBLED_4X4_REPORT.get(role) if method == "tiles" and grid == 4 else None
            row["report_clean_top1"], row["report_scrambled_top1"] = report or (np.nan, np.nan)
            if method == "texture" and role == "vgg16":
                row["paper_clean_top5_pct"] = paper.TEXTURISED_VGG16_TOP5["clean"]
                row["paper_texture_top5_pct"] = paper.TEXTURISED_VGG16_TOP5["texture"]
            row["note"] = texture_note if method == "texture" else ""
            rows.append(row)
    accuracies = pd.DataFrame(rows)
    if accuracies.empty:
        return accuracies
    intervals = {}
    for metric in ("top1", "top5"):
        for stage in ("clean", "manipulated"):
            intervals[f"{stage}_{metric}_low"], intervals[f"{stage}_{metric}_high"] = exact_intervals(
                accuracies[f"{stage}_{metric}"] * accuracies["n_images"], accuracies["n_images"], scale=1.0)
        for bound in ("low", "high"):
            intervals[f"drop_{metric}_{bound}"] = drop_intervals[f"drop_{metric}_{bound}"]
    return accuracies.assign(**intervals)


def _save_examples(ctx: RunContext, settings: Settings, texture_set: dict) -> None:
    batch, _, ids = next(iter(ctx.images().subset(range(min(EXAMPLES, len(ctx.images())))).batches(EXAMPLES)))
    arrays = {"clean": batch.numpy(), "texture": texture_set["images"][:len(batch)].numpy(), "ids": np.array(ids)}
    for grid in settings.grids:
        arrays[f"tiles_{grid}"] = scramble_tiles(batch, grid, ctx.seed * 1000).numpy()
    ctx.write_npz(arrays, "examples.npz")


def make_figures(results_dir: Path, figures_dir: Path) -> list[Path]:
    """Fig. 5: example manipulated images, and top-1 accuracy per model and manipulation (error bars:
    the exact 95 % intervals)."""
    summary = read_csv(results_dir / "table.csv")
    examples = np.load(results_dir / "examples.npz")
    columns = ["clean"] + sorted((k for k in examples.files if k.startswith("tiles_")),
                                 key=lambda k: int(k.split("_")[1])) + ["texture"]
    rows = len(examples["ids"])
    fig, axes = new_figure(rows, len(columns), figsize=(1.4 * len(columns), 1.4 * rows), squeeze=False)
    for r in range(rows):
        for c, key in enumerate(columns):
            if r < len(examples[key]):  # fewer texturised images than examples: that cell stays empty
                axes[r][c].imshow(np.clip(examples[key][r].transpose(1, 2, 0), 0, 1))
            axes[r][c].axis("off")
            if r == 0:
                axes[r][c].set_title(key.replace("_", " "), fontsize=7)
    paths = save_figure(fig, figures_dir / "fig5_examples")

    summary["condition"] = np.where(summary["method"] == "tiles", "tiles " + summary["grid"].astype(str) + "x"
                                    + summary["grid"].astype(str), summary["method"])
    models = list(dict.fromkeys(summary["model"]))
    conditions = list(dict.fromkeys(summary["condition"]))
    fig, ax = new_figure(figsize=(1.0 + 1.1 * len(models), 3.2))
    width = 0.8 / (len(conditions) + 1)
    x = np.arange(len(models))
    bars = {"capsize": 1.5, "error_kw": {"lw": 0.7}}
    clean = summary.drop_duplicates("model").set_index("model").reindex(models)
    ax.bar(x, clean["clean_top1"], width, label="clean", color="#444444", yerr=error_bars(clean, "clean_top1"), **bars)
    for i, condition in enumerate(conditions, start=1):
        rows = summary[summary["condition"] == condition].set_index("model").reindex(models)
        ax.bar(x + i * width, rows["manipulated_top1"], width, label=condition,
               yerr=error_bars(rows, "manipulated_top1"), **bars)
    ax.set_xticks(x + width * len(conditions) / 2, models, rotation=30, ha="right")
    ax.set_ylabel("top-1 accuracy (95 % interval)")
    note = summary.loc[summary["method"] == "texture", "note"].dropna()
    ax.set_title("Fig. 5: accuracy on scrambled and texturised images" + (f"\n({note.iloc[0]})" if len(note) and note.iloc[0] else ""),
                 fontsize=8)
    ax.legend(fontsize=7)
    return paths + save_figure(fig, figures_dir / "fig5_scrambling_accuracy")


def report_table(results_dir: Path):
    summary = read_csv(results_dir / "table.csv")
    tiles = summary[summary["method"] == "tiles"]
    texture = summary[summary["method"] == "texture"]
    parts = [comparison(tiles, ["model", "grid"], "clean top-1 (report: 15-scene test, 4x4 only)", "clean_top1",
                        "report_clean_top1"),
             comparison(tiles, ["model", "grid"], "scrambled top-1 (report: 4x4 tiles)", "manipulated_top1",
                        "report_scrambled_top1")]
    if "paper_texture_top5_pct" in texture:
        in_pct = {f"ours_pct{suffix}": texture[f"manipulated_top5{suffix}"] * 100 for suffix in ("", "_low", "_high")
                  if f"manipulated_top5{suffix}" in texture}
        parts.append(comparison(texture.assign(**in_pct), ["model", "grid"], "texturised top-5 (%)", "ours_pct",
                                "paper_texture_top5_pct"))
    return pd.concat(parts, ignore_index=True)



def plan(ctx: RunContext) -> list:
    """--plan: VGG-16's texture synthesis (a target pass, then one forward and backward per step and
    image); per model the scrambled images of every grid and the textures; the clean predictions."""
    settings = ctx.settings
    count = len(ctx.images())
    vgg = texturer(ctx)
    textures = 0 if vgg is None else min(settings.texture_images, count)
    work = [] if vgg is None else [Work(vgg, "texture synthesis", textures, textures * (1 + settings.texture_steps),
                                        textures * settings.texture_steps)]
    work += [Work(name, "scrambled + texturised", count, count * len(settings.grids) + textures)
             for name in ctx.model_names]
    return work + clean_work(ctx, ctx.model_names)


EXPERIMENT = Experiment(
    name="scrambling", title="accuracy on tile-scrambled and texturised images", paper_ref="Fig. 5",
    run=run, plan=plan, make_figures=make_figures, report_table=report_table, settings=Settings, needs=("accuracy",),
    shardable=True,
    question="How much do models lose when the global arrangement is destroyed but local content kept?",
)
