"""The demo profile's data: one fixed demo world (see :mod:`bagrepro.data.demo_world`).

The world is generated once (deterministically) and cached under ``$BAGREPRO_CACHE``; the demo zoo
is trained on its train split and every experiment of the demo profile runs on its test split.
"""

from __future__ import annotations

from .demo_world import DemoWorld, WorldConfig, make_world
from .imagesets import TensorImageSet

#: the world of the demo profile (changing it changes the cache keys of the world and the zoo)
DEMO_WORLD = WorldConfig()


def demo_world() -> DemoWorld:
    """The demo profile's world, from the cache or generated now."""
    return make_world(DEMO_WORLD)


def demo_test_images() -> TensorImageSet:
    """The demo world's test split as an image set (float images in [0, 1], labels, ids, masks)."""
    world = demo_world()
    split = world.test
    groups = world.class_groups
    return TensorImageSet(
        images=split.tensor(), labels=split.label_tensor(), image_ids=split.image_ids(),
        classes=list(world.class_names), masks=split.mask_tensor(), class_groups=list(world.class_groups),
        description=(f"demo world {world.config.fingerprint} test split: {len(split)} images of "
                     f"{world.image_size}x{world.image_size} px, {world.num_classes} classes "
                     f"({groups.count('local')} local, {groups.count('arrangement')} arrangement)"),
    )
