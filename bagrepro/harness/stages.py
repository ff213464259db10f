"""The stages of a run: ``--plan`` (what a run would compute and its cost), ``--train`` (the zoo on
your data), then every selected experiment, its figures and the report, under the output lock."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import torch

from bagrepro.core.errors import DataError, MissingRoleError
from bagrepro.harness import distributed, plan
from bagrepro.harness.context import SKIPPED_SHOWN, RunContext
from bagrepro.harness.lock import output_lock, remove_stale_temporaries
from bagrepro.harness.registry import Experiment, check_profile, discover_experiments, select_experiments
from bagrepro.harness.report import build_report
from bagrepro.harness.results import git_commit, package_versions, write_csv
from bagrepro.harness.sources import SKIPPED_CSV, RunOptions



def plan_units(options: RunOptions, log=print) -> tuple["RunContext", list[tuple[Experiment, object]]]:
    """The run context and every (experiment, :class:`~bagrepro.harness.plan.Work`) the selected experiments
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
    and temporary files that killed runs left there are removed first (:mod:`bagrepro.harness.lock`)."""
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
