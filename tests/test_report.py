"""The report: self-contained HTML, honest about what did not run, paper numbers from one place,
and rendered in a real browser (headless Chromium) without broken images."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pandas as pd
import pytest

import run_all
from bagrepro.core import paper
from bagrepro.harness.report import build_report
from bagrepro.harness.registry import discover_experiments

PAPER_MD = Path(__file__).resolve().parents[2] / "shared" / "paper.md"


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    """accuracy + logit_correlation + thresholding + scrambling on the smoke profile (others not run)."""
    out = tmp_path_factory.mktemp("report")
    args = ["--profile", "smoke", "--quiet", "--out", str(out)]
    for name in ("accuracy", "logit_correlation", "thresholding", "scrambling", "runtime"):
        args += ["--experiment", name]
    assert run_all.main(args) == 0
    return out


def paper_md_numbers() -> list[float]:
    if not PAPER_MD.is_file():
        pytest.skip(f"{PAPER_MD} not found (the shared folder sits beside the repository in CI)")
    return [float(x) for x in re.findall(r"(?<![\w.])-?\d+(?:\.\d+)?", PAPER_MD.read_text())]


#: what a paper reference must name: a section, figure, table, equation or appendix
SECTION = re.compile(r"\b(Sec\.|Fig\.|Table|eq\.|Appendix)\s*[A-Z]?\.?\d")


def test_every_reference_names_its_source_and_paper_values_are_paper_md_numbers():
    numbers = paper_md_numbers()
    values = paper.reference_values()
    assert len(values) > 40
    for value, source in values:
        assert source, value
        if source.startswith(paper.PAPER):
            assert SECTION.search(source), f"{source!r} names no section, figure or table"
        if source != paper.TORCHVISION:  # torchvision's documentation is not quoted in paper.md
            assert value in numbers, f"{value} ({source}) is not in paper.md"
    assert "bagnet9" not in paper.FIG1B_TOP5 and not hasattr(paper, "RELEASED_BAGNET_ACCURACY")
    assert paper.reference_accuracy("bagnet9") == {}
    assert set(paper.reference_accuracy("bagnet33")) == {"top5"}
    assert paper.runtime_ratio("bagnet33") == pytest.approx(0.27, abs=0.005)


class _Tables(HTMLParser):
    """The report's tables as lists of rows of cell texts (the first row: the header)."""

    def __init__(self):
        super().__init__()
        self.tables, self._cell = [], None

    def handle_starttag(self, tag, attrs):
        if tag == "table":
            self.tables.append([])
        elif tag == "tr" and self.tables:
            self.tables[-1].append([])
        elif tag in ("td", "th") and self.tables:
            self._cell = []

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self.tables[-1][-1].append("".join(self._cell).strip())
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


def report_tables(path: Path) -> list[list[list[str]]]:
    parser = _Tables()
    parser.feed(path.read_text())
    return [table for table in parser.tables if table]


DECIMAL = re.compile(r"(?<![\w.])-?\d*\.\d+")


def shown_as_reference(number: str, source: str) -> bool:
    """Whether a number printed as a reference (to its printed decimals) is a value of
    bagrepro.core.paper with that source, or a ratio / difference of two of them where the source says so."""
    value, tolerance = float(number), 0.5 * 10 ** -len(number.split(".")[1]) + 1e-9
    values = [v for v, s in paper.reference_values() if s == source or source.startswith(s)]
    candidates = list(values)
    if source == paper.RUNTIME_RATIO_SOURCE:
        candidates += [a / b for a in values for b in values if b]
    if source == paper.TABLE1_DIFFERENCE_SOURCE:
        candidates += [a - b for a in values for b in values]
    return any(abs(value - c) <= tolerance for c in candidates)


def test_every_reference_in_the_report_has_a_source_and_is_in_paper_py(smoke_run):
    checked = 0
    for table in report_tables(smoke_run / "figures" / "report.html"):
        header = table[0]
        assert "paper" not in header, f"a column named 'paper' in {header}: say 'reference' and its source"
        if "reference" not in header:
            continue
        assert "source" in header, header
        value_at, source_at = header.index("reference"), header.index("source")
        for row in table[1:]:
            reference, source = row[value_at], row[source_at]
            if not reference:
                assert not source, row
                continue
            assert source, f"a reference without a source: {row}"
            if source.startswith(paper.PAPER):
                assert SECTION.search(source), source
            for number in DECIMAL.findall(reference):  # references print decimals; 'BagNet-17' is a name
                assert shown_as_reference(number, source), (number, source, row)
                checked += 1
    assert checked >= 15


def test_report_tables_follow_the_comparison_columns(smoke_run):
    for experiment in discover_experiments().values():
        results = smoke_run / "results" / experiment.name
        if experiment.report_table is None or not results.is_dir():
            continue
        table = experiment.report_table(results)
        assert {"metric", "ours", "reference", "source", "difference"} <= set(table.columns)
        numeric = pd.to_numeric(table["reference"], errors="coerce")
        expected = pd.to_numeric(table["ours"], errors="coerce") - numeric
        assert ((table["difference"] - expected).abs().fillna(0) < 1e-9).all()


def test_report_is_self_contained_and_marks_experiments_not_run(smoke_run):
    text = (smoke_run / "figures" / "report.html").read_text()
    assert "http://" not in text and "https://" not in text and "src=\"data:image/png;base64," in text
    for name in ("masking", "interactions", "heatmaps", "top_patches", "misclassified", "error_distribution"):
        section = text.split(f'id="{name}"')[1].split("<h2")[0]
        assert "Not run" in section and "<img" not in section
    for name in ("accuracy", "thresholding", "scrambling"):
        section = text.split(f'id="{name}"')[1].split("<h2")[0]
        assert "<img" in section and "Not run" not in section
    assert "Provenance" in text and "smoke_bagnet33" in text and "random init" in text
    assert "Profile <em>smoke</em>: these numbers come from" in text and "mix runs" not in text
    # --figures-only rebuilds it from CSVs alone
    (smoke_run / "figures" / "report.html").unlink()
    assert run_all.main(["--figures-only", "--quiet", "--out", str(smoke_run)]) == 0
    assert (smoke_run / "figures" / "report.html").stat().st_size > 50_000


def test_report_renders_in_headless_chromium_without_broken_images(smoke_run, tmp_path):
    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if browser is None:
        pytest.skip("no Chromium on this machine (.ci/run installs Debian's chromium)")
    report = build_report(smoke_run, discover_experiments().values())
    command = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=5000", "--dump-dom",
               report.as_uri()]
    dom = subprocess.run(command, capture_output=True, text=True, timeout=120).stdout
    images = re.search(r'data-images="(\d+)"', dom)
    broken = re.search(r'data-broken-images="(\d+)"', dom)
    assert images and broken, "the page did not finish loading"
    assert int(images.group(1)) >= 5 and int(broken.group(1)) == 0


def test_report_warns_when_results_mix_profiles(smoke_run, tmp_path):
    out = tmp_path / "mixed"
    shutil.copytree(smoke_run / "results", out / "results")
    sidecar = out / "results" / "thresholding" / "summary.meta.json"
    meta = json.loads(sidecar.read_text())
    sidecar.write_text(json.dumps({**meta, "profile": "paper"}))
    text = build_report(out, discover_experiments().values()).read_text()
    assert "mix runs of several profiles" in text and "thresholding: paper + smoke" in text and "accuracy: smoke" in text
