"""Statistics shared by experiments, the report and its contrasts (scipy where it has them).

Every number the report calls "ours" comes with a 95 % interval from here: exact (Clopper-Pearson)
for a proportion of images (:func:`proportion_interval`), otherwise a seeded percentile bootstrap
over images (:func:`bootstrap_interval`, :func:`mean_interval`, :func:`pearson_interval`; paired:
a resample draws whole images, so a difference of two numbers on the same images keeps their
pairing). :func:`resolution` says whether an interval of a difference excludes 0.
"""

from __future__ import annotations

import warnings

import numpy as np
from scipy import stats


def proportion_interval(successes: int, trials: int, level: float = 0.95) -> tuple[float, float]:
    """Exact (Clopper-Pearson) ``level`` confidence interval of a binomial proportion, e.g. the
    accuracy of ``successes`` correct answers on ``trials`` images; (nan, nan) when ``trials`` is 0."""
    if trials <= 0:
        return float("nan"), float("nan")
    interval = stats.binomtest(int(successes), int(trials)).proportion_ci(confidence_level=level, method="exact")
    return float(interval.low), float(interval.high)


def exact_intervals(successes, trials, scale: float = 100.0, level: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """Exact (Clopper-Pearson) ``level`` intervals of accuracies, one per entry: ``successes`` correct
    images (rounded to whole images: expected hits under random tie-breaking can be fractional) out
    of ``trials``; returned as (low, high) arrays times ``scale`` (100: in %, 1: as fractions).
    :func:`proportion_interval` runs once per distinct (successes, trials) pair
    (a 1000-class table holds a few dozen), not once per entry."""
    successes = np.rint(np.asarray(successes, dtype=np.float64)).astype(np.int64).ravel()
    trials = np.asarray(trials, dtype=np.int64).ravel()
    distinct, row_of_entry = np.unique(np.stack([successes, trials], axis=1), axis=0, return_inverse=True)
    bounds = np.array([proportion_interval(s, n, level) for s, n in distinct], dtype=np.float64).reshape(-1, 2)
    bounds = bounds[row_of_entry.ravel()] * scale
    return bounds[:, 0], bounds[:, 1]


def with_accuracy_intervals(table, metrics=("top1", "top5"), scale: float = 100.0):
    """``table`` with ``<metric>_low`` / ``<metric>_high`` appended for each metric: the exact 95 %
    interval of the accuracy ``table[metric]`` (in units of ``scale``: 100 = %) on ``n_images``."""
    columns = {}
    for metric in metrics:
        columns[f"{metric}_low"], columns[f"{metric}_high"] = exact_intervals(
            table[metric].to_numpy() / scale * table["n_images"].to_numpy(), table["n_images"], scale)
    return table.assign(**columns)


#: resamples and seed of every bootstrap interval (percentile method): the same data give the same
#: interval in every run
BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_SEED = 0
#: at most this many resampled values in memory at once (float64: 160 MB)
BOOTSTRAP_BATCH_VALUES = 20_000_000


def bootstrap_interval(statistic, *columns, level: float = 0.95, resamples: int = BOOTSTRAP_RESAMPLES,
                       seed: int = BOOTSTRAP_SEED) -> tuple[float, float]:
    """Percentile bootstrap ``level`` interval of ``statistic`` over images (rows), seeded.

    columns: per-image arrays [N] (or [N, D]: a row per image) of equal length, resampled together
    (paired); ``statistic(*resampled, axis=-1)`` returns the number for each resample (vectorised:
    the resampled columns arrive as [..., N] arrays, with D moved before N for 2-D columns).
    (nan, nan) with fewer than two images or a statistic that is undefined on the data.
    """
    columns = [np.asarray(column, dtype=np.float64) for column in columns]
    n = len(columns[0])
    if n < 2 or any(len(column) != n for column in columns):
        return float("nan"), float("nan")
    data = tuple(np.moveaxis(column, 0, -1) for column in columns)  # scipy resamples along the last axis
    values_per_resample = sum(column.size for column in columns)
    batch = max(1, min(resamples, BOOTSTRAP_BATCH_VALUES // values_per_resample))  # bounded memory at 50k images
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", stats.DegenerateDataWarning)  # a constant sample: its interval is a point
        result = stats.bootstrap(data, statistic, n_resamples=resamples, batch=batch, paired=True, vectorized=True,
                                 axis=-1, confidence_level=level, method="percentile",
                                 rng=np.random.default_rng(seed))
    low, high = float(result.confidence_interval.low), float(result.confidence_interval.high)
    return (low, high) if np.isfinite(low) and np.isfinite(high) else (float("nan"), float("nan"))


def mean_interval(values, level: float = 0.95) -> tuple[float, float]:
    """Bootstrap interval of the mean of per-image ``values`` [N] (NaNs left out)."""
    values = np.asarray(values, dtype=np.float64)
    return bootstrap_interval(lambda v, axis: v.mean(axis), values[~np.isnan(values)], level=level)


def _pearson(x, y, axis=-1):
    x = x - x.mean(axis, keepdims=True)
    y = y - y.mean(axis, keepdims=True)
    return (x * y).sum(axis) / np.sqrt((x * x).sum(axis) * (y * y).sum(axis))


def pearson_interval(x, y, level: float = 0.95) -> tuple[float, float]:
    """Bootstrap interval of the Pearson r of per-image pairs (x[i], y[i])."""
    return bootstrap_interval(_pearson, x, y, level=level)


def images_to_resolve(difference: float, spread: float, level: float = 0.95) -> int:
    """Images a mean of per-image paired differences needs for its ``level`` interval to exclude 0
    when the true mean is ``difference`` and the per-image standard deviation ``spread``: the normal
    approximation of the bootstrap interval (half-width z * spread / sqrt(n)) is narrower than
    |difference| from n = ceil((z * spread / difference)^2) on."""
    z = stats.norm.ppf(0.5 + level / 2)
    return int(np.ceil((z * spread / abs(difference)) ** 2))


def _pearson_difference(x_a, y_a, x_b, y_b, axis=-1):
    return _pearson(x_a, y_a, axis) - _pearson(x_b, y_b, axis)


def pearson_difference_interval(x_a, y_a, x_b, y_b, level: float = 0.95) -> tuple[float, float]:
    """Bootstrap interval of r(x_a, y_a) - r(x_b, y_b), two Pearson rs on the same images (paired: a
    resample draws image i's four values together). Arrays [N], one entry per image."""
    return bootstrap_interval(_pearson_difference, x_a, y_a, x_b, y_b, level=level)


def resolution(low: float, high: float, reference: float = 0.0) -> str:
    """Whether an interval (of a difference, say) resolves its sign against ``reference``:
    'above' / 'below' when it excludes the reference, 'not resolved' when it holds it, '' for NaN."""
    if not (np.isfinite(low) and np.isfinite(high)):
        return ""
    return "above" if low > reference else "below" if high < reference else "not resolved"


def error_consistency(correct_a, correct_b, axis: int = -1):
    """Cohen's kappa of two classifiers' trial-by-trial correctness (Geirhos et al. 2020).

    c_obs: share of images both get right or both get wrong; c_exp: the share expected from their
    accuracies p_a, p_b alone, p_a p_b + (1 - p_a)(1 - p_b); kappa = (c_obs - c_exp) / (1 - c_exp).
    1 for identical error patterns, 0 for independent ones. NaN when c_exp is 1 (both always right
    or always wrong: nothing to compare). correct_a, correct_b: 0/1 or bool [..., N images], kappa
    along ``axis`` (vectorised, e.g. over bootstrap resamples); a float for 1-D inputs.
    """
    a, b = np.asarray(correct_a, dtype=np.float64), np.asarray(correct_b, dtype=np.float64)
    observed = (a == b).mean(axis)
    p_a, p_b = a.mean(axis), b.mean(axis)
    expected = p_a * p_b + (1 - p_a) * (1 - p_b)
    with np.errstate(divide="ignore", invalid="ignore"):
        kappa = np.where(np.isclose(expected, 1.0), np.nan, (observed - expected) / (1 - expected))
    return float(kappa) if kappa.ndim == 0 else kappa


def top_k_hits(scores, labels, k: int):
    """Expected top-k correctness of each label under random tie-breaking.

    scores [..., N, K] (torch), labels [N]. With g classes scoring strictly higher than the label and
    e others tied with it, the label lands uniformly on ranks g..g+e, so it is in the top k with
    probability clamp((k - g) / (e + 1), 0, 1): 1 or 0 without ties. Binarised evidence ties a lot;
    counting ties in the label's favour would score a constant output as 100 %. Returns float [..., N].
    """
    index = labels.reshape(*([1] * (scores.dim() - 2)), -1, 1).expand(*scores.shape[:-1], 1)
    label_scores = scores.gather(-1, index)
    higher = (scores > label_scores).sum(-1)
    tied = (scores == label_scores).sum(-1) - 1
    return ((k - higher) / (tied + 1)).clamp(0, 1)
