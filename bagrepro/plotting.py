"""Figure style and saving: every figure is written as PNG (for the report) and PDF (vector)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from .results import atomic_path  # noqa: E402

STYLE = {
    "figure.dpi": 110, "savefig.dpi": 150, "font.size": 9, "axes.titlesize": 10, "axes.labelsize": 9,
    "axes.spines.top": False, "axes.spines.right": False, "legend.frameon": False,
}
OURS_COLOUR, PAPER_COLOUR = "#1f77b4", "#bbbbbb"


def new_figure(*args, **kwargs):
    plt.rcParams.update(STYLE)
    return plt.subplots(*args, **kwargs)


def save_figure(fig, path_without_suffix: Path) -> list[Path]:
    """Save ``fig`` as ``<path>.png`` and ``<path>.pdf`` atomically; close it; return both paths."""
    paths = []
    for suffix in (".png", ".pdf"):
        path = Path(path_without_suffix).with_suffix(suffix)
        with atomic_path(path) as temporary:
            fig.savefig(temporary, format=suffix[1:], bbox_inches="tight")
        paths.append(path)
    plt.close(fig)
    return paths
