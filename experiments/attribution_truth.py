"""Attribution methods scored against ground truth: the benchmark the paper proposes (Sec. 5: BagNets
"can serve as diagnostic tools to benchmark feature attribution techniques since ground-truth
attributions are directly available").

Every attribution method of the registry (:mod:`bagrepro.methods.attribution`: the paper's four and
every family through its library; a ``--plugin`` file's methods too) runs on every model of the run for the class the model predicts, one map per
(model, method, image), plus a random map as the floor. Three parts score the maps
(:mod:`bagrepro.methods.ground_truth` defines each score):

- **Part A, exact truth (BagNets).** On each BagNet, the method's map of that BagNet, pooled onto
  its patch grid, against its exact patch logits: Spearman rank correlation, overlap of the top 10 %
  windows, and the deletion curve's area above the exact order's (raw, in logits, and normalised:
  0 = exact order, 1 = the worst order). All images.
- **Part B, evidence masks (every model; image sets with masks: the demo world).** Relevance mass
  accuracy (share of the positive attribution inside the mask), relevance rank accuracy and the
  pointing game, on the images the model classifies correctly (the mask marks the evidence of the
  true class, so a map of another class has nothing to find there). The BagNets' exact dense
  heatmaps of the model's predicted class take part as black-box maps.

- **Part C, the deletion proxies against exact truth (BagNets).** The truth estimates other
  benchmarks use (:mod:`bagrepro.methods.proxies`: single-window deletion as IDSDS, MoRF / LeRF
  deletion, Fig. 8's masking order) score every method's map on each BagNet; ``proxies.csv`` says,
  per BagNet and proxy, how the ranking of the methods they give compares with the exact one (Part
  A's Spearman r): Kendall tau with a bootstrap interval over images, the per-image Spearman r over
  methods, and for single-window deletion its drops against the exact patch logits.

Writes ``results/attribution_truth/per_image.csv`` (profile, part, model, role, method, image_id,
metric, value, note: a method that could not apply leaves one row per score with the reason and no
value), ``summary.csv`` (per part, model, method and metric: n_images, the mean with its 95 %
bootstrap interval over images ``mean_low/high``, and ``note``: why a method could not apply to a
model, where it could not), ``rankings.csv`` (per part, model and metric, the methods ranked by
mean, each against the best one: the mean paired difference over images with its interval and
whether the sample resolves it), ``proxies.csv`` (Part C, :func:`proxy_agreement`) and ``examples.npz`` (one image's maps on one BagNet, for the panel).

Units: one per (model, method), resumable and dealt to the ranks under torchrun. Passes per image
and unit: the method's own passes (the registry's cost), on a BagNet its exact patch logits (1
forward) and once per unit an all-zero window (1 forward); a black-box map is one dense heatmap of its
BagNet. The predicted class of every image is the shared clean prediction
(:func:`bagrepro.harness.predictions.clean_predictions`, as the accuracy experiment writes it), computed once
per model and run, not once per unit.

An extension beyond the paper's figures: it runs when named (``--experiment attribution_truth``) or
with ``--experiment all``, not in a plain run (``Experiment.in_default_run``).
"""

from __future__ import annotations

import math
import hashlib
import inspect
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from bagrepro.methods import attribution
from bagrepro.core.errors import ConfigError, MissingRoleError
from bagrepro.methods.ground_truth import (
    PART_A_METRICS,
    PART_B_METRICS,
    TOP_FRACTION,
    deletion_gaps,
    pointing_game,
    pool_to_patch_grid,
    relevance_mass,
    relevance_rank,
    spearman_rows,
    top_fraction_overlap,
)
from bagrepro.methods.heatmap_cache import cached_heatmaps
from bagrepro.methods.proxies import (CURVE_PROXIES, PATCH_DELETION, ROAD_PROXIES, curve_passes, deletion_passes,
                                      deletion_scores, road_passes, road_scores, window_deletion_drops)
from bagrepro.methods.heatmaps import patch_logits
from bagrepro.core.metrics import mean_interval, resolution
from bagrepro.models import create_model, get_spec
from bagrepro.harness.plan import Work
from bagrepro.harness.plotting import draw_heatmap, error_bars, new_figure, save_figure
from bagrepro.harness.predictions import clean_predictions, clean_work
from bagrepro.harness.profiles import BAGNET_ROLES
from bagrepro.harness.results import read_csv
from bagrepro.harness.registry import Experiment
from bagrepro.harness.context import RunContext
from bagrepro.core.settings import mechanics_setting, our_setting

RANDOM = "random"
#: Part C: each proxy's score of a map -> whether higher is better (the proxy's own verdict)
PART_C_METRICS = {PATCH_DELETION: True, **{proxy: entry[2] for proxy, entry in CURVE_PROXIES.items()},
                  **{proxy: entry[2] for proxy, entry in ROAD_PROXIES.items()}}
HIGHER_IS_BETTER = {**PART_A_METRICS, **PART_B_METRICS, **PART_C_METRICS}
#: Part C: the single-window deletion drops against the exact patch logits, per image (Spearman r);
#: not a score of a method (every unit of a BagNet writes the same value), so not ranked
DROPS_VS_EXACT = "drops_vs_exact"
METRIC_LABELS = {
    "spearman": "Spearman r with the exact patch logits", "top10_overlap": "top-10 % window overlap",
    "deletion_gap": "deletion area above the exact order (logits)",
    "deletion_gap_normalised": "deletion gap (0 exact, 1 worst order)",
    "relevance_mass": "relevance mass in the evidence mask", "relevance_rank": "relevance rank accuracy",
    "pointing_game": "pointing game",
    PATCH_DELETION: "Spearman r with single-window deletion drops",
    **{proxy: entry[3] for proxy, entry in CURVE_PROXIES.items()},
    **{proxy: entry[3] for proxy, entry in ROAD_PROXIES.items()},
}
PER_IMAGE_COLUMNS = ["part", "model", "role", "method", "image_id", "metric", "value", "note"]


@dataclass(frozen=True)
class Settings:
    """num_images: images per model (the first of the profile's); methods: the registered attribution
    methods to score (default None: every one registered when the run starts, in registration order); left_out: of those, the ones not
    run (a profile's time budget: a method registered later still runs there); black_box: BagNet roles whose
    exact dense heatmaps enter Part B as black-box maps; random_baseline: score a random map too
    (the floor every method should beat); top_fraction: the share of windows in the top overlap;
    batch_size: images per attribution call (memory, not results).

    options: further registry options as (name, value) pairs (e.g. ``(("xrai_steps", 8),)``: a
    method's option without a field here, a plugin method's); references: how many images of the
    profile's set that are not scored form the dataset baseline of the methods that take one
    (``references``: Expected Gradients, DeepLiftShap); proxies: compute Part C on every BagNet;
    proxy_steps: the 8 x 8 px patches Part C's curves mask; road: the ROAD proxies Part C runs
    (``road_morf``, ``road_lerf``: pytorch-grad-cam's, at its default percentiles).

    The method options below are None by default: each method then keeps the default its registry
    entry documents (the values its paper or captum recommends); a profile lowers them to fit its
    time budget. ig_steps: Integrated Gradients' steps; smoothgrad_samples, shap_samples,
    kernel_shap_samples, lime_samples: samples of SmoothGrad, Gradient SHAP, Kernel SHAP, LIME;
    occlusion_window, occlusion_stride: Occlusion's square (px) and its stride; cell: the side (px)
    of the square cells Kernel SHAP and LIME switch on and off; perturbations_per_eval: perturbed
    inputs per forward pass of Occlusion, Kernel SHAP and LIME (memory and speed, not results)."""

    # an extension (the paper proposes the benchmark in Sec. 5 and runs none): every default is ours
    num_images: int = our_setting(100, "images per model; the benchmark is an extension, no count is given")
    methods: tuple[str, ...] | None = our_setting(None, "None: every registered method")
    left_out: tuple[str, ...] = our_setting((), "none left out")
    black_box: tuple[str, ...] = our_setting(BAGNET_ROLES, "every BagNet's exact heatmap as a black-box map")
    random_baseline: bool = our_setting(True, "a random map as the floor every method should beat")
    top_fraction: float = our_setting(TOP_FRACTION, "the top 10 % of windows in the overlap score")
    batch_size: int = mechanics_setting(8)
    ig_steps: int | None = our_setting(None, "None: the method's registry default (its paper's or captum's, in its docstring)")
    smoothgrad_samples: int | None = our_setting(None, "None: the method's registry default (its paper's or captum's, in its docstring)")
    shap_samples: int | None = our_setting(None, "None: the method's registry default (its paper's or captum's, in its docstring)")
    kernel_shap_samples: int | None = our_setting(None, "None: the method's registry default (its paper's or captum's, in its docstring)")
    lime_samples: int | None = our_setting(None, "None: the method's registry default (its paper's or captum's, in its docstring)")
    occlusion_window: int | None = our_setting(None, "None: the method's registry default (its paper's or captum's, in its docstring)")
    occlusion_stride: int | None = our_setting(None, "None: the method's registry default (its paper's or captum's, in its docstring)")
    cell: int | None = our_setting(None, "None: the method's registry default (its paper's or captum's, in its docstring)")
    perturbations_per_eval: int | None = mechanics_setting(None)
    options: tuple[Any, ...] = our_setting(
        (), "none: every other registry option (a plugin method's too) keeps its method's default")
    references: int = our_setting(16, "the dataset baseline of expected_gradients / deeplift_shap: 16 images "
                                      "of the profile's set that are not scored")
    proxies: bool = our_setting(True, "Part C: the deletion proxies on every BagNet")
    proxy_steps: int = our_setting(16, "Part C's curves mask 16 patches of 8x8 px (the demo's masking steps)")
    road: tuple[str, ...] = our_setting(tuple(ROAD_PROXIES), "both ROAD orders, at pytorch-grad-cam's default "
                                                             "percentiles (MoRF 80, LeRF 20)")

    def __post_init__(self):
        if not all(isinstance(pair, (tuple, list)) and len(pair) == 2 and isinstance(pair[0], str)
                   for pair in self.options):
            raise ConfigError(f"options must be (name, value) pairs, got {self.options!r}")
        for method in (*(self.methods or ()), *self.left_out):
            attribution.get_attribution(method)  # an unknown name: ConfigError naming the valid ones
        unknown_road = sorted(set(self.road) - set(ROAD_PROXIES))
        if unknown_road:
            raise ConfigError(f"unknown ROAD proxies {', '.join(unknown_road)}; choose from {', '.join(ROAD_PROXIES)}")
        if not 0 < self.top_fraction <= 1:
            raise ConfigError(f"top_fraction must lie in (0, 1], got {self.top_fraction}")
        known = {option for method in attribution.attribution_methods()
                 for option, _ in attribution.get_attribution(method).options}
        unknown = sorted(set(self.method_options()) - known)
        if unknown:
            raise ConfigError(f"no registered attribution method takes option(s) {', '.join(unknown)}")

    def scored_methods(self) -> list[str]:
        """The registered methods this run scores: ``methods`` (None: every method registered when the
        run starts, not when this module was imported) but ``left_out``."""
        methods = attribution.attribution_methods() if self.methods is None else self.methods
        return [method for method in methods if method not in self.left_out]

    def method_options(self) -> dict[str, Any]:
        """The options set here (not None), by the registry's option names: the fields of
        :data:`OPTION_FIELDS`, then ``options``' (name, value) pairs."""
        named = {field.name: getattr(self, field.name) for field in fields(self)
                 if field.name in OPTION_FIELDS and getattr(self, field.name) is not None}
        return {**named, **dict(self.options)}


OPTION_FIELDS = ("ig_steps", "smoothgrad_samples", "shap_samples", "kernel_shap_samples", "lime_samples",
                 "occlusion_window", "occlusion_stride", "cell", "perturbations_per_eval")


def has_masks(ctx: RunContext) -> bool:
    return getattr(ctx.images(), "masks", None) is not None


def black_box_roles(ctx: RunContext, settings: Settings) -> list[str]:
    """The black-box BagNet roles of Part B whose stand-in is one of this run's models (none without
    evidence masks)."""
    if not has_masks(ctx):
        return []
    return [role for role in ctx.present_roles(settings.black_box) if ctx.role(role) in ctx.model_names]


def unit_plan(ctx: RunContext, settings: Settings) -> dict[str, tuple[str, str]]:
    """unit key -> (model, method): every method on every model where Part A (a BagNet, a white-box
    or random map) or Part B (evidence masks) applies."""
    masks = has_masks(ctx)
    methods = settings.scored_methods() + black_box_roles(ctx, settings) + ([RANDOM] if settings.random_baseline else [])
    units = {}
    for name in ctx.model_names:
        for method in methods:
            part_a = get_spec(name).is_bagnet and method not in settings.black_box
            if part_a or masks:
                units[f"{name}__{method}{_code_tag(method)}"] = (name, method)
    return units


def _code_tag(method: str) -> str:
    """'' for the package's methods; for one registered outside it (a plugin, a notebook) a short hash
    of its source, so that editing the method recomputes its units instead of resuming stale ones."""
    if method not in attribution.attribution_methods() or attribution.get_attribution(method).family != "your method":
        return ""
    compute = attribution.get_attribution(method).compute
    try:
        source = inspect.getsource(compute)
    except (OSError, TypeError):  # defined where no source is kept (an interactive session)
        source = compute.__code__.co_code.hex()
    return "__" + hashlib.sha1(source.encode()).hexdigest()[:8]


def unit_config(settings: Settings) -> Settings:
    """What determines a unit's numbers: the settings without the choice of methods (``methods``,
    ``left_out`` select units, so adding a method reuses every finished one)."""
    return replace(settings, methods=None, left_out=())


def method_maps(ctx: RunContext, name: str, method: str, settings: Settings, inputs: torch.Tensor,
                images: torch.Tensor, ids: list[str], predicted: torch.Tensor, first_index: int) -> torch.Tensor:
    """Pixel maps [B, H, W] of ``method`` for the predicted classes of model ``name``: a registered
    method (summed over channels), a BagNet role's exact dense heatmap (from the heatmap cache: the
    models mostly predict the same classes, so most are computed once for all of them), or uniform
    noise (seeded by the image's index)."""
    if method == RANDOM:
        generator = torch.Generator().manual_seed(first_index)
        return torch.rand(images.shape[0], *images.shape[-2:], generator=generator).to(inputs.device)
    if method in settings.black_box:
        return cached_heatmaps(ctx.inference_model(ctx.role(method)), images, ids, predicted).to(inputs.device)
    options = settings.method_options()
    if "references" in attribution.get_attribution(method).defaults:
        options["references"] = reference_images(ctx, name, settings).to(inputs.device)
    with torch.enable_grad():
        maps = attribution.attribute(ctx.model(name), inputs, predicted, method, **options)
    return maps.sum(1)


def reference_images(ctx: RunContext, name: str, settings: Settings) -> torch.Tensor:
    """The dataset baseline [R, 3, H, W] (model ``name``'s input): the ``references`` images that follow
    the scored ones in the profile's set (from its start where the set is too small)."""
    images = ctx.images()
    count = min(settings.num_images, len(images))
    indices = [(count + i) % len(images) for i in range(settings.references)]
    batch = torch.cat([batch for batch, _, _ in images.subset(indices).batches(len(indices))])
    return ctx.model(name).zoo_spec.preprocess.normalize(batch.to(ctx.device))


def _rows(part: str, metrics: dict[str, torch.Tensor], ids: list[str]) -> pd.DataFrame:
    return pd.DataFrame([{"part": part, "image_id": image_id, "metric": metric, "value": float(values[i])}
                         for metric, values in metrics.items() for i, image_id in enumerate(ids)])


def unit_frame(ctx: RunContext, name: str, method: str, settings: Settings, predicted_class: pd.Series,
               examples: dict, drops_memo: dict | None = None) -> pd.DataFrame:
    """Per-image scores of one (model, method) unit (Part A on a BagNet, Part B where the images have
    masks) for the model's predicted classes (``predicted_class``: image_id -> class); a method that
    cannot apply to the model gives one row per score of each part saying why (``note``)."""
    spec = get_spec(name)
    part_a = spec.is_bagnet and method not in settings.black_box
    part_b = has_masks(ctx)
    model = ctx.model(name)
    images = ctx.images()
    count = min(settings.num_images, len(images))
    subset = images.subset(range(count))
    masks = subset.masks if part_b else None
    deleted = None
    if part_a:  # the patch logit of an all-zero (mean-colour) window, every class: [K]
        q = spec.receptive_field
        zero_window = torch.zeros(1, 3, q, q, device=ctx.device)
        deleted = patch_logits(model, zero_window)[0, :, 0, 0]
    frames, done = [], 0
    for batch, labels, ids in ctx.progress(subset.batches(settings.batch_size), desc=f"{name} {method}", unit="batch"):
        batch = batch.to(ctx.device)
        inputs = model.zoo_spec.preprocess.normalize(batch)
        predicted = torch.as_tensor(predicted_class.loc[ids].to_numpy().copy(), dtype=torch.long, device=ctx.device)
        try:
            maps = method_maps(ctx, name, method, settings, inputs, batch, ids, predicted, done)
        except attribution.MethodNotApplicable as error:  # a row per score of each part, saying why
            scores = {"A": PART_A_METRICS if part_a else {}, "B": PART_B_METRICS if part_b else {},
                      "C": part_c_metrics(settings) if part_a and settings.proxies else {}}
            return pd.DataFrame([{"part": part, "image_id": "", "metric": metric, "value": math.nan,
                                  "note": str(error)} for part, metrics in scores.items() for metric in metrics])
        maps = maps.detach().float()
        if part_a:
            truth = patch_logits(model, inputs, targets=predicted)[:, 0]  # [B, rows, cols]
            pooled = pool_to_patch_grid(maps, spec.receptive_field)
            gap, normalised = deletion_gaps(pooled, truth, deleted[predicted])
            frames.append(_rows("A", {"spearman": spearman_rows(pooled, truth),
                                      "top10_overlap": top_fraction_overlap(pooled, truth, settings.top_fraction),
                                      "deletion_gap": gap, "deletion_gap_normalised": normalised}, ids))
            if settings.proxies:
                frames.append(_rows("C", part_c_scores(model, inputs, predicted, maps, pooled, truth, spec.receptive_field,
                                                       settings, (name, tuple(ids)), drops_memo), ids))
            if done == 0:
                examples.update({"image": batch[0].cpu().numpy(), "exact": truth[0].cpu().numpy(),
                                 f"map/{method}": maps[0].cpu().numpy(), f"pooled/{method}": pooled[0].cpu().numpy()})
        if part_b:
            correct = (predicted == labels.to(predicted.device)).cpu()
            if correct.any():
                kept = [image_id for image_id, keep in zip(ids, correct.tolist()) if keep]
                shown, truth_masks = maps.cpu()[correct], masks[done:done + len(ids)][correct]
                frames.append(_rows("B", {"relevance_mass": relevance_mass(shown, truth_masks),
                                          "relevance_rank": relevance_rank(shown, truth_masks),
                                          "pointing_game": pointing_game(shown, truth_masks)}, kept))
        done += len(ids)
    frame = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["part", "image_id", "metric", "value"])
    frame["note"] = ""
    return frame


def part_c_scores(model, inputs: torch.Tensor, predicted: torch.Tensor, maps: torch.Tensor, pooled: torch.Tensor,
                  truth: torch.Tensor, q: int, settings: Settings, key, drops_memo: dict | None) -> dict[str, torch.Tensor]:
    """Part C for one batch: each proxy's score of the maps [B] (:mod:`bagrepro.methods.proxies`): the
    maps pooled onto the patch grid against the single-window deletion drops (Spearman r; the drops
    are the same for every method, so they are computed once per batch and run: ``drops_memo``), the
    deletion and insertion curves in the maps' order, the ROAD proxies of ``settings.road``, and
    (:data:`DROPS_VS_EXACT`, the same in every unit) the drops against the exact patch logits
    ``truth`` [B, rows, cols]."""
    drops = None if drops_memo is None else drops_memo.get(key)
    if drops is None:
        drops = window_deletion_drops(model, inputs, predicted, q)
        if drops_memo is not None:
            drops_memo[key] = drops
    with torch.inference_mode():
        curves = deletion_scores(model, inputs, predicted, maps, settings.proxy_steps)
        road = road_scores(model, inputs, predicted, maps, settings.road) if settings.road else {}
    return {PATCH_DELETION: spearman_rows(pooled, drops), **curves, **road, DROPS_VS_EXACT: spearman_rows(drops, truth)}


def part_c_metrics(settings: Settings) -> list[str]:
    """The Part C scores a run with ``settings`` writes: the single-window deletion, the curves, its ROAD proxies."""
    return [metric for metric in PART_C_METRICS if metric not in ROAD_PROXIES or metric in settings.road]


def _text(column: pd.Series) -> pd.Series:
    """A text column with '' for missing values (a CSV reads an all-empty column back as NaN floats)."""
    return column.astype(object).where(column.notna(), "")


def summary(per_image: pd.DataFrame) -> pd.DataFrame:
    """Mean per (part, model, role, method, metric) with its 95 % bootstrap interval over images;
    n_images counts the images with a value (NaN: an empty mask, a map without positive values);
    a (model, method) a method could not apply to keeps its row with ``note`` and NaN numbers."""
    keys = ["part", "model", "role", "method", "metric"]
    rows = []
    per_image = per_image[per_image["metric"] != DROPS_VS_EXACT]
    for key, group in per_image.groupby(keys, sort=False, dropna=False):
        values = group["value"].to_numpy(dtype=np.float64)
        values = values[~np.isnan(values)]
        low, high = mean_interval(values) if len(values) else (math.nan, math.nan)
        note = "; ".join(sorted(set(_text(group["note"])) - {""}))
        rows.append({**dict(zip(keys, key)), "n_images": len(values), "mean": values.mean() if len(values) else math.nan,
                     "mean_low": low, "mean_high": high, "note": note})
    return pd.DataFrame(rows, columns=[*keys, "n_images", "mean", "mean_low", "mean_high", "note"])


def rankings(per_image: pd.DataFrame) -> pd.DataFrame:
    """Per (part, model, metric): the methods ranked by mean (best first: highest, or lowest for the
    deletion gaps), each against the best: the mean paired difference over the images both have
    (method - best, so <= 0 where higher is better), its 95 % bootstrap interval and ``resolved``
    ('not resolved': the sample cannot tell the method from the best)."""
    scored = per_image[per_image["value"].notna() & (per_image["metric"] != DROPS_VS_EXACT)]
    rows = []
    for (part, model, role, metric), group in scored.groupby(["part", "model", "role", "metric"], sort=False, dropna=False):
        table = group.pivot_table(index="image_id", columns="method", values="value", aggfunc="first")  # [images, methods]
        means = table.mean().dropna()
        if means.empty:
            continue
        higher = HIGHER_IS_BETTER[metric]
        order = means.sort_values(ascending=not higher)
        best = order.index[0]
        for rank, (method, mean) in enumerate(order.items(), start=1):
            pair = table[[method, best]].dropna().to_numpy()
            differences = pair[:, 0] - pair[:, 1]
            low, high = (math.nan, math.nan) if method == best else mean_interval(differences)
            rows.append({"part": part, "model": model, "role": role, "metric": metric, "rank": rank, "method": method,
                         "mean": mean, "best": best, "minus_best": differences.mean() if len(differences) else math.nan,
                         "minus_best_low": low, "minus_best_high": high,
                         "resolved": "" if method == best else resolution(low, high)})
    return pd.DataFrame(rows)


#: bootstrap resamples of the images for the Kendall tau intervals (seeded: a rerun gives the same)
TAU_RESAMPLES = 1000


def proxy_agreement(per_image: pd.DataFrame, resamples: int = TAU_RESAMPLES, seed: int = 0) -> pd.DataFrame:
    """Part C's verdict per (BagNet, proxy): how far the proxy's ranking of the methods is from the one
    the exact truth gives (Part A's Spearman r with the exact patch logits).

    Per image, the methods' proxy scores (negated where lower is better) against their exact scores:
    ``method_spearman`` (Spearman r over methods; mean and 95 % bootstrap interval over images). Over
    the images: the methods ranked by mean proxy score against them ranked by mean exact score:
    ``kendall_tau`` with a 95 % bootstrap interval (images resampled, ``resamples`` times, seeded).
    For ``patch_deletion`` also ``truth_spearman``: the deletion drops themselves against the exact
    patch logits, per image (mean, interval). The random map is left out (it is no method)."""
    from scipy.stats import kendalltau, spearmanr

    rows = []
    values = per_image[per_image["value"].notna() & (per_image["method"] != RANDOM)]
    for model, group in values.groupby("model", sort=False):
        exact = group[(group["part"] == "A") & (group["metric"] == "spearman")].pivot_table(
            index="image_id", columns="method", values="value", aggfunc="first")  # [images, methods]
        truth = group[group["metric"] == DROPS_VS_EXACT].groupby("image_id")["value"].first()
        for proxy, higher in PART_C_METRICS.items():
            table = group[(group["part"] == "C") & (group["metric"] == proxy)].pivot_table(
                index="image_id", columns="method", values="value", aggfunc="first")
            methods = sorted(set(table.columns) & set(exact.columns))
            images = sorted(set(table.index) & set(exact.index))
            if len(methods) < 3 or len(images) < 2:
                continue
            proxy_scores = table.loc[images, methods].to_numpy(float) * (1 if higher else -1)
            exact_scores = exact.loc[images, methods].to_numpy(float)
            per_image_r = np.array([spearmanr(p, e).statistic for p, e in zip(proxy_scores, exact_scores)])
            per_image_r = per_image_r[np.isfinite(per_image_r)]
            r_low, r_high = mean_interval(per_image_r) if len(per_image_r) > 1 else (math.nan, math.nan)
            tau = kendalltau(np.nanmean(proxy_scores, 0), np.nanmean(exact_scores, 0)).statistic
            generator = np.random.default_rng(seed)
            draws = generator.integers(0, len(images), size=(resamples, len(images)))
            taus = np.array([kendalltau(np.nanmean(proxy_scores[d], 0), np.nanmean(exact_scores[d], 0)).statistic
                             for d in draws])
            tau_low, tau_high = np.nanpercentile(taus, [2.5, 97.5])
            row = {"model": model, "proxy": proxy, "n_images": len(images), "n_methods": len(methods),
                   "method_spearman": per_image_r.mean() if len(per_image_r) else math.nan,
                   "method_spearman_low": r_low, "method_spearman_high": r_high,
                   "kendall_tau": tau, "kendall_tau_low": tau_low, "kendall_tau_high": tau_high,
                   "truth_spearman": math.nan, "truth_spearman_low": math.nan, "truth_spearman_high": math.nan}
            if proxy == PATCH_DELETION and len(truth):
                found = truth.loc[truth.index.intersection(images)].to_numpy(float)
                found = found[np.isfinite(found)]
                if len(found):
                    low, high = mean_interval(found) if len(found) > 1 else (math.nan, math.nan)
                    row.update(truth_spearman=found.mean(), truth_spearman_low=low, truth_spearman_high=high)
            rows.append(row)
    return pd.DataFrame(rows)


def run(ctx: RunContext) -> None:
    settings = ctx.settings
    if not has_masks(ctx):
        ctx.say(f"[{ctx.name}] these images carry no evidence masks: Part B is not measurable here (Part A only)")
    units = unit_plan(ctx, settings)
    if not units:
        raise MissingRoleError("no BagNet in this run and no evidence masks: nothing to score")
    store = ctx.units(unit_config(settings))
    panel_model = example_model(ctx)
    predictions = clean_predictions(ctx, ctx.model_names)  # shared: one forward per image and model
    predicted_class = {name: rows.set_index("image_id")["pred_1"] for name, rows in predictions.groupby("model")}

    drops_memo: dict = {}  # Part C's single-window deletion drops per (BagNet, batch), shared by its units

    def compute(unit: str) -> pd.DataFrame:
        name, method = units[unit]
        examples: dict[str, np.ndarray] = {}
        frame = unit_frame(ctx, name, method, settings, predicted_class[name], examples, drops_memo)
        frame.insert(1, "model", name)
        frame.insert(2, "role", ctx.profile.role_of(name))
        frame.insert(3, "method", method)
        if name == panel_model:
            store.save_arrays(unit, {key: value.astype(np.float32) for key, value in examples.items()})
        return frame

    frames = ctx.map_units(store, list(units), compute)
    per_image = pd.concat(frames.values(), ignore_index=True)
    per_image.insert(0, "profile", ctx.profile.name)
    per_image["note"] = _text(per_image["note"])
    ctx.write_csv(per_image[["profile", *PER_IMAGE_COLUMNS]], "per_image.csv")
    ctx.write_csv(summary(per_image), "summary.csv")
    ctx.write_csv(rankings(per_image), "rankings.csv")
    if settings.proxies and (per_image["part"] == "C").any():
        ctx.write_csv(proxy_agreement(per_image), "proxies.csv")
    examples = {}
    for unit, (name, _) in units.items():
        if name == panel_model:
            examples.update(store.load_arrays(unit))
    if examples:
        ctx.write_npz(examples, "examples.npz")


def example_model(ctx: RunContext) -> str | None:
    """The BagNet whose maps of the first image form the example panel: the widest q in the run."""
    bagnets = [name for name in ctx.model_names if get_spec(name).is_bagnet]
    return max(bagnets, key=lambda name: get_spec(name).receptive_field) if bagnets else None


# ---- figures (CSVs and the examples file only) ---------------------------------------------------

def _ranking_axes(ax, table: pd.DataFrame, metric: str, hue: str) -> None:
    """One metric: a row per method (best mean on top), a point with its 95 % interval per ``hue``."""
    methods = (table.groupby("method")["mean"].mean()
               .sort_values(ascending=HIGHER_IS_BETTER[metric]).index.tolist())  # best at the top
    groups = list(dict.fromkeys(table[hue]))
    offsets = np.linspace(-0.3, 0.3, len(groups)) if len(groups) > 1 else np.zeros(1)
    for offset, group in zip(offsets, groups):
        rows = table[table[hue] == group].set_index("method").reindex(methods)
        y = np.arange(len(methods)) + offset
        ax.errorbar(rows["mean"], y, xerr=error_bars(rows, "mean"), fmt="o", ms=3, lw=0.8, capsize=1.5, label=group)
    ax.set_yticks(np.arange(len(methods)), methods, fontsize=7)
    ax.set_title(METRIC_LABELS[metric], fontsize=8)
    ax.grid(axis="x", lw=0.3)


def make_figures(results_dir: Path, figures_dir: Path) -> list[Path]:
    """Methods ranked per metric with 95 % intervals: Part A (one point per BagNet), Part B (one point
    per model); and the example panel (image, exact patch logits, each method's map and its pooling)."""
    table = read_csv(results_dir / "summary.csv")
    table = table[table["n_images"] > 0]
    paths = []
    for part, metrics, hue, title in (
            ("A", PART_A_METRICS, "model", "Part A: methods on each BagNet against its exact patch logits"),
            ("B", PART_B_METRICS, "model", "Part B: maps against the demo world's evidence masks (correct images)")):
        rows = table[table["part"] == part]
        if rows.empty:
            continue
        present = [metric for metric in metrics if metric in set(rows["metric"])]
        fig, axes = new_figure(1, len(present), figsize=(3.3 * len(present), 0.25 * rows["method"].nunique() + 1.6),
                               squeeze=False)
        for ax, metric in zip(axes[0], present):
            _ranking_axes(ax, rows[rows["metric"] == metric], metric, hue)
        axes[0][-1].legend(fontsize=6, loc="best")
        fig.suptitle(f"{title} (mean, 95 % bootstrap interval over images; best on top)", fontsize=9)
        paths += save_figure(fig, figures_dir / f"part{part.lower()}_ranking")
    if (results_dir / "proxies.csv").is_file():
        paths += _proxy_figure(read_csv(results_dir / "proxies.csv"), figures_dir)
    examples_path = results_dir / "examples.npz"
    if examples_path.is_file():
        paths += _example_panel(np.load(examples_path), figures_dir)
    return paths


def _proxy_figure(proxies: pd.DataFrame, figures_dir: Path) -> list[Path]:
    """Part C: per proxy, the Kendall tau between the methods' ranking by that proxy and their ranking
    by the exact patch logits (1: the same order), and the per-image Spearman r over methods; one
    point per BagNet with its 95 % bootstrap interval over images."""
    fig, axes = new_figure(1, 2, figsize=(8.5, 0.5 * proxies["proxy"].nunique() + 1.8), squeeze=False)
    names = list(dict.fromkeys(proxies["proxy"]))
    bagnets = list(dict.fromkeys(proxies["model"]))
    offsets = np.linspace(-0.25, 0.25, len(bagnets)) if len(bagnets) > 1 else np.zeros(1)
    for ax, column, label in ((axes[0][0], "kendall_tau", "Kendall tau: proxy's method ranking vs the exact one"),
                              (axes[0][1], "method_spearman", "per image: Spearman r over methods")):
        for offset, model in zip(offsets, bagnets):
            rows = proxies[proxies["model"] == model].set_index("proxy").reindex(names)
            ax.errorbar(rows[column], np.arange(len(names)) + offset, xerr=error_bars(rows, column), fmt="o", ms=3,
                        lw=0.8, capsize=1.5, label=model)
        ax.axvline(0, color="0.6", lw=0.5)
        ax.set_yticks(np.arange(len(names)), names, fontsize=7)
        ax.set_title(label, fontsize=8)
        ax.set_xlim(-1.05, 1.05)
        ax.grid(axis="x", lw=0.3)
    axes[0][1].legend(fontsize=6, loc="best")
    fig.suptitle("Part C: the deletion proxies other benchmarks use, against the BagNets' exact truth "
                 "(95 % bootstrap intervals over images)", fontsize=9)
    return save_figure(fig, figures_dir / "partc_proxies")


def _example_panel(examples, figures_dir: Path) -> list[Path]:
    methods = [key.split("/", 1)[1] for key in examples.files if key.startswith("map/")]
    image = examples["image"].astype(np.float32)
    columns = len(methods) + 1
    fig, axes = new_figure(2, columns, figsize=(1.25 * columns, 2.8), squeeze=False)
    axes[0][0].imshow(np.clip(image.transpose(1, 2, 0), 0, 1))
    axes[0][0].set_title("image", fontsize=6)
    # the bottom row shows orders (what the scores compare): each grid on its own scale
    axes[1][0].imshow(examples["exact"], cmap="viridis")
    axes[1][0].set_title("exact patch logits", fontsize=6)
    for column, method in enumerate(methods, start=1):
        draw_heatmap(axes[0][column], examples[f"map/{method}"], image, title=method)
        axes[1][column].imshow(examples[f"pooled/{method}"], cmap="viridis")
    for ax in axes.ravel():
        ax.axis("off")
    for ax in axes[0]:
        ax.title.set_fontsize(6)
    fig.suptitle("One image on the widest BagNet: each method's map (top) and pooled onto the patch grid (bottom)",
                 fontsize=8)
    return save_figure(fig, figures_dir / "example_panel", tight=False)


#: the scores the report shows (the raw deletion gap, in logits, stays in the CSVs: its scale differs per model)
REPORT_METRICS = ("spearman", "top10_overlap", "deletion_gap_normalised", "relevance_mass", "relevance_rank",
                  "pointing_game", *PART_C_METRICS)


#: the leaderboard's columns: (part, score) for every model where the part applies
LEADERBOARD_SCORES = (("A", "spearman"), ("B", "relevance_mass"))


def _cell(item, mark: str) -> str:
    interval = (f"[{item['mean_low']:.2f}, {item['mean_high']:.2f}]" if pd.notna(item["mean_low"])
                else f"(n = {item['n_images']})")  # one image: no interval
    return f"{item['mean']:.2f} {interval}{' ' + mark if mark else ''}"


def _verdicts(ranked: pd.DataFrame) -> dict:
    return {(row.part, row.model, row.metric, row.method): "best" if row.rank == 1 else
            "~ best" if row.resolved == "not resolved" else "" for row in ranked.itertuples()}


def leaderboard(results_dir: Path) -> pd.DataFrame:
    """One row per method, ranked by Part A's Spearman r with the exact patch logits (mean over the
    BagNets); a column per (part, score, model) of :data:`LEADERBOARD_SCORES`: mean [95 % interval]
    and 'best' / '~ best' as in :func:`report_table`, 'not applicable' where the method could not apply."""
    summary_table = read_csv(results_dir / "summary.csv")
    verdict = _verdicts(read_csv(results_dir / "rankings.csv"))
    part_a = summary_table[(summary_table["part"] == "A") & (summary_table["metric"] == "spearman")]
    order = list(part_a.groupby("method", sort=False)["mean"].mean().sort_values(ascending=False).index)
    order += [m for m in dict.fromkeys(summary_table["method"]) if m not in order]
    columns = {}
    for part, metric in LEADERBOARD_SCORES:
        rows = summary_table[(summary_table["part"] == part) & (summary_table["metric"] == metric)]
        for model in dict.fromkeys(rows["model"]):
            cells = {}
            for item in rows[rows["model"] == model].to_dict("records"):
                cells[item["method"]] = ("not applicable" if _text(pd.Series([item["note"]])).iloc[0] else
                                         _cell(item, verdict.get((part, model, metric, item["method"]), "")))
            columns[f"{part}: {metric}, {model}"] = cells
    table = pd.DataFrame([{"rank": rank, "method": method, **{column: cells.get(method, "") for column, cells in columns.items()}}
                          for rank, method in enumerate(order, start=1)])
    return table


def report_table(results_dir: Path) -> list[pd.DataFrame]:
    """The leaderboard (:func:`leaderboard`), Part C's proxies against the exact truth (proxies.csv,
    where written), then every score in detail (:func:`score_table`)."""
    tables = [leaderboard(results_dir)]
    if (results_dir / "proxies.csv").is_file():
        proxies = read_csv(results_dir / "proxies.csv")
        tables.append(pd.DataFrame([{
            "model": row["model"], "proxy": row["proxy"], "images": row["n_images"], "methods": row["n_methods"],
            "Kendall tau with the exact ranking": f"{row['kendall_tau']:.2f} [{row['kendall_tau_low']:.2f}, {row['kendall_tau_high']:.2f}]",
            "per-image Spearman r over methods": f"{row['method_spearman']:.2f} [{row['method_spearman_low']:.2f}, {row['method_spearman_high']:.2f}]",
            "drops vs exact patch logits (Spearman r)": (f"{row['truth_spearman']:.2f} [{row['truth_spearman_low']:.2f}, "
                                                         f"{row['truth_spearman_high']:.2f}]" if pd.notna(row["truth_spearman"]) else ""),
        } for row in proxies.to_dict("records")]))
    tables.append(score_table(results_dir))
    return tables


def score_table(results_dir: Path) -> pd.DataFrame:
    """The methods ranked per part and score (by their mean over the models, best first), a column per
    model: mean [95 % interval], then 'best', '~ best' where the sample cannot tell the method from
    that model's best (the paired difference's interval holds 0), nothing where it resolves the method
    as worse; 'not applicable' where the method could not apply (its reason in summary.csv)."""
    ranked = read_csv(results_dir / "rankings.csv")
    summary_table = read_csv(results_dir / "summary.csv")
    models = list(dict.fromkeys(summary_table["model"]))
    verdict = _verdicts(ranked)
    rows = []
    for (part, metric), group in summary_table.groupby(["part", "metric"], sort=False):
        if metric not in REPORT_METRICS:
            continue
        order = group.groupby("method", sort=False)["mean"].mean().sort_values(ascending=not HIGHER_IS_BETTER[metric])
        for method in order.index:
            row = {"part": part, "score": metric, "method": method}
            for model in models:
                found = group[(group["model"] == model) & (group["method"] == method)]
                if found.empty:
                    row[model] = ""
                elif _text(found["note"]).iloc[0]:
                    row[model] = "not applicable"
                else:
                    row[model] = _cell(found.iloc[0], verdict.get((part, model, metric, found.iloc[0]["method"]), ""))
            rows.append(row)
    return pd.DataFrame(rows, columns=["part", "score", "method", *models])


# ---- --plan ----------------------------------------------------------------------------------------

def plan(ctx: RunContext) -> list:
    """--plan: the shared clean predictions still missing; per (model, method) unit the method's passes
    (registry cost per call of ``batch_size`` images), a black-box map's dense heatmap on its BagNet (an upper bound: the
    heatmap cache serves an (image, class) another unit or experiment computed), and on a BagNet its
    exact patch logits plus one all-zero window."""
    settings = ctx.settings
    count = min(settings.num_images, len(ctx.images()))
    calls = [min(settings.batch_size, count - start) for start in range(0, count, settings.batch_size)]
    work = clean_work(ctx, ctx.model_names)
    drops_planned: set[str] = set()
    architectures: dict[str, torch.nn.Module] = {}
    for unit, (name, method) in unit_plan(ctx, settings).items():
        forward, backward = 0, 0
        if method in settings.black_box:
            work.append(Work(ctx.role(method), f"black-box maps for {name}", count, count, heatmap=count))
        elif method != RANDOM:
            cost = attribution.get_attribution(method)
            options = settings.method_options()
            if "references" in cost.defaults:  # only their number counts
                options["references"] = torch.zeros(settings.references, 3, 1, 1)
            if name not in architectures:  # random weights: a cost needs the layers only
                architectures[name] = create_model(name, pretrained=False)
            architecture = architectures[name]
            if cost.not_applicable(architecture, ctx.image_size) is not None:
                # the run finds it on the first call: the check's pass of one image, and the all-zero
                # window on a BagNet, before the method says why; nothing else
                bagnet = get_spec(name).is_bagnet and method not in settings.black_box
                work.append(Work(name, f"attribution truth, {method} (n/a)", count, 1 + bagnet, 0))
                continue
            for images in calls:
                f, b = cost.passes_for(images, image_size=ctx.image_size, model=architecture, **options)
                forward, backward = forward + f, backward + b
        if get_spec(name).is_bagnet and method not in settings.black_box:
            forward += count + 1  # exact patch logits, and the all-zero window
            if settings.proxies:  # Part C: the curves; the deletion drops once per BagNet (the first unit)
                forward += curve_passes(count, settings.proxy_steps) + road_passes(count, settings.road)
                if name not in drops_planned:
                    drops_planned.add(name)
                    forward += deletion_passes(count, ctx.image_size, ctx.image_size, get_spec(name).receptive_field)
        work.append(Work(name, f"attribution truth, {method}", count, forward, backward))
    return work


EXPERIMENT = Experiment(
    name="attribution_truth", title="attribution methods against exact ground truth", paper_ref="Sec. 5, proposed",
    run=run, plan=plan, make_figures=make_figures, report_table=report_table, settings=Settings, shardable=True,
    needs=("accuracy",),  # its clean predictions give the predicted classes
    in_default_run=False,  # an extension the paper proposes: `--experiment attribution_truth` or `all`
    question="Which attribution methods find the evidence a model really uses: a BagNet's exact patch logits "
             "(Part A) and the demo world's evidence masks (Part B)?",
)
