"""A manual rehearsal of the whole paper profile, offline (not collected by pytest: about 6 minutes,
3.2 GiB of checkpoints and 6.5 GiB peak memory on a 2-core CPU).

Every experiment, figure and the report on the paper profile with the full-size models at 224 px:
released-format checkpoints saved from random weights and served through file:// URLs (the same
download-verify-load path as the released files), an ImageNet devkit layout of JPEGs the script
writes, and tiny per-experiment settings so that it ends in minutes.

Usage: TORCH_HOME=DIR/hub BAGREPRO_CACHE=DIR/cache python tests/rehearse_paper_profile.py DIR [ARGS...]

ARGS go to ``run_all.py`` as they are: ``--device cuda`` on a GPU machine, ``--plan`` for the
estimate of the same run, ``--precision bf16`` (``bench/gpu_check.sh`` runs them in turn).
"""

from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

import run_all  # noqa: E402
from bagrepro.harness import profiles  # noqa: E402
from bagrepro.models import get_spec, registry  # noqa: E402
from bagrepro.models.weights import WeightsSpec  # noqa: E402
from test_paper_rehearsal import save_released_format, write_imagenet_devkit_layout  # noqa: E402

#: each experiment at its smallest: one or two images, a few steps
TINY_SETTINGS = {
    "runtime": {"batch_size": 2, "repeats": 1, "warmup": 0},
    "masking": {"num_images": 1, "steps": 3, "random_seeds": 1, "ig_steps": 2},
    "interactions": {"patch_sizes": (56,), "num_images": 1},
    "logit_correlation": {"num_images": 2},
    "scrambling": {"grids": (4,), "texture_iterations": 1, "texture_images": 1},
    "heatmaps": {"num_images": 1, "ig_steps": 2},
    "top_patches": {"num_classes": 1, "k": 2},
    "misclassified": {"num_images": 1},
    "attribution_truth": {"num_images": 1, "batch_size": 1, "ig_steps": 2, "smoothgrad_samples": 2, "shap_samples": 2,
                          "kernel_shap_samples": 8, "lime_samples": 8, "occlusion_window": 56, "occlusion_stride": 56},
}


def main(root: Path, extra: list[str] | None = None) -> int:
    mirror = root / "mirror"
    mirror.mkdir(parents=True, exist_ok=True)
    # every model of the paper profile (its roles, VGG-19 the texturiser too) re-pointed at a local random checkpoint
    for name in dict.fromkeys(profiles.PROFILES["paper"].stand_ins.values()):
        spec = get_spec(name)
        stem = Path(spec.weights.url).name.split("-")[0].split(".")[0]
        existing = sorted(mirror.glob(f"{stem}-*.pth"))
        path = existing[0] if existing else save_released_format(name, mirror, stem)
        registry._REGISTRY[name] = dataclasses.replace(spec, weights=WeightsSpec(path.as_uri()))
    data = root / "val"
    if not data.exists():
        data.mkdir()
        write_imagenet_devkit_layout(data)
    profiles.PROFILES["paper"] = dataclasses.replace(profiles.PROFILES["paper"],
                                                     settings=profiles.frozen(TINY_SETTINGS))
    start = time.perf_counter()
    code = run_all.main(["--profile", "paper", "--data", str(data), "--out", str(root / "out"),
                         "--batch-size", "2", "--quiet", *(extra or [])])
    print(f"exit {code} after {time.perf_counter() - start:.0f} s; report: {root / 'out' / 'figures' / 'report.html'}")
    return code


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]), sys.argv[2:]))
