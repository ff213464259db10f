"""Rendering the demo world: a generated, labelled image set in which the paper's contrasts are visible.

Every image is a cluttered scene (a smooth, noisy background, flat distractor shapes, scattered
single dots) with the evidence of its class painted on top. Three kinds of class:

- **texture** classes (local): two or three blobs filled with the class's texture (stripes of one
  orientation, a checkerboard, polka dots, waves, a cross-hatch). A texture repeats every few pixels,
  so any window of a BagNet-9 inside a blob already shows it.
- **lattice** classes (local, but only at a scale between 9 and 17 px): a lattice of small dots (4 px)
  over the whole image, 8 px apart along rows, along columns, or along the diagonals (a quincunx); all
  three have the same dot density and colours. A 9 px window never holds two dots, so every 9 px
  view of the three classes looks alike; a 17 px window sees neighbouring dots and their direction.
- **arrangement** classes (global): the same two parts A (a bullseye) and B (a framed square) in
  every image, side by side, one above the other, or diagonal. The parts sit on a 2 x 2 lattice of
  positions (spacing a multiple of 8, jitter of one full stride period), A and B in random order, so
  each part has the same position distribution in every arrangement class and the same phase
  relative to a BagNet's stride-8 window grid. At least ``guard - 1`` px lie between them (no window
  of a BagNet-q with q <= guard holds pixels of both) and at least ``guard`` px between each part and
  every border (every window that could see a part exists, so a window's view never tells where the
  part is). Only a model that relates the two parts can tell the classes apart: with the defaults
  (121 px images, guard 33, parts of 8 px on a lattice of spacing 40 px, so at least 32 px of gap)
  no BagNet window (9, 17 or 33 px) holds both parts, and the largest window is 0.27 of the side
  (the paper's BagNet-33 sees 0.15 of a 224 px ImageNet image).

Ground truth: ``masks[i]`` is True exactly on the pixels painted as class evidence (texture blobs,
the lattice dots, the two arrangement parts); evidence is painted last, so nothing
occludes it. :func:`render_images` with ``evidence=False`` draws the same scenes without the
evidence, for checks.

:func:`render_images` draws one image per label from a random generator (the world's splits are
drawn by :mod:`bagrepro.demo.store`); :func:`save_example_grid` draws a labelled grid of examples.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from bagrepro.core.atomic import atomic_path
from bagrepro.models.bagnet import BAGNET_STRIDE
from bagrepro.demo.spec import ARRANGEMENTS, DOT_GAP, LATTICE_DROP, LATTICES, TEXTURES, WorldConfig, arrangement_lattice


# ---- painting ------------------------------------------------------------------------------------

def _hsv_to_rgb(h: np.ndarray, s: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Vectorised HSV (each in [0, 1]) -> RGB [..., 3]."""
    i = np.floor(h * 6.0) % 6
    f = h * 6.0 - np.floor(h * 6.0)
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    choices = [np.stack(c, -1) for c in ((v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q))]
    out = np.zeros(h.shape + (3,), dtype=np.float32)
    for k, rgb in enumerate(choices):
        out = np.where((i == k)[..., None], rgb, out)
    return out


def _smooth_field(rng: np.random.Generator, n: int, channels: int, grid: int, size: int) -> torch.Tensor:
    """Smooth random field [n, size, size, channels]: uniform noise on a grid x grid lattice, upsampled."""
    coarse = torch.from_numpy(rng.random((n, channels, grid, grid), dtype=np.float32))
    fine = F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=True)
    return fine.permute(0, 2, 3, 1)


def _background(rng: np.random.Generator, n: int, size: int) -> torch.Tensor:
    """Muted two-colour backgrounds with blotches: float32 [n, S, S, 3]."""
    hue = rng.random((n, 2), dtype=np.float32)
    hue[:, 1] = (hue[:, 0] + rng.uniform(0.05, 0.35, n)) % 1.0
    sat = rng.uniform(0.12, 0.45, (n, 2)).astype(np.float32)
    val = rng.uniform(0.35, 0.8, (n, 2)).astype(np.float32)
    colours = torch.from_numpy(_hsv_to_rgb(hue, sat, val))  # [n, 2, 3]
    mix = (_smooth_field(rng, n, 1, 5, size) * 1.4 - 0.2).clamp_(0, 1)
    image = torch.lerp(colours[:, None, None, 0], colours[:, None, None, 1], mix)
    return image.add_(_smooth_field(rng, n, 3, 11, size).sub_(0.5).mul_(0.12))


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    rows, cols = np.meshgrid(np.arange(size, dtype=np.float32), np.arange(size, dtype=np.float32), indexing="ij")
    return rows, cols


def _paint_distractor_shapes(rng, image: np.ndarray, count: int) -> None:
    """Flat ellipses and rectangles of random muted-to-bright colours (drawn for every image).

    Each shape is evaluated only on the window around it (vectorised over images), not on the
    whole image.
    """
    n, size = image.shape[:2]
    max_radius = 11.0
    centre = rng.uniform(-4, size + 4, (n, count, 2)).astype(np.float32)
    radius = rng.uniform(2.5, max_radius, (n, count, 2)).astype(np.float32)
    is_rect = rng.random((n, count)) < 0.5
    present = rng.random((n, count)) < 0.8
    colour = _hsv_to_rgb(rng.random((n, count), dtype=np.float32),
                         rng.uniform(0.1, 0.7, (n, count)).astype(np.float32),
                         rng.uniform(0.2, 0.9, (n, count)).astype(np.float32))
    span = np.arange(-int(max_radius) - 1, int(max_radius) + 2)
    images = np.arange(n)[:, None, None]
    for k in range(count):
        base = np.floor(centre[:, k]).astype(np.int64)  # [n, 2]
        r = base[:, 0, None, None] + span[None, :, None]  # [n, w, 1]
        c = base[:, 1, None, None] + span[None, None, :]  # [n, 1, w]
        dr = np.abs((r - centre[:, k, 0, None, None]) / radius[:, k, 0, None, None])
        dc = np.abs((c - centre[:, k, 1, None, None]) / radius[:, k, 1, None, None])
        inside = np.where(is_rect[:, k, None, None], np.maximum(dr, dc), dr ** 2 + dc ** 2) <= 1
        inside &= present[:, k, None, None] & (r >= 0) & (r < size) & (c >= 0) & (c < size)
        which, rr, cc = np.broadcast_arrays(images, r, c)
        image[which[inside], rr[inside], cc[inside]] = colour[which[inside], k]


def _dot_colours(rng, shape) -> np.ndarray:
    """High-contrast dot colours (dark or bright, any hue): [*shape, 3]."""
    bright = rng.random(shape) < 0.5
    value = np.where(bright, rng.uniform(0.85, 1.0, shape), rng.uniform(0.05, 0.25, shape)).astype(np.float32)
    return _hsv_to_rgb(rng.random(shape, dtype=np.float32), rng.uniform(0.0, 0.8, shape).astype(np.float32), value)


def _paint_squares(image: np.ndarray, mask: np.ndarray | None, top_left: np.ndarray, side: int,
                   colours: np.ndarray, valid: np.ndarray) -> None:
    """Paint side x side squares at top_left [n, k, 2] (rows, cols; may be partly outside)."""
    n, size = image.shape[:2]
    index = np.broadcast_to(np.arange(n)[:, None], valid.shape)
    for dr in range(side):
        for dc in range(side):
            r, c = top_left[..., 0] + dr, top_left[..., 1] + dc
            ok = valid & (r >= 0) & (r < size) & (c >= 0) & (c < size)
            image[index[ok], r[ok], c[ok]] = colours[ok]
            if mask is not None:
                mask[index[ok], r[ok], c[ok]] = True


def _texture(kind: str, rows, cols, angle, period, phase) -> np.ndarray:
    """Foreground weight in [0, 1] of a texture: [m, S, S] from per-image angle/period/phase [m, 2]."""
    a = np.deg2rad(angle)[:, None, None]
    k = (2 * np.pi / period)[:, None, None]
    u = (cols * np.cos(a) + rows * np.sin(a)) * k + phase[:, 0, None, None]
    v = (-cols * np.sin(a) + rows * np.cos(a)) * k + phase[:, 1, None, None]
    if kind == "stripes":
        signal = np.sin(u)
    elif kind == "checker":
        signal = np.sin(u) * np.sin(v) * 1.5
    elif kind == "dots":
        signal = np.cos(u) + np.cos(v) - 0.9
    elif kind == "waves":
        signal = np.sin(u + 1.6 * np.sin(v * 0.5))
    elif kind == "hatch":
        signal = np.maximum(np.cos(u), np.cos(v)) - 0.55
    else:
        raise ValueError(kind)
    return 1.0 / (1.0 + np.exp(-6.0 * signal))


def _paint_textures(rng, image, mask, labels, config: WorldConfig, evidence: bool) -> None:
    """Texture classes: 2-3 elliptic blobs filled with the class texture."""
    n, size = image.shape[:2]
    rows, cols = _grid(size)
    blobs = 3
    centre = rng.uniform(8, size - 8, (n, blobs, 2)).astype(np.float32)
    radius = rng.uniform(9.0, 15.0, (n, blobs, 2)).astype(np.float32)
    present = np.ones((n, blobs), bool)
    present[:, 2] = rng.random(n) < 0.5
    angle_jitter = rng.uniform(-6, 6, n).astype(np.float32)
    period_scale = rng.uniform(0.9, 1.1, n).astype(np.float32)
    phase = rng.uniform(0, 2 * np.pi, (n, 2)).astype(np.float32)
    colour_jitter = rng.normal(0, 0.04, (n, 2, 3)).astype(np.float32)
    shading = _smooth_field(rng, n, 1, 3, size)[..., 0].numpy()
    if not evidence:
        return
    for c, spec in enumerate(TEXTURES[:config.textures]):
        chosen = np.flatnonzero(labels == c)
        if not len(chosen):
            continue
        dr = (rows[None, None] - centre[chosen, :, 0, None, None]) / radius[chosen, :, 0, None, None]
        dc = (cols[None, None] - centre[chosen, :, 1, None, None]) / radius[chosen, :, 1, None, None]
        blob = ((dr ** 2 + dc ** 2 <= 1) & present[chosen, :, None, None]).any(axis=1)
        weight = _texture(spec.kind, rows[None], cols[None], spec.angle + angle_jitter[chosen],
                          spec.period * period_scale[chosen], phase[chosen])[..., None]
        fg = np.asarray(spec.foreground, np.float32) + colour_jitter[chosen, 0, None, None]
        bg = np.asarray(spec.background, np.float32) + colour_jitter[chosen, 1, None, None]
        light = (0.85 + 0.3 * shading[chosen])[..., None]
        texture = (fg * weight + bg * (1 - weight)) * light
        image[chosen] = np.where(blob[..., None], texture, image[chosen])
        mask[chosen] |= blob


def _paint_lattices(rng, image, mask, labels, config: WorldConfig, evidence: bool) -> None:
    """Lattice classes: dots of one colour on the class's lattice, over the whole image."""
    n, size = image.shape[:2]
    dot = config.lattice_dot
    pitch = dot + DOT_GAP
    first = config.textures
    cells = size // pitch + 3
    i, j = np.meshgrid(np.arange(-1, cells - 1), np.arange(-1, cells - 1), indexing="ij")
    i, j = i.ravel(), j.ravel()
    offset = rng.integers(0, pitch, (n, 2))
    parity = rng.integers(0, 2, (n, 2))  # which rows / columns / diagonal the lattice keeps
    kept = rng.random((n, len(i))) >= LATTICE_DROP
    colour = _dot_colours(rng, (n,))
    if not evidence:
        return
    top_left = np.stack([offset[:, 0, None] + pitch * i[None], offset[:, 1, None] + pitch * j[None]], -1)
    valid = np.zeros((n, len(i)), bool)
    for c, rule in enumerate(list(LATTICES.values())[:config.lattices]):
        chosen = labels == first + c
        valid[chosen] = rule(i[None] + parity[chosen, :1], j[None] + parity[chosen, 1:])
    valid &= kept
    _paint_squares(image, mask, top_left, dot, np.broadcast_to(colour[:, None], (n, len(i), 3)), valid)


def _part_sprites(side: int) -> tuple[np.ndarray, np.ndarray]:
    """Arrangement parts A (bullseye) and B (framed square): colours [2, side, side, 3], alpha [2, side, side]."""
    rows, cols = _grid(side)
    centre = (side - 1) / 2
    dist = np.sqrt((rows - centre) ** 2 + (cols - centre) ** 2)
    sprites = np.zeros((2, side, side, 3), np.float32)
    alpha = np.zeros((2, side, side), bool)
    alpha[0] = dist <= side / 2
    sprites[0] = np.where((dist <= side / 4.5)[..., None], (0.1, 0.05, 0.3), (1.0, 0.55, 0.05))
    alpha[1] = True
    edge = (np.minimum(rows, cols) < 1) | (np.maximum(rows, cols) > side - 2)
    sprites[1] = np.where(edge[..., None], (0.98, 0.98, 0.98), (0.05, 0.75, 0.85))
    return sprites, alpha


def _paint_arrangements(rng, image, mask, labels, config: WorldConfig, evidence: bool) -> None:
    """Arrangement classes: parts A and B on the 2 x 2 lattice in the class's configuration."""
    n = image.shape[0]
    first = config.textures + config.lattices
    alternative = rng.integers(0, 2, n)
    swap = rng.integers(0, 2, n)
    jitter = rng.integers(0, BAGNET_STRIDE, (n, 2))
    if not evidence or not config.arrangements:
        return
    origin, spacing = arrangement_lattice(config)
    side = config.part_size
    sprites, alpha = _part_sprites(side)
    for c, alternatives in enumerate(list(ARRANGEMENTS.values())[:config.arrangements]):
        for i in np.flatnonzero(labels == first + c):
            cells = alternatives[alternative[i]]
            for part, cell in zip((swap[i], 1 - swap[i]), cells):
                r0, c0 = origin + np.array(cell) * spacing + jitter[i]
                window = image[i, r0:r0 + side, c0:c0 + side]
                window[alpha[part]] = sprites[part][alpha[part]]
                mask[i, r0:r0 + side, c0:c0 + side] |= alpha[part]


def render_images(config: WorldConfig, labels: np.ndarray, rng: np.random.Generator,
                  evidence: bool = True, chunk: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Render one image per label: (images uint8 [N, S, S, 3], evidence masks bool [N, S, S]).

    evidence=False draws exactly the same random numbers but leaves the class evidence unpainted
    (masks all False): the difference between the two renderings lies inside the masks.
    """
    size = config.image_size
    images = np.empty((len(labels), size, size, 3), np.uint8)
    masks = np.zeros((len(labels), size, size), bool)
    for start in range(0, len(labels), chunk):
        part = labels[start:start + chunk]
        n = len(part)
        scene = _background(rng, n, size)
        image = scene.numpy()  # the same memory: the painters below write into it
        _paint_distractor_shapes(rng, image, config.distractor_shapes)
        dots = rng.integers(-1, size - 1, (n, config.distractor_dots, 2))
        _paint_squares(image, None, dots, config.lattice_dot, _dot_colours(rng, dots.shape[:2]),
                       np.ones(dots.shape[:2], bool))
        mask = masks[start:start + n]
        _paint_textures(rng, image, mask, part, config, evidence)
        _paint_lattices(rng, image, mask, part, config, evidence)
        _paint_arrangements(rng, image, mask, part, config, evidence)
        grain = torch.from_numpy(rng.random((n, size, size, 3), dtype=np.float32)).sub_(0.5).mul_(0.07)
        final = scene.add_(grain).mul_(255).add_(0.5).clamp_(0, 255).to(torch.uint8)
        images[start:start + n] = final.numpy()
    return images, masks


# ---- pictures ------------------------------------------------------------------------------------

def save_example_grid(world, path, split: str = "train", per_class: int = 4,
                      show_masks: bool = True, dpi: int = 100) -> Path:
    """A labelled grid of examples of ``world`` (a :class:`~bagrepro.demo.store.DemoWorld`): one row
    per class, ``per_class`` images, and (show_masks) the first example's evidence mask as an overlay.
    Written as a palette PNG (small), returns the path."""
    import matplotlib
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from PIL import Image

    data = world.split(split)
    columns = per_class + (1 if show_masks else 0)
    rows = world.num_classes
    size = world.image_size
    inches = size * 1.6 / dpi
    width, height = columns * inches + 1.9, rows * inches + 0.7
    fig, axes = plt.subplots(rows, columns, figsize=(width, height), dpi=dpi, squeeze=False)
    for c in range(rows):
        chosen = np.flatnonzero(data.labels == c)[:per_class]
        for j in range(columns):
            ax = axes[c, j]
            ax.set_xticks([])
            ax.set_yticks([])
            if j < len(chosen):
                ax.imshow(data.images[chosen[j]], interpolation="nearest")
            elif show_masks and j == per_class and len(chosen):
                shaded = data.images[chosen[0]].astype(np.float32) / 255 * 0.35
                shaded[data.masks[chosen[0]]] = (1.0, 0.2, 0.2)
                ax.imshow(shaded, interpolation="nearest")
            else:
                ax.set_axis_off()
            if c == 0:
                ax.set_title("evidence of 1st" if show_masks and j == per_class else f"{split}", fontsize=7)
        axes[c, 0].set_ylabel(f"{c}: {world.class_names[c]}\n({world.class_kinds[c]})", rotation=0,
                              ha="right", va="center", fontsize=8)
    fig.suptitle(f"demo world: seed {world.config.seed}, {size} px, {world.num_classes} classes", fontsize=9,
                 y=1 - 0.12 / height)
    fig.subplots_adjust(left=1.8 / width, right=1 - 0.05 / width, top=1 - 0.55 / height, bottom=0.1 / height,
                        wspace=0.05, hspace=0.05)
    rendered = io.BytesIO()
    fig.savefig(rendered, dpi=dpi, format="png")
    plt.close(fig)
    rendered.seek(0)
    palette = Image.open(rendered).convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT)
    path = Path(path)
    with atomic_path(path) as temporary:
        palette.save(temporary, format="PNG", optimize=True)
    return path
