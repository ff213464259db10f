"""``run_all.py --plan``: what a run would compute, and how long it would take, before computing it.

The ``--plan`` stage itself is :func:`bagrepro.harness.stages.plan_run` (it collects every experiment's
work with :func:`bagrepro.harness.stages.plan_units`, calibrates with :func:`calibrate`, prints).

Every experiment declares ``plan(ctx) -> list[Work]``: per model and kind of work, the images and
the image passes (:mod:`bagrepro.core.passes` defines a pass; ``tests/test_plan.py`` checks each plan
against the passes a smoke run counts). The counts are those of a run with nothing cached: shared
clean predictions are planned once (by the first experiment in run order that needs them), but a
heatmap another experiment already cached is planned again, so a whole-profile total is an upper
bound by that much. Misclassified plans its ``num_images`` even when fewer images are misclassified
by both models.

The time estimate comes from a short calibration on the chosen device (:func:`calibrate`): each
model, with random weights (nothing is downloaded or trained), runs a few batches at the run's image
size (forward through its inference copy and its eager form, forward + backward, and for a BagNet a
dense heatmap); a unit's time is its passes times those rates. Memory per batch: measured on CUDA
(peak allocated during forward + backward), estimated on the CPU (the weights plus every layer's
output, which backward keeps).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from bagrepro.harness import distributed
from bagrepro.methods.heatmaps import dense_heatmaps
from bagrepro.models import create_model
from bagrepro.models.fast import fuse_for_inference


@dataclass(frozen=True)
class Work:
    """A piece of an experiment's work on one model: ``images`` images, ``forward`` image passes
    (every entry into the model: forward calls, attribution passes, texture steps, dense heatmaps),
    ``backward`` image gradients to the input, of the forward passes ``heatmap`` that are dense BagNet
    heatmaps (costlier than a forward; timed apart)."""

    model: str
    what: str
    images: int
    forward: int
    backward: int = 0
    heatmap: int = 0


@dataclass(frozen=True)
class Rates:
    """Seconds per image of a model on the device: forward (inference copy, eager), the extra of a
    backward, a dense heatmap (BagNets; None otherwise); bytes per image kept for backward and the
    weights' bytes."""

    forward: float
    forward_eager: float
    backward: float
    heatmap: float | None
    activation_bytes: float
    weight_bytes: int

    def seconds(self, work: Work) -> float:
        plain = work.forward - work.heatmap
        return plain * self.forward + work.backward * self.backward + work.heatmap * (self.heatmap or self.forward)

    def batch_mib(self, batch_size: int) -> float:
        return (self.weight_bytes + batch_size * self.activation_bytes) / 2 ** 20

    def largest_batch(self, free_bytes: int) -> int:
        """The largest batch whose forward + backward fits in ``free_bytes`` (0: not even one image)."""
        return max(0, int((free_bytes - self.weight_bytes) // max(1.0, self.activation_bytes)))


def free_memory(device: torch.device) -> int:
    """Bytes free for a run: the GPU's free memory, or the machine's available RAM."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    with open("/proc/meminfo") as meminfo:  # Linux; MemAvailable counts reclaimable cache
        fields = dict(line.split(":", 1) for line in meminfo)
    return int(fields["MemAvailable"].split()[0]) * 1024


def _timed(device: torch.device, call, repeats: int) -> float:
    """Median seconds of ``call()`` over ``repeats`` runs, after one untimed warm-up."""
    call()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        call()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def _activation_bytes(model: torch.nn.Module, inputs: torch.Tensor) -> float:
    """Bytes per image of every leaf module's output in one forward (what backward keeps, roughly)."""
    total = [0]

    def count(_module, _inputs, output):
        if isinstance(output, torch.Tensor):
            total[0] += output.numel() * output.element_size()

    hooks = [m.register_forward_hook(count) for m in model.modules() if not list(m.children())]
    try:
        with torch.no_grad():
            model(inputs)
    finally:
        for hook in hooks:
            hook.remove()
    return total[0] / len(inputs)


#: images per timed batch on a CPU (a GPU is timed at the run's batch size)
CPU_CALIBRATION_BATCH = 2
#: side in px at which a dense heatmap is timed at most (its cost grows with the pixels: scaled up)
HEATMAP_CALIBRATION_SIDE = 112


def calibrate(name: str, image_size: int, device: torch.device, batch_size: int = 1, repeats: int = 1) -> Rates:
    """Time model ``name`` (random weights) on ``batch_size`` images of ``image_size`` px on ``device``
    (the median of ``repeats`` runs after a warm-up). A dense heatmap is timed once on one image of
    at most :data:`HEATMAP_CALIBRATION_SIDE` px and scaled by the pixels (it costs seconds per
    224 px image on a CPU)."""
    model = create_model(name, pretrained=False).to(device)
    fused = fuse_for_inference(model)
    inputs = torch.rand(batch_size, 3, image_size, image_size, device=device)
    targets = torch.zeros(batch_size, dtype=torch.long, device=device)

    def forward(net, x):
        with torch.inference_mode():
            net(x)

    def forward_backward():
        x = inputs.clone().requires_grad_(True)
        model(x).gather(1, targets[:, None]).sum().backward()
        model.zero_grad(set_to_none=True)

    fused_inputs = inputs.contiguous(memory_format=torch.channels_last)
    t_fused = _timed(device, lambda: forward(fused, fused_inputs), repeats)
    t_eager = _timed(device, lambda: forward(model, inputs), repeats)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
    t_both = _timed(device, forward_backward, repeats)
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    if device.type == "cuda":
        activation = (torch.cuda.max_memory_allocated(device) - before) / batch_size
    else:
        activation = _activation_bytes(model, inputs)
    t_heatmap = None
    if model.zoo_spec.is_bagnet:
        side = min(image_size, HEATMAP_CALIBRATION_SIDE)
        small = inputs[:1, :, :side, :side]
        with torch.inference_mode():
            t_heatmap = _timed(device, lambda: dense_heatmaps(fused, small, targets=targets[:1]), 1) * (image_size / side) ** 2
    return Rates(forward=t_fused / batch_size, forward_eager=t_eager / batch_size,
                 backward=max(0.0, t_both - t_eager) / batch_size, heatmap=t_heatmap,
                 activation_bytes=activation, weight_bytes=weight_bytes)


def calibrate_within_memory(name: str, image_size: int, device: torch.device, batch_size: int) -> Rates:
    """:func:`calibrate` at ``batch_size``, halved until forward + backward fits the GPU's memory."""
    while True:
        try:
            return calibrate(name, image_size, device, batch_size=batch_size)
        except torch.cuda.OutOfMemoryError:
            if batch_size == 1:
                raise
            batch_size = max(1, batch_size // 2)
            torch.cuda.empty_cache()


#: --batch-size auto: the share of the free memory a batch may take, and the largest batch chosen
AUTO_BATCH_MEMORY_SHARE = 0.8
AUTO_BATCH_CAP = 256


def choose_batch_size(ctx, log=print) -> int:
    """--batch-size auto: the largest batch whose forward + backward fits in
    :data:`AUTO_BATCH_MEMORY_SHARE` of the device's free memory for every model of the run
    (calibrated as for --plan: measured on CUDA, estimated on the CPU), at most
    :data:`AUTO_BATCH_CAP`, at least 1. Every experiment then uses it (runtime too)."""
    free = free_memory(ctx.device) * AUTO_BATCH_MEMORY_SHARE
    size = ctx.image_size
    batch = AUTO_BATCH_CAP
    for name in ctx.progress(ctx.model_names, desc="choosing the batch size"):
        batch = min(batch, calibrate_within_memory(name, size, ctx.device, 1).largest_batch(int(free)))
    batch = max(1, batch)
    log(f"[batch] --batch-size auto: {batch} images per batch (forward + backward of every model in "
        f"{AUTO_BATCH_MEMORY_SHARE:.0%} of {free / AUTO_BATCH_MEMORY_SHARE / 2 ** 30:.1f} GiB free on {ctx.device}, "
        f"at most {AUTO_BATCH_CAP})")
    return batch


def per_process_seconds(unit_seconds: list[float], shardable: bool, world_size: int) -> float:
    """An experiment's wall time on the busiest process: its units dealt round-robin when it is
    shardable (as the runner deals them), all on rank 0 otherwise."""
    if not shardable or world_size <= 1:
        return sum(unit_seconds)
    return max(sum(unit_seconds[rank::world_size]) for rank in range(world_size))


def world_size() -> int:
    return distributed.world_size()


def human(seconds: float) -> str:
    """'42 s', '3.5 min', '7.2 h', '2.1 d'."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"
