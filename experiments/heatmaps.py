"""Heatmaps (Fig. 2 and Fig. A.2): where is the class evidence?

Fig. 2: for N seeded random images, the exact stride-1 heatmap of each BagNet's predicted class
(value at a pixel = logit of the q x q patch centred there), drawn as the released plot does.
Fig. A.2: for the same images, VGG-16's white-box heatmaps (Saliency, Integrated Gradients, eps-LRP,
DeepLIFT; bagrepro.methods.attribution, the masking experiment's implementation) next to the BagNet heatmaps,
all for VGG-16's predicted class.

Writes ``results/heatmaps/summary.csv`` (figure, model, role, method, image_id, class, probability,
heatmap sum / mean / min / max), and the drawn heatmaps as ``fig2.npz`` / ``figA2.npz`` for the
figures stage. BagNet heatmaps are also kept in the heatmap cache (``$BAGREPRO_CACHE/heatmaps``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from bagrepro.methods import attribution
from bagrepro.methods.heatmap_cache import cached_heatmaps
from bagrepro.harness.plotting import draw_heatmap, new_figure, save_figure
from bagrepro.harness.plan import Work
from bagrepro.harness.profiles import BAGNET_ROLES
from bagrepro.harness.results import read_csv
from bagrepro.harness.registry import Experiment
from bagrepro.harness.context import RunContext
from bagrepro.core.settings import our_setting, paper_setting

REFERENCE_ROLE = "vgg16"
#: column titles of Fig. A.2 (other methods show their registry name)
METHOD_LABELS = {"saliency": "Saliency", "integrated_gradients": "Int. Grad.", "eps_lrp": "eps-LRP",
                 "deeplift": "DeepLIFT"}


@dataclass(frozen=True)
class Settings:
    """num_images: seeded random images shown; white_box: VGG-16's attribution methods in Fig. A.2
    (names in :mod:`bagrepro.methods.attribution`'s registry); ig_steps: Integrated Gradients' Riemann steps."""

    num_images: int = paper_setting(10, "Fig. 2", "10 random images")
    white_box: tuple[str, ...] = paper_setting(attribution.PAPER_METHODS, "Table 1 / Fig. A.2",
                                               "Saliency, Integrated Gradients, eps-LRP, DeepLIFT")
    ig_steps: int = our_setting(100, "the paper states no step count; DeepExplain's default, the tool it used")

    def __post_init__(self):
        for method in self.white_box:
            attribution.get_attribution(method)  # an unknown name: ConfigError naming the valid ones


def chosen_images(ctx: RunContext):
    """N images drawn at random (seeded) from the profile's images: (images [N,3,H,W], labels, ids)."""
    count = min(ctx.settings.num_images, len(ctx.images()))
    generator = np.random.default_rng(ctx.seed)
    indices = sorted(generator.choice(len(ctx.images()), size=count, replace=False).tolist())
    batch, labels, ids = [], [], []
    for images, batch_labels, batch_ids in ctx.images().subset(indices).batches(ctx.batch_size):
        batch.append(images)
        labels.append(batch_labels)
        ids += batch_ids
    return torch.cat(batch).to(ctx.device, non_blocking=True), torch.cat(labels), ids


def _predict(model, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.inference_mode():
        probabilities = model(model.zoo_spec.preprocess.normalize(images)).float().softmax(1)
    return probabilities.argmax(1), probabilities.max(1).values


def _rows(figure: str, name: str, role: str, method: str, ids, classes, probabilities, maps) -> pd.DataFrame:
    flat = maps.flatten(1).double()
    return pd.DataFrame({
        "figure": figure, "model": name, "role": role, "method": method, "image_id": ids,
        "class": classes.cpu().numpy(), "probability": probabilities.cpu().numpy(),
        "heatmap_sum": flat.sum(1).numpy(), "heatmap_mean": flat.mean(1).numpy(),
        "heatmap_min": flat.min(1).values.numpy(), "heatmap_max": flat.max(1).values.numpy(),
    })


def run(ctx: RunContext) -> None:
    images, labels, ids = chosen_images(ctx)
    arrays = {"fig2": {"images": images.cpu().numpy(), "ids": np.array(ids)},
              "figA2": {"images": images.cpu().numpy(), "ids": np.array(ids)}}
    frames = []
    for role in BAGNET_ROLES:  # Fig. 2: each BagNet's own prediction
        name = ctx.role(role)
        bagnet = ctx.inference_model(name)
        predicted, probability = _predict(bagnet, images)
        maps = cached_heatmaps(bagnet, images, ids, predicted)
        arrays["fig2"][role] = maps.numpy()
        frames.append(_rows("fig2", name, role, "exact", ids, predicted, probability, maps))
    reference = ctx.role(REFERENCE_ROLE)  # Fig. A.2: everything for VGG-16's prediction
    vgg = ctx.model(reference)
    predicted, probability = _predict(vgg, images)
    ig_steps = ctx.settings.ig_steps
    for method in ctx.settings.white_box:
        with torch.enable_grad():
            maps = attribution.attribute(vgg, vgg.zoo_spec.preprocess.normalize(images), predicted, method,
                                         ig_steps=ig_steps).sum(1).detach().cpu()
        arrays["figA2"][method] = maps.numpy()
        frames.append(_rows("figA2", reference, REFERENCE_ROLE, method, ids, predicted, probability, maps))
    for role in BAGNET_ROLES:
        name = ctx.role(role)
        maps = cached_heatmaps(ctx.inference_model(name), images, ids, predicted)
        arrays["figA2"][role] = maps.numpy()
        frames.append(_rows("figA2", name, role, "exact", ids, predicted, probability, maps))
    for figure, content in arrays.items():
        ctx.write_npz(content, f"{figure}.npz")
    ctx.write_csv(pd.concat(frames, ignore_index=True), "summary.csv", reference=reference)


def _grid(content, columns: list[str], labels: list[str], title: str, path: Path, rows_limit: int = 10) -> list[Path]:
    images, ids = content["images"][:rows_limit], content["ids"][:rows_limit]
    fig, axes = new_figure(len(ids), len(columns) + 1, figsize=(1.5 * (len(columns) + 1), 1.5 * len(ids)),
                           squeeze=False)
    for r, image_id in enumerate(ids):
        axes[r][0].imshow(np.clip(images[r].transpose(1, 2, 0), 0, 1))
        axes[r][0].set_xticks([])
        axes[r][0].set_yticks([])
        axes[r][0].set_ylabel(str(image_id), fontsize=6)
        for c, (key, label) in enumerate(zip(columns, labels), start=1):
            draw_heatmap(axes[r][c], content[key][r], images[r], title=label if r == 0 else None)
    fig.suptitle(title, fontsize=9)
    return save_figure(fig, path)


def make_figures(results_dir: Path, figures_dir: Path) -> list[Path]:
    """Fig. 2 (image, BagNet-9/17/33 heatmaps) and Fig. A.2 (VGG-16 white-box methods beside BagNets)."""
    summary = read_csv(results_dir / "summary.csv")  # written last: the run finished
    bagnet_labels = [f"BagNet-{role.removeprefix('bagnet')}" for role in BAGNET_ROLES]
    paths = _grid(np.load(results_dir / "fig2.npz"), list(BAGNET_ROLES), bagnet_labels,
                  "Fig. 2: exact heatmaps of the predicted class (red: evidence for)", figures_dir / "fig2_heatmaps")
    white_box = list(dict.fromkeys(summary.loc[(summary["figure"] == "figA2") & (summary["method"] != "exact"),
                                               "method"]))
    columns = white_box + list(BAGNET_ROLES)
    labels = [METHOD_LABELS.get(method, method) for method in white_box] + bagnet_labels
    paths += _grid(np.load(results_dir / "figA2.npz"), columns, labels,
                   "Fig. A.2: VGG-16 attributions and BagNet heatmaps for VGG-16's prediction",
                   figures_dir / "figA2_attributions")
    return paths



def plan(ctx: RunContext) -> list:
    """--plan: per BagNet, its prediction and two dense heatmaps per image (its own class, VGG-16's);
    VGG-16's prediction and every white-box method, once on all the images."""
    count = min(ctx.settings.num_images, len(ctx.images()))
    work = [Work(ctx.role(role), "prediction + 2 dense heatmaps", count, 3 * count, heatmap=2 * count)
            for role in BAGNET_ROLES]
    reference = ctx.role(REFERENCE_ROLE)
    work.append(Work(reference, "prediction", count, count))
    for method in ctx.settings.white_box:
        forward, backward = attribution.get_attribution(method).passes_for(count, image_size=ctx.image_size,
                                                                                    ig_steps=ctx.settings.ig_steps)
        work.append(Work(reference, method, count, forward, backward))
    return work


EXPERIMENT = Experiment(
    name="heatmaps", title="exact BagNet heatmaps and white-box attributions", paper_ref="Fig. 2, A.2",
    run=run, plan=plan, make_figures=make_figures, settings=Settings,
    question="Where in an image does each BagNet find evidence for its prediction, compared with VGG-16's "
             "white-box attributions?",
)
