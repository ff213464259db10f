"""The runner: experiment registry, the run context every experiment receives, and the stages.

An experiment module in ``experiments/`` defines ``EXPERIMENT = Experiment(...)`` with ``run(ctx)``
(compute; write its tables through ``ctx.write_csv``) and ``make_figures(results_dir, figures_dir)``
(read CSVs only; write figures). Its ``settings`` is a frozen dataclass whose defaults are the
paper's protocol; the runner applies the profile's overrides (checked: :mod:`bagrepro.settings`)
and hands the result over as ``ctx.settings``. ``needs`` names experiments whose results it reuses:
those run first when both are selected (no experiment imports another; what several share, such as
clean predictions, is a library service, :mod:`bagrepro.predictions`). An experiment that computes
its units through ``ctx.map_units`` can declare ``shardable=True``: under torchrun its units are
then dealt to all processes (see :mod:`bagrepro.distributed`). The runner names and times every
experiment, and decides which process writes (rank 0): experiments never ask.
"""

from __future__ import annotations

import copy
import dataclasses
import importlib
import pkgutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from tqdm.auto import tqdm

from . import distributed, plan, tuning
from . import settings as settings_schema
from .cache import config_hash
from .data.check import Unreadable, find_unreadable
from .data.imagenet import load_imagenet_val, load_images
from .data.imagesets import FileImageSet, default_workers, smoke_images
from .errors import ConfigError, DataError, MissingRoleError
from .lock import output_lock, remove_stale_temporaries
from .models import create_model, get_spec, resolve_model_names
from .models.fast import fuse_for_inference, with_precision
from .passes import PassCounter
from .profiles import Profile, activate, get_profile
from .report import build_report
from .results import (
    UnitStore,
    git_commit,
    meta_path,
    package_versions,
    read_unit_frames,
    write_csv,
    write_npz,
)
from .settings import NoSettings
from .settings import provenance as settings_provenance

REPO_ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Experiment:
    """One experiment of the paper. ``paper_ref`` names the figure/table it reproduces; ``question``
    says in one sentence what it tests; ``report_table(results_dir)`` returns the comparison table
    of the report (columns ending in ``ours``, ``paper``, ``difference``; CSVs only), or None.
    ``settings``: a frozen dataclass type whose defaults are the paper's protocol. ``needs``: names
    of experiments whose results this one reuses (they run first when both are selected)."""

    name: str
    title: str
    paper_ref: str
    run: Callable[["RunContext"], None]
    make_figures: Callable[[Path, Path], list[Path]]
    question: str = ""
    report_table: Callable[[Path], "object"] | None = None
    settings: type = NoSettings
    needs: tuple[str, ...] = ()
    #: under torchrun, its units are dealt to all ranks (it must compute them through
    #: ``ctx.map_units``); an experiment that is not shardable runs on rank 0 alone
    shardable: bool = False
    #: ``plan(ctx) -> list[bagrepro.plan.Work]``: the work a run would do, without doing it (--plan)
    plan: Callable[["RunContext"], list] | None = None
    #: False for an extension beyond the paper's figures (the attribution benchmark, which the paper
    #: only proposes): it runs when named or with ``--experiment all``, not in a plain run, so that the
    #: default run stays the paper's experiments and keeps its time (the demo's cold run: minutes)
    in_default_run: bool = True
    #: ``plan_notes(ctx) -> list[str]``: lines --plan prints after the estimate (e.g. the images a
    #: comparison needs to resolve the paper's differences)
    plan_notes: Callable[["RunContext"], list] | None = None
    #: what the paper leaves open that is not a setting, and what we do there, each labelled
    #: "ours" or "our reading" (the settings say theirs in their fields: bagrepro.settings)
    open_choices: tuple[str, ...] = ()


_EXPERIMENTS: dict[str, Experiment] = {}


def register_experiment(experiment: Experiment) -> Experiment:
    if experiment.name in _EXPERIMENTS and _EXPERIMENTS[experiment.name] is not experiment:
        raise ConfigError(f"experiment name '{experiment.name}' is registered twice")
    if not (dataclasses.is_dataclass(experiment.settings) and experiment.settings.__dataclass_params__.frozen):
        raise ConfigError(f"experiment '{experiment.name}': settings must be a frozen dataclass")
    _EXPERIMENTS[experiment.name] = experiment
    return experiment


def _in_dependency_order(experiments: dict[str, Experiment]) -> list[Experiment]:
    """Every experiment after those it ``needs``; otherwise by name (a stable, documented order)."""
    ordered: list[Experiment] = []
    visiting: set[str] = set()

    def visit(name: str, wanted_by: str | None) -> None:
        if any(e.name == name for e in ordered):
            return
        if name not in experiments:
            raise ConfigError(f"experiment '{wanted_by}' needs '{name}', which is not registered")
        if name in visiting:
            raise ConfigError(f"experiments need each other in a cycle through '{name}'")
        visiting.add(name)
        for need in experiments[name].needs:
            visit(need, name)
        visiting.discard(name)
        ordered.append(experiments[name])

    for name in sorted(experiments):
        visit(name, None)
    return ordered


def discover_experiments() -> dict[str, Experiment]:
    """Import every module of the ``experiments`` package; return the registry in run order."""
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))
    package = importlib.import_module("experiments")
    for module_info in pkgutil.iter_modules(package.__path__):
        module = importlib.import_module(f"experiments.{module_info.name}")
        if hasattr(module, "EXPERIMENT"):
            register_experiment(module.EXPERIMENT)
    return {e.name: e for e in _in_dependency_order(_EXPERIMENTS)}


def select_experiments(names: list[str]) -> list[Experiment]:
    """The named experiments in run order; none named: those ``in_default_run`` (the paper's);
    'all': every registered one, extensions included."""
    registry = discover_experiments()
    if not names:
        return [e for e in registry.values() if e.in_default_run]
    if "all" in names:
        return list(registry.values())
    unknown = [n for n in names if n not in registry]
    if unknown:
        raise ConfigError(f"unknown experiment '{unknown[0]}'; experiments: {', '.join(registry)}, all")
    return [e for e in registry.values() if e.name in names]


def experiment_settings(experiment: Experiment, profile: Profile):
    """The experiment's settings on ``profile``: its paper defaults with the profile's overrides."""
    return settings_schema.resolve(experiment.settings, profile.overrides(experiment.name),
                                   f"profile '{profile.name}', experiment '{experiment.name}'")


def check_profile(profile: Profile) -> None:
    """Every experiment the profile sets must exist and every setting must fit (ConfigError)."""
    registry = discover_experiments()
    for name in profile.settings:
        if name not in registry:
            raise ConfigError(f"profile '{profile.name}' sets unknown experiment '{name}'; "
                              f"experiments: {', '.join(registry)}")
        experiment_settings(registry[name], profile)


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
    #: images per batch (None: the profile's; 'auto': chosen from memory, :func:`bagrepro.plan.choose_batch_size`)
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
    #: custom profile: train the zoo on --data's train/ and val/ splits first (:mod:`bagrepro.tuning`)
    train: bool = False
    #: with --train: start from random weights instead of ImageNet's
    from_scratch: bool = False
    #: with --train: KEY=VALUE overrides of the training recipe
    recipe: list[str] | None = None
    #: print what the run would compute and an estimate of its time, compute nothing (:mod:`bagrepro.plan`)
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


class RunContext:
    """What an experiment sees: the profile, the resolved models, images, device, and result I/O."""

    def __init__(self, options: RunOptions):
        self.options = options
        self.profile: Profile = activate(get_profile(options.profile))  # its plugin registers models, images
        self.device = resolve_device(options.device)
        if self.device.type == "cuda" and distributed.is_distributed():  # torchrun: one GPU per process
            self.device = torch.device("cuda", distributed.local_rank())
            torch.cuda.set_device(self.device)
        self.seed = options.seed
        #: images per batch (with --batch-size auto: the profile's until the runner has chosen one)
        self.batch_size = options.batch_size if isinstance(options.batch_size, int) else self.profile.batch_size
        self.force = options.force
        self.quiet = options.quiet or not distributed.is_main()  # under torchrun, rank 0 speaks
        #: the models trained on --data in this run (--train), or None
        self.tuned: tuning.TunedZoo | None = None
        if options.train:
            if self.profile.name != "custom":
                raise ConfigError(f"--train trains the zoo on --data DIR: use it with --profile custom, "
                                  f"not '{self.profile.name}'")
            self.tuned = tuning.prepare(options.data, options.models, options.recipe, options.from_scratch,
                                        self.device, options.skip_unreadable, self.quiet, log=self.say)
            self.profile = self.tuned.profile(self.profile)
            self.model_names = self.tuned.names
        else:
            if options.from_scratch or options.recipe:
                raise ConfigError("--from-scratch and --recipe set how --train trains: add --train "
                                  "(with --profile custom --data DIR)")
            self.model_names = resolve_model_names(options.models) if options.models else list(self.profile.models)
        if not self.model_names:
            raise ConfigError(f"profile '{self.profile.name}' has no default models; name them with --models")
        self._models: dict[str, torch.nn.Module] = {}
        #: images through each model in the current experiment (:mod:`bagrepro.passes`)
        self.passes = PassCounter()
        #: --plan: shared work already planned in this run (e.g. ``("clean", model)``)
        self.planned: set = set()
        self._images = None
        self._forced: set[Path] = set()
        #: images --skip-unreadable left out of the run (set once, by :meth:`skip_unreadable`)
        self.skipped: list[Unreadable] = []
        self._checked = False
        self._unreadable: list[Unreadable] | None = None
        #: True while a shardable experiment runs under torchrun: units are dealt to the ranks
        self.sharded = False
        #: the experiment being run, its resolved settings and when it started (set by the runner)
        self.experiment: Experiment | None = None
        self.settings = None
        self._started = 0.0

    # ---- the experiment being run ------------------------------------------------------------------
    def begin(self, experiment: Experiment) -> None:
        """Make ``experiment`` the current one: its settings, its clock, a fresh global random stream."""
        self.experiment = experiment
        self.settings = experiment_settings(experiment, self.profile)
        self.sharded = experiment.shardable and distributed.is_distributed()
        self.passes.reset()
        torch.manual_seed(self.seed)  # the same stream whichever experiments ran before
        self._started = time.perf_counter()

    def end(self) -> float:
        """Leave the current experiment; return its wall time in seconds."""
        seconds = time.perf_counter() - self._started
        self.experiment, self.settings, self.sharded = None, None, False
        return seconds

    @property
    def name(self) -> str:
        """The current experiment's name."""
        if self.experiment is None:
            raise RuntimeError("no experiment is running")
        return self.experiment.name

    # ---- places -------------------------------------------------------------------------------
    def results_dir(self, experiment: str | None = None) -> Path:
        """``<out>/results/<experiment>`` (default: the current experiment)."""
        return Path(self.options.out) / "results" / (experiment or self.name)

    def figures_dir(self, experiment: str | None = None) -> Path:
        return Path(self.options.out) / "figures" / (experiment or self.name)

    def units(self, config=None, owner: str | None = None) -> UnitStore:
        """Finished-unit store under the current run config and ``config`` (what else determines the
        units, e.g. the settings), in ``results/<owner>/.units/`` (default: the current experiment;
        a library service names its own owner so that every experiment shares its units)."""
        key = config_hash(self.run_config(), config or {})
        store = UnitStore(self.results_dir(owner) / ".units" / key)
        if self.force and store.folder not in self._forced:  # --force: recompute once per run, then reuse
            if distributed.is_main() or not self.sharded:
                store.clear()
            if self.sharded:  # no rank computes a unit before rank 0 has cleared the old ones
                distributed.barrier()
            self._forced.add(store.folder)
        return store

    # ---- output of the current experiment (rank 0 writes) ------------------------------------------
    def write_csv(self, frame, filename: str, **extra_meta) -> Path:
        """``results/<experiment>/<filename>`` with its provenance sidecar (settings, wall time so
        far, ``extra_meta``); under torchrun only rank 0 writes (every rank holds the same frame)."""
        path = self.results_dir() / filename
        if distributed.is_main():
            write_csv(frame, path, self.provenance(extra_meta))
        return path

    def write_npz(self, arrays: dict, filename: str) -> Path:
        """Arrays a figure needs beside the CSVs: ``results/<experiment>/<filename>``, rank 0 writes."""
        path = self.results_dir() / filename
        if distributed.is_main():
            write_npz(arrays, path)
        return path

    def write_skipped(self) -> Path | None:
        """``results/<experiment>/skipped.csv`` (image_id, path, reason) when --skip-unreadable left
        images out of the run; otherwise no such file (one a former run left is removed)."""
        path = self.results_dir() / SKIPPED_CSV
        if self.skipped:
            import pandas as pd

            frame = pd.DataFrame({"image_id": [s.image_id for s in self.skipped],
                                  "path": [s.path for s in self.skipped],
                                  "reason": [s.reason for s in self.skipped]})
            return self.write_csv(frame, SKIPPED_CSV)
        if distributed.is_main():
            for stale in (path, meta_path(path)):
                stale.unlink(missing_ok=True)
        return None

    def map_units(self, store: UnitStore, units: list[str], compute: Callable[[str], "object"]) -> dict:
        """Each unit's frame, from ``store`` or ``compute(unit)`` (then saved: it is done).

        One process computes every missing unit in turn. Under torchrun, in a shardable experiment,
        unit i is computed by rank i mod world size, all ranks wait for each other, and then every
        rank reads every unit: the same frames as one process would have. Every rank must call this
        with the same units in the same order."""
        for index, unit in enumerate(units):
            if (not self.sharded or distributed.owns(index)) and not store.done(unit):
                store.save(unit, compute(unit))
        if self.sharded:
            distributed.barrier()
        return read_unit_frames(store, units)

    def main_first(self, make: Callable[[], "object"]):
        """Call ``make`` (which caches what it makes) on rank 0 first while the other ranks of a
        sharded experiment wait, then on every rank (reading the cache); a plain call otherwise."""
        if self.sharded:
            if distributed.is_main():
                make()
            distributed.barrier()
        return make()

    def run_config(self) -> dict:
        """What determines results: profile, data, limit, seed (not models: units are per model), and
        which images --skip-unreadable left out (only when it left any out)."""
        config = {"profile": self.profile.name, "data": self.options.data, "limit": self.options.limit,
                  "seed": self.seed, "num_images": self.num_images}
        if self.tuned is not None:  # units of models trained another way are not these
            config["training"] = self.tuned.run_key
        if self.options.precision != "fp32":  # fp32 keys stay what they were
            config["precision"] = self.options.precision
        if self.skipped:
            config["skipped_ids_hash"] = config_hash(sorted(s.image_id for s in self.skipped))
        return config

    # ---- data -----------------------------------------------------------------------------------
    @property
    def num_images(self) -> int | None:
        return _num_images(self.options, self.profile)

    @property
    def image_size(self) -> int:
        """Side in px of the run's images (every image of a run has one size): the crop of image files
        (nothing decoded), else the first image's width."""
        if getattr(self.images(), "side", None) is not None:  # files: their crop, nothing decoded
            return self.images().side
        images, _, _ = next(iter(self.images().subset([0]).batches(1)))
        return int(images.shape[-1])

    def images(self):
        """The profile's images (cached): a TensorImageSet or FileImageSet, fixed order."""
        if self._images is None:
            self._images = self._load_images()
        return self._images

    def _load_images(self):
        return _image_source(self.profile)(self)

    def unreadable_images(self) -> list[Unreadable]:
        """Every image of the run that cannot be decoded (decoded once, in parallel; under torchrun
        each rank checks its share); empty for generated images."""
        images = self.images()
        if not isinstance(images, FileImageSet):
            return []
        if self._unreadable is None:
            records = images.dataset.records
            if distributed.is_distributed() and torch.distributed.is_initialized():
                mine = find_unreadable(records, images.workers,
                                       range(distributed.rank(), len(records), distributed.world_size()),
                                       quiet=self.quiet)
                shares: list = [None] * distributed.world_size()
                torch.distributed.all_gather_object(shares, mine)
                self._unreadable = sorted((item for share in shares for item in share), key=lambda item: item.index)
            else:
                self._unreadable = find_unreadable(records, images.workers, quiet=self.quiet)
        return self._unreadable

    def skip_unreadable(self) -> list[Unreadable]:
        """--skip-unreadable: decode every image of the run once (under torchrun each rank checks
        its share), then leave the unreadable ones out of the run's image set, so that ids, labels,
        subsets and indices agree for every experiment. Returns them (also ``self.skipped``).
        Generated images have nothing to skip."""
        images = self.images()
        if self._checked or not isinstance(images, FileImageSet):
            return self.skipped
        self._checked = True
        records = images.dataset.records
        bad = self.unreadable_images()
        if len(bad) == len(records):
            raise DataError(f"no image of {self.options.data} can be read ({bad[0].path}: {bad[0].reason}; "
                            f"run_all.py --check-data lists them all)")
        if bad:
            dropped = {item.index for item in bad}
            kept = images.subset([i for i in range(len(records)) if i not in dropped])
            kept.description = f"{kept.dataset.describe(self.options.data)[:-1]}; {len(bad)} unreadable skipped)"
            self._images, self.skipped = kept, bad
        self._images.hint = "; it could still be read when --skip-unreadable checked every image at the start"
        return self.skipped

    def refuse_data(self) -> None:
        """For image sources that make their own images: --data is a ConfigError."""
        _refuse_data(self.options, self.profile)

    # ---- models ---------------------------------------------------------------------------------
    def role(self, role: str) -> str:
        """The zoo name standing in for a paper role ('vgg16', 'resnet50', ...) in this profile; a
        :class:`~bagrepro.errors.MissingRoleError` (the runner skips the experiment) when none does."""
        return self.profile.role(role)

    def present_roles(self, roles) -> list[str]:
        """Those of ``roles`` some model of this run stands in for; each missing one is said in a line
        (an experiment that can do without them leaves them out)."""
        missing = [role for role in roles if not self.profile.has_role(role)]
        for role in missing:
            self.say(f"[{self.name}] no model of this run stands in for the paper's '{role}': left out")
        return [role for role in roles if role not in missing]

    def say(self, line: str) -> None:
        """A line for the user (rank 0 only; --quiet turns off progress bars, not these), above any bar."""
        if distributed.is_main():
            tqdm.write(line)

    def model(self, name: str) -> torch.nn.Module:
        """The model as built (eager, eval mode, on the run's device), loaded once per run."""
        if name not in self._models:
            model = create_model(name, pretrained=self.profile.pretrained, weights_dir=self.options.weights_dir,
                                 progress=not self.quiet, init_seed=self.seed,
                                 force=self.options.retrain and distributed.is_main())  # torchrun: rank 0 retrains
            classes = len(self.images().classes)
            if model.zoo_spec.num_classes != classes:
                raise ConfigError(f"model '{name}' has {model.zoo_spec.num_classes} classes but the data has "
                                  f"{classes}; pick models made for profile '{self.profile.name}'")
            self._models[name] = self.passes.attach(name, model.to(self.device))
        return self._models[name]

    def inference_model(self, name: str) -> torch.nn.Module:
        """The fastest model with the same outputs, for forward passes (no gradients): BatchNorm
        folded, channels-last (:func:`bagrepro.models.fast.fuse_for_inference`), its forward in
        bfloat16 with --precision bf16 (:func:`~bagrepro.models.fast.with_precision`), made once per run."""
        key = f"{name}#fused"
        if key not in self._models:
            eager = self.model(name)
            fused = fuse_for_inference(eager)
            if self.options.precision != "fp32":  # autocast the copy's forward only, never the eager model
                fused = with_precision(copy.deepcopy(eager) if fused is eager else fused, self.options.precision)
            self._models[key] = fused if fused is eager else self.passes.attach(name, fused)
        return self._models[key]

    # ---- output -----------------------------------------------------------------------------------
    def progress(self, iterable, **kwargs):
        return tqdm(iterable, disable=self.quiet or None, leave=False, dynamic_ncols=True, **kwargs)

    def provenance(self, extra: dict | None = None) -> dict:
        """The sidecar of every CSV the current experiment writes."""
        images = self.images()
        meta = {
            "experiment": self.name,
            "profile": self.profile.name,
            "config": {**self.run_config(), "batch_size": self.batch_size, "models": self.model_names,
                       "weights_dir": self.options.weights_dir},
            "settings": dataclasses.asdict(self.settings),
            # whose each setting's default is: the paper's (with where), ours (with why), or mechanics
            "settings_provenance": settings_provenance(type(self.settings)),
            "open_choices": list(self.experiment.open_choices) if self.experiment else [],
            "data": images.description,
            "num_images": len(images),
            "skipped_images": len(self.skipped),
            "seed": self.seed,
            "models": {name: self._models[name].weights_source for name in self.model_names if name in self._models},
            "device": str(self.device) + (f" ({torch.cuda.get_device_name(self.device)})"
                                          if self.device.type == "cuda" else ""),
            "torch_threads": torch.get_num_threads(),
            "precision": self.options.precision,
            "world_size": distributed.world_size(),
            "packages": package_versions(),
            "commit": git_commit(),
            "wall_time_s": round(time.perf_counter() - self._started, 3),
            # images through each model so far in this experiment (this process), see bagrepro.passes
            "passes": self.passes.as_dict(),
        }
        meta.update(extra or {})
        return meta


#: unreadable images a --skip-unreadable run names in its log (all of them are in skipped.csv)
SKIPPED_SHOWN = 10
def plan_units(options: RunOptions, log=print) -> tuple["RunContext", list[tuple[Experiment, object]]]:
    """The run context and every (experiment, :class:`~bagrepro.plan.Work`) the selected experiments
    would compute, in run order; nothing is computed or loaded."""
    ctx = RunContext(options)
    check_profile(ctx.profile)
    if options.batch_size == "auto":
        ctx.batch_size = plan.choose_batch_size(ctx, log)
    rows: list[tuple[Experiment, object]] = []
    for experiment in select_experiments(options.experiments):
        ctx.begin(experiment)
        try:
            rows += [(experiment, work) for work in experiment.plan(ctx)] if experiment.plan else []
        except MissingRoleError as error:
            log(f"[{experiment.name}] skipped: {error}")
        finally:
            ctx.end()
    return ctx, rows


def plan_run(options: RunOptions, log=print) -> list[tuple[str, object]]:
    """--plan: every unit the selected experiments would compute on the profile (experiment, model,
    work, images, passes), with a time estimate from a short calibration of each model on the
    device, per experiment and in total (and per process under torchrun). Computes no experiment,
    loads no weights, trains nothing, writes nothing. Returns the planned (experiment, Work) pairs."""
    ctx, rows = plan_units(options, log)
    experiments = list(dict.fromkeys(experiment for experiment, _ in rows))
    size, world = ctx.image_size, plan.world_size()
    log(f"plan: profile '{ctx.profile.name}', {ctx.images().description}; {size} px; batch {ctx.batch_size}; "
        f"device {ctx.device} ({torch.get_num_threads()} threads); {world} process(es)")
    names = list(dict.fromkeys(work.model for _, work in rows))
    # the run's batch on a GPU (a batch of one would leave it idle); a small one on a CPU (seconds)
    batch = ctx.batch_size if ctx.device.type == "cuda" else min(ctx.batch_size, plan.CPU_CALIBRATION_BATCH)
    rates = {}
    for name in ctx.progress(names, desc="calibrating"):
        rates[name] = plan.calibrate_within_memory(name, size, ctx.device, batch)
    log(f"{'experiment':<18} {'model':<20} {'work':<34} {'images':>7} {'forward':>10} {'backward':>10} "
        f"{'heatmap':>8} {'estimate':>9}")
    for experiment, work in rows:
        log(f"{experiment.name:<18} {work.model:<20} {work.what[:34]:<34} {work.images:>7} {work.forward:>10} "
            f"{work.backward:>10} {work.heatmap:>8} {plan.human(rates[work.model].seconds(work)):>9}")
    log("calibration (ms per image; memory of one batch of forward + backward, "
        + ("measured)" if ctx.device.type == "cuda" else "estimated: weights + every layer's output)"))
    free = plan.free_memory(ctx.device)
    log(f"{'model':<20} {'forward':>9} {'eager':>9} {'backward':>9} {'heatmap':>9} {'MiB/batch':>10} "
        f"{'fits':>6}   (fits: the largest forward + backward batch in {free / 2 ** 30:.0f} GiB free)")
    for name, rate in rates.items():
        heatmap = "" if rate.heatmap is None else f"{1000 * rate.heatmap:.1f}"
        log(f"{name:<20} {1000 * rate.forward:9.1f} {1000 * rate.forward_eager:9.1f} {1000 * rate.backward:9.1f} "
            f"{heatmap:>9} {rate.batch_mib(ctx.batch_size):10.0f} {rate.largest_batch(free):6d}")
    for experiment in experiments:
        if experiment.plan_notes is not None:
            ctx.begin(experiment)
            try:
                for line in experiment.plan_notes(ctx):
                    log(f"[{experiment.name}] {line}")
            finally:
                ctx.end()
    total = total_busiest = 0.0
    log(f"{'experiment':<18} {'estimate':>10} {'per process':>12}")
    for experiment in experiments:
        seconds = [rates[work.model].seconds(work) for e, work in rows if e is experiment]
        busiest = plan.per_process_seconds(seconds, experiment.shardable, world)
        total, total_busiest = total + sum(seconds), total_busiest + busiest
        log(f"{experiment.name:<18} {plan.human(sum(seconds)):>10} {plan.human(busiest):>12}")
    log(f"{'total':<18} {plan.human(total):>10} {plan.human(total_busiest):>12}"
        + ("" if world == 1 else f"   ({world} processes)"))
    return [(experiment.name, work) for experiment, work in rows]


#: where a --train run lists its trained models (read by the report)
TRAINING_CSV = Path("results") / "training" / "models.csv"


def train_zoo(ctx: RunContext, log) -> Path:
    """--train: train every model of the run on --data (or load it from the cache), one after another,
    then write ``results/training/models.csv`` (model, base, role, recipe, images, validation top-1,
    seconds) with a provenance sidecar."""
    import pandas as pd

    for name in ctx.model_names:
        ctx.model(name)
    ctx.tuned.forget_images()
    recipe = dataclasses.asdict(ctx.tuned.recipe)
    meta = {"profile": ctx.profile.name, "data": str(ctx.options.data), "recipe": recipe,
            "from_scratch": ctx.tuned.from_scratch, "classes": ctx.tuned.data.classes,
            "models": {name: ctx.model(name).weights_source for name in ctx.model_names},
            "device": str(ctx.device), "torch_threads": torch.get_num_threads(), "packages": package_versions(),
            "commit": git_commit()}
    path = write_csv(pd.DataFrame(ctx.tuned.table()), Path(ctx.options.out) / TRAINING_CSV, meta)
    log(f"[training] wrote {path}")
    return path


def run_stages(options: RunOptions, log=print) -> dict[str, float]:
    """Run the selected experiments, then their figures; return wall time per stage (seconds).

    The output folder is locked for the run (rank 0 holds the lock for all ranks under torchrun),
    and temporary files that killed runs left there are removed first (:mod:`bagrepro.lock`)."""
    experiments = select_experiments(options.experiments)
    if not distributed.is_main():
        return _run_stages(options, experiments, log)
    with output_lock(Path(options.out), log):
        removed = remove_stale_temporaries(Path(options.out))
        if removed:
            log(f"[lock] removed {len(removed)} temporary file(s) left by a killed run")
        return _run_stages(options, experiments, log)


def _run_stages(options: RunOptions, experiments: list[Experiment], log) -> dict[str, float]:
    timings: dict[str, float] = {}
    if not options.figures_only:
        ctx = RunContext(options)
        check_profile(ctx.profile)  # a misspelt setting fails here, before any work
        ctx.images()  # bad data fails here, in one line, before any experiment starts
        if options.batch_size == "auto":
            ctx.batch_size = plan.choose_batch_size(ctx, log)
        distributed.initialise(ctx.device)
        if ctx.profile.check_data_first and not options.skip_unreadable:  # all bad files before GPU hours
            unreadable = ctx.unreadable_images()
            for item in unreadable:
                log(f"  {item.path}: {item.reason}")
            if unreadable:
                raise DataError(f"{len(unreadable)} of {len(ctx.images())} images in {options.data} cannot be "
                                f"read (listed above); remove them, or run again with --skip-unreadable")
        if options.skip_unreadable:
            skipped = ctx.skip_unreadable()
            if skipped:
                log(f"[data] {len(skipped)} unreadable image(s) left out of the run, listed in "
                    f"results/<experiment>/{SKIPPED_CSV}:")
                for item in skipped[:SKIPPED_SHOWN]:
                    log(f"  {item.path}: {item.reason}")
                if len(skipped) > SKIPPED_SHOWN:
                    log(f"  ... and {len(skipped) - SKIPPED_SHOWN} more")
        if ctx.tuned is not None and distributed.is_main():
            start = time.perf_counter()
            train_zoo(ctx, log)
            timings["training"] = time.perf_counter() - start
        elif options.retrain and distributed.is_main():  # every model now, even where all units are done
            start = time.perf_counter()
            for name in ctx.model_names:
                ctx.model(name)
            timings["training"] = time.perf_counter() - start
        if distributed.is_distributed():  # rank 0 downloads or trains missing weights; the rest read caches
            if distributed.is_main():
                for name in ctx.model_names:
                    ctx.model(name)
            distributed.barrier()
        for experiment in experiments:
            if not (distributed.is_main() or experiment.shardable):
                continue  # rank 0 runs it alone; this rank goes on to the next shardable one
            log(f"[{experiment.name}] {experiment.title} ({experiment.paper_ref})")
            ctx.begin(experiment)
            try:
                experiment.run(ctx)
                ctx.write_skipped()
            except MissingRoleError as error:  # e.g. a --train run without a VGG: the rest still runs
                log(f"[{experiment.name}] skipped: {error}")
            finally:
                timings[experiment.name] = ctx.end()
    if not distributed.is_main():
        return timings  # rank 0 makes the figures and the report
    for experiment in experiments:
        start = time.perf_counter()
        results = Path(options.out) / "results" / experiment.name
        if not results.is_dir():
            log(f"[figures] {experiment.name}: not run, no figure")
            continue
        paths = experiment.make_figures(results, Path(options.out) / "figures" / experiment.name)
        for path in paths:
            log(f"[figures] wrote {path}")
        timings[f"figures:{experiment.name}"] = time.perf_counter() - start
    start = time.perf_counter()
    log(f"[report] wrote {build_report(Path(options.out), discover_experiments().values())}")
    timings["report"] = time.perf_counter() - start
    return timings
