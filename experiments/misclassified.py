"""Misclassifications (Fig. 4): images that BagNet-33 and VGG-16 (profile stand-ins elsewhere) both
get wrong, explained by BagNet-33's evidence for the true and for the predicted class.

Per image: BagNet-33's exact heatmaps of the true class and of its predicted class, the 3 most
predictive native patches of each (highest patch logit), and both models' probabilities of the same
classes: the true class, BagNet-33's prediction and VGG-16's prediction. Selection: a seeded choice
among the images both models misclassify (top-1), from the
accuracy experiment's units (reused).

Writes ``results/misclassified/images.csv`` (image_id, true class, each model's prediction and its
probabilities of the true and predicted classes, both classes' names), ``patches.csv`` (image_id,
class kind, rank, row, col, logit, class name), ``probabilities.csv`` (image_id, model, class_kind:
'true' / 'bagnet33 predicted' / 'vgg16 predicted', class, probability, class_name) and
``panels.npz`` (images and heatmaps for the figure).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from matplotlib.patches import Rectangle

from bagrepro.data.synsets import display_name
from bagrepro.methods.heatmap_cache import cached_heatmaps
from bagrepro.methods.heatmaps import patch_logits
from bagrepro.harness.plan import Work
from bagrepro.models.bagnet import BAGNET_STRIDE
from bagrepro.harness.plotting import draw_heatmap, new_figure, save_figure
from bagrepro.harness.predictions import clean_predictions, clean_work
from bagrepro.harness.results import read_csv
from bagrepro.harness.registry import Experiment
from bagrepro.harness.context import RunContext
from bagrepro.core.settings import our_setting

TOP_PATCHES = 3


@dataclass(frozen=True)
class Settings:
    """num_images: images shown, a seeded choice among those both models get wrong."""

    num_images: int = our_setting(4, "rows of Fig. 4, a seeded choice among the images both models get wrong")


def run(ctx: RunContext) -> None:
    bagnet_name, vgg_name = ctx.role("bagnet33"), ctx.role("vgg16")
    predictions = clean_predictions(ctx, [bagnet_name, vgg_name])
    wrong = predictions.pivot(index="image_id", columns="model", values="correct_top1")
    both_wrong = sorted(wrong.index[~wrong[bagnet_name].astype(bool) & ~wrong[vgg_name].astype(bool)])
    count = min(ctx.settings.num_images, len(both_wrong))
    chosen = sorted(np.random.default_rng(ctx.seed).choice(both_wrong, size=count, replace=False).tolist()) if count else []
    position = {image_id: i for i, image_id in enumerate(ctx.images().image_ids)}
    image_rows, patch_rows, probability_rows = [], [], []
    panels = {"ids": np.array(chosen)}
    class_names = [display_name(c) for c in ctx.images().classes]
    if chosen:
        images, labels, ids = map(list, zip(*[(b, l, i) for b, l, i in
                                              ctx.images().subset([position[c] for c in chosen]).batches(len(chosen))]))
        images, labels, ids = images[0].to(ctx.device, non_blocking=True), labels[0], ids[0]
        bagnet, vgg = ctx.inference_model(bagnet_name), ctx.model(vgg_name)
        with torch.inference_mode():
            p_bagnet = bagnet(bagnet.zoo_spec.preprocess.normalize(images)).float().softmax(1).cpu()
            p_vgg = vgg(vgg.zoo_spec.preprocess.normalize(images)).float().softmax(1).cpu()
        predicted = p_bagnet.argmax(1)
        panels["images"] = images.cpu().numpy()
        for kind, classes in (("true", labels), ("predicted", predicted)):
            panels[f"heatmap_{kind}"] = cached_heatmaps(bagnet, images, ids, classes).numpy()
            logits = patch_logits(bagnet, bagnet.zoo_spec.preprocess.normalize(images),
                                  targets=classes.to(ctx.device, non_blocking=True))[:, 0].cpu()
            best = logits.flatten(1).topk(TOP_PATCHES, dim=1)
            width = logits.shape[-1]
            for n, image_id in enumerate(ids):
                for rank in range(TOP_PATCHES):
                    index = best.indices[n, rank].item()
                    patch_rows.append({"image_id": image_id, "kind": kind, "class": int(classes[n]), "rank": rank,
                                       "row": index // width * BAGNET_STRIDE, "col": index % width * BAGNET_STRIDE,
                                       "size": bagnet.zoo_spec.receptive_field, "logit": best.values[n, rank].item(),
                                       "class_name": class_names[int(classes[n])]})
        # both models' probabilities of the same classes: the true one and the one each model predicts
        shown = {"true": labels, "bagnet33 predicted": p_bagnet.argmax(1), "vgg16 predicted": p_vgg.argmax(1)}
        for model_name, probabilities in ((bagnet_name, p_bagnet), (vgg_name, p_vgg)):
            own = probabilities.argmax(1)
            for n, image_id in enumerate(ids):
                image_rows.append({"image_id": image_id, "model": model_name, "true_class": int(labels[n]),
                                   "predicted_class": int(own[n]), "p_true": probabilities[n, labels[n]].item(),
                                   "p_predicted": probabilities[n, own[n]].item(),
                                   "true_class_name": class_names[int(labels[n])],
                                   "predicted_class_name": class_names[int(own[n])]})
                for kind, classes in shown.items():
                    probability_rows.append({"image_id": image_id, "model": model_name, "class_kind": kind,
                                             "class": int(classes[n]),
                                             "probability": probabilities[n, classes[n]].item(),
                                             "class_name": class_names[int(classes[n])]})
    ctx.write_npz(panels, "panels.npz")
    meta = {"both_wrong": len(both_wrong), "of_images": int(wrong.shape[0])}
    ctx.write_csv(pd.DataFrame(image_rows, columns=["image_id", "model", "true_class", "predicted_class", "p_true",
                                                    "p_predicted", "true_class_name", "predicted_class_name"]),
                  "images.csv", **meta)
    ctx.write_csv(pd.DataFrame(patch_rows, columns=["image_id", "kind", "class", "rank", "row", "col", "size",
                                                    "logit", "class_name"]), "patches.csv", **meta)
    ctx.write_csv(pd.DataFrame(probability_rows, columns=["image_id", "model", "class_kind", "class", "probability",
                                                          "class_name"]), "probabilities.csv", **meta)


def make_figures(results_dir: Path, figures_dir: Path) -> list[Path]:
    """Fig. 4: image, heatmap of the true class, of the predicted class (3 best patches boxed), and
    both models' probabilities of the two classes."""
    probabilities = read_csv(results_dir / "probabilities.csv")
    patches = read_csv(results_dir / "patches.csv")
    panels = np.load(results_dir / "panels.npz")
    ids = list(panels["ids"])
    if not ids:
        fig, ax = new_figure(figsize=(4, 1))
        ax.axis("off")
        ax.text(0.5, 0.5, "no image is misclassified by both models", ha="center", va="center")
        return save_figure(fig, figures_dir / "fig4_misclassified")
    fig, axes = new_figure(len(ids), 4, figsize=(7, 1.8 * len(ids)), squeeze=False)
    colours = {"true": "#2ca02c", "predicted": "#d62728"}
    for r, image_id in enumerate(ids):
        image = panels["images"][r]
        axes[r][0].imshow(np.clip(image.transpose(1, 2, 0), 0, 1))
        axes[r][0].set_ylabel(str(image_id), fontsize=6)
        axes[r][0].set_xticks([])
        axes[r][0].set_yticks([])
        for c, kind in enumerate(("true", "predicted"), start=1):
            rows = patches[(patches["image_id"] == image_id) & (patches["kind"] == kind)]
            draw_heatmap(axes[r][c], panels[f"heatmap_{kind}"][r], image,
                         title=f"{kind}: {rows['class_name'].iloc[0]}"[:40] if len(rows) else kind)
            for _, patch in rows.iterrows():
                for ax in (axes[r][0], axes[r][c]):
                    ax.add_patch(Rectangle((patch["col"] - 0.5, patch["row"] - 0.5), patch["size"], patch["size"],
                                           fill=False, lw=0.8, edgecolor=colours[kind]))
        _probability_bars(axes[r][3], probabilities[probabilities["image_id"] == image_id])
    fig.suptitle("Fig. 4: misclassified by both models; green boxes: evidence for the true class, red: for the "
                 "prediction", fontsize=8)
    return save_figure(fig, figures_dir / "fig4_misclassified")



def _probability_bars(ax, rows: pd.DataFrame) -> None:
    """Both models' probabilities of the same classes (the true class, BagNet-33's and VGG-16's
    predictions; a class two of them share is shown once per kind), one bar per model."""
    kinds = list(dict.fromkeys(rows["class_kind"]))
    models = list(dict.fromkeys(rows["model"]))
    height = 0.8 / max(1, len(models))
    for m, model in enumerate(models):
        mine = rows[rows["model"] == model].set_index("class_kind").reindex(kinds)
        ax.barh(np.arange(len(kinds)) + m * height, mine["probability"], height, label=model)
    names = rows.drop_duplicates("class_kind").set_index("class_kind").reindex(kinds)["class_name"]
    ax.set_yticks(np.arange(len(kinds)) + height * (len(models) - 1) / 2,
                  [f"{kind}:\n{str(name)[:18]}" for kind, name in zip(kinds, names)], fontsize=5)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("probability", fontsize=6)
    ax.legend(fontsize=5, loc="lower right")


def plan(ctx: RunContext) -> list:
    """--plan: the clean predictions of both models; then, for at most ``num_images`` images both
    get wrong, both models' probabilities and BagNet-33's heatmaps and patch logits of the true and
    the predicted class."""
    bagnet, vgg = ctx.role("bagnet33"), ctx.role("vgg16")
    work = clean_work(ctx, [bagnet, vgg])
    count = min(ctx.settings.num_images, len(ctx.images()))
    return work + [Work(bagnet, "explanations (at most)", count, 5 * count, heatmap=2 * count),
                   Work(vgg, "probabilities (at most)", count, count)]


EXPERIMENT = Experiment(
    name="misclassified", title="images both BagNet-33 and VGG-16 misclassify", paper_ref="Fig. 4",
    open_choices=(
        "Misclassified means top-1 wrong for both models (our reading); which of those images are shown is a "
        "seeded choice (ours).",
        "Both models' probabilities are shown for the same classes: the true class, BagNet-33's prediction and "
        "VGG-16's prediction.",
    ),
    run=run, plan=plan, make_figures=make_figures, settings=Settings, needs=("accuracy",),
    question="When BagNet-33 and VGG-16 both fail, what evidence misled BagNet-33?",
)
