"""One module per experiment of the paper; each defines ``EXPERIMENT`` (see bagrepro.harness.registry)."""
