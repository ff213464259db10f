"""The demo world's specification: what a world is made of, and how the demo zoo sees it.

- :class:`WorldConfig`: everything that determines a world (seed, image size, images per class, how
  many classes of each kind, the arrangement guard, clutter); its :attr:`~WorldConfig.fingerprint`
  (with :data:`GENERATOR_VERSION`) names the cached world and enters the demo zoo's cache keys.
- The class vocabulary: :data:`TEXTURES`, :data:`LATTICES`, :data:`ARRANGEMENTS` (see
  :mod:`bagrepro.demo.render` for how each is drawn), :data:`SPLITS`, :data:`GROUPS`.
- :data:`DEMO_PREPROCESS`: the demo zoo's input normalisation (per-channel mean / std of the default
  world's training images; no resize or crop), the one place for these constants.

The world is laid out on the BagNets' stride (:data:`bagrepro.models.bagnet.BAGNET_STRIDE`, 8 px):
image sides are 8k + 1 px and the arrangement parts sit on a lattice of multiples of the stride.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from bagrepro.core.cache import config_hash
from bagrepro.core.errors import ConfigError
from bagrepro.models.bagnet import BAGNET_STRIDE
from bagrepro.models.preprocess import Preprocess

#: bump when the generator changes what it draws: it is part of the cache key of worlds and models
GENERATOR_VERSION = 2

#: the demo zoo's inputs: ``(x - mean) / std`` per channel of RGB in [0, 1], with the mean / std of
#: the default world's training images; the images are used at their own size (no resize, no crop)
DEMO_PREPROCESS = Preprocess(resize=None, crop=None, mean=(0.490, 0.487, 0.485), std=(0.155, 0.155, 0.156))

SPLITS = ("train", "val", "test")
GROUPS = ("local", "arrangement")

#: lattice classes: dots ``lattice_dot`` px wide, DOT_GAP px apart (no 9 px window holds two dots)
DOT_GAP = 8


@dataclass(frozen=True)
class TextureSpec:
    """A texture class: pattern kind, wave-vector angle (degrees), period (px), two RGB colours."""

    name: str
    kind: str
    angle: float
    period: float
    foreground: tuple[float, float, float]
    background: tuple[float, float, float]


#: the texture vocabulary, in class order (every definition is unchanged by horizontal/vertical flips)
TEXTURES = (
    TextureSpec("vertical-stripes", "stripes", 0.0, 6.0, (0.95, 0.82, 0.15), (0.12, 0.10, 0.10)),
    TextureSpec("horizontal-stripes", "stripes", 90.0, 6.0, (0.95, 0.82, 0.15), (0.12, 0.10, 0.10)),
    TextureSpec("checkerboard", "checker", 0.0, 8.0, (0.95, 0.95, 0.95), (0.15, 0.30, 0.70)),
    TextureSpec("polka-dots", "dots", 0.0, 7.0, (0.97, 0.96, 0.88), (0.72, 0.10, 0.16)),
    TextureSpec("waves", "waves", 0.0, 7.0, (0.15, 0.60, 0.22), (0.88, 0.94, 0.82)),
    TextureSpec("cross-hatch", "hatch", 45.0, 7.0, (0.62, 0.16, 0.64), (0.95, 0.90, 0.95)),
)

#: the lattice classes: dots on a grid of pitch lattice_dot + DOT_GAP at (row i, column j), kept where
#: this rule holds
LATTICES = {
    "dot-rows": lambda i, j: i % 2 == 0,  # rows 2 pitches apart, dots 1 pitch apart along a row
    "dot-columns": lambda i, j: j % 2 == 0,
    "dot-diagonal": lambda i, j: (i + j) % 2 == 0,  # a quincunx: nearest neighbours on the diagonals
}
#: share of lattice dots left out at random (the same in every lattice class)
LATTICE_DROP = 0.15


#: the arrangement classes: which cells of the 2 x 2 lattice (row, col) the two parts occupy;
#: each class lists its alternatives (drawn with equal probability)
ARRANGEMENTS = {
    "pair-side-by-side": (((0, 0), (0, 1)), ((1, 0), (1, 1))),
    "pair-stacked": (((0, 0), (1, 0)), ((0, 1), (1, 1))),
    "pair-diagonal": (((0, 0), (1, 1)), ((0, 1), (1, 0))),
}


@dataclass(frozen=True)
class WorldConfig:
    """Everything that determines a demo world (its hash names the cache entry).

    seed: the world's seed; image_size: side S in px (S - 1 must be a multiple of 8, so the windows
    of every BagNet-q, q in 9/17/33, tile the image exactly); *_per_class: images per class in each
    split; textures / lattices / arrangements: how many classes of each kind (the first n of
    :data:`TEXTURES`, :data:`LATTICES`, :data:`ARRANGEMENTS`); guard: the arrangement classes are
    invisible to BagNets with q <= guard (at least guard - 1 px between the parts, at least guard px
    from the borders); part_size: side of the arrangement parts in px; lattice_dot: side of the lattice
    classes' dots (and of the distractor dots) in px; distractor_shapes / distractor_dots: clutter
    per image (the defaults keep the clutter density of the first, 73 px world: 7 shapes and 4 dots
    per 73 x 73 px, scaled by area).
    """

    seed: int = 0
    image_size: int = 121
    train_per_class: int = 250
    val_per_class: int = 25
    test_per_class: int = 75
    textures: int = 6
    lattices: int = 3
    arrangements: int = 3
    guard: int = 33
    part_size: int = 8
    lattice_dot: int = 4
    distractor_shapes: int = 19
    distractor_dots: int = 11

    def __post_init__(self):
        if not 2 * self.guard + 16 <= self.image_size <= 128 or (self.image_size - 1) % BAGNET_STRIDE:
            raise ConfigError(f"demo world image_size {self.image_size}: must be 8k + 1 px, at most 128 "
                              f"and at least 2 * guard + 16")
        if not (0 <= self.textures <= len(TEXTURES) and 0 <= self.lattices <= len(LATTICES)
                and self.arrangements in (0, 2, 3)):
            raise ConfigError(f"demo world class counts: textures 0..{len(TEXTURES)}, lattices 0..{len(LATTICES)}, "
                              f"arrangements 0, 2 or 3 (got {self.textures}, {self.lattices}, {self.arrangements})")
        if self.textures + self.lattices + self.arrangements < 2:
            raise ConfigError("a demo world needs at least two classes")
        if min(self.train_per_class, self.val_per_class, self.test_per_class) < 1:
            raise ConfigError("a demo world needs at least one image per class in every split")
        if self.arrangements:
            arrangement_lattice(self)  # raises when the lattice does not fit

    @property
    def class_names(self) -> tuple[str, ...]:
        return (tuple(t.name for t in TEXTURES[:self.textures]) + tuple(list(LATTICES)[:self.lattices])
                + tuple(list(ARRANGEMENTS)[:self.arrangements]))

    @property
    def class_kinds(self) -> tuple[str, ...]:
        """'texture', 'lattice' or 'arrangement' per class."""
        return ("texture",) * self.textures + ("lattice",) * self.lattices + ("arrangement",) * self.arrangements

    @property
    def class_groups(self) -> tuple[str, ...]:
        """'local' (texture and lattice classes) or 'arrangement' per class."""
        return tuple("arrangement" if kind == "arrangement" else "local" for kind in self.class_kinds)

    @property
    def num_classes(self) -> int:
        return len(self.class_kinds)

    def per_class(self, split: str) -> int:
        return {"train": self.train_per_class, "val": self.val_per_class, "test": self.test_per_class}[split]

    @property
    def fingerprint(self) -> str:
        """Hash of the config and the generator version: names the cached world and enters model keys."""
        return config_hash(self, {"generator_version": GENERATOR_VERSION})


def arrangement_lattice(config: WorldConfig) -> tuple[int, int]:
    """(origin, spacing) of the arrangement parts' 2 x 2 lattice, in px.

    A part's top-left corner lies at ``origin + cell * spacing + jitter`` on each axis, with cell in
    {0, 1} and jitter in [0, 8). spacing is the smallest multiple of 8 that leaves at least
    ``guard - 1`` px between the parts, so that no window of ``guard`` px holds pixels of both (it
    would have to span gap + 2 px); origin centres the lattice, which must leave at least ``guard``
    px to every border.
    """
    size, part, guard = config.image_size, config.part_size, config.guard
    spacing = BAGNET_STRIDE * math.ceil((part + guard - 1) / BAGNET_STRIDE)
    extent = spacing + BAGNET_STRIDE - 1 + part
    origin = (size - extent) // 2
    if origin < guard or size - (origin + extent) < guard:
        raise ConfigError(f"demo world: arrangement parts of {part} px with guard {guard} need images of at "
                          f"least {2 * guard + extent} px (got {size})")
    return origin, spacing
