"""Train (or load) the demo zoo and print test accuracies per class group and training times.

    python bench/demo_zoo.py [--retrain] [--ship] [--models demo_bagnet9 ...] [--seed 0] [--grid docs/demo_world.png]

Without --retrain the models come from the cache or the weights shipped in the repository
(bagrepro/demo/trained/); --retrain trains them again into the cache (as ``run_all.py --retrain``
does); --ship then copies the cached weights of the default world into bagrepro/demo/trained/ (the
maintainer's step after a change of the world, a recipe or an architecture: the test
tests/test_demo_world.py::test_shipped_zoo_matches_the_code fails until it is done).

Accuracy groups: all classes; local (texture + lattice classes); arrangement (the classes that differ
only in the global configuration of two shared parts; chance within the group is 1/3); texture and
lattice separately (the lattice classes differ only in how 4 px dots 8 px apart are arranged: a
9 px window never holds two dots, a 17 px window does; chance within the group is 1/3).
Training times come from the record written beside each cached model (the time of the run that
trained it).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from bagrepro.methods.training import read_record  # noqa: E402
from bagrepro.demo.render import save_example_grid  # noqa: E402
from bagrepro.demo.spec import WorldConfig  # noqa: E402
from bagrepro.demo.store import make_world  # noqa: E402
from bagrepro.demo.training import (get_trained, group_accuracies, model_path, read_training_record,  # noqa: E402
                                    ship, shipped_path)
from bagrepro.demo.zoo import DEMO_ZOO  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(DEMO_ZOO), choices=list(DEMO_ZOO))
    parser.add_argument("--seed", type=int, default=0, help="world seed")
    parser.add_argument("--retrain", action="store_true", help="train again even if shipped or cached")
    parser.add_argument("--ship", action="store_true",
                        help="copy the trained weights into bagrepro/demo/trained/ (default world only)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--grid", type=Path, help="also draw a grid of example images to this PNG")
    args = parser.parse_args(argv)

    start = time.perf_counter()
    world = make_world(WorldConfig(seed=args.seed))
    print(f"world: {world.config.fingerprint}, {world.num_classes} classes, {world.image_size} px, "
          f"train/val/test {len(world.train)}/{len(world.val)}/{len(world.test)} "
          f"({time.perf_counter() - start:.1f} s); torch threads {torch.get_num_threads()}")
    if args.grid:
        print(f"example grid: {save_example_grid(world, args.grid)}")
    groups = ("all", "local", "texture", "lattice", "arrangement")
    print(f"{'model':18s} " + " ".join(f"{g:>11s}" for g in groups) + f" {'train s':>8s} {'this run s':>10s}")
    total_train = 0.0
    for name in args.models:
        began = time.perf_counter()
        cached = (model_path(name, world).exists() or shipped_path(name, world).exists()) and not args.retrain
        model = get_trained(name, world, force=args.retrain, progress=not args.quiet)
        took = time.perf_counter() - began
        record = read_training_record(name, world) or read_record(shipped_path(name, world)) or {}
        train_seconds = record.get("train_seconds", float("nan"))
        total_train += train_seconds
        accuracy = group_accuracies(model, world, "test", groups=groups)
        print(f"{name:18s} " + " ".join(f"{accuracy[g]:11.3f}" for g in groups)
              + f" {train_seconds:8.1f} {took:9.1f}{' (cached)' if cached else ''}", flush=True)
    if args.ship:
        if world.config != WorldConfig():
            raise SystemExit("--ship: only the default world's zoo is shipped (leave out --seed)")
        for path in ship(args.models):
            print(f"shipped {path}")
    print(f"training time of these models (as recorded): {total_train:.0f} s; "
          f"this run: {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
