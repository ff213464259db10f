"""The run's options (:class:`RunOptions`: what the CLI resolves), its device, and its images: the
image sources a profile's ``data`` names (generated, an ImageNet layout, any ImageFolder, or one a
plugin registers) and ``--check-data``."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from bagrepro.core.errors import ConfigError
from bagrepro.data.check import find_unreadable
from bagrepro.data.imagenet import load_imagenet_val, load_images
from bagrepro.data.imagesets import FileImageSet, default_workers, smoke_images
from bagrepro.harness import tuning
from bagrepro.harness.profiles import Profile, activate, get_profile
from bagrepro.harness.registry import REPO_ROOT
from bagrepro.models import get_spec




@dataclass
class RunOptions:
    """Everything the CLI resolves; see ``run_all.py --help``."""

    profile: str
    experiments: list[str] = field(default_factory=list)
    models: list[str] | None = None
    data: str | None = None
    limit: int | None = None
    classes: list[int] | None = None
    device: str = "auto"
    #: images per batch (None: the profile's; 'auto': chosen from memory, :func:`bagrepro.harness.plan.choose_batch_size`)
    batch_size: int | str | None = None
    seed: int = 0
    out: Path = REPO_ROOT
    force: bool = False
    #: train the models again (demo zoo, --train) instead of loading shipped or cached weights
    retrain: bool = False
    quiet: bool = False
    weights_dir: str | None = None
    figures_only: bool = False
    #: decode every image of --data, list the unreadable ones, exit (see :func:`check_data`)
    check_data: bool = False
    #: check once before the first experiment and leave the unreadable images out of the run
    skip_unreadable: bool = False
    #: custom profile: train the zoo on --data's train/ and val/ splits first (:mod:`bagrepro.harness.tuning`)
    train: bool = False
    #: with --train: start from random weights instead of ImageNet's
    from_scratch: bool = False
    #: with --train: KEY=VALUE overrides of the training recipe
    recipe: list[str] | None = None
    #: print what the run would compute and an estimate of its time, compute nothing (:mod:`bagrepro.harness.plan`)
    plan: bool = False
    #: arithmetic of the forward-only passes (inference copies): 'fp32' (exact, the default) or 'bf16'
    precision: str = "fp32"


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise ConfigError(f"unknown device '{name}' ({error})") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device '{name}' asked for, but torch sees no CUDA GPU on this machine")
    return device


#: what a run without --skip-unreadable says after the one line of an unreadable image
UNREADABLE_HINT = ("; run_all.py --check-data lists every unreadable file at once, "
                   "--skip-unreadable runs without them")
#: beside each experiment's CSVs when --skip-unreadable left images out (image_id, path, reason)
SKIPPED_CSV = "skipped.csv"


def _num_images(options: RunOptions, profile: Profile) -> int | None:
    return options.limit if options.limit is not None else profile.num_images


def _file_dataset(options: RunOptions, profile: Profile):
    """The records of --data (after --limit) for the file image sources, without decoding anything."""
    if options.data is None:
        raise ConfigError(f"profile '{profile.name}' needs --data DIR (an image folder)")
    if options.train:  # the experiments of a --train run see DIR's test split, labelled by its train split
        return tuning.evaluation_dataset(options.data, limit=_num_images(options, profile), seed=options.seed)
    # any --data: an ImageNet layout (1000-way labels, whatever synsets it holds) or else an ImageFolder
    loader = load_imagenet_val if profile.data == "imagenet" else load_images
    return loader(options.data, limit=_num_images(options, profile), seed=options.seed)


def _files(ctx: "RunContext"):
    """--data: an ImageNet validation layout (profile data 'imagenet') or any ImageFolder ('folder')."""
    dataset = _file_dataset(ctx.options, ctx.profile)
    preprocess = get_spec(ctx.model_names[0]).preprocess
    return FileImageSet(dataset, preprocess.pil_transform(), dataset.describe(ctx.options.data), hint=UNREADABLE_HINT,
                        side=preprocess.crop, pin_memory=ctx.device.type == "cuda")


def _smoke(ctx: "RunContext"):
    ctx.refuse_data()
    return smoke_images(ctx.num_images, ctx.profile.image_size, ctx.profile.num_classes, ctx.seed)


#: data kind of a profile -> ``load(ctx) -> image set`` (TensorImageSet or FileImageSet);
#: a plugin adds its kind with :func:`register_image_source`
IMAGE_SOURCES: dict[str, Callable[["RunContext"], object]] = {"imagenet": _files, "folder": _files, "smoke": _smoke}


def register_image_source(kind: str, load: Callable[["RunContext"], object]) -> None:
    """Let profiles whose ``data`` is ``kind`` load their images with ``load(ctx)``."""
    if kind in IMAGE_SOURCES and IMAGE_SOURCES[kind] is not load:
        raise ConfigError(f"image source '{kind}' is registered twice")
    IMAGE_SOURCES[kind] = load


def _image_source(profile: Profile) -> Callable[["RunContext"], object]:
    try:
        return IMAGE_SOURCES[profile.data]
    except KeyError:
        raise ConfigError(f"profile '{profile.name}' has unknown data kind '{profile.data}'; "
                          f"kinds: {', '.join(IMAGE_SOURCES)}") from None


def _refuse_data(options: RunOptions, profile: Profile) -> None:
    if options.data is not None:
        raise ConfigError(f"profile '{profile.name}' makes its own images; use --profile paper or "
                          f"custom with --data")


def check_data(options: RunOptions, log=print) -> int:
    """--check-data: decode every image of the run's data (--data after --limit) fully, in parallel
    (a header alone does not reveal a truncated JPEG); log each unreadable file as ``<path>: <reason>``,
    then ``checked N images in DIR: K unreadable``. Returns the exit status: 0 when every image
    decodes, 2 when any does not. Writes nothing; needs no model. A profile that makes its own images
    has nothing to check (0)."""
    profile = activate(get_profile(options.profile))
    if _image_source(profile) is not _files:
        _refuse_data(options, profile)
        log(f"profile '{profile.name}' makes its own images: there are no image files to check")
        return 0
    if options.train:  # every split the run reads
        records = [r for split in tuning.load_your_data(options.data).splits.values() for r in split.records]
    else:
        records = _file_dataset(options, profile).records
    bad = find_unreadable(records, default_workers(), quiet=options.quiet)
    for item in bad:
        log(f"{item.path}: {item.reason}")
    log(f"checked {len(records)} images in {options.data}: {len(bad)} unreadable")
    return 2 if bad else 0
