"""Part C's deletion proxies (bagrepro.methods.proxies) and their verdict (proxy_agreement): the
incremental single-window deletion equals full forward passes, the curves are probabilities in the
map's order, and a proxy that ranks the methods as the exact truth does gets Kendall tau 1."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from bagrepro.methods import proxies
from bagrepro.methods.incremental import NotIncremental
from bagrepro.models.bagnet import randomise_batchnorm, reduced_bagnet
from experiments.attribution_truth import proxy_agreement


@pytest.fixture(scope="module")
def bagnet():
    torch.manual_seed(0)
    return randomise_batchnorm(reduced_bagnet(9, width=8, blocks=1, num_classes=5), seed=1).double().eval()


def test_window_deletion_equals_deleting_each_window_by_hand(bagnet, monkeypatch):
    x = torch.randn(2, 3, 41, 41, dtype=torch.float64)
    t = torch.tensor([1, 3])
    drops = proxies.window_deletion_drops(bagnet, x, t, q=9)
    assert drops.shape == (2, 5, 5)  # (41 - 9) // 8 + 1
    with torch.no_grad():
        clean = bagnet(x).gather(1, t[:, None])[:, 0]
        for row, col in [(0, 0), (2, 3), (4, 4)]:
            deleted = x.clone()
            deleted[..., 8 * row:8 * row + 9, 8 * col:8 * col + 9] = 0
            expected = clean - bagnet(deleted).gather(1, t[:, None])[:, 0]
            assert torch.allclose(drops[:, row, col].double(), expected, atol=1e-5)

    def untraceable(*args, **kwargs):
        raise NotIncremental("this test's model")

    monkeypatch.setattr(proxies, "IncrementalModel", untraceable)
    assert torch.allclose(proxies.window_deletion_drops(bagnet, x, t, q=9, inputs_per_pass=7), drops, atol=1e-5)


def test_curves_follow_the_maps_order(bagnet):
    x = torch.randn(2, 3, 40, 40, dtype=torch.float64)
    t = torch.tensor([0, 2])
    maps = torch.randn(2, 40, 40, dtype=torch.float64)
    scores = proxies.deletion_scores(bagnet, x, t, maps, steps=6)
    assert set(scores) == set(proxies.CURVE_PROXIES)
    for values in scores.values():
        assert values.shape == (2,) and ((values >= 0) & (values <= 1)).all()
    # the reversed map deletes least relevant first: MoRF of -map is LeRF of map
    reversed_scores = proxies.deletion_scores(bagnet, x, t, -maps, steps=6)
    assert torch.allclose(reversed_scores["morf_deletion"], scores["lerf_deletion"])


def _per_image(exact: np.ndarray, proxy: dict[str, np.ndarray]) -> pd.DataFrame:
    rows = []
    images, methods = exact.shape
    for i in range(images):
        for m in range(methods):
            rows.append({"part": "A", "model": "b", "method": f"m{m}", "image_id": f"i{i}", "metric": "spearman",
                         "value": exact[i, m]})
            for name, values in proxy.items():
                rows.append({"part": "C", "model": "b", "method": f"m{m}", "image_id": f"i{i}", "metric": name,
                             "value": values[i, m]})
    return pd.DataFrame(rows)


def test_a_proxy_that_agrees_with_the_truth_gets_tau_one():
    generator = np.random.default_rng(0)
    exact = generator.normal(size=(12, 6)) + np.arange(6)  # method m5 best on average
    table = proxy_agreement(_per_image(exact, {
        "patch_deletion": exact * 2 + 1,        # higher is better: the same order
        "morf_deletion": -exact,                # lower is better: the same order
        "lerf_deletion": -exact,                # higher is better: the reversed order
        "paper_masking": generator.normal(size=(12, 6))}))
    verdict = table.set_index("proxy")
    assert verdict.loc["patch_deletion", "kendall_tau"] == pytest.approx(1)
    assert verdict.loc["patch_deletion", "method_spearman"] == pytest.approx(1)
    assert verdict.loc["morf_deletion", "kendall_tau"] == pytest.approx(1)
    assert verdict.loc["lerf_deletion", "kendall_tau"] == pytest.approx(-1)
    assert abs(verdict.loc["paper_masking", "method_spearman"]) < 0.5
    assert (verdict["kendall_tau_low"] <= verdict["kendall_tau"] + 1e-12).all()
    assert (verdict["n_methods"] == 6).all() and (verdict["n_images"] == 12).all()
