"""The run context every experiment receives: its settings, models (as built and as inference
copies), images, unreadable files, roles, units, writing and provenance. The runner names and times
every experiment and decides which process writes (rank 0): experiments never ask."""

from __future__ import annotations

import copy
import dataclasses
import time
from pathlib import Path
from typing import Callable

import torch
from tqdm.auto import tqdm

from bagrepro.core.cache import config_hash
from bagrepro.core.errors import ConfigError, DataError
from bagrepro.core.passes import PassCounter
from bagrepro.core.settings import provenance as settings_provenance
from bagrepro.data.check import Unreadable, find_unreadable
from bagrepro.data.imagesets import FileImageSet
from bagrepro.harness import distributed, tuning
from bagrepro.harness.profiles import Profile, activate, get_profile
from bagrepro.harness.registry import Experiment, experiment_settings
from bagrepro.harness.results import (
    UnitStore,
    git_commit,
    meta_path,
    package_versions,
    read_unit_frames,
    write_csv,
    write_npz,
)
from bagrepro.harness.sources import SKIPPED_CSV, RunOptions, _image_source, _num_images, _refuse_data, resolve_device
from bagrepro.models import create_model, resolve_model_names
from bagrepro.models.fast import fuse_for_inference, with_precision



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
        #: images through each model in the current experiment (:mod:`bagrepro.core.passes`)
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
        :class:`~bagrepro.core.errors.MissingRoleError` (the runner skips the experiment) when none does."""
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
            # images through each model so far in this experiment (this process), see bagrepro.core.passes
            "passes": self.passes.as_dict(),
        }
        meta.update(extra or {})
        return meta


#: unreadable images a --skip-unreadable run names in its log (all of them are in skipped.csv)
SKIPPED_SHOWN = 10
