"""The cost of every registered attribution method on the demo zoo, as a ratio to one Saliency call.

For every method of the registry (``attribution_methods()``, whatever is registered when it runs):
its family, its library, its image passes per image from the registry's cost
(``get_attribution(m).passes_for(batch, image_size=121, model=model, **options)``, forward + backward),
and per demo model its measured time with (a) the registry defaults and (b) the demo profile's
``attribution_truth`` options (``Settings.method_options()`` of experiments/attribution_truth.py with the
demo profile's overrides: the fields of its OPTION_FIELDS and its ``options`` pairs, plus the
``references`` dataset baseline of the methods that take one, as the experiment passes them).

Speed is a ratio (the house rule: a ratio against a baseline measured in the same run, never an
absolute time compared across runs): "x sal" = seconds per image of the method / seconds per image of
one Saliency call (1 forward + 1 backward) on the same model and batch. The Saliency baseline is timed
right before every method (the median of those timings), so a change of load on the machine moves
both. Seconds are printed too, for this machine only.

Models: demo_bagnet33, demo_vgg16, demo_resnet50, demo_densenet169 (trained weights, the demo world's
test images at 121 px, the models' predicted classes as targets, as the experiment). --images images
(the first of the demo test split) with the demo options, --default-images with the defaults (some
defaults cost thousands of passes per image: Shapley sampling 1 + 25 x 64 at 121 px). Each method
first runs once untimed (one image, demo options) on the first model it applies to, for the imports.
Per-image times at this batch size may differ a little from the experiment's (batch_size 16).

The estimate column: projected seconds of the demo benchmark for the method, num_images (48) images
x every model of the demo profile with the demo options: per model the method's "x sal" ratio x that
model's Saliency seconds per image (timed in this run, at the end) x 48. A profile model not measured
here (demo_bagnet9, demo_bagnet17; with --quick all but one) takes the ratio of a measured model of
the same architecture family (else the median over the measured models). The total adds the methods the demo does
not leave out and is compared with the demo budget (< 20 min for the whole benchmark on 2 cores; the
benchmark's other work, exact patch logits and Part C's curves, is not in it).

A method that cannot apply to a model (MethodNotApplicable) prints its reason; any other error is
printed for that method and model and the benchmark goes on.

Usage: python bench/attribution.py [--quick] [--methods a,b] [--models m1,m2] [--threads N]
                                   [--images 4] [--default-images 1] [--no-defaults] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import pathlib
import statistics
import sys
import time
import traceback

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

import bagrepro.demo.plugin  # noqa: E402,F401  (registers the demo zoo and the demo image source)
from bagrepro.demo.store import demo_test_images  # noqa: E402
from bagrepro.demo.zoo import DEMO_ZOO  # noqa: E402
from bagrepro.harness.profiles import get_profile  # noqa: E402
from bagrepro.harness.registry import experiment_settings  # noqa: E402
from bagrepro.methods.attribution import (MethodNotApplicable, attribute, attribution_methods,  # noqa: E402
                                          get_attribution)
from bagrepro.models import create_model  # noqa: E402
from experiments import attribution_truth  # noqa: E402

MODELS = ("demo_bagnet33", "demo_vgg16", "demo_resnet50", "demo_densenet169")
BASELINE = "saliency"
IMAGE_SIZE = 121


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def demo_settings() -> attribution_truth.Settings:
    """The demo profile's attribution_truth settings (its overrides applied to the Settings defaults)."""
    return experiment_settings(attribution_truth.EXPERIMENT, get_profile("demo"))


def passes_text(method: str, batch: int, model: torch.nn.Module, options: dict) -> str:
    """The registry's (forward, backward) passes of one call on ``batch`` images, per image."""
    try:
        forward, backward = get_attribution(method).passes_for(batch, image_size=IMAGE_SIZE, model=model, **options)
    except Exception as error:  # noqa: BLE001  (a method in flux: report it, go on)
        return f"cost error: {type(error).__name__}"
    return f"{forward / batch:g}+{backward / batch:g}"


def short(error: BaseException, width: int = 70) -> str:
    text = " ".join(str(error).split())
    text = text if isinstance(error, MethodNotApplicable) else f"{type(error).__name__}: {text}"
    return text if len(text) <= width else text[:width - 3] + "..."


class Timer:
    """Times attribution calls on one model; the Saliency baseline before every timed call."""

    def __init__(self, model: torch.nn.Module, device: torch.device):
        self.model, self.device = model, device
        self.saliency: dict[int, list[float]] = {}

    def seconds(self, images: torch.Tensor, targets: torch.Tensor, method: str, options: dict) -> float:
        _sync(self.device)
        start = time.perf_counter()
        attribute(self.model, images, targets, method, **options)
        _sync(self.device)
        return time.perf_counter() - start

    def baseline(self, images: torch.Tensor, targets: torch.Tensor) -> None:
        self.saliency.setdefault(len(images), []).append(self.seconds(images, targets, BASELINE, {}) / len(images))

    def saliency_per_image(self, batch: int) -> float:
        return statistics.median(self.saliency[batch])


def options_for(method: str, options: dict, references: torch.Tensor | None) -> dict:
    """``options`` plus the demo's dataset baseline where the method takes ``references`` (as the
    experiment passes it)."""
    if references is not None and "references" in get_attribution(method).defaults:
        return {**options, "references": references}
    return dict(options)


def bench_model(name: str, methods: list[str], args, settings, demo_options: dict, warmed: set[str],
                device: torch.device) -> dict[str, float]:
    """Prints one model's table; returns method -> "x sal" with the demo options (where it ran)."""
    model = create_model(name, pretrained=True).to(device).eval()
    normalize = model.zoo_spec.preprocess.normalize
    count = max(args.images, args.default_images)
    test = demo_test_images()
    images, _, _ = next(iter(test.subset(range(count)).batches(count)))
    inputs = normalize(images).to(device)
    reference_ids = [(settings.num_images + i) % len(test) for i in range(settings.references)]
    references = normalize(next(iter(test.subset(reference_ids).batches(len(reference_ids))))[0]).to(device)
    with torch.no_grad():
        predicted = model(inputs).argmax(1)
    demo_x, demo_t = inputs[:args.images], predicted[:args.images]
    default_x, default_t = inputs[:args.default_images], predicted[:args.default_images]
    timer = Timer(model, device)
    timer.seconds(demo_x, demo_t, BASELINE, {})  # warm-up
    print(f"\n{name}: {IMAGE_SIZE} px, {args.images} images with the demo options"
          + ("" if args.no_defaults else f", {args.default_images} with the defaults")
          + f", {device}, {torch.get_num_threads()} threads; x sal = s per image / Saliency's", flush=True)
    header = (f"  {'method':<26}{'passes/img (dflt)':>18}{'x sal':>9}{'s/img':>9}"
              f"{'passes/img (demo)':>19}{'x sal':>9}{'s/img':>9}")
    print(header)
    ratios = {}
    for method in methods:
        demo = options_for(method, demo_options, references)
        row = f"  {method:<26}"
        try:
            if method not in warmed:  # imports, first allocations: untimed, one image
                attribute(model, demo_x[:1], demo_t[:1], method, **demo)
                warmed.add(method)
            if args.no_defaults:
                row += f"{'':>18}{'':>9}{'':>9}"
            else:
                timer.baseline(default_x, default_t)
                seconds = timer.seconds(default_x, default_t, method, {}) / len(default_x)
                ratio = seconds / timer.saliency_per_image(len(default_x))
                row += f"{passes_text(method, len(default_x), model, {}):>18}{ratio:>9.1f}{seconds:>9.3f}"
            timer.baseline(demo_x, demo_t)
            seconds = timer.seconds(demo_x, demo_t, method, demo) / len(demo_x)
            ratios[method] = seconds / timer.saliency_per_image(len(demo_x))
            row += f"{passes_text(method, len(demo_x), model, demo):>19}{ratios[method]:>9.1f}{seconds:>9.3f}"
        except MethodNotApplicable as reason:
            row += f"  not applicable: {short(reason)}"
        except Exception as error:  # noqa: BLE001  (methods being added may fail: report, go on)
            row += f"  ERROR {short(error)}"
            if args.verbose:
                traceback.print_exc()
        if method in settings.left_out:
            row += "  (left out of the demo)"
        print(row, flush=True)
    print(f"  {'(saliency baseline)':<26}{'':>18}{'':>9}"
          + (f"{timer.saliency_per_image(len(default_x)):>9.3f}" if len(default_x) in timer.saliency else f"{'':>9}")
          + f"{'':>19}{'':>9}"
          + (f"{timer.saliency_per_image(len(demo_x)):>9.3f}" if len(demo_x) in timer.saliency else ""))
    return ratios


def saliency_seconds(name: str, images: int, device: torch.device) -> float:
    """Saliency's seconds per image on model ``name`` (for the projection of a model not measured)."""
    model = create_model(name, pretrained=True).to(device).eval()
    batch, _, _ = next(iter(demo_test_images().subset(range(images)).batches(images)))
    inputs = model.zoo_spec.preprocess.normalize(batch).to(device)
    with torch.no_grad():
        predicted = model(inputs).argmax(1)
    timer = Timer(model, device)
    timer.seconds(inputs, predicted, BASELINE, {})  # warm-up
    for _ in range(3):
        timer.baseline(inputs, predicted)
    return timer.saliency_per_image(images)


def estimates(methods: list[str], measured: dict[str, dict[str, float]], saliency: dict[str, float],
              settings, profile_models: tuple[str, ...]) -> None:
    """Prints per method the projected seconds of the demo benchmark (num_images x every profile model)."""
    family = {name: DEMO_ZOO[name].family if name in DEMO_ZOO else None for name in profile_models}
    proxies = {}
    for name in profile_models:
        if name in measured:
            proxies[name] = name
        else:
            same = [other for other in measured if family.get(other) == family[name]]
            proxies[name] = same[0] if same else None
    print(f"\nEstimate: the demo benchmark's seconds per method, {settings.num_images} images x "
          f"{len(profile_models)} models ({', '.join(profile_models)}) with the demo options")
    for name in profile_models:
        if proxies[name] != name:
            print(f"  {name}: not measured; its Saliency time x the ratio of "
                  f"{proxies[name] or 'the median over the measured models'}")
    print(f"  {'method':<26}{'family':<14}{'library':<44}{'estimate s':>11}")
    total, missing = 0.0, []
    for method in methods:
        spec = get_attribution(method)
        seconds, incomplete = 0.0, False
        for name in profile_models:
            proxy = proxies[name]
            if proxy is not None:
                ratio = measured[proxy].get(method)
            else:
                known = [ratios[method] for ratios in measured.values() if method in ratios]
                ratio = statistics.median(known) if known else None
            if ratio is None:  # not applicable there, or an error
                incomplete = True
                continue
            seconds += ratio * saliency[name] * settings.num_images
        note = ""
        if method in settings.left_out:
            note = "  (left out of the demo)"
        elif incomplete:
            note = "  (some models: not applicable or failed)"
        if method not in settings.left_out:
            total += seconds
            if incomplete:
                missing.append(method)
        print(f"  {method:<26}{spec.family:<14}{spec.library[:43]:<44}{seconds:>11.1f}{note}")
    budget = 20 * 60
    print(f"  {'total (not left out)':<84}{total:>11.1f}  = {total / 60:.1f} min of the demo budget "
          f"({budget // 60} min for the whole benchmark: {'within' if total < budget else 'OVER'})")
    if missing:
        print(f"  (without the models where {', '.join(missing)} did not run)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="one model (demo_bagnet33, or the first of --models), 2 images; the others projected")
    parser.add_argument("--methods", default=None, help="comma-separated registered methods (default: all)")
    parser.add_argument("--models", default=",".join(MODELS), help=f"comma-separated demo models (default: {','.join(MODELS)})")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's default)")
    parser.add_argument("--images", type=int, default=None, help="images timed with the demo options (default 4, --quick 2)")
    parser.add_argument("--default-images", type=int, default=1, help="images timed with the registry defaults (default 1)")
    parser.add_argument("--no-defaults", action="store_true", help="time the demo options only")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--verbose", action="store_true", help="print the traceback of a failing method")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    args.images = args.images or (2 if args.quick else 4)
    if min(args.images, args.default_images) < 1:
        parser.error("--images and --default-images must be at least 1")
    device = torch.device(args.device)
    registered = attribution_methods()
    if args.methods:
        methods = [method.strip() for method in args.methods.split(",") if method.strip()]
        unknown = [method for method in methods if method not in registered]
        if unknown:
            parser.error(f"unknown method(s) {', '.join(unknown)}; registered: {', '.join(registered)}")
        methods = [BASELINE] + [method for method in methods if method != BASELINE]
    else:
        methods = list(registered)
    models = [name.strip() for name in args.models.split(",") if name.strip()]
    if args.quick:
        models = models[:1]
    settings = demo_settings()
    demo_options = settings.method_options()
    profile_models = get_profile("demo").models
    print(f"{len(registered)} registered methods; timing {len(methods)} on {', '.join(models)}")
    print(f"demo options (profile 'demo', attribution_truth): {demo_options}, references: "
          f"{settings.references} images; left out of the demo: {', '.join(settings.left_out) or 'none'}")
    start = time.perf_counter()
    warmed: set[str] = set()
    measured = {}
    for name in models:
        torch.manual_seed(0)
        measured[name] = bench_model(name, methods, args, settings, demo_options, warmed, device)
    saliency = {}
    for name in profile_models:  # the Saliency time of every profile model, at the demo batch
        saliency[name] = saliency_seconds(name, args.images, device)
    for name in models:
        if name not in profile_models:
            print(f"({name} is not a demo profile model: not in the estimate)")
    estimates(methods, measured, saliency, settings, profile_models)
    print(f"\nbench time: {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
