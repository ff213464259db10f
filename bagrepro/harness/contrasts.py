"""The paper's qualitative findings, checked on a run's CSVs: the first section of the report.

Each finding is a :class:`Contrast`: what the paper found (its numbers from :mod:`bagrepro.core.paper`),
what this run found (computed from the CSVs under ``results/``, every number with its 95 % interval
from :mod:`bagrepro.core.metrics`), and a verdict:

- ``agrees``: the sample resolves the effect in the paper's direction;
- ``not resolved``: the interval holds "no effect" (more images would be needed to tell);
- ``disagrees``: the sample resolves the opposite;
- ``not run``: the experiment (or a model it needs) is missing from the results;
- ``not measurable here``: the profile's data cannot show it (e.g. no arrangement classes).

Nothing here is typed in: change a CSV and the verdict follows (``tests/test_contrasts.py``).
The findings, in the paper's order: accuracy rises with q (Fig. 1B); BagNets are blind to non-local
structure (demo world's arrangement classes); eq. 1 holds exactly beyond q (Fig. 6); VGG-16's parts
more than 30 px apart interact little (Fig. 6C) and deeper networks interact more (Sec. 5); logit
correlation with VGG-16 rises with q (Fig. 1C); texturised images cost VGG-16 accuracy (Fig. 5);
tile scrambling hurts deep models more than BagNet-33 (the reproducibility report); BagNet heatmaps
beat white-box attributions in masking (Table 1). Each names the source of its reference.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from bagrepro.core import paper
from bagrepro.core.metrics import mean_interval, pearson_difference_interval, pearson_interval, proportion_interval, resolution

AGREES, NOT_RESOLVED, DISAGREES, NOT_RUN, NOT_MEASURABLE = (
    "agrees", "not resolved", "disagrees", "not run", "not measurable here")
#: Pearson r at least this close to 1 counts as "exact up to float rounding" for eq. 1
EXACT_R = 0.999
DEEP_ROLES = ("vgg16", "resnet50", "densenet169")
SCRAMBLE_GRID = 4  # the reproducibility report's 4 x 4 tiles


@dataclass(frozen=True)
class Contrast:
    """One finding: ``finding`` (the claim), ``paper`` (the reference's words or numbers, from
    :mod:`bagrepro.core.paper`), ``ours`` (this run's, with 95 % intervals), ``verdict`` (see the module
    docstring), ``source`` (the CSV it comes from), ``reference_source`` (where ``paper`` is stated:
    "paper, Fig. 1B", "repro report, 15-scene", ...; empty where the row quotes no source)."""

    finding: str
    paper: str
    ours: str
    verdict: str
    source: str
    reference_source: str = ""


def _interval(value: float, low: float, high: float, digits: int = 3) -> str:
    if np.isnan(low):
        return f"{value:.{digits}f}"
    return f"{value:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def _verdict_of(direction: str, expected: str) -> str:
    """From :func:`~bagrepro.core.metrics.resolution` ('above' / 'below' / 'not resolved') and the
    paper's direction to a verdict."""
    if direction == "":
        return NOT_RESOLVED
    return NOT_RESOLVED if direction == "not resolved" else AGREES if direction == expected else DISAGREES


def _combine(verdicts: list[str]) -> str:
    """One verdict for several comparisons: disagrees if any does, agrees if all do, else not resolved."""
    if not verdicts:
        return NOT_RUN
    return DISAGREES if DISAGREES in verdicts else AGREES if all(v == AGREES for v in verdicts) else NOT_RESOLVED


def _read(results: Path, experiment: str, name: str) -> pd.DataFrame | None:
    path = results / experiment / name
    return pd.read_csv(path) if path.is_file() else None


def _by_role(frame: pd.DataFrame) -> dict[str, str]:
    """role -> model name (the first model of each role)."""
    return {role: model for model, role in frame[["model", "role"]].drop_duplicates("role").itertuples(index=False)
            if isinstance(role, str)}


def _paired(frame: pd.DataFrame, value: str, model_a: str, model_b: str) -> np.ndarray:
    """Per-image ``value`` of model_a minus model_b, on the images both have: [N]."""
    wide = frame[frame["model"].isin([model_a, model_b])].pivot_table(index="image_id", columns="model",
                                                                      values=value, aggfunc="mean")
    wide = wide.dropna()
    return (wide[model_a] - wide[model_b]).to_numpy(np.float64) if len(wide.columns) == 2 else np.zeros(0)


def _accuracy_metric(results: Path, columns) -> str:
    """The metric the accuracy experiment's profile compares ('top5' as the paper; 'top1' where the
    data has too few classes for top-5 to tell models apart), from its sidecar; without one, top-5 if
    ``columns`` hold ``correct_top5`` / ``top5`` columns, else top-1."""
    path = results / "accuracy" / "predictions.meta.json"
    try:
        return str(json.loads(path.read_text())["accuracy_metric"])
    except (OSError, ValueError, KeyError):  # a CSV without its sidecar: the paper's metric where it has it
        return "top5" if any(str(c).endswith("top5") for c in columns) else "top1"


def accuracy_rises_with_q(results: Path) -> Contrast:
    """Accuracy rises with q (Fig. 1B)."""
    source = "results/accuracy/predictions.csv"
    predictions = _read(results, "accuracy", "predictions.csv")
    finding = "Accuracy rises with the patch size q (BagNet-9 < BagNet-17 < BagNet-33)"
    reference = paper.FIG1B_TOP5
    paper_text = ("top-5 " + " / ".join(f"{reference[r]:.1f}" for r in ("bagnet17", "bagnet33"))
                  + " % (BagNet-17 / -33; none for BagNet-9)")
    roles = _by_role(predictions) if predictions is not None else {}
    if not all(r in roles for r in ("bagnet9", "bagnet17", "bagnet33")):
        return Contrast(finding, paper_text, "", NOT_RUN, source, reference.source)
    metric = _accuracy_metric(results, predictions.columns)
    column, label = f"correct_{metric}", metric.replace("top", "top-")
    parts, verdicts = [], []
    for role in ("bagnet9", "bagnet17", "bagnet33"):
        rows = predictions[predictions["model"] == roles[role]][column]
        correct, total = int(round(rows.sum())), len(rows)
        low, high = proportion_interval(correct, total)
        parts.append(f"{role}: {_interval(100 * correct / total, 100 * low, 100 * high, 1)} %")
    for small, large in (("bagnet9", "bagnet17"), ("bagnet17", "bagnet33")):
        gain = _paired(predictions, column, roles[large], roles[small])
        low, high = mean_interval(gain)
        verdicts.append(_verdict_of(resolution(low, high), "above"))
        parts.append(f"{large} - {small}: {_interval(100 * gain.mean(), 100 * low, 100 * high, 1)} points")
    return Contrast(finding, paper_text, "; ".join(parts) + f" ({label}, n={total})", _combine(verdicts), source,
                    reference.source)


def blind_to_arrangements(results: Path) -> Contrast:
    """BagNet-33 at chance on the arrangement classes (demo world)."""
    source = "results/accuracy/per_group.csv"
    finding = "BagNets cannot use non-local structure: BagNet-33 at chance on classes that differ only in arrangement"
    paper_text = "the paper shows it on ImageNet by texturisation; the demo world tests it directly"
    cited = paper.TEXTURISED_VGG16_TOP5.source
    groups = _read(results, "accuracy", "per_group.csv")
    if groups is None:
        predictions = _read(results, "accuracy", "predictions.csv")
        return Contrast(finding, paper_text, "no arrangement classes in this profile's data", NOT_RUN
                        if predictions is None else NOT_MEASURABLE, source, cited)
    arrangement = groups[groups["group"] == "arrangement"]
    roles = _by_role(arrangement)
    if "bagnet33" not in roles:
        return Contrast(finding, paper_text, "", NOT_RUN, source, cited)

    def accuracy(model):  # top-1 and its exact interval (%) as the accuracy experiment wrote them
        row = arrangement[arrangement["model"] == model].iloc[0]
        return row["top1"], row["top1_low"], row["top1_high"], row["chance_top1"]

    value, low, high, chance = accuracy(roles["bagnet33"])
    parts = [f"chance {chance:.1f} %", f"bagnet33: {_interval(value, low, high, 1)} %"]
    verdicts = [AGREES if low <= chance <= high else DISAGREES]
    for role in DEEP_ROLES:
        if role in roles:
            deep, deep_low, deep_high, _ = accuracy(roles[role])
            parts.append(f"{role}: {_interval(deep, deep_low, deep_high, 1)} %")
            verdicts.append(AGREES if deep_low > high else NOT_RESOLVED)  # the deep model resolves them
    return Contrast(finding, paper_text, "; ".join(parts) + " (top-1 on the arrangement classes)",
                    _combine(verdicts), source, cited)


def exact_beyond_q(results: Path) -> Contrast:
    """Eq. 1 exact beyond q (Fig. 6)."""
    source = "results/interactions/correlation.csv"
    finding = f"Eq. 1 holds exactly for a BagNet when the masks are more than q px apart (Pearson r of LHS and RHS >= {EXACT_R})"
    paper_text, cited = paper.EQ1_CLAIM["text"], paper.EQ1_CLAIM.source
    table = _read(results, "interactions", "correlation.csv")
    terms = _read(results, "interactions", "terms.csv")
    if table is None or terms is None:
        return Contrast(finding, paper_text, "", NOT_RUN, source, cited)
    fields = terms.drop_duplicates("model").set_index("model")["receptive_field"]
    parts, verdicts = [], []
    for row in table.itertuples(index=False):
        q = fields.get(row.model)
        if pd.isna(q) or row.min_distance <= q or pd.isna(row.pearson_r):
            continue
        low = getattr(row, "pearson_r_low", np.nan)
        high = getattr(row, "pearson_r_high", np.nan)
        verdicts.append(AGREES if (low if not np.isnan(low) else row.pearson_r) >= EXACT_R else DISAGREES)
        parts.append(f"{row.role} at {row.min_distance} px: r = {_interval(row.pearson_r, low, high, 4)}")
    if not verdicts:
        return Contrast(finding, paper_text, "no BagNet with masks more than q px apart", NOT_RUN, source, cited)
    return Contrast(finding, paper_text, "; ".join(parts), _combine(verdicts), source, cited)


#: our reading of Fig. 6C: VGG-16's r "close to 1" beyond about 30 px means r >= 0.9 (the paper gives
#: no number; its VGG-16 curve levels off near 1 there). The distance is the paper's words.
FEW_INTERACTIONS_R = 0.9
BEYOND_PX = 30


def few_interactions_beyond_30px(results: Path) -> Contrast:
    """VGG-16 shows few interactions between parts more than about 30 px apart (Fig. 6C)."""
    source = "results/interactions/correlation.csv"
    finding = (f"VGG-16: parts more than {BEYOND_PX} px apart interact little (r of eq. 1's sides >= "
               f"{FEW_INTERACTIONS_R}, our reading of 'close to 1')")
    paper_text, cited = paper.FIG6C_VGG16_CLAIM["text"], paper.FIG6C_VGG16_CLAIM.source
    table = _read(results, "interactions", "correlation.csv")
    roles = _by_role(table) if table is not None else {}
    if table is None or "vgg16" not in roles:
        return Contrast(finding, paper_text, "", NOT_RUN, source, cited)
    rows = table[(table["model"] == roles["vgg16"]) & (table["min_distance"] > BEYOND_PX)]
    if rows.empty:
        return Contrast(finding, paper_text, f"no distance beyond {BEYOND_PX} px in this run (the largest: "
                        f"{int(table['min_distance'].max())} px)", NOT_MEASURABLE, source, cited)
    parts, verdicts = [], []
    for row in rows.itertuples(index=False):
        low, high = getattr(row, "pearson_r_low", np.nan), getattr(row, "pearson_r_high", np.nan)
        verdicts.append(AGREES if low >= FEW_INTERACTIONS_R else DISAGREES if high < FEW_INTERACTIONS_R
                        else NOT_RESOLVED)
        parts.append(f"{row.min_distance} px: r = {_interval(row.pearson_r, low, high)} (n={int(row.n_images)})")
    return Contrast(finding, paper_text, "; ".join(parts), _combine(verdicts), source, cited)


#: deeper, better networks interact more: r falls along these pairs (shallower first)
DEPTH_ORDER = (("vgg16", "resnet50"), ("resnet50", "resnet152"), ("resnet50", "densenet169"))


def deeper_networks_interact_more(results: Path) -> Contrast:
    """Deeper networks show stronger interactions: r falls with depth at a small distance (Fig. 6C, Sec. 5)."""
    source = "results/interactions/terms.csv"
    paper_text, cited = paper.SEC5_DEPTH_CLAIM["text"], paper.SEC5_DEPTH_CLAIM.source
    terms = _read(results, "interactions", "terms.csv")
    finding = "Deeper networks interact more: at the smallest distance, r falls from VGG-16 to ResNet-50 to ResNet-152 / DenseNet-169"
    if terms is None:
        return Contrast(finding, paper_text, "", NOT_RUN, source, cited)
    distance = int(terms["min_distance"].min())  # ours: the run's smallest distance, where interactions show most
    terms = terms[terms["min_distance"] == distance]
    roles = _by_role(terms)
    pairs = [(a, b) for a, b in DEPTH_ORDER if a in roles and b in roles and roles[a] != roles[b]]
    if not pairs:
        return Contrast(finding, paper_text, "fewer than two distinct deep models in this run", NOT_RUN, source,
                        cited)
    parts, verdicts, shown = [], [], set()
    for shallow, deep in pairs:
        wide = terms[terms["model"].isin([roles[shallow], roles[deep]])].pivot_table(
            index="image_id", columns="model", values=["lhs", "rhs"]).dropna()
        columns = [wide[(side, roles[role])].to_numpy(np.float64) for role in (shallow, deep) for side in ("lhs", "rhs")]
        for role, (lhs, rhs) in ((shallow, columns[:2]), (deep, columns[2:])):
            if role not in shown:
                low, high = pearson_interval(lhs, rhs)
                parts.append(f"{role}: r = {_interval(float(np.corrcoef(lhs, rhs)[0, 1]), low, high)}")
                shown.add(role)
        difference = float(np.corrcoef(*columns[:2])[0, 1] - np.corrcoef(*columns[2:])[0, 1])
        low, high = pearson_difference_interval(*columns)
        verdicts.append(_verdict_of(resolution(low, high), "above"))
        parts.append(f"{shallow} - {deep}: {_interval(difference, low, high)} (n={len(wide)})")
    return Contrast(finding, paper_text, f"at {distance} px: " + "; ".join(parts), _combine(verdicts), source,
                    cited)


def logit_correlation_rises(results: Path) -> Contrast:
    """Logit correlation with VGG-16 rises with q (Fig. 1C)."""
    source = "results/logit_correlation/summary.csv"
    finding = "The correlation of BagNet logits with VGG-16's rises with q"
    paper_text = "Pearson r " + " / ".join(f"{paper.LOGIT_CORRELATION_WITH_VGG16[r]:.2f}"
                                          for r in ("bagnet9", "bagnet17", "bagnet33"))
    cited = paper.LOGIT_CORRELATION_WITH_VGG16.source
    summary = _read(results, "logit_correlation", "summary.csv")
    if summary is None or not {"bagnet9", "bagnet33"} <= set(summary["role"]):
        return Contrast(finding, paper_text, "", NOT_RUN, source, cited)
    rows = summary.set_index("role")
    parts = [f"{role}: {_interval(rows.at[role, 'pooled_r'], rows.at[role, 'pooled_r_low'], rows.at[role, 'pooled_r_high'])}"
             for role in ("bagnet9", "bagnet17", "bagnet33") if role in rows.index]
    # separate 95 % intervals: resolved when they do not overlap (conservative for a difference)
    small, large = rows.loc["bagnet9"], rows.loc["bagnet33"]
    if large["pooled_r_low"] > small["pooled_r_high"]:
        verdict = AGREES
    elif large["pooled_r_high"] < small["pooled_r_low"]:
        verdict = DISAGREES
    else:
        verdict = NOT_RESOLVED
    return Contrast(finding, paper_text, "; ".join(parts) + " (pooled r; resolved when the 9 and 33 intervals do "
                    "not overlap)", verdict, source, cited)


def scrambling_hurts_deep_models_more(results: Path) -> Contrast:
    """Scrambling tiles hurts deep models more than BagNet-33 (the reproducibility report's protocol)."""
    source = "results/scrambling/predictions.csv"
    finding = (f"Scrambling {SCRAMBLE_GRID}x{SCRAMBLE_GRID} tiles hurts deep networks more than BagNet-33 (the "
               f"reproducibility report's experiment, not the paper's)")
    report = paper.SCRAMBLED_4X4_REPORT
    paper_text = ("15-scene top-1: " + "; ".join(f"{role} {report[role][0]:.3f} -> {report[role][1]:.2f}"
                                                 for role in ("bagnet33", "resnet50", "densenet169"))
                  + " (another data set: only the direction compares)")
    predictions = _read(results, "scrambling", "predictions.csv")
    if predictions is None:
        return Contrast(finding, paper_text, "", NOT_RUN, source, report.source)
    predictions = predictions.assign(correct_top1=predictions["correct_top1"].astype(float))  # True/False in some CSVs
    clean = predictions[predictions["method"] == "clean"].set_index(["model", "image_id"])["correct_top1"]
    scrambled = predictions[(predictions["method"] == "tiles") & (predictions["grid"] == SCRAMBLE_GRID)]
    scrambled = scrambled.set_index(["model", "image_id"])["correct_top1"]
    drops = (clean.reindex(scrambled.index) - scrambled).rename("drop").reset_index()
    roles = _by_role(predictions)
    drops["role"] = drops["model"].map({model: role for role, model in roles.items()})
    if "bagnet33" not in roles or drops.empty:
        return Contrast(finding, paper_text, "", NOT_RUN, source, report.source)
    parts, verdicts = [], []
    for role in ("bagnet33", *DEEP_ROLES):
        if role not in roles:
            continue
        own = drops.loc[drops["model"] == roles[role], "drop"].to_numpy(np.float64)
        low, high = mean_interval(own)
        parts.append(f"{role} drop {_interval(own.mean(), low, high)}")
        if role != "bagnet33":
            more = _paired(drops, "drop", roles[role], roles["bagnet33"])
            low, high = mean_interval(more)
            verdicts.append(_verdict_of(resolution(low, high), "above"))
            parts.append(f"{role} - bagnet33: {_interval(more.mean(), low, high)}")
    return Contrast(finding, paper_text, "; ".join(parts) + " (top-1 drop, clean - scrambled)", _combine(verdicts),
                    source, report.source)


def texturisation_costs_vgg16(results: Path) -> Contrast:
    """Texturised images cost VGG-16 top-5 accuracy (Fig. 5: 90.1 % -> 79.4 %)."""
    source = "results/scrambling/table.csv"
    finding = "VGG-16 loses accuracy on texturised images (Gatys et al. textures: local statistics kept)"
    reference = paper.TEXTURISED_VGG16_TOP5
    paper_text = f"top-5 {reference['clean']:.1f} % clean -> {reference['texture']:.1f} % texturised"
    table = _read(results, "scrambling", "table.csv")
    roles = _by_role(table) if table is not None else {}
    if table is None or "vgg16" not in roles:
        return Contrast(finding, paper_text, "", NOT_RUN, source, reference.source)
    rows = table[(table["model"] == roles["vgg16"]) & (table["method"] == "texture")]
    if rows.empty:
        return Contrast(finding, paper_text, "no texturised images in this run", NOT_RUN, source, reference.source)
    row = rows.iloc[0]  # the experiment's paired drop over the texturised images, with its interval
    metric = _accuracy_metric(results, table.columns)  # the paper's top-5, or top-1 where top-5 cannot tell
    low, high = row[f"drop_{metric}_low"], row[f"drop_{metric}_high"]
    parts = [f"{metric.replace('top', 'top-')} {100 * row[f'clean_{metric}']:.1f} % clean -> "
             f"{100 * row[f'manipulated_{metric}']:.1f} % texturised",
             f"drop {_interval(100 * row[f'drop_{metric}'], 100 * low, 100 * high, 1)} points "
             f"(n={int(row['n_images'])})"]
    textures = _read(results, "scrambling", "textures.csv")
    if textures is not None and len(textures):
        converged = textures["converged"].astype(bool)
        parts.append(f"{int(converged.sum())} of {len(converged)} textures converged")
    return Contrast(finding, paper_text, "; ".join(parts), _verdict_of(resolution(low, high), "above"), source,
                    reference.source)


def bagnet_heatmaps_beat_white_box(results: Path) -> Contrast:
    """BagNet heatmaps beat white-box attributions in masking (Table 1)."""
    source = "results/masking/comparisons.csv"
    finding = "Masking in the order of a BagNet heatmap lowers the tested model's p(leading class) more than white-box attributions (Table 1)"
    paper_text = ("e.g. VGG-16: best BagNet (BN-17) " f"{paper.table1_value('vgg16', 'bagnet17'):.3f}"
                  f" vs best white-box (DeepLIFT) {paper.table1_value('vgg16', 'deeplift'):.3f}"
                  " after 100 patches; ResNet-50: BN-17 "
                  f"{paper.table1_value('resnet50', 'bagnet17'):.3f} vs DeepLIFT "
                  f"{paper.table1_value('resnet50', 'deeplift'):.3f}")
    cited = paper.TABLE1.source
    table = _read(results, "masking", "comparisons.csv")
    if table is None or table.empty:
        return Contrast(finding, paper_text, "", NOT_RUN, source, cited)
    parts, verdicts = [], []
    for (model, role), rows in table.groupby(["model", "role"], sort=False, dropna=False):
        best_bagnet = rows.loc[rows["bagnet_p"].idxmin(), "bagnet_method"]
        best_white = rows.loc[rows["white_box_p"].idxmin(), "white_box_method"]
        row = rows[(rows["bagnet_method"] == best_bagnet) & (rows["white_box_method"] == best_white)].iloc[0]
        verdicts.append(_verdict_of(resolution(row["bagnet_minus_white_box_low"], row["bagnet_minus_white_box_high"]),
                                    "below"))
        parts.append(f"{role if isinstance(role, str) else model}: {best_bagnet} - {best_white} = "
                     f"{_interval(row['bagnet_minus_white_box'], row['bagnet_minus_white_box_low'], row['bagnet_minus_white_box_high'])}"
                     f" (n={int(row['n_images'])}, k={int(row['k'])})")
    return Contrast(finding, paper_text, "; ".join(parts) + " (best BagNet heatmap minus best white-box method; "
                    "< 0: the BagNet heatmap is better)", _combine(verdicts), source, cited)


#: the findings, in the order the report lists them
FINDINGS = (accuracy_rises_with_q, blind_to_arrangements, exact_beyond_q, few_interactions_beyond_30px,
            deeper_networks_interact_more, logit_correlation_rises,
            texturisation_costs_vgg16, scrambling_hurts_deep_models_more, bagnet_heatmaps_beat_white_box)


def contrasts(out: Path) -> list[Contrast]:
    """Every finding of :data:`FINDINGS` on the CSVs under ``<out>/results``."""
    results = Path(out) / "results"
    found = []
    for finding in FINDINGS:
        try:
            found.append(finding(results))
        except (KeyError, IndexError) as error:  # a CSV of an older run, without the columns used here
            title = (finding.__doc__ or finding.__name__).strip()
            found.append(Contrast(title, "", f"the CSVs lack {error}: run the experiment again", NOT_RUN, ""))
    return found
