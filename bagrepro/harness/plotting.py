"""Figure style and saving: every figure is written as PNG (for the report) and PDF (vector)."""

from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from bagrepro.core.atomic import atomic_path  # noqa: E402

STYLE = {
    "figure.dpi": 100, "savefig.dpi": 100, "font.size": 9, "axes.titlesize": 10, "axes.labelsize": 9,
    "axes.spines.top": False, "axes.spines.right": False, "legend.frameon": False,
}
OURS_COLOUR, PAPER_COLOUR = "#1f77b4", "#bbbbbb"


def new_figure(*args, **kwargs):
    """``plt.subplots`` in the house style. Constrained layout by default, so that a figure's
    suptitle, axis titles and legends never overlap (``bbox_inches='tight'`` only trims margins)."""
    plt.rcParams.update(STYLE)
    kwargs.setdefault("layout", "constrained")
    return plt.subplots(*args, **kwargs)


def save_figure(fig, path_without_suffix: Path, tight: bool = True) -> list[Path]:
    """Save ``fig`` as ``<path>.png`` and ``<path>.pdf`` atomically; close it; return both paths.
    ``tight=False``: keep the figure's own margins (a grid of a hundred image panels lays out in a
    fraction of the time without the tight bounding box)."""
    paths = []
    for suffix in (".png", ".pdf"):
        path = Path(path_without_suffix).with_suffix(suffix)
        with atomic_path(path) as temporary:
            fig.savefig(temporary, format=suffix[1:], bbox_inches="tight" if tight else None)
        paths.append(path)
    plt.close(fig)
    return paths


def image_edges(image, quantile: float = 90.0):
    """Boolean edge map [H, W] of an image [3, H, W] in [0, 1]: Sobel magnitude of its grey levels
    above the given percentile (scipy.ndimage)."""
    import numpy as np
    from scipy import ndimage

    grey = np.asarray(image, dtype=np.float32).mean(0)
    magnitude = np.hypot(ndimage.sobel(grey, 0), ndimage.sobel(grey, 1))
    return magnitude > np.percentile(magnitude, quantile)


def draw_heatmap(ax, heatmap, image=None, percentile: float = 99.0, title: str | None = None):
    """The released heatmap style: a diverging colour map symmetric around zero, clipped at the 99th
    percentile of |h|, with the image's edges overlaid in grey. heatmap [H, W]; image [3, H, W]."""
    import numpy as np

    heatmap = np.asarray(heatmap, dtype=np.float32)
    limit = float(np.percentile(np.abs(heatmap), percentile)) or 1e-12
    ax.imshow(heatmap, cmap="RdBu_r", vmin=-limit, vmax=limit, interpolation="nearest")
    if image is not None:
        edges = image_edges(image)
        overlay = np.zeros((*edges.shape, 4), dtype=np.float32)
        overlay[edges] = (0.4, 0.4, 0.4, 0.6)
        ax.imshow(overlay, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)
    if title:
        ax.set_title(title, fontsize=7)


def error_bars(table, column: str, scale: float = 1.0):
    """``yerr`` for matplotlib: [2, rows] distances from ``table[column]`` down to ``<column>_low``
    and up to ``<column>_high`` (times ``scale``); None when the table has no interval columns (a
    CSV written before they existed), so that the figure is drawn without error bars."""
    if f"{column}_low" not in table or f"{column}_high" not in table:
        return None
    value = table[column].to_numpy(dtype=np.float64)
    low, high = table[f"{column}_low"].to_numpy(dtype=np.float64), table[f"{column}_high"].to_numpy(dtype=np.float64)
    return np.nan_to_num(np.clip(np.stack([value - low, high - value]), 0, None), nan=0.0) * scale  # NaN: no bar
