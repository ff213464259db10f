"""The demo plugin's hooks into the core, imported when the demo profile is used.

Importing this module registers every :data:`~bagrepro.demo.zoo.DEMO_ZOO` entry in the model
registry (demo-world normalisation and class count, the BagNets' receptive fields, weights trained
by :mod:`bagrepro.demo.training` and cached) and the demo world's test split as the image source
``'demo'`` (the data kind of the demo profile).
"""

from __future__ import annotations

from bagrepro.models import register_model
from bagrepro.harness.sources import register_image_source
from bagrepro.demo.spec import DEMO_PREPROCESS
from bagrepro.demo.store import DEMO_WORLD, demo_test_images
from bagrepro.demo.training import trained_weights
from bagrepro.demo.zoo import DEMO_ZOO

for _name, _entry in DEMO_ZOO.items():
    register_model(
        _name, num_classes=DEMO_WORLD.num_classes, preprocess=DEMO_PREPROCESS,
        receptive_field=_entry.receptive_field, weights_loader=trained_weights, paper_name=_entry.paper_name,
    )(_entry.build)


def load_demo_images(ctx):
    """The image source 'demo': the demo world's test split (its first ``ctx.num_images`` if set)."""
    ctx.refuse_data()
    images = demo_test_images()
    n = ctx.num_images
    return images if n is None else images.subset(range(min(n, len(images))))


register_image_source("demo", load_demo_images)
