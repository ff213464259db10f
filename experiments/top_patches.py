"""Most informative patches (Fig. 3): for a class, over the whole data set, the 7 patches with the
highest logit for that class from images of that class, and the 7 from images of other classes.

Classes: ``--classes``; else the paper's five (book jacket, typewriter keyboard, tench, flamingo,
groom) where the data holds them (ImageNet runs); else a seeded choice. The data streams through once per BagNet with a running
top-k per (class, group) (memory independent of the data set size; no heatmap is kept), on the
native stride-8 patch logits; the winners are then cropped at their receptive field (q x q px).

Writes ``results/top_patches/patches.csv`` (model, role, class, group, rank, image_id, true_class,
row, col (top-left pixel), logit, class_name: the class's display name) and ``crops.npz`` (the crops, for the figure).
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from bagrepro.core import paper
from bagrepro.data.synsets import display_name
from bagrepro.core.errors import ConfigError
from bagrepro.methods.heatmaps import patch_logits
from bagrepro.models.bagnet import BAGNET_STRIDE
from bagrepro.methods.patches import RunningTopK, crop_patches, patch_records
from bagrepro.harness.plan import Work
from bagrepro.harness.plotting import new_figure, save_figure
from bagrepro.harness.profiles import BAGNET_ROLES
from bagrepro.harness.results import read_csv
from bagrepro.harness.registry import Experiment
from bagrepro.harness.context import RunContext
from bagrepro.core.settings import our_setting, paper_setting

GROUPS = ("same", "other")


@dataclass(frozen=True)
class Settings:
    """num_classes: classes shown when ``--classes`` is not given and the data lacks the paper's
    classes (a seeded choice); k: patches per class and group."""

    num_classes: int = our_setting(3, "classes shown where the data lacks Fig. 3's (ImageNet runs show the paper's "
                                      "five)")
    k: int = paper_setting(7, "Fig. 3", "7 patches per class and group")


def paper_classes(classes) -> list[int]:
    """The data's indices of Fig. 3's classes (book jacket, typewriter keyboard, tench, flamingo,
    groom; :data:`bagrepro.core.paper.FIG3_CLASSES`) in the paper's order, or [] unless the data holds them all."""
    index = {str(c): i for i, c in enumerate(classes)}
    if not all(wnid in index for wnid in paper.FIG3_CLASSES):
        return []
    return [index[wnid] for wnid in paper.FIG3_CLASSES]


def selected_classes(ctx: RunContext) -> list[int]:
    """``--classes`` if given; else Fig. 3's classes where the data holds them (ImageNet); else a
    seeded choice of ``num_classes`` classes present in the data."""
    classes = len(ctx.images().classes)
    if ctx.options.classes:
        bad = [c for c in ctx.options.classes if not 0 <= c < classes]
        if bad:
            raise ConfigError(f"--classes {bad[0]} is out of range: the data has classes 0..{classes - 1}")
        return list(ctx.options.classes)
    if chosen := paper_classes(ctx.images().classes):
        return chosen
    count = min(ctx.settings.num_classes, classes)
    present = sorted(set(ctx.images().labels.tolist()))
    return sorted(np.random.default_rng(ctx.seed).choice(present, size=min(count, len(present)), replace=False).tolist())


def stream_top_patches(ctx: RunContext, name: str, classes: list[int], k: int) -> RunningTopK:
    """One pass over the data: rows 2c (same class) and 2c + 1 (other classes) for class c."""
    model = ctx.inference_model(name)
    top = RunningTopK(2 * len(classes), k, record_width=3)
    class_index = torch.tensor(classes)
    seen = 0
    for batch, labels, _ in ctx.progress(ctx.images().batches(ctx.batch_size), desc=name, unit="batch"):
        inputs = model.zoo_spec.preprocess.normalize(batch.to(ctx.device, non_blocking=True))
        logits = patch_logits(model, inputs, class_index).cpu()
        b, c, h, w = logits.shape
        scores = logits.permute(1, 0, 2, 3).reshape(c, b, h * w)  # [C, B, hw]
        same = (labels[None, :] == class_index[:, None])[:, :, None]  # [C, B, 1]
        grouped = torch.stack([scores.masked_fill(~same, -torch.inf), scores.masked_fill(same, -torch.inf)], 1)
        top.update(grouped.reshape(2 * c, b * h * w), patch_records(seen, b, h, w))
        seen += b
    return top


def run(ctx: RunContext) -> None:
    classes = selected_classes(ctx)
    k = ctx.settings.k
    store = ctx.units({"classes": classes, "k": k})
    images = ctx.images()
    roles = {ctx.role(role): role for role in BAGNET_ROLES}

    def compute(name: str) -> pd.DataFrame:
        top = stream_top_patches(ctx, name, classes, k)
        found = top.values > -torch.inf
        records = top.records[found]  # [n, 3]
        rows = [(c, g, r) for c in classes for g in GROUPS for r in range(k)]
        kept = [row for row, ok in zip(rows, found.flatten().tolist()) if ok]
        frame = pd.DataFrame(kept, columns=["class", "group", "rank"])
        frame["image_index"] = records[:, 0].numpy()
        frame["image_id"] = [images.image_ids[i] for i in frame["image_index"]]
        frame["true_class"] = images.labels[records[:, 0]].numpy()
        frame["row"] = records[:, 1].numpy() * BAGNET_STRIDE
        frame["col"] = records[:, 2].numpy() * BAGNET_STRIDE
        frame["logit"] = top.values[found].numpy()
        frame.insert(0, "model", name)
        frame.insert(1, "role", roles[name])
        return frame

    units = ctx.map_units(store, list(roles), compute)
    frames, crops = [], {}
    for name, frame in units.items():
        role, q = roles[name], ctx.model(name).zoo_spec.receptive_field
        frames.append(frame)
        unique = sorted(set(frame["image_index"]))
        pixels = torch.cat([b for b, _, _ in images.subset(unique).batches(ctx.batch_size)])
        where = torch.tensor([unique.index(i) for i in frame["image_index"]])
        positions = torch.tensor(frame[["row", "col"]].to_numpy() // BAGNET_STRIDE)
        crops[role] = crop_patches(pixels[where], positions, q).numpy()
    ctx.write_npz(crops, "crops.npz")
    table = pd.concat(frames, ignore_index=True).drop(columns="image_index")
    table["class_name"] = table["class"].map(lambda c: display_name(images.classes[c]))
    ctx.write_csv(table, "patches.csv", classes=classes)


def make_figures(results_dir: Path, figures_dir: Path) -> list[Path]:
    """Fig. 3: per class, one row per BagNet: the k best patches of the class, then of other classes."""
    patches = read_csv(results_dir / "patches.csv")
    crops = np.load(results_dir / "crops.npz")
    classes = list(dict.fromkeys(patches["class"]))
    roles = [r for r in BAGNET_ROLES if r in crops.files]
    k = int(patches["rank"].max()) + 1
    height = 0.8 * len(classes) * len(roles) + 0.6
    fig, axes = new_figure(len(classes) * len(roles), 2 * k + 1, squeeze=False, layout=None,
                           figsize=(0.75 * (2 * k + 1), height))
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=1 - 0.55 / height, wspace=0.08, hspace=0.35)
    for ax in axes.flat:
        ax.axis("off")
    for ci, cls in enumerate(classes):
        for ri, role in enumerate(roles):
            row = ci * len(roles) + ri
            rows = patches[patches["role"] == role].reset_index(drop=True)
            name = patches.loc[patches["class"] == cls, "class_name"].iloc[0]
            axes[row][0].text(0.5, 0.5, f"{_wrapped(name)}\n({cls})\n{role}", ha="center", va="center", fontsize=6)
            for index, entry in rows.iterrows():
                if entry["class"] != cls:
                    continue
                column = 1 + entry["rank"] + (k if entry["group"] == "other" else 0)
                axes[row][column].imshow(np.clip(crops[role][index].transpose(1, 2, 0), 0, 1))
                axes[row][column].set_title(f"{entry['logit']:.1f}", fontsize=5)
    fig.suptitle(f"Fig. 3: the {k} patches with the highest class logit, from images of the class (left) "
                 f"and of other classes (right)", fontsize=8)
    return save_figure(fig, figures_dir / "fig3_top_patches", tight=False)  # a grid of image panels: own margins


def _wrapped(name: str, width: int = 14) -> str:
    """A class name on lines of at most ``width`` characters (a figure's first column is narrow)."""
    return textwrap.fill(str(name), width, max_lines=3, placeholder="...")



def plan(ctx: RunContext) -> list:
    """--plan: per BagNet, its patch logits on every image (one streaming pass)."""
    count = len(ctx.images())
    return [Work(ctx.role(role), "patch logits", count, count) for role in BAGNET_ROLES]


EXPERIMENT = Experiment(
    name="top_patches", title="most informative patches per class", paper_ref="Fig. 3",
    open_choices=(
        "Patches are the native stride-8 windows of the BagNet (ours: the paper does not say at what stride it "
        "searched); each is shown at its receptive field, q x q px.",
    ),
    run=run, plan=plan, make_figures=make_figures, settings=Settings, shardable=True,
    question="Which image patches carry the most evidence for a class, within and outside that class?",
)
