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


@pytest.fixture(autouse=True)
def fixed_seed():
    """Every test draws the same random numbers on every run (no flaky tolerances)."""
    import numpy as np
    import torch

    torch.manual_seed(0)
    np.random.seed(0)
