"""Eq. 1's masks (Fig. 6): a grid over the whole image, about a quarter masked at every size, cells
separated by s px, a clipped cell's DC its own pixels' mean; the paper's two interaction claims
checked from the CSVs."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from bagrepro.harness import contrasts
from bagrepro.core import metrics, paper
from bagrepro.harness.contrasts import AGREES, DISAGREES, NOT_MEASURABLE, NOT_RESOLVED
from bagrepro.methods.masking import cell_fill_values, interaction_terms, masked_share, separated_masks
from bagrepro.models.bagnet import randomise_batchnorm, reduced_bagnet

SIZES = {224: range(8, 65, 8), 121: (12, 18, 24, 36), 64: (6, 8, 10, 12, 16, 20), 112: (10, 18, 34)}


@pytest.mark.parametrize("side", SIZES)
def test_about_a_quarter_is_masked_at_every_size(side):
    for patch in SIZES[side]:
        assert 0.22 <= masked_share(side, side, patch) <= 0.28, (side, patch)
        assert 0.22 <= masked_share(side, side - 8, patch) <= 0.28, (side, patch)


def boxes(masks: torch.Tensor) -> list[tuple[int, int, int, int]]:
    """(top, bottom, left, right) of each mask, inclusive."""
    found = []
    for mask in masks:
        rows, cols = mask.any(1).nonzero()[:, 0], mask.any(0).nonzero()[:, 0]
        found.append((int(rows[0]), int(rows[-1]), int(cols[0]), int(cols[-1])))
        assert mask.sum() == (rows[-1] - rows[0] + 1) * (cols[-1] - cols[0] + 1)  # a filled rectangle
    return found


@pytest.mark.parametrize("height, width, patch", [(224, 224, 48), (121, 121, 18), (112, 104, 18), (64, 64, 20)])
def test_masks_are_disjoint_cells_at_least_s_apart_clipped_only_at_the_border(height, width, patch):
    masks = separated_masks(height, width, patch)
    assert masks.shape[1:] == (height, width) and len(masks) >= 2
    assert masks.sum(0).max() == 1  # disjoint
    found = boxes(masks)
    for top, bottom, left, right in found:
        tall, wide = bottom - top + 1, right - left + 1
        assert tall <= patch and wide <= patch
        assert tall == patch or top == 0 or bottom == height - 1  # cut only by the border
        assert wide == patch or left == 0 or right == width - 1
    for i, a in enumerate(found):
        for b in found[i + 1:]:
            row_gap = max(a[0], b[0]) - min(a[1], b[1]) - 1
            col_gap = max(a[2], b[2]) - min(a[3], b[3]) - 1
            assert max(row_gap, col_gap) >= patch  # s px of unmasked image between any two masked cells


def test_the_dc_of_a_clipped_cell_is_the_mean_of_its_pixels_in_the_image():
    height = width = 21
    patch = 8
    images = torch.rand(2, 3, height, width, dtype=torch.float64)
    fills = cell_fill_values(images, patch)
    for mask in separated_masks(height, width, patch):
        inside = images[:, :, mask]  # [B, C, pixels of the cell]
        expected = inside.mean(-1, keepdim=True).expand_as(inside)
        assert torch.allclose(fills[:, :, mask], expected)
    assert any(int(m.sum()) < patch * patch for m in separated_masks(height, width, patch))  # a clipped cell


@pytest.mark.parametrize("q", [9, 17])
def test_eq1_is_exact_for_a_bagnet_beyond_q_with_clipped_border_cells(q):
    torch.manual_seed(q)
    model = randomise_batchnorm(reduced_bagnet(q, width=4), seed=q).double().eval()
    images = torch.randn(2, 3, 100, 92, dtype=torch.float64)
    patch = q + 1
    assert any(int(m.sum()) < patch * patch for m in separated_masks(100, 92, patch))
    lhs, rhs = interaction_terms(model, images, torch.tensor([1, 3]), patch)
    assert (lhs.abs() > 1e-6).all()
    assert torch.allclose(lhs, rhs, rtol=1e-9, atol=1e-12)


def write(tmp_path, name, frame):
    folder = tmp_path / "results" / "interactions"
    folder.mkdir(parents=True, exist_ok=True)
    frame.to_csv(folder / name, index=False)


def correlation(r_low_high: dict[int, tuple[float, float, float]]) -> pd.DataFrame:
    return pd.DataFrame([{"model": "vgg", "role": "vgg16", "min_distance": d, "pearson_r": r, "pearson_r_low": low,
                          "pearson_r_high": high, "n_images": 50} for d, (r, low, high) in r_low_high.items()])


def test_vgg16_beyond_30_px_follows_the_csv(tmp_path):
    results = tmp_path / "results"
    write(tmp_path, "correlation.csv", correlation({16: (0.5, 0.4, 0.6), 40: (0.97, 0.95, 0.99)}))
    found = contrasts.few_interactions_beyond_30px(results)
    assert found.verdict == AGREES and "40 px" in found.ours and "16 px" not in found.ours
    write(tmp_path, "correlation.csv", correlation({40: (0.97, 0.85, 0.99)}))
    assert contrasts.few_interactions_beyond_30px(results).verdict == NOT_RESOLVED
    write(tmp_path, "correlation.csv", correlation({40: (0.6, 0.5, 0.7)}))
    assert contrasts.few_interactions_beyond_30px(results).verdict == DISAGREES
    write(tmp_path, "correlation.csv", correlation({16: (0.97, 0.95, 0.99)}))
    assert contrasts.few_interactions_beyond_30px(results).verdict == NOT_MEASURABLE


def terms(noise: dict[str, float], n: int = 120, seed: int = 0) -> pd.DataFrame:
    """eq. 1's sides per image for models of the given roles: rhs = lhs + noise * N(0, 1)."""
    rng = np.random.default_rng(seed)
    lhs = rng.normal(size=n)
    frames = [pd.DataFrame({"model": f"m_{role}", "role": role, "image_id": [f"i{i}" for i in range(n)],
                            "min_distance": 8, "lhs": lhs, "rhs": lhs + scale * rng.normal(size=n)})
              for role, scale in noise.items()]
    return pd.concat(frames, ignore_index=True)


def test_interactions_growing_with_depth_follow_the_csv(tmp_path):
    results = tmp_path / "results"
    write(tmp_path, "terms.csv", terms({"vgg16": 0.1, "resnet50": 0.6, "densenet169": 1.5}))
    found = contrasts.deeper_networks_interact_more(results)
    assert found.verdict == AGREES and "vgg16 - resnet50" in found.ours and "resnet50 - densenet169" in found.ours
    write(tmp_path, "terms.csv", terms({"vgg16": 1.5, "resnet50": 0.1}))
    assert contrasts.deeper_networks_interact_more(results).verdict == DISAGREES
    write(tmp_path, "terms.csv", terms({"vgg16": 0.5, "resnet50": 0.5}, n=20))
    assert contrasts.deeper_networks_interact_more(results).verdict == NOT_RESOLVED


def test_the_dc_of_a_hand_made_clipped_cell():
    # 6 x 9 px, cells of 4 px: per axis the grid is placed so that half of it is masked; here the one
    # masked cell is rows 0-2 (cut by the top border: 3 of its 4 rows) and columns 3-6
    plane = torch.arange(54, dtype=torch.float64).reshape(6, 9)
    images = torch.stack([plane, -plane])[None]  # [1, 2, 6, 9]
    masks = separated_masks(6, 9, 4)
    expected = torch.zeros(6, 9, dtype=torch.bool)
    expected[0:3, 3:7] = True
    assert masks.shape == (1, 6, 9) and torch.equal(masks[0], expected)
    fills = cell_fill_values(images, 4)
    # (3 + 4 + 5 + 6 + 12 + ... + 24) / 12 = 13.5, per channel
    assert torch.equal(fills[0, :, 0:3, 3:7], torch.tensor([13.5, -13.5], dtype=torch.float64)[:, None, None]
                       .expand(2, 3, 4))
    assert torch.equal(fills[0, 0, 0:3, 0:3], torch.full((3, 3), 10.0, dtype=torch.float64))  # the corner cell


def test_a_paired_difference_of_pearson_rs():
    rng = np.random.default_rng(1)
    x = rng.normal(size=200)
    y = x + 0.3 * rng.normal(size=200)  # r = 1 / sqrt(1.09) = 0.958 in the population
    z = x + 1.5 * rng.normal(size=200)  # r = 1 / sqrt(3.25) = 0.555
    assert metrics.pearson_difference_interval(x, y, x, y) == (0.0, 0.0)  # the same images, the same r
    low, high = metrics.pearson_difference_interval(x, y, x, z)
    assert 0 < low < 0.958 - 0.555 < high < 1
    assert low < np.corrcoef(x, y)[0, 1] - np.corrcoef(x, z)[0, 1] < high
    assert np.isnan(metrics.pearson_difference_interval(x[:1], y[:1], x[:1], z[:1])).all()  # too few images


def test_a_stand_in_shared_by_two_roles_is_compared_once(tmp_path):
    frame = terms({"vgg16": 0.1, "resnet50": 0.6})
    shared = frame[frame["role"] == "resnet50"].assign(role="resnet152")  # resnet152 stood in by the same model
    write(tmp_path, "terms.csv", pd.concat([frame, shared], ignore_index=True))
    found = contrasts.deeper_networks_interact_more(tmp_path / "results")
    assert found.verdict == AGREES and "vgg16 - resnet50" in found.ours and "resnet152" not in found.ours
    assert found.paper == paper.SEC5_DEPTH_CLAIM["text"] and found.reference_source == paper.SEC5_DEPTH_CLAIM.source
