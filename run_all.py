#!/usr/bin/env python
"""bagrepro: reproduce Brendel & Bethge (ICLR 2019) end to end.

    python run_all.py                                   # the default profile, every experiment of the paper
    python run_all.py --experiment all                  # ... and the extensions (the attribution benchmark)
    python run_all.py --profile smoke --experiment accuracy
    python run_all.py --profile paper --data /data/imagenet/val --experiment masking
    python run_all.py --figures-only                    # figures from existing CSVs
    torchrun --standalone --nproc-per-node 4 run_all.py --profile paper --data DIR --device cuda
                                                        # units dealt to 4 GPUs, same CSVs
    python run_all.py --list                            # experiments, profiles, models
    python run_all.py --list --experiment masking       # an experiment's settings on a profile
    python run_all.py --profile paper --data DIR --plan  # what it would compute and how long it takes
    python run_all.py --profile paper --data DIR --check-data
                                                        # decode every image, list the unreadable ones
    python run_all.py --profile custom --data DIR --train
                                                        # fine-tune the zoo on DIR/train, DIR/val, then
                                                        # every experiment on DIR/test
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import bagrepro.demo  # noqa: F401  (the demo plugin registers its profile; torch-free)
from bagrepro.core.errors import BagreproError
from bagrepro.harness.profiles import PROFILES

REPO_ROOT = Path(__file__).resolve().parent
#: the embedded default: offline, a generated world and a demo zoo trained on it
DEFAULT_PROFILE = "demo"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--experiment", dest="experiments", action="append", default=[], metavar="NAME",
                        help="experiment to run (repeatable); without it, the paper's experiments; 'all': every "
                             "experiment, the extensions beyond the paper too (attribution_truth)")
    parser.add_argument("--profile", default=DEFAULT_PROFILE, help=f"one of {', '.join(PROFILES)} (default {DEFAULT_PROFILE})")
    parser.add_argument("--models", nargs="+", metavar="NAME", help="zoo names or globs (default: the profile's)")
    parser.add_argument("--plugin", "--register-models", dest="plugins", action="append", default=[],
                        metavar="FILE.py",
                        help="a Python file that registers your models (register_model), attribution methods "
                             "(register_attribution) and/or experiments (register_experiment), repeatable; "
                             "--register-models is an alias")
    parser.add_argument("--data", help="image folder: ImageNet validation (any common layout) or your ImageFolder")
    parser.add_argument("--classes", type=int, nargs="+", metavar="INDEX",
                        help="class indices for the class-wise figures (top_patches); default: a seeded choice")
    parser.add_argument("--limit", type=int, help="use N images (a fixed, class-balanced subset from --seed)")
    parser.add_argument("--check-data", action="store_true",
                        help="decode every image of --data (after --limit) fully, in parallel (a header alone "
                             "does not reveal a truncated JPEG), print each unreadable file as '<path>: <reason>', "
                             "then exit: 0 if all decode, 2 if any does not; runs no experiment, writes nothing")
    parser.add_argument("--plan", action="store_true",
                        help="print every unit the run would compute (experiment, model, images, forward and "
                             "backward passes), memory per batch and an estimated time from a short calibration "
                             "of each model on --device, then exit; computes and writes nothing")
    parser.add_argument("--skip-unreadable", action="store_true",
                        help="check every image once before the first experiment (as --check-data) and leave the "
                             "unreadable ones out of the run; each experiment lists them in "
                             "results/<experiment>/skipped.csv (without this flag an unreadable image stops the run)")
    parser.add_argument("--train", action="store_true",
                        help="custom profile: --data DIR holds train/ and val/ (and optionally test/) ImageFolders; "
                             "train the zoo (or --models) on them first, with a new head for DIR's classes, then run "
                             "every experiment on DIR/test (DIR/val without it); trained weights are cached and an "
                             "interrupted training resumes from its last epoch")
    parser.add_argument("--from-scratch", action="store_true",
                        help="with --train: start from random weights instead of the models' ImageNet weights")
    parser.add_argument("--recipe", nargs="+", metavar="KEY=VALUE",
                        help="with --train: change the training recipe, e.g. --recipe epochs=30 lr=0.003 "
                             "(run_all.py --list shows every key and its default)")
    parser.add_argument("--weights-dir", help="folder holding weight files you downloaded yourself")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                        help="arithmetic of the forward-only passes (accuracy, masking curves, interactions, "
                             "scrambling, logits): bf16 autocasts them (faster on GPUs with bfloat16); heatmaps, "
                             "patch logits and gradients stay float32 (default fp32: exact)")
    parser.add_argument("--batch-size", type=batch_size_argument, metavar="N|auto",
                        help="images per batch (default: the profile's); auto: the largest batch whose forward + "
                             "backward fits in 80%% of the device's free memory for every model (at most 256), "
                             "from a short calibration")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=REPO_ROOT, help="folder for results/ and figures/ (default: the repo)")
    parser.add_argument("--force", action="store_true", help="recompute finished units instead of reusing them")
    parser.add_argument("--retrain", action="store_true",
                        help="train the models again: the demo zoo (instead of its shipped weights or the cache) or "
                             "--train's models (instead of the cache)")
    parser.add_argument("--figures-only", action="store_true", help="only make figures from existing CSVs")
    parser.add_argument("--list", action="store_true",
                        help="list experiments, profiles and models (with --experiment: its settings), then exit")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--methods-table", action="store_true",
                        help="print the README's table of attribution methods (family, library, default settings, "
                             "passes per image) from the registry, your --plugin methods included, then exit")
    parser.add_argument("--protocol", action="store_true",
                        help="print docs/protocol.md: every setting, whose its default is, each profile's value")
    args = parser.parse_args(argv)
    if args.limit is not None and args.limit < 1:
        parser.error("--limit must be at least 1")
    return args


def batch_size_argument(text: str) -> int | str:
    """--batch-size: a positive integer or 'auto'."""
    if text == "auto":
        return text
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive integer or auto, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def list_settings(experiment_names: list[str], profile_name: str) -> None:
    """Each named experiment's settings: field, type, the value on the profile (with the default where
    the profile changes it), and whose the default is (the paper's, with where; ours, with why)."""
    from bagrepro.harness.profiles import get_profile
    from bagrepro.harness.registry import experiment_settings, select_experiments
    from bagrepro.core.settings import describe

    profile = get_profile(profile_name)
    for experiment in select_experiments(experiment_names):
        rows = describe(experiment_settings(experiment, profile))
        print(f"{experiment.name} ({experiment.paper_ref}) on profile '{profile.name}':"
              + ("" if rows else " no settings"))
        for field, kind, default, value, whose in rows:
            changed = "" if value == default else f"   (default: {default!r})"
            print(f"  {field:<16} {kind:<28} {value!r}{changed}")
            print(f"  {'':<16} default: {whose or 'not labelled'}")
        for choice in experiment.open_choices:
            print(f"  open choice: {choice}")


def list_recipe(pairs: list[str] | None) -> None:
    """The training recipe of --train: field, type, value (with --recipe's changes) and the default."""
    from bagrepro.core.recipe import FINETUNE_RECIPE
    from bagrepro.core.settings import describe
    from bagrepro.harness.tuning import FINETUNE_ZOO, parse_recipe

    print("training recipe of --profile custom --data DIR --train (change with --recipe KEY=VALUE):")
    for field, kind, _, value, _ in describe(parse_recipe(pairs)):
        default = getattr(FINETUNE_RECIPE, field)
        changed = "" if value == default else f"   (default: {default!r})"
        print(f"  {field:<24} {kind:<14} {value!r}{changed}")
    print(f"  models trained by default: {', '.join(FINETUNE_ZOO)} (as tuned_<name>)")


def list_everything(recipe_pairs: list[str] | None = None) -> None:
    from bagrepro.models import get_spec, list_models
    from bagrepro.harness.profiles import activate
    from bagrepro.harness.registry import discover_experiments

    for profile in PROFILES.values():
        activate(profile)  # plugins register their models
    print("experiments:")
    for experiment in discover_experiments().values():
        extension = "" if experiment.in_default_run else " (extension: runs when named or with --experiment all)"
        print(f"  {experiment.name:<20} {experiment.paper_ref:<16} {experiment.title}{extension}")
    print("profiles:")
    for profile in PROFILES.values():
        default = " (default)" if profile.name == DEFAULT_PROFILE else ""
        print(f"  {profile.name:<20} {profile.description}{default}")
    print("models:")
    for name in list_models():
        spec = get_spec(name)
        field = f"q={spec.receptive_field}" if spec.is_bagnet else "deep"
        weights = spec.weights.url if spec.weights else ("trained by recipe" if spec.weights_loader else "none")
        print(f"  {name:<20} {field:<6} {spec.num_classes:>5} classes  weights: {weights}")
    list_recipe(recipe_pairs)


def protocol_text() -> str:
    """docs/protocol.md as the code has it (every registered experiment, the built-in and demo profiles)."""
    from bagrepro.harness.profiles import PROFILES
    from bagrepro.harness.registry import discover_experiments, protocol_markdown

    return protocol_markdown(discover_experiments().values(), list(PROFILES.values()))


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        from bagrepro.harness.plugins import describe, load_plugin
        from bagrepro.harness.sources import RunOptions
        from bagrepro.harness.stages import run_stages

        for path in args.plugins:
            print(f"registered {describe(load_plugin(path))} from {path}")
        if args.protocol:
            print(protocol_text(), end="")
            return 0
        if args.methods_table:
            from bagrepro.harness.registry import methods_markdown

            print(methods_markdown(), end="")
            return 0
        if args.list:
            if args.experiments:
                list_settings(args.experiments, args.profile)
            else:
                list_everything(args.recipe)
            return 0
        options = RunOptions(**{f.name: getattr(args, f.name) for f in dataclasses.fields(RunOptions)})
        from bagrepro.harness import distributed

        if options.check_data:
            from bagrepro.harness.sources import check_data

            return check_data(options) if distributed.is_main() else 0  # under torchrun, rank 0 checks
        if options.plan:
            from bagrepro.harness.stages import plan_run

            if distributed.is_main():  # under torchrun, rank 0 plans (per process)
                plan_run(options)
            return 0

        start = time.perf_counter()
        timings = run_stages(options, log=print if distributed.is_main() else lambda line: None)
        if not distributed.is_main():
            return 0  # under torchrun, rank 0 reports
        print("time per stage:")
        for stage, seconds in timings.items():
            print(f"  {stage:<28} {seconds:8.1f} s")
        print(f"  {'total':<28} {time.perf_counter() - start:8.1f} s")
        return 0
    except BagreproError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: finished units are kept; run the same command again to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BrokenPipeError:  # output piped into a reader that stopped early (`| head`): not an error
        sys.stderr.close()
        sys.exit(0)
