"""Scrambling: accuracy when the global arrangement of an image is destroyed but its local content kept.

Two manipulations, each with its own protocol:

- **Texturisation: the paper's** (Fig. 5): a texture with the same VGG Gram matrices as the image,
  synthesised as Gatys et al. (2015) do (VGG-19 with average pools, Gram matrices of conv1_1 and
  pool1..pool4, L-BFGS from seeded noise, :func:`bagrepro.methods.scrambling.texturise`), classified by every
  model; the paper: VGG-16 top-5 90.1 % clean -> 79.4 % texturised. Each texture's final loss and
  its loss at the start are kept, and a texture whose loss did not fall to
  :data:`~bagrepro.methods.scrambling.CONVERGED_RATIO` of its start is flagged (``converged``): an accuracy
  on unconverged textures says little about the models. The texturiser is the profile's stand-in
  for VGG-19 (role ``vgg19``; else VGG-16's, said in a line).
- **Tile scrambling: the reproducibility report's** (15-scene data): an n x n grid of tiles shuffled by a
  seeded permutation per image; the report scrambled 4x4 tiles (ResNet-50 0.907 -> 0.50, DenseNet-169
  0.922 -> 0.58, BagNet-33 0.925 -> 0.90). Its numbers are shown beside ours only for a run of the
  report's protocol (``--train`` on a scene data set); elsewhere ours stand alone, without verdicts.

Clean accuracy comes from the shared clean predictions (:mod:`bagrepro.harness.predictions`: reused, computed
only where missing).
Writes ``results/scrambling/predictions.csv`` (model, role, image_id, method, grid, correct_top1,
correct_top5), ``textures.csv`` (image_id, texturiser, optimizer, iterations, initial_loss, loss,
loss_ratio, converged), ``table.csv`` (per model and manipulation: its ``protocol``, clean,
manipulated and the drop as fractions, the reference numbers with their sources where they
apply, then per metric (top1, top5) the 95 % intervals ``clean_<m>_low``, ``clean_<m>_high``,
``manipulated_<m>_low``, ``manipulated_<m>_high`` (exact, Clopper-Pearson, as fractions) and
``drop_<m>_low``, ``drop_<m>_high`` (a paired percentile bootstrap over images of the mean clean -
manipulated correctness, as a fraction)) and ``examples.npz`` (a few clean / scrambled /
texturised images for the figure).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import torch

from bagrepro.core import paper
from bagrepro.core.metrics import exact_intervals, mean_interval, proportion_interval
from bagrepro.harness.plan import Work
from bagrepro.harness.plotting import OURS_COLOUR, error_bars, new_figure, save_figure
from bagrepro.harness.predictions import clean_predictions, clean_work, score_batch
from bagrepro.harness.report import comparison
from bagrepro.harness.results import read_csv
from bagrepro.harness.registry import Experiment
from bagrepro.harness.context import RunContext
from bagrepro.methods.scrambling import CONVERGED_RATIO, GATYS_ITERATIONS, scramble_tiles, texturise
from bagrepro.core.settings import our_setting, paper_setting

EXAMPLES = 3
#: the paper role whose stand-in synthesises the textures (Gatys et al. 2015 use VGG-19)
TEXTURE_ROLE = "vgg19"
#: the role used instead where a profile has no VGG-19 stand-in
TEXTURE_FALLBACK_ROLE = "vgg16"
TILES_PROTOCOL = "repro report: 4x4 tiles (other grids: ours)"
TEXTURE_PROTOCOL = "paper, Fig. 5: Gatys et al. (2015) textures"


@dataclass(frozen=True)
class Settings:
    """grids: tiles per side of the tile scrambling; texture_optimizer: 'lbfgs' (Gatys et al.) or
    'adam' (a fast approximation, not Gatys: Adam on sigmoid pixels, same loss and network);
    texture_iterations: optimiser iterations per texture; texture_lr: the optimiser's step scale
    (None: its default, L-BFGS 1, Adam 0.05); texture_images: the first N images are texturised
    (synthesis is expensive); texture_note: a caveat shown beside the texture numbers (e.g. a
    stand-in VGG)."""

    grids: tuple[int, ...] = our_setting((2, 4, 8), "tile scrambling is the reproducibility report's experiment "
                                                    "(4x4); 2x2 and 8x8 are ours")
    texture_optimizer: Literal["lbfgs", "adam"] = paper_setting(
        "lbfgs", "Fig. 5", "texturised as Gatys et al. (2015), who optimise with L-BFGS")
    texture_iterations: int = our_setting(GATYS_ITERATIONS, "neither paper gives a count; 2000 is Gatys et al.'s "
                                                            "released code (DeepTextures, Example.ipynb)")
    texture_lr: float | None = our_setting(None, "the optimiser's default step scale")
    texture_images: int = our_setting(200, "the paper gives no image count for Fig. 5; synthesis is expensive")
    texture_note: str = our_setting("", "no caveat")


def texturer(ctx: RunContext) -> str | None:
    """The model whose Gram matrices make the textures: the stand-in for VGG-19, else VGG-16's (said in
    a line), or None when the run has neither: then only the tiles are scrambled (the reproducibility
    report's protocol needs no VGG)."""
    if ctx.profile.has_role(TEXTURE_ROLE):
        return ctx.role(TEXTURE_ROLE)
    if ctx.profile.has_role(TEXTURE_FALLBACK_ROLE):
        ctx.say(f"[{ctx.name}] no model stands in for VGG-19 (Gatys et al.'s texturiser): "
                f"{ctx.role(TEXTURE_FALLBACK_ROLE)} synthesises the textures")
        return ctx.role(TEXTURE_FALLBACK_ROLE)
    ctx.say(f"[{ctx.name}] no VGG stands in for VGG-19 or VGG-16: no textures, tiles only")
    return None


#: image i of a run with seed s starts its texture from noise seeded s * stride + i
TEXTURE_SEED_STRIDE = 1_000_003


def textures(ctx: RunContext, settings: Settings, store, texturer: str | None) -> dict:
    """Texturised versions of the first ``texture_images`` images (computed once, kept in the unit
    store as the arrays of the unit ``textures__<texturer>``): images [N, 3, H, W], labels [N], ids,
    and per image the Gatys loss at the start and at the end and the iterations run; none without
    a texturer. Image i starts from noise seeded by the run's seed and i, so a texture does not
    depend on the batching."""
    if texturer is None:
        size = ctx.image_size
        return {"images": torch.zeros(0, 3, size, size), "labels": torch.zeros(0, dtype=torch.long), "ids": [],
                "loss": np.zeros(0), "initial_loss": np.zeros(0), "iterations": np.zeros(0, dtype=np.int64)}
    unit = f"textures__{texturer}"
    if not store.has_arrays(unit):
        vgg = ctx.model(texturer)
        count = min(settings.texture_images, len(ctx.images()))
        parts: dict[str, list] = {"images": [], "labels": [], "loss": [], "initial_loss": [], "iterations": []}
        ids, done = [], 0
        for batch, batch_labels, batch_ids in ctx.progress(
                ctx.images().subset(range(count)).batches(ctx.batch_size), desc=f"textures ({texturer})"):
            seeds = [ctx.seed * TEXTURE_SEED_STRIDE + done + i for i in range(len(batch_ids))]
            result = texturise(batch.to(ctx.device, non_blocking=True), vgg, vgg.zoo_spec.preprocess.normalize,
                               iterations=settings.texture_iterations, seeds=seeds,
                               optimizer=settings.texture_optimizer, lr=settings.texture_lr)
            for key in ("images", "loss", "initial_loss", "iterations"):
                parts[key].append(getattr(result, key).cpu())
            parts["labels"].append(batch_labels)
            ids += batch_ids
            done += len(batch_ids)
        store.save_arrays(unit, {**{key: torch.cat(values).numpy() for key, values in parts.items()},
                                 "ids": np.array(ids)})
    arrays = store.load_arrays(unit)
    return {"images": torch.from_numpy(arrays["images"]), "labels": torch.from_numpy(arrays["labels"]),
            "ids": arrays["ids"].tolist(), "loss": arrays["loss"], "initial_loss": arrays["initial_loss"],
            "iterations": arrays["iterations"]}


def texture_table(texture_set: dict, texturer: str | None, settings: Settings) -> pd.DataFrame:
    """One row per texturised image: image_id, texturiser, optimizer, iterations, initial_loss, loss,
    loss_ratio (loss / initial_loss) and converged (loss_ratio <= CONVERGED_RATIO)."""
    loss, initial = np.asarray(texture_set["loss"], np.float64), np.asarray(texture_set["initial_loss"], np.float64)
    ratio = loss / np.where(initial > 0, initial, np.nan)
    return pd.DataFrame({"image_id": texture_set["ids"], "texturiser": texturer, "optimizer": settings.texture_optimizer,
                         "iterations": texture_set["iterations"], "initial_loss": initial, "loss": loss,
                         "loss_ratio": ratio, "converged": ratio <= CONVERGED_RATIO})


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
    textures_frame = texture_table(texture_set, vgg, settings)
    converged_share = float(textures_frame["converged"].mean()) if len(textures_frame) else float("nan")
    meta = {"texturiser": vgg, "converged_ratio": CONVERGED_RATIO, "textures_converged": converged_share}
    ctx.write_csv(predictions, "predictions.csv", **meta)
    ctx.write_csv(textures_frame, "textures.csv", **meta)
    ctx.write_csv(table(predictions, settings.texture_note, report_protocol=ctx.tuned is not None), "table.csv",
                  **meta)
    _save_examples(ctx, settings, texture_set)


def table(predictions: pd.DataFrame, texture_note: str = "", report_protocol: bool = False) -> pd.DataFrame:
    """Per model and manipulation: its protocol, clean and manipulated top-1/top-5 (fractions), drop,
    the reference numbers with their sources where they apply (texture, VGG-16: the paper's Fig. 5
    top-5; 4x4 tiles: the reproducibility report's 15-scene top-1, only when ``report_protocol``, a
    ``--train`` run of the report's protocol), then the 95 % intervals (fractions): exact for clean
    and manipulated accuracy, a paired bootstrap over images for the drop (each image's clean minus
    manipulated correctness, so that the clean and manipulated answers on one image stay together).

    Clean accuracy is taken on the same images as the manipulated one (textures use a subset)."""
    rows, drop_intervals = [], {f"drop_{metric}_{bound}": [] for metric in ("top1", "top5") for bound in ("low", "high")}
    for (model, role), group in predictions.groupby(["model", "role"], dropna=False, sort=False):
        clean = group[group["method"] == "clean"].set_index("image_id")
        for (method, grid), manipulated in group[group["method"] != "clean"].groupby(["method", "grid"], sort=False):
            same = clean.loc[manipulated["image_id"]]
            row = {"model": model, "role": role, "method": method, "grid": grid, "n_images": len(manipulated),
                   "protocol": TEXTURE_PROTOCOL if method == "texture" else TILES_PROTOCOL}
            for metric in ("top1", "top5"):
                row[f"clean_{metric}"] = same[f"correct_{metric}"].mean()
                row[f"manipulated_{metric}"] = manipulated[f"correct_{metric}"].mean()
                row[f"drop_{metric}"] = row[f"clean_{metric}"] - row[f"manipulated_{metric}"]
                drop_per_image = (same[f"correct_{metric}"].to_numpy(float)
                                  - manipulated[f"correct_{metric}"].to_numpy(float))
                low, high = mean_interval(drop_per_image)
                drop_intervals[f"drop_{metric}_low"].append(low)
                drop_intervals[f"drop_{metric}_high"].append(high)
            report = (paper.SCRAMBLED_4X4_REPORT.get(role)
                      if report_protocol and method == "tiles" and grid == 4 else None)
            row["report_clean_top1"], row["report_scrambled_top1"] = report or (np.nan, np.nan)
            row["report_clean_top1_source"] = row["report_scrambled_top1_source"] = (
                paper.SCRAMBLED_4X4_REPORT.source if report else "")
            texture_reference = method == "texture" and role == "vgg16"
            for stage in ("clean", "texture"):
                row[f"paper_{stage}_top5_pct"] = paper.TEXTURISED_VGG16_TOP5[stage] if texture_reference else np.nan
                row[f"paper_{stage}_top5_pct_source"] = paper.TEXTURISED_VGG16_TOP5.source if texture_reference else ""
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
    """Fig. 5: example manipulated images, top-1 accuracy per model and manipulation (error bars: the
    exact 95 % intervals), and the distribution of the textures' losses relative to their start."""
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
    ax.set_title("Fig. 5 (texturised: the paper's) and tile scrambling (the reproducibility report's)" + (f"\n({note.iloc[0]})" if len(note) and note.iloc[0] else ""),
                 fontsize=8)
    ax.legend(fontsize=7)
    paths += save_figure(fig, figures_dir / "fig5_scrambling_accuracy")
    textures_path = results_dir / "textures.csv"
    textures = read_csv(textures_path) if textures_path.is_file() else pd.DataFrame()
    if len(textures):
        paths += _loss_figure(textures, figures_dir)
    return paths


def _loss_figure(textures: pd.DataFrame, figures_dir: Path) -> list[Path]:
    """The distribution of the textures' final loss relative to their start (log scale), with the
    convergence threshold."""
    ratios = np.log10(textures["loss_ratio"].clip(lower=1e-12).to_numpy(np.float64))
    fig, ax = new_figure(figsize=(4.2, 2.8))
    ax.hist(ratios, bins=min(30, max(5, len(ratios))), color=OURS_COLOUR)
    ax.axvline(np.log10(CONVERGED_RATIO), color="k", ls="--", lw=0.8,
               label=f"converged: loss <= {CONVERGED_RATIO:g} x start")
    ax.set_xlabel("log10(final loss / loss at the start)")
    ax.set_ylabel("textures")
    converged = textures["converged"].astype(bool).mean()
    ax.set_title(f"Texture synthesis ({textures['optimizer'].iloc[0]}, {int(textures['iterations'].max())} "
                 f"iterations on {textures['texturiser'].iloc[0]}): {100 * converged:.0f} % converged", fontsize=8)
    ax.legend(fontsize=7)
    return save_figure(fig, figures_dir / "fig5_texture_loss")


def report_table(results_dir: Path):
    """Texturisation (the paper's Fig. 5): every model's top-5 on the textures, VGG-16's beside the
    paper's, and the share of converged textures; tile scrambling (the reproducibility report's
    experiment): clean and scrambled top-1, beside the report's 15-scene numbers only in a run of its
    protocol (``--train``), without a reference elsewhere."""
    summary = read_csv(results_dir / "table.csv")
    tiles = summary[summary["method"] == "tiles"]
    texture = summary[summary["method"] == "texture"]
    def top5_pct(stage: str) -> pd.DataFrame:  # the stage's top-5 and its interval, in %, as ``ours_pct``
        return texture.assign(**{f"ours_pct{suffix}": texture[f"{stage}_top5{suffix}"] * 100
                                 for suffix in ("", "_low", "_high")})

    parts = [comparison(top5_pct("manipulated"), ["model", "protocol"], "texturised top-5 (%)", "ours_pct",
                        "paper_texture_top5_pct"),
             comparison(top5_pct("clean"), ["model", "protocol"], "clean top-5 on the same images (%)", "ours_pct",
                        "paper_clean_top5_pct")]
    textures_path = results_dir / "textures.csv"
    if textures_path.is_file():
        textures = read_csv(textures_path)
        if len(textures):
            converged = int(textures["converged"].astype(bool).sum())
            low, high = proportion_interval(converged, len(textures))
            parts.append(pd.DataFrame({
                "model": [textures["texturiser"].iloc[0]], "protocol": [TEXTURE_PROTOCOL],
                "metric": [f"textures converged (loss <= {CONVERGED_RATIO:g} x start; {len(textures)} images)"],
                "ours": [converged / len(textures)], "ours_low": [low], "ours_high": [high],
                "reference": [np.nan], "source": [""], "difference": [np.nan], "reference_vs_ours": [""]}))
    for metric, ours, reference in (("clean top-1", "clean_top1", "report_clean_top1"),
                                    ("scrambled top-1", "manipulated_top1", "report_scrambled_top1")):
        parts.append(comparison(tiles.assign(protocol=tiles["protocol"] + ", " + tiles["grid"].astype(int).astype(str)
                                             + "x" + tiles["grid"].astype(int).astype(str)),
                                ["model", "protocol"], metric, ours, reference))
    return pd.concat(parts, ignore_index=True)


def plan(ctx: RunContext) -> list:
    """--plan: the texture synthesis on the VGG-19 stand-in (per image: the target pass, the starting
    loss, one forward and backward per iteration; Adam: the final loss; L-BFGS: at least that, its
    line search adds trials); per model the scrambled images of every grid and the textures; the
    clean predictions."""
    settings = ctx.settings
    count = len(ctx.images())
    vgg = texturer(ctx)
    textures = 0 if vgg is None else min(settings.texture_images, count)
    # the targets, the loss at the start, one forward and backward per iteration, the final loss (Adam);
    # L-BFGS adds its line search's trial steps (data-dependent: this is its lower bound)
    steps = settings.texture_iterations
    forward = textures * (2 + steps + (1 if settings.texture_optimizer == "adam" else 0))
    work = [] if vgg is None else [Work(vgg, f"texture synthesis ({settings.texture_optimizer})", textures, forward,
                                        textures * steps)]
    work += [Work(name, "scrambled + texturised", count, count * len(settings.grids) + textures)
             for name in ctx.model_names]
    return work + clean_work(ctx, ctx.model_names)


EXPERIMENT = Experiment(
    name="scrambling", title="accuracy on tile-scrambled and texturised images", paper_ref="Fig. 5",
    run=run, plan=plan, make_figures=make_figures, report_table=report_table, settings=Settings, needs=("accuracy",),
    shardable=True,
    question="How much do models lose when the global arrangement is destroyed but local content kept?",
)
