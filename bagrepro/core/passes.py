"""Counting the work a run does: images through each model, forward and backward.

A pass is one image entering the model's first convolution: a forward call, a dense BagNet heatmap
(the phase-folded pass runs the stem once per image), a texture-synthesis step on VGG's features
and an attribution's forward all go through it exactly once per image, whichever entry point they
use; a backward pass is one image's gradient reaching that convolution's input (gradients,
Integrated Gradients' steps, texture synthesis; a backward that only needs weight gradients does
not count). A step of incremental inference (:mod:`bagrepro.methods.incremental`: masking curves, occlusion)
counts as one pass per image too: its window enters the first convolution (it calls that module's
forward pre-hooks), although it costs only a fraction of a full pass. :class:`PassCounter` hooks that convolution of every
model the run context hands out (the eager model and its inference copy; deep copies an attribution
method makes keep the hooks), so the counts are what the run really did; the runner writes them into
every CSV's provenance and ``--plan`` predicts them (:mod:`bagrepro.harness.plan`).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from torch import nn


@dataclass
class Passes:
    """Images through a model: ``forward`` (into its first convolution) and ``backward`` (gradients
    out of it)."""

    forward: int = 0
    backward: int = 0


def first_convolution(model: nn.Module) -> nn.Module | None:
    """The first ``nn.Conv2d`` in ``model.modules()`` order (for torchvision models, the BagNets and
    their inference copies, the layer every input enters first), or None."""
    return next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)


class PassCounter:
    """Per model name, the :class:`Passes` since the last :meth:`reset`."""

    def __init__(self):
        self.counts: dict[str, Passes] = defaultdict(Passes)

    def attach(self, name: str, model: nn.Module) -> nn.Module:
        """Count the passes of ``model`` under ``name``; returns ``model``. A model without a
        convolution is not counted."""
        conv = first_convolution(model)
        if conv is None or any(getattr(hook, "counter", None) is self for hook in conv._forward_pre_hooks.values()):
            return model  # nothing to count, or counted already (a copy keeps the hooks of its original)

        def on_backward(grad):
            self.counts[name].backward += int(grad.shape[0])

        def on_forward(_module, inputs):
            image = inputs[0]
            self.counts[name].forward += int(image.shape[0])
            # a tensor hook, not a module backward hook: those break on the in-place ReLU after VGG's
            # first convolution; once per tensor, as it fires once per backward through it
            if image.requires_grad and not getattr(image, "_bagrepro_counted", False):
                image.register_hook(on_backward)
                image._bagrepro_counted = True

        on_forward.counter = self
        conv.register_forward_pre_hook(on_forward)
        return model

    def reset(self) -> None:
        self.counts.clear()

    def as_dict(self) -> dict[str, dict[str, int]]:
        """``{model: {"forward": n, "backward": m}}`` for every model that ran."""
        return {name: {"forward": p.forward, "backward": p.backward} for name, p in sorted(self.counts.items())
                if p.forward or p.backward}
