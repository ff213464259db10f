"""The demo world (determinism, splits, ground-truth masks, arrangement geometry), the demo zoo
table and builders, and the training recipe (reproducible weights, the model cache and its keys)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage
from torch import nn

from bagrepro.demo import render, spec, store
from bagrepro.demo.spec import DEMO_PREPROCESS, SPLITS, WorldConfig, arrangement_lattice
from bagrepro.demo.store import generate_world, make_world
from bagrepro.demo.zoo import DEMO_ZOO, DemoModel
from bagrepro.core.errors import ConfigError

# 57 px images, guard 9 (the arrangement is invisible to BagNet-9 here), 12 classes, 3/2/2 per class
TINY = WorldConfig(seed=3, image_size=57, guard=9, train_per_class=3, val_per_class=2, test_per_class=2)


@pytest.fixture(scope="module")
def tiny_world():
    return generate_world(TINY)


def test_world_is_deterministic_in_its_seed(tiny_world):
    again = generate_world(TINY)
    other = generate_world(WorldConfig(**{**TINY.__dict__, "seed": 4}))
    for split in SPLITS:
        a, b, c = tiny_world.split(split), again.split(split), other.split(split)
        for field in ("images", "labels", "masks", "ids"):
            np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
        assert not np.array_equal(a.images, c.images)


def test_splits_shapes_dtypes_and_class_counts(tiny_world):
    size, classes = TINY.image_size, TINY.num_classes
    assert classes == 12 and tiny_world.class_groups.count("arrangement") == 3
    all_ids = []
    for split in SPLITS:
        data = tiny_world.split(split)
        n = classes * TINY.per_class(split)
        assert data.images.shape == (n, size, size, 3) and data.images.dtype == np.uint8
        assert data.masks.shape == (n, size, size) and data.masks.dtype == bool
        assert data.labels.shape == (n,) and data.labels.dtype == np.int64
        assert np.bincount(data.labels, minlength=classes).tolist() == [TINY.per_class(split)] * classes
        assert len(set(data.ids.tolist())) == n
        all_ids += data.ids.tolist()
        x = data.tensor()
        assert x.shape == (n, 3, size, size) and x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1
        z = data.normalized()
        expected = (x - torch.tensor(DEMO_PREPROCESS.mean)[:, None, None]) / torch.tensor(DEMO_PREPROCESS.std)[:, None, None]
        torch.testing.assert_close(z, expected)
        assert data.masks.reshape(n, -1).any(1).all()  # every image has evidence
    assert len(set(all_ids)) == len(all_ids)  # disjoint ids across splits


def test_images_look_like_images_not_noise(tiny_world):
    x = tiny_world.train.tensor()
    # neighbouring pixels are strongly correlated (smooth backgrounds, flat shapes)
    right = (x[..., :, 1:] - x[..., :, :-1]).abs().mean()
    shuffled = (x - x.flatten(2)[..., torch.randperm(x.shape[-1] * x.shape[-2])].reshape(x.shape)).abs().mean()
    assert right < 0.5 * shuffled


def _render_pair(config: WorldConfig, labels: np.ndarray, seed: int = 0):
    with_evidence = render.render_images(config, labels, np.random.default_rng(seed), evidence=True)
    without = render.render_images(config, labels, np.random.default_rng(seed), evidence=False)
    return with_evidence, without


def test_mask_is_exactly_where_the_class_evidence_was_drawn():
    labels = np.repeat(np.arange(TINY.num_classes), 4)
    (images, masks), (plain, no_masks) = _render_pair(TINY, labels)
    assert not no_masks.any()
    changed = (images != plain).any(-1)
    assert not (changed & ~masks).any()  # nothing outside the mask changed
    for c, kind in enumerate(TINY.class_kinds):
        chosen = labels == c
        covered = changed[chosen][masks[chosen]].mean()
        assert covered > 0.9, (TINY.class_names[c], covered)  # the mask is painted over (not a blank area)
    # evidence pixels differ in distribution from the rest (texture colours against backgrounds)
    texture = labels < TINY.textures
    inside = images[texture][masks[texture]].astype(float)
    outside = images[texture][~masks[texture]].astype(float)
    assert abs(inside.std(0) - outside.std(0)).max() > 10 or abs(inside.mean(0) - outside.mean(0)).max() > 10


def test_lattice_classes_differ_only_beyond_a_9px_window():
    first = TINY.textures
    labels = np.repeat(np.arange(first, first + TINY.lattices), 8)
    (_, masks), _ = _render_pair(TINY, labels, seed=1)
    dot, pitch = TINY.lattice_dot, TINY.lattice_dot + spec.DOT_GAP
    expected_step = {0: {(0, pitch)}, 1: {(pitch, 0)}, 2: {(pitch, pitch), (pitch, -pitch)}}
    densities = []
    for label, mask in zip(labels, masks):
        parts, count = ndimage.label(mask)
        corners = np.array([(b[0].start, b[1].start) for b in ndimage.find_objects(parts)
                            if b[0].stop - b[0].start == dot and b[1].stop - b[1].start == dot])
        assert len(corners) >= 5  # separate dot x dot squares (those cut by a border are left out)
        gaps = np.abs(corners[:, None] - corners[None]) - dot  # [k, k, 2] gaps between dots per axis
        np.fill_diagonal(gaps[..., 0], 10 ** 6)
        # no 9 px window holds pixels of two dots: on some axis they are at least 8 px apart
        assert (gaps.max(-1) >= spec.DOT_GAP).all()
        # the nearest neighbours lie along the class's direction
        steps = {tuple(int(v) for v in (b - a)) for a in corners for b in corners
                 if 0 < np.abs(b - a).max() <= pitch and (b - a)[0] >= 0 and not ((b - a)[0] == 0 and (b - a)[1] < 0)}
        assert steps <= expected_step[label - first] and steps, (label, steps)
        densities.append(mask.mean())
    densities = np.array(densities).reshape(TINY.lattices, -1).mean(1)
    assert densities.max() - densities.min() < 0.25 * densities.mean()  # the same dot density in every class


@pytest.mark.parametrize("config", [TINY, WorldConfig(train_per_class=1, val_per_class=1, test_per_class=1)])
def test_arrangement_parts_are_in_the_mask_apart_and_outside_the_border_zone(config):
    first = config.textures + config.lattices
    labels = np.repeat(np.arange(first, config.num_classes), 40)
    (images, masks), _ = _render_pair(config, labels, seed=2)
    size, guard = config.image_size, config.guard
    origin, spacing = arrangement_lattice(config)
    assert spacing % 8 == 0 and spacing - config.part_size >= guard - 1
    relations = {c: set() for c in range(first, config.num_classes)}
    for label, mask in zip(labels, masks):
        parts, count = ndimage.label(mask)
        assert count == 2
        boxes = ndimage.find_objects(parts)
        for box in boxes:
            for axis in box:
                assert axis.start >= guard and axis.stop <= size - guard  # outside the q px border zone
                assert axis.stop - axis.start == config.part_size
        (r0, c0), (r1, c1) = [(b[0].start, b[1].start) for b in boxes]
        # the smallest window holding pixels of both parts spans gap + 2 px on the widest axis:
        # more than guard, so no window of a BagNet-q with q <= guard sees both
        span = max(abs(r0 - r1), abs(c0 - c1)) - config.part_size + 2
        assert span > guard
        relations[label].add((abs(r0 - r1) // spacing, abs(c0 - c1) // spacing))
    # side by side: same row; stacked: same column; diagonal: neither
    assert relations[first] == {(0, 1)} and relations[first + 1] == {(1, 0)} and relations[first + 2] == {(1, 1)}


def test_arrangement_parts_have_the_same_position_distribution_in_every_class():
    config = TINY
    first = config.textures + config.lattices
    labels = np.repeat(np.arange(first, config.num_classes), 400)
    (_, masks), _ = _render_pair(config, labels, seed=5)
    origin, spacing = arrangement_lattice(config)
    histograms = []
    for c in range(first, config.num_classes):
        m = masks[labels == c]
        rows = m.any(2)  # [n, S]
        first_rows = rows.argmax(1)
        # phase of the top part relative to the stride-8 grid: uniform over 0..7 in every class
        histograms.append(np.bincount((first_rows - origin) % 8, minlength=8) / len(m))
        # each lattice cell holds a part in half of the images of every class
        cells = [m[:, origin + r * spacing:origin + r * spacing + 8 + config.part_size,
                   origin + k * spacing:origin + k * spacing + 8 + config.part_size].any((1, 2)).mean()
                 for r in (0, 1) for k in (0, 1)]
        assert np.allclose(cells, 0.5, atol=0.1), cells
    assert np.allclose(histograms, 1 / 8, atol=0.05)


def test_config_validation():
    with pytest.raises(ConfigError):
        WorldConfig(image_size=64)  # not 8k + 1
    with pytest.raises(ConfigError):
        WorldConfig(image_size=65, guard=17)  # the arrangement lattice does not fit
    with pytest.raises(ConfigError):
        WorldConfig(arrangements=1)


def test_world_cache_round_trip(tmp_path, monkeypatch):
    monkeypatch.setenv("BAGREPRO_CACHE", str(tmp_path))
    world = make_world(TINY)
    assert not store.world_path(TINY).parent.exists()  # nothing generated before a split is used
    assert len(world.test) and store.world_path(TINY, "test").exists() and not store.world_path(TINY, "train").exists()
    for split in SPLITS:
        world.split(split)
        path = store.world_path(TINY, split)
        assert path.exists() and path.parent.name == f"world-{TINY.fingerprint}"
    loaded = make_world(TINY)
    for split in SPLITS:
        for field in ("images", "labels", "masks", "ids"):
            np.testing.assert_array_equal(getattr(world.split(split), field), getattr(loaded.split(split), field))


def test_example_grid(tiny_world, tmp_path):
    path = render.save_example_grid(tiny_world, tmp_path / "grid.png", per_class=2)
    assert path.exists() and 0 < path.stat().st_size < 300_000


# ---- demo zoo ----------------------------------------------------------------------------------

@pytest.mark.parametrize("name", list(DEMO_ZOO))
def test_demo_architectures_build_and_run(name):
    torch.manual_seed(0)
    model = DEMO_ZOO[name].build(7).eval()
    assert not any(p.is_meta for p in model.parameters())
    with torch.no_grad():
        out = model(torch.randn(2, 3, 73, 73))
    assert out.shape == (2, 7) and torch.isfinite(out).all()
    assert not any(isinstance(m, nn.Flatten) for m in model.modules())
    if "bagnet" in name:
        q = int(name.removeprefix("demo_bagnet"))
        assert model.receptive_field == q == DEMO_ZOO[name].receptive_field and model.patch_logits(torch.zeros(1, 3, 73, 73)).shape[-1] == (73 - q) // 8 + 1
    if name == "demo_resnet50":
        from torchvision.models.resnet import Bottleneck
        blocks = [m for m in model.modules() if isinstance(m, Bottleneck)]
        assert blocks and all(isinstance(b.relu, nn.ReLU) for b in blocks)


# ---- training ----------------------------------------------------------------------------------

def test_training_is_reproducible_and_cached(tiny_world, tmp_path, monkeypatch):
    from bagrepro.demo import training

    monkeypatch.setenv("BAGREPRO_CACHE", str(tmp_path))
    recipe = training.TrainRecipe(epochs=1, batch_size=6, bn_recalibration_images=12, seed=1)
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    first = training.train_model("demo_bagnet9", tiny_world, recipe, progress=False)
    assert torch.equal(torch.rand(1), before)  # the caller's RNG is left alone
    second = training.train_model("demo_bagnet9", tiny_world, recipe, progress=False)
    for (key, a), (_, b) in zip(first.state_dict().items(), second.state_dict().items()):
        assert torch.equal(a, b), key
    other = training.train_model("demo_bagnet9", tiny_world, training.TrainRecipe(**{**recipe.__dict__, "seed": 2}),
                                 progress=False)
    assert not torch.equal(other.fc.weight, first.fc.weight)

    calls = []
    real_train = training.train_model
    monkeypatch.setattr(training, "train_model", lambda *a, **k: calls.append(1) or real_train(*a, **k))
    cached = training.get_trained("demo_bagnet9", tiny_world, recipe, progress=False)
    path = training.model_path("demo_bagnet9", tiny_world, recipe)
    assert len(calls) == 1 and path.exists() and path.parent == tmp_path / "demo-zoo"
    assert not cached.training
    for key, value in first.state_dict().items():
        assert torch.equal(cached.state_dict()[key], value), key
    record = training.read_training_record("demo_bagnet9", tiny_world, recipe)
    assert record["train_seconds"] > 0 and set(record["val_accuracy"]) >= {"all", "local", "arrangement"}

    loaded = training.get_trained("demo_bagnet9", tiny_world, recipe, progress=False)  # from the cache
    assert len(calls) == 1 and not loaded.training
    for key, value in first.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    training.get_trained("demo_bagnet9", tiny_world, recipe, force=True, progress=False)
    assert len(calls) == 2
    # a different recipe is a different cache entry
    assert training.model_path("demo_bagnet9", tiny_world, training.TrainRecipe(epochs=2)) != path


def test_evaluation_helpers(tiny_world):
    from bagrepro.demo import training

    class Oracle(nn.Module):  # predicts class 0 everywhere
        def forward(self, x):
            return torch.nn.functional.one_hot(torch.zeros(len(x), dtype=torch.long), tiny_world.num_classes).float()

    test = tiny_world.test
    accuracy = training.evaluate(Oracle(), test.normalized(), test.label_tensor())
    assert accuracy == pytest.approx(1 / tiny_world.num_classes)
    groups = training.group_accuracies(Oracle(), tiny_world, "test")
    assert groups["arrangement"] == 0 and groups["all"] == pytest.approx(accuracy)
    with pytest.raises(ConfigError):
        training.get_trained("no_such_model", tiny_world)


def test_demo_zoo_entries_name_a_known_family_and_a_role():
    recipe = DEMO_ZOO["demo_vgg16"].recipe
    with pytest.raises(ConfigError, match="family 'mlp' is unknown; families: bagnet, vgg"):
        DemoModel("mlp", {}, recipe, ("vgg16",), "x")
    with pytest.raises(ConfigError, match="paper role"):
        DemoModel("vgg", {}, recipe, (), "x")
    assert DEMO_ZOO["demo_vgg16"].architecture["family"] == "vgg"
    assert isinstance(DEMO_ZOO["demo_bagnet9"].build(12), nn.Module)


# The cache keys of the demo world and the demo zoo as every release so far has written them: a change
# here orphans every user's cache (minutes of retraining), so it must be deliberate (bump
# GENERATOR_VERSION or TRAINING_VERSION, or change a recipe, and update these).
# (Changed deliberately once: the 121 px world of issue 11, whose BagNet-33 is blind to arrangements.)
PINNED_WORLD = "a0558ed4f4c0"
PINNED_MODELS = {"demo_bagnet9": "145e98e6fc38", "demo_bagnet17": "1c0e523f1e3c", "demo_bagnet33": "f3c9a12c20a4",
                 "demo_vgg16": "347387159251", "demo_resnet50": "66a0f40f1103", "demo_densenet169": "39d88d5c17a2"}


def test_cache_keys_are_pinned(tmp_path, monkeypatch):
    from bagrepro.demo import training

    monkeypatch.setenv("BAGREPRO_CACHE", str(tmp_path))
    world = store.DemoWorld(store.DEMO_WORLD, {})  # the keys need the config only
    assert store.world_path(store.DEMO_WORLD) == tmp_path / f"world-{PINNED_WORLD}" / "test.npz"
    assert {name: training.model_key(name, world, training.default_recipe(name)) for name in DEMO_ZOO} == PINNED_MODELS
    assert training.model_path("demo_bagnet9", world) == tmp_path / "demo-zoo" / f"demo_bagnet9-{PINNED_MODELS['demo_bagnet9']}.pt"


def test_shipped_zoo_matches_the_code():
    """The weights shipped in the repository are those the code's recipes, world and architectures
    name: one file per demo model under its current key, its SHA-256 as recorded, the record's recipe,
    world and architecture the code's; nothing stale beside them. Fails after a change of a recipe, the
    world or an architecture until ``python bench/demo_zoo.py --retrain --ship`` is run."""
    from dataclasses import asdict

    from bagrepro.core.cache import file_sha256
    from bagrepro.demo import training

    expected = set()
    for name, entry in DEMO_ZOO.items():
        path = training.shipped_path(name)
        assert path.is_file(), f"{name}: no shipped weights for key {path.stem} (run bench/demo_zoo.py --retrain --ship)"
        record = training.read_record(path)
        assert record is not None and record["sha256"] == file_sha256(path)
        assert record["recipe"] == asdict(entry.recipe) and record["architecture"] == entry.architecture
        assert record["world"] == asdict(store.DEMO_WORLD) and record["world_fingerprint"] == store.DEMO_WORLD.fingerprint
        expected |= {path.name, path.with_suffix(".json").name}
    assert {p.name for p in training.SHIPPED_DIR.iterdir()} == expected  # no stale weights shipped


def test_shipped_weights_are_used_before_training_and_checked(tmp_path, monkeypatch, capsys):
    """An empty cache trains nothing when the shipped weights fit; a damaged shipped file is said in
    one line and trained again; --retrain (force) trains whatever is shipped."""
    from bagrepro.demo import training

    monkeypatch.setenv("BAGREPRO_CACHE", str(tmp_path / "cache"))
    shipped = tmp_path / "trained"
    monkeypatch.setattr(training, "SHIPPED_DIR", shipped)
    tiny = store.make_world(TINY)
    recipe = training.TrainRecipe(epochs=1, bn_recalibration_images=8)
    trained = training.get_trained("demo_bagnet9", tiny, recipe, progress=False)  # trains into the cache
    cached = training.model_path("demo_bagnet9", tiny, recipe)
    shipped.mkdir()
    for source in (cached, cached.with_suffix(".json")):
        (shipped / source.name).write_bytes(source.read_bytes())
    cached.unlink()

    def must_not_train(*args, **kwargs):
        raise AssertionError("trained although shipped weights fit")

    monkeypatch.setattr(training, "train_model", must_not_train)
    loaded = training.get_trained("demo_bagnet9", tiny, recipe, progress=False)
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), trained.state_dict().values()))
    assert not cached.exists()  # read where it lies, not copied
    with pytest.raises(AssertionError, match="shipped weights fit"):
        training.get_trained("demo_bagnet9", tiny, recipe, progress=False, force=True)
    damaged = shipped / cached.name
    damaged.write_bytes(damaged.read_bytes()[:-10] + bytes(10))
    with pytest.raises(AssertionError, match="shipped weights fit"):
        training.get_trained("demo_bagnet9", tiny, recipe, progress=False)
    assert "the shipped trained model" in capsys.readouterr().err
