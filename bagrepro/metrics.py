"""Statistics shared by experiments (scipy where it has them)."""

from __future__ import annotations

import numpy as np
from scipy import stats


def proportion_interval(successes: int, trials: int, level: float = 0.95) -> tuple[float, float]:
    """Exact (Clopper-Pearson) ``level`` confidence interval of a binomial proportion, e.g. the
    accuracy of ``successes`` correct answers on ``trials`` images; (nan, nan) when ``trials`` is 0."""
    if trials <= 0:
        return float("nan"), float("nan")
    interval = stats.binomtest(int(successes), int(trials)).proportion_ci(confidence_level=level, method="exact")
    return float(interval.low), float(interval.high)


def error_consistency(correct_a: np.ndarray, correct_b: np.ndarray) -> float:
    """Cohen's kappa of two classifiers' trial-by-trial correctness (Geirhos et al. 2020).

    c_obs: share of images both get right or both get wrong; c_exp: the share expected from their
    accuracies p_a, p_b alone, p_a p_b + (1 - p_a)(1 - p_b); kappa = (c_obs - c_exp) / (1 - c_exp).
    1 for identical error patterns, 0 for independent ones. NaN when c_exp is 1 (both always right
    or always wrong: nothing to compare).
    """
    a, b = np.asarray(correct_a, bool), np.asarray(correct_b, bool)
    observed = np.mean(a == b)
    p_a, p_b = a.mean(), b.mean()
    expected = p_a * p_b + (1 - p_a) * (1 - p_b)
    return float("nan") if np.isclose(expected, 1.0) else float((observed - expected) / (1 - expected))


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
