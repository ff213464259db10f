"""Part C's deletion proxies (bagrepro.methods.proxies) and their verdict (proxy_agreement): the
incremental single-window deletion equals full forward passes, the curves are probabilities in the
map's order, and a proxy that ranks the methods as the exact truth does gets Kendall tau 1."""

from __future__ import annotations

import copy

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


def test_insertion_puts_the_image_back_in_the_maps_order(bagnet):
    from bagrepro.methods.masking import masking_curves, patch_scores, ranks_from_scores

    x = torch.randn(2, 3, 40, 40, dtype=torch.float64)  # 5 x 5 patches of 8 px, no margin
    t = torch.tensor([0, 2])
    ranks = ranks_from_scores(patch_scores(torch.randn(2, 1, 40, 40, dtype=torch.float64), 8))
    with torch.no_grad():
        blank, clean = (bagnet(z).softmax(1).gather(1, t[:, None])[:, 0] for z in (torch.zeros_like(x), x))
    for engine in ("incremental", "batched"):
        curve = masking_curves(bagnet, torch.zeros_like(x), ranks, t, 25, 8, x, engine=engine)
        assert torch.allclose(curve[:, 0].double(), blank, atol=1e-5)   # nothing put back yet
        assert torch.allclose(curve[:, -1].double(), clean, atol=1e-5)  # every patch back: the image
        # after the first step exactly the first-ranked patch is back
        first = torch.zeros_like(x)
        for i in range(2):
            row, col = divmod(int(ranks[i].argmin()), 5)
            first[i, :, 8 * row:8 * row + 8, 8 * col:8 * col + 8] = x[i, :, 8 * row:8 * row + 8, 8 * col:8 * col + 8]
        with torch.no_grad():
            expected = bagnet(first).softmax(1).gather(1, t[:, None])[:, 0]
        assert torch.allclose(curve[:, 1].double(), expected, atol=1e-5)


def test_road_is_the_library_called_directly_and_removes_in_the_maps_order(bagnet):
    from pytorch_grad_cam.metrics.road import ROADLeastRelevantFirst, ROADMostRelevantFirst
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    model = copy.deepcopy(bagnet).float()
    x = torch.randn(2, 3, 41, 41)
    t = torch.tensor([1, 3])
    maps = torch.randn(2, 41, 41)
    torch.manual_seed(5)
    state = torch.get_rng_state()
    scores = proxies.road_scores(model, x, t, maps)
    assert torch.equal(torch.get_rng_state(), state)  # the imputation noise leaves the caller's draws alone
    assert set(scores) == set(proxies.ROAD_PROXIES) and all(v.shape == (2,) for v in scores.values())
    assert torch.equal(proxies.road_scores(model, x, t, maps)["road_morf"], scores["road_morf"])  # seeded
    targets = [ClassifierOutputTarget(1), ClassifierOutputTarget(3)]
    for name, library in (("road_morf", ROADMostRelevantFirst(80)), ("road_lerf", ROADLeastRelevantFirst(20))):
        torch.manual_seed(proxies.ROAD_SEED)
        direct = library(x, maps.numpy(), targets, model)
        assert np.allclose(scores[name].numpy(), direct, atol=1e-6), name
    only_morf = proxies.road_scores(model, x, t, maps, ("road_morf",))
    assert set(only_morf) == {"road_morf"} and proxies.road_passes(2, ("road_morf",)) == 4
    with pytest.raises(ValueError, match="unknown ROAD proxies"):
        proxies.road_scores(model, x, t, maps, ("road_insert",))


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
