"""ImageNet validation layouts, generic image folders, RGB loading and balanced subsets.

Every layout is built in tmp_path from a few tiny synthetic images, with the same ground truth, so each
test can check that the labels are the 1000-way index of the true synset (its place in the sorted list
of the 1000 ILSVRC-2012 synsets), although each folder holds only three of them.
"""

from collections import Counter

import numpy as np
import pytest
import scipy.io
from PIL import Image

from bagrepro.data.images import open_rgb
from bagrepro.data.imagenet import (
    LAYOUT_DESCRIPTIONS,
    LAYOUTS,
    ImageDataset,
    ImageRecord,
    balanced_subset,
    detect_layout,
    image_folder,
    load_imagenet_val,
)
from bagrepro.data.synsets import IMAGENET_WNIDS
from bagrepro.core.errors import ConfigError, DataError

WNIDS = ["n01440764", "n01443537", "n02102040"]  # sorted; 1000-way indices 0, 1, 217
INDEX = [IMAGENET_WNIDS.index(w) for w in WNIDS]
# Ground truth of images ILSVRC2012_val_00000001 .. 00000009, as indices into WNIDS.
TRUTH = [2, 0, 1, 1, 2, 0, 0, 1, 2]
# Devkit ids deliberately NOT in sorted-wnid order: id 1 is the last of the 1000 sorted wnids, and so on.
DEVKIT_ID = {w: 1000 - i for i, w in enumerate(IMAGENET_WNIDS)}
SIZE = (20, 16)


def val_name(number):
    return f"ILSVRC2012_val_{number:08d}"


def write_jpeg(path, number):
    """A small JPEG; image 2 is CMYK and image 3 is greyscale, the rest RGB."""
    path.parent.mkdir(parents=True, exist_ok=True)
    colour = (number * 25 % 256, 100, 200)
    image = Image.new("RGB", SIZE, colour)
    if number == 2:
        image = image.convert("CMYK")
    elif number == 3:
        image = image.convert("L")
    image.save(path, "JPEG")


def write_flat(folder):
    for number in range(1, len(TRUTH) + 1):
        write_jpeg(folder / f"{val_name(number)}.JPEG", number)


def write_wnid_folders(folder):
    for number, label in enumerate(TRUTH, start=1):
        write_jpeg(folder / WNIDS[label] / f"{val_name(number)}.JPEG", number)


def write_loc_csv(path, extra_rows=()):
    lines = ["ImageId,PredictionString"]
    for number, label in enumerate(TRUTH, start=1):
        wnid = WNIDS[label]
        lines.append(f"{val_name(number)},{wnid} 1 2 10 12 {wnid} 3 3 15 14 ")
    lines.extend(extra_rows)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


def write_devkit(meta_path, truth_path):
    """A meta.mat of the 1000 leaf synsets whose ids are not in sorted-wnid order, plus a non-leaf
    synset that sorts first."""
    rows = [(DEVKIT_ID[w], w, f"words for {w}", 0) for w in reversed(IMAGENET_WNIDS)]
    rows.append((1001, "n00001740", "entity", 3))
    fields = ("ILSVRC2012_ID", "WNID", "words", "num_children")
    synsets = np.array(rows, dtype=[(field, "O") for field in fields])
    meta_path.parent.mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(meta_path, {"synsets": synsets})
    truth_path.parent.mkdir(parents=True, exist_ok=True)
    truth_path.write_text("".join(f"{DEVKIT_ID[WNIDS[label]]}\n" for label in TRUTH))


EXPECTED = {val_name(n): INDEX[label] for n, label in enumerate(TRUTH, start=1)}


def check_imagenet(dataset, layout):
    """Layout, classes, labels, ids, ordering and RGB output all as expected."""
    assert dataset.layout == layout
    assert dataset.classes == list(IMAGENET_WNIDS)  # the 1000-way class list, whatever the folder holds
    ids = [r.image_id for r in dataset.records]
    assert ids == sorted(EXPECTED)
    assert {r.image_id: r.label for r in dataset.records} == EXPECTED
    for index in range(len(dataset)):
        image, label, image_id = dataset[index]
        assert image.mode == "RGB" and image.size == SIZE
        assert label == EXPECTED[image_id]
        assert dataset.records[index].path.stem == image_id


@pytest.mark.parametrize("inside_val", [False, True])
def test_imagefolder(tmp_path, inside_val):
    write_wnid_folders(tmp_path / "val" if inside_val else tmp_path)
    (tmp_path / "notes.txt").write_text("not an image")
    assert detect_layout(tmp_path) == "imagefolder"
    check_imagenet(load_imagenet_val(tmp_path), "imagefolder")


def test_torchvision_imagenet(tmp_path):
    (tmp_path / "meta.bin").write_bytes(b"marker")
    write_wnid_folders(tmp_path / "val")
    assert detect_layout(tmp_path) == "torchvision_imagenet"
    check_imagenet(load_imagenet_val(tmp_path), "torchvision_imagenet")


@pytest.mark.parametrize("where", ["root", "parent", "kaggle"])
def test_loc_solution_csv(tmp_path, where):
    if where == "kaggle":  # root is Kaggle's download folder; images in ILSVRC/Data/CLS-LOC/val
        root, images = tmp_path, tmp_path / "ILSVRC" / "Data" / "CLS-LOC" / "val"
        csv_path = tmp_path / "LOC_val_solution.csv"
    else:
        root = images = tmp_path / "val"
        csv_path = (root if where == "root" else tmp_path) / "LOC_val_solution.csv"
    write_flat(images)
    write_loc_csv(csv_path)
    assert detect_layout(root) == "loc_solution_csv"
    check_imagenet(load_imagenet_val(root), "loc_solution_csv")


def test_loc_csv_labels_are_1000_way_and_unknown_synsets_are_refused(tmp_path):
    """Formerly the CSV's own synsets were the class list (labels 0..k-1); now the labels are 1000-way
    whatever the CSV holds, and a synset outside the 1000 is refused in one line naming it."""
    write_flat(tmp_path)
    write_loc_csv(tmp_path / "LOC_val_solution.csv", [f"{val_name(10)},n15075141 1 1 5 5"])
    dataset = load_imagenet_val(tmp_path)
    assert dataset.classes == list(IMAGENET_WNIDS)
    assert {r.image_id: r.label for r in dataset.records} == EXPECTED
    write_loc_csv(tmp_path / "LOC_val_solution.csv", [f"{val_name(10)},n01000000 1 1 5 5"])
    with pytest.raises(DataError) as info:
        load_imagenet_val(tmp_path)
    assert "n01000000" in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("placement", ["devkit_in_parent", "files_in_root", "truth_in_devkit"])
def test_devkit_ground_truth(tmp_path, placement):
    root = tmp_path / "val"
    write_flat(root)
    devkit = tmp_path / "ILSVRC2012_devkit_t12" / "data"
    truth_name = "ILSVRC2012_validation_ground_truth.txt"
    if placement == "devkit_in_parent":
        write_devkit(devkit / "meta.mat", tmp_path / truth_name)
    elif placement == "files_in_root":
        write_devkit(root / "meta.mat", root / truth_name)
    else:
        inner = root / "ILSVRC2012_devkit_t12" / "data"
        write_devkit(inner / "meta.mat", inner / truth_name)
    assert detect_layout(root) == "devkit_ground_truth"
    dataset = load_imagenet_val(root)
    check_imagenet(dataset, "devkit_ground_truth")
    # Using the devkit id as the class index would give different labels.
    assert [r.label for r in dataset.records] != [DEVKIT_ID[WNIDS[t]] - 1 for t in TRUTH]
    assert [r.label for r in dataset.records] == [INDEX[t] for t in TRUTH]


def test_detection_order(tmp_path):
    """torchvision beats a plain image folder; the Kaggle CSV beats the devkit."""
    tv = tmp_path / "tv"
    (tv / "val").mkdir(parents=True)
    (tv / "meta.bin").write_bytes(b"")
    write_wnid_folders(tv / "val")
    assert detect_layout(tv) == "torchvision_imagenet"
    assert detect_layout(tv / "val") == "imagefolder"

    flat = tmp_path / "flat"
    write_flat(flat)
    write_devkit(flat / "meta.mat", flat / "ILSVRC2012_validation_ground_truth.txt")
    assert detect_layout(flat) == "devkit_ground_truth"
    write_loc_csv(flat / "LOC_val_solution.csv")
    assert detect_layout(flat) == "loc_solution_csv"


def test_no_layout_lists_every_layout(tmp_path):
    write_flat(tmp_path)  # flat images without any labels
    with pytest.raises(DataError) as info:
        load_imagenet_val(tmp_path)
    message = str(info.value)
    assert "\n" not in message and str(tmp_path) in message
    for layout in LAYOUTS:
        assert layout in message and LAYOUT_DESCRIPTIONS[layout] in message
    assert set(LAYOUTS) == set(LAYOUT_DESCRIPTIONS)


def test_missing_root(tmp_path):
    missing = tmp_path / "nowhere"
    for call in (detect_layout, load_imagenet_val, image_folder):
        with pytest.raises(DataError, match="does not exist") as info:
            call(missing)
        assert str(missing) in str(info.value)


def test_csv_without_row_for_an_image(tmp_path):
    write_flat(tmp_path)
    write_loc_csv(tmp_path / "LOC_val_solution.csv")
    write_jpeg(tmp_path / f"{val_name(42)}.JPEG", 42)
    with pytest.raises(DataError, match=val_name(42)):
        load_imagenet_val(tmp_path)


def test_corrupt_images_name_the_file(tmp_path):
    write_wnid_folders(tmp_path)
    truncated = tmp_path / WNIDS[TRUTH[0]] / f"{val_name(1)}.JPEG"
    data = truncated.read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    not_image = tmp_path / WNIDS[TRUTH[3]] / f"{val_name(4)}.JPEG"
    not_image.write_text("this is not a JPEG")
    dataset = load_imagenet_val(tmp_path)
    for bad in (truncated, not_image):
        index = [r.path for r in dataset.records].index(bad)
        with pytest.raises(DataError) as info:
            dataset[index]
        assert str(bad) in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(DataError, match="not found"):
        open_rgb(tmp_path / "missing.jpg")


def test_open_rgb_converts_modes(tmp_path):
    images = {
        "cmyk.jpg": Image.new("CMYK", SIZE, (0, 255, 255, 0)),
        "grey.png": Image.new("L", SIZE, 77),
        "palette.png": Image.new("RGB", SIZE, (10, 20, 30)).convert("P"),
        "alpha.png": Image.new("RGBA", SIZE, (1, 2, 3, 4)),
        "deep.png": Image.fromarray(np.full(SIZE[::-1], 65535, dtype=np.uint16)),
    }
    for name, image in images.items():
        image.save(tmp_path / name)
        rgb = open_rgb(tmp_path / name)
        assert rgb.mode == "RGB" and rgb.size == SIZE, name
    assert open_rgb(tmp_path / "grey.png").getpixel((0, 0)) == (77, 77, 77)
    assert open_rgb(tmp_path / "alpha.png").getpixel((0, 0)) == (1, 2, 3)
    assert open_rgb(tmp_path / "deep.png").getpixel((0, 0)) == (255, 255, 255)
    half = Image.fromarray(np.full(SIZE[::-1], 32768, dtype=np.uint16))
    half.save(tmp_path / "half.png")
    assert open_rgb(tmp_path / "half.png").getpixel((0, 0)) == (128, 128, 128)  # scaled, not clipped
    r, g, b = open_rgb(tmp_path / "cmyk.jpg").getpixel((0, 0))
    assert r > 200 and g < 60 and b < 60  # CMYK (0, 255, 255, 0) is red


def test_generic_image_folder(tmp_path):
    files = {
        "cats/a.JPG": "JPEG",
        "cats/b.png": "PNG",
        "cats/nested/c.bmp": "BMP",
        "Dogs/d.webp": "WEBP",
        "Dogs/e.TIF": "TIFF",
        "zebra stripes/f.jpeg": "JPEG",
    }
    for name, fmt in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", SIZE, (9, 9, 9)).save(tmp_path / name, fmt)
    (tmp_path / "cats" / "readme.txt").write_text("skip me")
    (tmp_path / "cats" / "._a.JPG").write_bytes(b"macOS resource fork")
    dataset = image_folder(tmp_path)
    assert dataset.classes == ["Dogs", "cats", "zebra stripes"]
    expected = {
        "Dogs/d": 0, "Dogs/e": 0, "cats/a": 1, "cats/b": 1, "cats/nested/c": 1, "zebra stripes/f": 2,
    }
    assert [r.image_id for r in dataset.records] == sorted(expected)
    assert {r.image_id: r.label for r in dataset.records} == expected
    assert all(dataset[i][0].mode == "RGB" for i in range(len(dataset)))


def test_generic_image_folder_without_classes(tmp_path):
    Image.new("RGB", SIZE).save(tmp_path / "loose.png")
    with pytest.raises(DataError, match="no class folders"):
        image_folder(tmp_path)


def test_transform_is_applied_and_settable(tmp_path):
    write_wnid_folders(tmp_path)
    dataset = load_imagenet_val(tmp_path, transform=lambda image: image.size)
    assert dataset[0][0] == SIZE
    dataset.transform = lambda image: image.getpixel((0, 0))
    assert isinstance(dataset[0][0], tuple) and len(dataset[0][0]) == 3


def make_records(sizes):
    return [
        ImageRecord(path=None, label=label, image_id=f"c{label}_{i:03d}")
        for label, size in enumerate(sizes)
        for i in range(size)
    ]


def test_balanced_subset_properties():
    records = make_records([10, 10, 10])
    subset = balanced_subset(records, 9, seed=0)
    assert Counter(r.label for r in subset) == {0: 3, 1: 3, 2: 3}
    assert [r.image_id for r in subset] == sorted(r.image_id for r in subset)
    assert subset == balanced_subset(list(reversed(records)), 9, seed=0)  # input order does not matter
    assert any(balanced_subset(records, 9, seed=s) != subset for s in range(1, 4))
    assert set(balanced_subset(records, 3, seed=0)) <= set(subset)  # smaller limits nest
    assert balanced_subset(records, 100, seed=0) == sorted(records, key=lambda r: r.image_id)
    assert balanced_subset(records, None, seed=5) == sorted(records, key=lambda r: r.image_id)
    # Uneven classes: the small class gives what it has, the rest is shared out.
    uneven = balanced_subset(make_records([1, 5, 5]), 7, seed=1)
    assert Counter(r.label for r in uneven) == {0: 1, 1: 3, 2: 3}
    # Round-robin in class order: a limit below the class count takes the first classes.
    assert Counter(r.label for r in balanced_subset(records, 2, seed=0)) == {0: 1, 1: 1}
    with pytest.raises(ConfigError):
        balanced_subset(records, 0, seed=0)


def test_limit_through_loader(tmp_path):
    write_wnid_folders(tmp_path)
    dataset = load_imagenet_val(tmp_path, limit=6, seed=0)
    assert isinstance(dataset, ImageDataset) and len(dataset) == 6
    assert Counter(r.label for r in dataset.records) == {INDEX[0]: 2, INDEX[1]: 2, INDEX[2]: 2}
    assert dataset.records == load_imagenet_val(tmp_path, limit=6, seed=0).records
    others = [load_imagenet_val(tmp_path, limit=6, seed=s).records for s in range(1, 6)]
    assert any(o != dataset.records for o in others)
    assert dataset.classes == list(IMAGENET_WNIDS)  # a subset keeps the full class list


def test_record_is_frozen():
    record = ImageRecord(path=None, label=0, image_id="x")
    with pytest.raises(Exception):
        record.label = 1
