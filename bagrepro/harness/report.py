"""The reproduction report: ``figures/report.html``, built from results and figures alone.

Self-contained (figures embedded as PNG data URIs, no external resource), readable offline in any
browser. Per experiment: what it tests, its figures, and a table with ours, the reference value and
its source (the paper's section, figure or table, the reproducibility report, torchvision's
documentation: :mod:`bagrepro.core.paper`) and the difference wherever a source has a number; an
experiment that has not run shows as not run. A provenance block lists profile, models and weights
(with hashes), data, seed, commit, packages, device and wall time per experiment, read from the CSV
sidecars.
"""

from __future__ import annotations

import base64
import html
import json
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from bagrepro.core import paper
from bagrepro.core.atomic import atomic_path
from bagrepro.harness.contrasts import contrasts
from bagrepro.core.metrics import proportion_interval

COMPARISON_COLUMNS = ("metric", "ours", "ours_low", "ours_high", "reference", "source", "difference",
                      "reference_vs_ours")


def comparison(frame: pd.DataFrame, ids: list[str], metric: str, ours: str, reference: str) -> pd.DataFrame:
    """A report table: id columns, the metric's name, ours with its 95 % interval (the summary's
    ``<ours>_low`` / ``<ours>_high`` columns; NaN where it has none), the reference value (the
    summary's ``reference`` column, from :mod:`bagrepro.core.paper`) and its ``source`` (the summary's
    ``<reference>_source`` column: "paper, Fig. 1B", "torchvision docs (IMAGENET1K_V1)", ...; empty
    where there is no reference), ours - reference, and whether the reference lies inside our interval."""
    table = frame[ids].copy()
    table["metric"] = metric
    table["ours"] = frame[ours].to_numpy()
    for bound in ("low", "high"):
        table[f"ours_{bound}"] = frame[f"{ours}_{bound}"].to_numpy() if f"{ours}_{bound}" in frame else float("nan")
    table["reference"] = frame[reference].to_numpy() if reference in frame else float("nan")
    sources = frame[f"{reference}_source"] if f"{reference}_source" in frame else pd.Series("", index=frame.index)
    numeric = pd.to_numeric(table["reference"], errors="coerce")
    given = [not (pd.isna(value) or value == "") for value in table["reference"]]
    table["source"] = [str(source) if present and isinstance(source, str) else "" for source, present
                       in zip(sources, given)]
    table["difference"] = pd.to_numeric(table["ours"], errors="coerce") - numeric
    table["reference_vs_ours"] = [_verdict(None if pd.isna(value) else value, (low, high)) for value, low, high
                                  in zip(numeric, table["ours_low"], table["ours_high"])]
    return table


def _metas(results_dir: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(results_dir.glob("*.meta.json"))]


def _images_text(meta: dict, noun: str = "") -> str:
    """``N [noun]``, with ``(K unreadable skipped)`` when --skip-unreadable left K images out."""
    skipped = meta.get("skipped_images") or 0
    text = f"{meta.get('num_images', '')}{noun}"
    return f"{text} ({skipped} unreadable skipped)" if skipped else text


def _skipped_html(experiment: str, metas: list[dict]) -> str:
    """A note under an experiment whose numbers stand on fewer images than --data holds."""
    skipped = max((meta.get("skipped_images") or 0 for meta in metas), default=0)
    if not skipped:
        return ""
    meta = next(meta for meta in metas if (meta.get("skipped_images") or 0) == skipped)
    return (f'<p class="skipped">{html.escape(_images_text(meta, " images"))}: the numbers leave out images that could '
            f"not be read (listed in <code>results/{html.escape(experiment)}/skipped.csv</code>).</p>")


def _image_tag(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<figure><img alt="{html.escape(path.stem)}" src="data:image/png;base64,{data}"></figure>'


def _number(value) -> str:
    return "" if pd.isna(value) else f"{value:.4g}"


def _table_html(table: pd.DataFrame) -> str:
    """An HTML table; ``ours`` with ``ours_low`` / ``ours_high`` beside it becomes one cell
    'value [low, high]' (the 95 % interval)."""
    table = table.copy()
    if {"ours", "ours_low", "ours_high"} <= set(table.columns):
        table["ours"] = [_number(v) + ("" if pd.isna(low) else f" [{_number(low)}, {_number(high)}]")
                         if isinstance(v, (int, float)) else v
                         for v, low, high in zip(table["ours"], table["ours_low"], table["ours_high"])]
        table = table.drop(columns=["ours_low", "ours_high"]).rename(columns={"ours": "ours [95 % interval]"})

    def cell(value):
        if isinstance(value, float):
            return _number(value)
        return html.escape(str(value))

    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in table.columns)
    rows = "".join("<tr>" + "".join(f"<td>{cell(v)}</td>" for v in row) + "</tr>" for row in table.itertuples(index=False))
    return f'<table class="comparison"><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>'


def _provenance_html(sections: list[tuple[str, list[dict]]]) -> str:
    metas = [meta for _, ms in sections for meta in ms]
    if not metas:
        return "<p>No experiment has run yet.</p>"
    first = metas[0]
    models: dict[str, str] = {}
    for meta in metas:
        models.update(meta.get("models", {}))
    items = [
        ("profile", first.get("profile")), ("seed", first.get("seed")), ("commit", first.get("commit")),
        ("device", first.get("device")), ("torch threads", first.get("torch_threads")),
        ("precision", first.get("precision", "fp32")),
        ("packages", ", ".join(f"{k} {v}" for k, v in first.get("packages", {}).items())),
    ]
    rows = "".join(f"<tr><th>{k}</th><td>{html.escape(str(v))}</td></tr>" for k, v in items)
    model_rows = "".join(f"<tr><td>{html.escape(k)}</td><td>{html.escape(str(v))}</td></tr>" for k, v in models.items())
    runs = "".join(
        f"<tr><td>{html.escape(name)}</td><td>{html.escape(str(ms[0].get('data', '')))}</td>"
        f"<td>{html.escape(_images_text(ms[0]))}</td><td>{ms[0].get('wall_time_s', '')}</td></tr>"
        for name, ms in sections if ms)
    return (f"<table>{rows}</table><h3>Models and weights</h3><table><tr><th>model</th><th>weights</th></tr>"
            f"{model_rows}</table><h3>Runs</h3><table><tr><th>experiment</th><th>data</th><th>images</th>"
            f"<th>wall time (s)</th></tr>{runs}</table>")


def _scope_html(sections: list[tuple[str, list[dict]]]) -> str:
    """What the numbers are: a warning when they do not come from the paper's setting (another
    profile than 'paper', so the reference column is for orientation only), or when the results folder
    mixes runs of several profiles."""
    profiles = {name: sorted({str(meta.get("profile")) for meta in metas}) for name, metas in sections if metas}
    if not profiles:
        return ""
    distinct = sorted({profile for names in profiles.values() for profile in names})
    if len(distinct) > 1:
        which = "; ".join(f"{name}: {' + '.join(names)}" for name, names in profiles.items())
        return (f'<p class="scope">These results mix runs of several profiles ({html.escape(which)}): '
                f"compare numbers within one profile only, or re-run into an empty <code>--out</code>.</p>")
    if distinct == ["paper"]:
        return ""
    data = next(metas[0].get("data", "") for _, metas in sections if metas)
    return (f'<p class="scope">Profile <em>{html.escape(distinct[0])}</em>: these numbers come from '
            f"{html.escape(str(data))} and that profile's models, not from the ImageNet validation set with the "
            f"released weights. The <em>reference</em> columns are there for orientation; the differences do not "
            f"measure how well the paper reproduces (run the paper profile for that).</p>")


def _accuracy_cell(correct: int, total: int) -> tuple[str, tuple[float, float]]:
    """'0.907 [0.889, 0.923] (n=1200)' and the interval (exact 95 %)."""
    if not total:
        return "", (float("nan"), float("nan"))
    low, high = proportion_interval(correct, total)
    return f"{correct / total:.3f} [{low:.3f}, {high:.3f}] (n={total})", (low, high)


def _verdict(reference, interval: tuple[float, float]) -> str:
    """Whether the report's value lies inside our 95 % interval."""
    if reference is None or pd.isna(interval[0]):
        return ""
    return "inside ours" if interval[0] <= reference <= interval[1] else "outside ours"


def _correct_counts(path: Path, **where) -> dict[str, tuple[int, int]]:
    """model -> (correct top-1, images) from a predictions CSV, over the rows matching ``where``."""
    if not path.is_file():
        return {}
    frame = pd.read_csv(path)
    for column, value in where.items():
        frame = frame[frame[column] == value]
    counts = frame.groupby("model")["correct_top1"].agg(["sum", "size"])
    return {model: (int(round(row["sum"])), int(row["size"])) for model, row in counts.iterrows()}


def _training_html(out: Path) -> str:
    """A --train run: the reproducibility report's table (validation, test, 4x4-scrambled test top-1
    per model) with ours beside it, each of ours with its exact 95 % interval."""
    path = out / "results" / "training" / "models.csv"
    if not path.is_file():
        return ""
    models = pd.read_csv(path)
    test = _correct_counts(out / "results" / "accuracy" / "predictions.csv")
    scrambled = _correct_counts(out / "results" / "scrambling" / "predictions.csv", method="tiles", grid=4)
    rows = []
    for row in models.itertuples(index=False):
        report = paper.REPRODUCIBILITY_15SCENE.get(row.base) or paper.REPRODUCIBILITY_15SCENE.get(row.role)
        report = report or (None, None, None)
        cells = {"model": row.model, "trained": "from scratch" if row.from_scratch else "fine-tuned"}
        for label, (correct, total), reference in (
                ("validation", (row.val_correct, row.val_images), report[0]),
                ("test", test.get(row.model, (0, 0)), report[1]),
                ("4x4 scrambled test", scrambled.get(row.model, (0, 0)), report[2])):
            text, interval = _accuracy_cell(int(correct or 0), int(total or 0))
            cells[f"{label}: ours"] = text or "not run"
            cells[f"{label}: report"] = "" if reference is None else f"{reference:.3f}"
            cells[f"{label}: report vs ours"] = _verdict(reference, interval)
        rows.append(cells)
    return ("<h2 id='training'>Trained on your data: the reproducibility report's table</h2>"
            f"<p>{len(models)} models trained on {html.escape(str(models['data'].iloc[0]))} (fingerprint "
            f"{html.escape(str(models['data_fingerprint'].iloc[0]))}) by <code>run_all.py --train</code>; test and scrambled accuracy from the accuracy "
            "and scrambling experiments on the test split. <em>report</em>: the reproducibility report's 15-scene "
            "numbers (1200/300 train/val, 1200 test images, 224 px), the same protocol on its data set; they "
            "compare with ours only when your data is that data set. Ours with exact (Clopper-Pearson) 95 % "
            "intervals over images; <em>report vs ours</em> says whether the report's value lies inside "
            "our interval (outside: this sample resolves the difference).</p>" + _table_html(pd.DataFrame(rows)))


def _contrasts_html(out: Path) -> str:
    """The paper's findings against this run (:mod:`bagrepro.harness.contrasts`), first on the page."""
    rows = "".join(
        f"<tr><td>{html.escape(c.finding)}</td><td>{html.escape(c.paper)}</td><td>{html.escape(c.reference_source)}</td>"
        f"<td>{html.escape(c.ours)}</td>"
        f"<td class='verdict {c.verdict.replace(' ', '-')}'>{html.escape(c.verdict)}</td>"
        f"<td><code>{html.escape(c.source)}</code></td></tr>" for c in contrasts(out))
    return ("<h2 id='contrasts'>The paper's findings in this run</h2>"
            "<p>Computed from the CSVs below; every number of ours with its 95 % interval (exact for accuracies, "
            "a seeded bootstrap over images otherwise). <em>agrees</em>: the sample resolves the effect in the "
            "paper's direction; <em>not resolved</em>: its interval holds no effect; <em>disagrees</em>: it resolves "
            "the opposite.</p><table class='contrasts'><thead><tr><th>the finding</th><th>reference</th><th>source</th>"
            f"<th>this run [95 % interval]</th><th>verdict</th><th>from</th></tr></thead><tbody>{rows}</tbody></table>")


STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em; color: #222; }
h1 { font-size: 1.6em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: .2em; margin-top: 2em; }
figure { margin: .5em 0; } img { max-width: 100%; height: auto; }
table { border-collapse: collapse; font-size: .85em; margin: .5em 0; }
td, th { border: 1px solid #ddd; padding: .2em .5em; text-align: left; }
.notrun { color: #a00; font-weight: bold; } .question { font-style: italic; }
.skipped { color: #a60; }
.verdict.agrees { background: #e3f4e3; } .verdict.disagrees { background: #fbe0e0; }
.verdict.not-resolved { background: #fff6e0; }
.scope { background: #fff6e0; border-left: 4px solid #e0a000; padding: .5em 1em; }
"""

# Counts images that failed to decode; the browser test reads the attribute from the rendered DOM.
IMAGE_CHECK = """
<script>
window.addEventListener('load', function () {
  var broken = Array.prototype.filter.call(document.images, function (i) { return !i.complete || i.naturalWidth === 0; });
  document.body.setAttribute('data-images', document.images.length);
  document.body.setAttribute('data-broken-images', broken.length);
});
</script>
"""


def build_report(out: Path, experiments) -> Path:
    """Write ``<out>/figures/report.html`` for ``experiments`` (registry order); return its path."""
    out = Path(out)
    body, sections = [], []
    for experiment in experiments:
        results = out / "results" / experiment.name
        figures = out / "figures" / experiment.name
        metas = _metas(results) if results.is_dir() else []
        sections.append((experiment.name, metas))
        parts = [f'<h2 id="{experiment.name}">{html.escape(experiment.paper_ref)}: {html.escape(experiment.title)}</h2>',
                 f'<p class="question">{html.escape(experiment.question)}</p>', _skipped_html(experiment.name, metas)]
        pngs = sorted(figures.glob("*.png")) if figures.is_dir() else []
        if not metas or not pngs:
            parts.append(f'<p class="notrun">Not run: run <code>python run_all.py --experiment {experiment.name}</code>.</p>')
        else:
            parts += [_image_tag(png) for png in pngs]
            if experiment.report_table is not None:
                tables = experiment.report_table(results)
                for table in (tables if isinstance(tables, (list, tuple)) else [tables]):
                    parts.append(_table_html(table))
        body.append("\n".join(parts))
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    page = (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>bagrepro report</title>"
            f"<style>{STYLE}</style></head><body>"
            f"<h1>Reproduction of Brendel &amp; Bethge (ICLR 2019): Approximating CNNs with Bag-of-local-Features models</h1>"
            f"<p>Generated {stamp} by bagrepro from the CSVs under results/. Reference values: each table's "
            f"<em>reference</em> column, with its <em>source</em> beside it (the paper's section, figure or "
            f"table, the reproducibility report, or torchvision's documentation); an empty cell: the "
            f"source gives no number there.</p>"
            + _scope_html(sections)
            + _contrasts_html(out)
            + _training_html(out)
            + "\n".join(body)
            + f"<h2 id='provenance'>Provenance</h2>{_provenance_html(sections)}{IMAGE_CHECK}</body></html>")
    path = out / "figures" / "report.html"
    with atomic_path(path) as temporary:
        temporary.write_text(page, encoding="utf-8")
    return path
