"""The benchmark's scores (bagrepro.methods.ground_truth): pooling onto a BagNet's patch grid, rank scores,
the deletion curves and their optimum, and the localisation scores against Quantus."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats
from torch import nn

from bagrepro.methods.ground_truth import (
    deletion_curves,
    deletion_gaps,
    pointing_game,
    pool_to_patch_grid,
    relevance_mass,
    relevance_rank,
    spearman_rows,
    top_fraction_overlap,
    window_coverage,
)
from bagrepro.methods.heatmaps import patch_logits
from bagrepro.models.bagnet import reduced_bagnet


class BoxSumBagNet(nn.Module):
    """A bag of local features whose patch logit is known in closed form: the sum of the window's
    inputs (all channels) times a per-class weight. Window (i, j) = rows [8i, 8i + q), columns
    [8j, 8j + q), as a BagNet's; the logit is the mean over windows."""

    def __init__(self, q: int, weights=(1.0, -0.5)):
        super().__init__()
        self.q = q
        self.box = nn.Conv2d(3, len(weights), q, stride=8, bias=False)
        with torch.no_grad():
            self.box.weight.copy_(torch.tensor(weights, dtype=torch.float64).reshape(-1, 1, 1, 1).expand_as(self.box.weight))

    def patch_logits(self, x):  # [B, K, rows, cols]
        return self.box(x)

    def forward(self, x):
        return self.patch_logits(x).mean((2, 3))


def brute_force_pool(maps: np.ndarray, q: int) -> np.ndarray:
    """Loops over windows and pixels: each pixel's value split equally among the windows covering it."""
    _, height, width = maps.shape
    rows, cols = (height - q) // 8 + 1, (width - q) // 8 + 1
    coverage = np.zeros((height, width))
    for i in range(rows):
        for j in range(cols):
            coverage[8 * i:8 * i + q, 8 * j:8 * j + q] += 1
    pooled = np.zeros((maps.shape[0], rows, cols))
    for i in range(rows):
        for j in range(cols):
            pooled[:, i, j] = (maps[:, 8 * i:8 * i + q, 8 * j:8 * j + q] / coverage[8 * i:8 * i + q, 8 * j:8 * j + q]).sum((1, 2))
    return pooled


@pytest.mark.parametrize("q,size", [(9, 41), (17, 45), (33, 64)])
def test_pooling_shares_each_pixel_among_its_windows_and_keeps_the_total(q, size):
    maps = torch.randn(3, size, size, dtype=torch.float64)
    pooled = pool_to_patch_grid(maps, q)
    np.testing.assert_allclose(pooled.numpy(), brute_force_pool(maps.numpy(), q), rtol=1e-10, atol=1e-12)
    covered = window_coverage(size, size, q, dtype=torch.float64) > 0
    torch.testing.assert_close(pooled.sum((1, 2)), (maps * covered).sum((1, 2)))  # nothing created or lost
    assert pooled.shape[-2:] == ((size - q) // 8 + 1,) * 2


@pytest.mark.parametrize("q", [9, 17, 33])
def test_pooled_gradient_times_input_is_the_exact_patch_evidence_of_a_box_sum_bagnet(q):
    model = BoxSumBagNet(q).double()
    x = torch.rand(2, 3, 73, 73, dtype=torch.float64, requires_grad=True)
    target = 1
    (gradient,) = torch.autograd.grad(model(x)[:, target].sum(), x)
    maps = (gradient * x).sum(1).detach()  # gradient x input: exact for this linear model
    pooled = pool_to_patch_grid(maps, q)
    exact = model.patch_logits(x)[:, target].detach()
    windows = exact[0].numel()
    torch.testing.assert_close(pooled, exact / windows)  # each window's own logit, scaled by the mean
    assert torch.allclose(spearman_rows(pooled, exact), torch.ones(2, dtype=torch.float64))


def test_spearman_rows_equals_scipy_with_ties_and_is_nan_for_a_constant_row():
    generator = torch.Generator().manual_seed(1)
    scores = torch.randint(0, 5, (4, 30), generator=generator).double()  # many ties
    truth = torch.randn(4, 30, generator=generator, dtype=torch.float64)
    ours = spearman_rows(scores, truth)
    expected = [stats.spearmanr(scores[i], truth[i]).statistic for i in range(4)]
    np.testing.assert_allclose(ours.numpy(), expected, rtol=1e-12)
    assert torch.isnan(spearman_rows(torch.ones(1, 30), truth[:1])).all()


def test_top_fraction_overlap_is_one_for_the_truth_and_zero_for_its_reverse():
    truth = torch.randn(3, 50, dtype=torch.float64)
    assert torch.equal(top_fraction_overlap(truth, truth), torch.ones(3, dtype=torch.float64))
    assert torch.equal(top_fraction_overlap(-truth, truth), torch.zeros(3, dtype=torch.float64))
    # k = ceil(0.1 * 50) = 5 windows; a method that finds 2 of the top 5 scores 0.4
    order = truth.argsort(dim=-1, descending=True)
    scores = torch.zeros_like(truth)
    scores.scatter_(-1, order[:, :2], 10.0)
    scores.scatter_(-1, order[:, -3:], 5.0)
    torch.testing.assert_close(top_fraction_overlap(scores, truth), torch.full((3,), 0.4, dtype=torch.float64))


def test_the_exact_order_gives_the_lowest_deletion_curve_at_every_step():
    generator = torch.Generator().manual_seed(2)
    logits = torch.randn(5, 40, generator=generator, dtype=torch.float64)
    deleted = torch.randn(5, generator=generator, dtype=torch.float64)
    exact = deletion_curves(logits, logits, deleted)
    for _ in range(50):  # any other order lies on or above it at every k
        other = deletion_curves(torch.randn(5, 40, generator=generator), logits, deleted)
        assert (other >= exact - 1e-12).all()
    gap, normalised = deletion_gaps(logits, logits, deleted)
    assert torch.equal(gap, torch.zeros(5, dtype=torch.float64)) and torch.equal(normalised, gap)
    gap, normalised = deletion_gaps(-logits, logits, deleted)  # the worst order
    torch.testing.assert_close(normalised, torch.ones(5, dtype=torch.float64))
    gap, normalised = deletion_gaps(torch.randn(5, 40, generator=generator), logits, deleted)
    assert ((gap > 0) & (normalised > 0) & (normalised < 1)).all()


def test_deletion_curve_runs_from_the_bagnets_logit_to_its_logit_on_the_mean_colour():
    model = reduced_bagnet(17, width=8, blocks=1, num_classes=4).eval()
    images = torch.randn(2, 3, 57, 57)
    targets = torch.tensor([1, 3])
    with torch.no_grad():
        truth = patch_logits(model, images, targets=targets)[:, 0]
        zero_window = patch_logits(model, torch.zeros(1, 3, 17, 17))[0, :, 0, 0]
        curves = deletion_curves(torch.randn(2, truth[0].numel()), truth, zero_window[targets])
        clean = model(images).gather(1, targets[:, None])[:, 0]
        blank = model(torch.zeros(2, 3, 57, 57)).gather(1, targets[:, None])[:, 0]
    torch.testing.assert_close(curves[:, 0], clean.double(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(curves[:, -1], blank.double(), rtol=1e-5, atol=1e-5)


def test_localisation_scores_on_hand_made_maps():
    masks = torch.zeros(2, 4, 4, dtype=torch.bool)
    masks[:, :2, :2] = True  # 4 of 16 pixels
    maps = torch.zeros(2, 4, 4)
    maps[0, 0, 0], maps[0, 3, 3], maps[0, 3, 2] = 3.0, 1.0, -5.0  # the maximum inside; 3 of 4 positive inside
    maps[1, 3, 3] = 2.0
    maps[1, 0, 1] = 1.0
    torch.testing.assert_close(relevance_mass(maps, masks), torch.tensor([0.75, 1 / 3], dtype=torch.float64))
    torch.testing.assert_close(pointing_game(maps, masks), torch.tensor([1.0, 0.0], dtype=torch.float64))
    # top-4 pixels: image 0 ranks (0,0), then zeros by index (0,1), (0,2), (0,3)... -> 2 of 4 inside
    assert relevance_rank(maps, masks)[1] == 0.25 + 0.25  # (3,3) out, (0,1) in, then (0,0) in, (0,2) out
    empty = torch.zeros_like(masks)
    assert torch.isnan(relevance_mass(maps, empty)).all() and torch.isnan(pointing_game(maps, empty)).all()


def test_localisation_scores_equal_quantus():
    quantus = pytest.importorskip("quantus", reason="Quantus (a test-only dependency) could not be installed here")
    generator = torch.Generator().manual_seed(3)
    maps = torch.randn(6, 24, 24, generator=generator, dtype=torch.float64)
    masks = torch.zeros(6, 24, 24, dtype=torch.bool)
    for index in range(6):  # a square of evidence per image, in a different place and size
        top, left, side = 2 * index, 3 * index % 13, 6 + index
        masks[index, top:top + side, left:left + side] = True
    a_batch, s_batch = maps[:, None].numpy(), masks[:, None].numpy().astype(np.float64)
    x_batch = np.zeros((6, 3, 24, 24))
    y_batch = np.zeros(6, dtype=np.int64)

    def quantus_scores(metric, a):
        return np.asarray(metric(model=None, x_batch=x_batch, y_batch=y_batch, a_batch=a, s_batch=s_batch,
                                 channel_first=True), dtype=np.float64)

    options = {"abs": False, "normalise": False, "disable_warnings": True}
    positive = np.clip(a_batch, 0, None)  # ours: the share of the POSITIVE attribution inside
    np.testing.assert_allclose(relevance_mass(maps, masks).numpy(),
                               quantus_scores(quantus.RelevanceMassAccuracy(**options), positive), rtol=1e-10)
    np.testing.assert_allclose(relevance_rank(maps, masks).numpy(),
                               quantus_scores(quantus.RelevanceRankAccuracy(**options), a_batch), rtol=1e-10)
    np.testing.assert_allclose(pointing_game(maps, masks).numpy(),
                               quantus_scores(quantus.PointingGame(**options), a_batch), rtol=1e-10)
