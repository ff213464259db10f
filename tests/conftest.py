"""Shared fixtures: an isolated cache and torch hub folder for every test, never the network."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def isolated_caches(tmp_path_factory, monkeypatch):
    """Point bagrepro's cache and torch hub's cache at a per-test temporary folder."""
    root = tmp_path_factory.mktemp("caches")
    monkeypatch.setenv("BAGREPRO_CACHE", str(root / "bagrepro"))
    monkeypatch.setenv("TORCH_HOME", str(root / "torch"))
    for proxy in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
        monkeypatch.delenv(proxy, raising=False)
    return root


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module (``pytestmark = pytest.mark.usefixtures("one_thread")``):
    small tensors gain little from two, and on a shared 2-core machine OpenMP's spinning threads made
    DenseNet-169's 300 small kernels 10-50x slower. Restored afterwards."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def fixed_seed():
    """Every test draws the same random numbers on every run (no flaky tolerances)."""
    import numpy as np
    import torch

    torch.manual_seed(0)
    np.random.seed(0)


@pytest.fixture
def tiny_demo(monkeypatch):
    """The demo profile on the first world's 73 px geometry (guard 17) and one-epoch recipes: the
    suite trains this tiny zoo in seconds. Returns the world's config."""
    import dataclasses

    from bagrepro.demo import store, zoo

    world = dataclasses.replace(store.DEMO_WORLD, image_size=73, guard=17, distractor_shapes=7, distractor_dots=4,
                                train_per_class=4, val_per_class=1, test_per_class=2)
    monkeypatch.setattr(store, "DEMO_WORLD", world)
    for name, entry in zoo.DEMO_ZOO.items():
        recipe = dataclasses.replace(entry.recipe, epochs=1, bn_recalibration_images=16)
        monkeypatch.setitem(zoo.DEMO_ZOO, name, dataclasses.replace(entry, recipe=recipe))
    return world
