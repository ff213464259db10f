"""The attribution registry and its dispatch: one entry per method, the working copy every method
runs on, and the helpers the families share (seeded draws, bounded internal batches).

Each method is ONE function decorated with :func:`register_attribution`::

    @register_attribution("my_method", passes="1 forward + 1 backward", needs=("gradients",))
    def my_method(net, images, targets, *, my_option: float = 0.5) -> Tensor:
        '''What it computes, its source, and why each default.'''

It is called on the working copy with the prepared tensors (grad enabled, outside inference mode),
returns [B, 3, H, W] attributions, and declares its options as keyword-only parameters with
defaults; :func:`attribute` then dispatches to it by name (see there for how options are passed).
:func:`attribution_methods` lists every registered name (the paper's four first), :data:`METHODS`
(= :data:`PAPER_METHODS`) only the paper's four, in the order the experiments' CSVs use.

A method that cannot apply to a model (a CAM without a convolutional map, the ReLU rules on a model
with a sigmoid) raises :class:`MethodNotApplicable`; experiments record its message per (model,
method). The seeded methods draw inside :func:`seeded_rng`: a run is deterministic and the caller's
torch and numpy random states are left as they were.

The caller's model is never modified: every method runs on :func:`working_copy`, a structural deep
copy that shares the parameter and buffer tensors (nothing is duplicated or written), put in eval
mode with every ``nn.ReLU`` made non-inplace. Copying the structure costs tens of milliseconds
(DenseNet-169: ~50 ms), so copies are not cached: a cache could go stale if the caller reloads
weights in place.

Layouts: images [B, 3, H, W] (normalised: the model's input), targets [B] class indices,
attributions [B, 3, H, W] float32 with respect to the model's input. Everything is batched over images.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import inspect
import itertools
from typing import Any, Callable, Iterator

import torch
from torch import Tensor, nn

from bagrepro.core.errors import ConfigError


class MethodNotApplicable(ConfigError):
    """The method cannot apply to this model; the message says why (experiments record it per
    (model, method) and go on)."""

#: the paper's four white-box methods, in the order the experiments (and their CSVs) use
PAPER_METHODS = ("saliency", "integrated_gradients", "eps_lrp", "deeplift")
#: alias of :data:`PAPER_METHODS` (experiments iterate over ``attribution.METHODS``)
METHODS = PAPER_METHODS

#: default bound on the number of scaled images per Integrated-Gradients pass (rounded down to a
#: multiple of the batch size, at least the batch size): 32 VGG-16 inputs at 224 px take roughly
#: 2-3 GB (measured on the CPU: an 8-input pass raised peak memory by ~340 MB over a 2-image one).
DEFAULT_IG_BATCH = 32

# ---- model handling --------------------------------------------------------------------------------

def working_copy(model: nn.Module) -> nn.Module:
    """A deep copy of ``model``'s modules sharing its parameter and buffer tensors, in eval mode, with
    every ``nn.ReLU`` non-inplace. The caller's model (modules, flags, hooks) is left untouched."""
    memo = {id(t): t for t in itertools.chain(model.parameters(), model.buffers())}
    clone = copy.deepcopy(model, memo)
    clone.eval()
    for module in clone.modules():
        if isinstance(module, nn.ReLU):
            module.inplace = False
    return clone


# ---- inputs ----------------------------------------------------------------------------------------

def prepare(images: Tensor, targets) -> tuple[Tensor, Tensor]:
    if not isinstance(images, Tensor) or images.dim() != 4:
        raise ConfigError(f"images must be a [B, C, H, W] tensor, got {getattr(images, 'shape', type(images))}")
    images = images.detach().clone()  # never hand the caller's tensor to captum (it sets requires_grad)
    targets = torch.as_tensor(targets, dtype=torch.long, device=images.device).reshape(-1).clone()
    if targets.numel() == 1 and images.shape[0] > 1:
        targets = targets.expand(images.shape[0])
    if targets.numel() != images.shape[0]:
        raise ConfigError(f"need one target per image: {targets.numel()} targets for {images.shape[0]} images")
    return images, targets


def target_logits(outputs: Tensor, targets: Tensor) -> Tensor:
    return outputs.gather(1, targets[:, None])[:, 0]



#: what a method can need from the model (:attr:`AttributionMethod.needs`); extend it here when a new
#: kind of method needs something else
NEEDS = {
    "forward": "forward passes only (black-box: Occlusion, LIME, KernelSHAP)",
    "gradients": "backward passes: the model is differentiable with respect to its input",
    "conv_layer": "the activations of a convolutional layer and their gradients (Grad-CAM)",
}


@dataclasses.dataclass(frozen=True)
class AttributionMethod:
    """One registered attribution method (made by :func:`register_attribution`, read with
    :func:`get_attribution`).

    name: what :func:`attribute` and the experiments call it.
    compute: ``compute(net, images, targets, **options) -> Tensor``; ``net`` is a :func:`working_copy`
        in eval mode, ``images`` [B, 3, H, W] a private copy, ``targets`` [B] long; it runs with grad
        enabled, outside inference mode, and returns [B, 3, H, W] attributions w.r.t. ``images``.
    passes: forward/backward passes per image, human-readable (informational; ``n`` = ig_steps).
    cost: ``cost(images, options) -> (forward, backward)``: the image passes one call on ``images``
        images makes with ``options`` (the method's defaults updated by the caller's), for
        ``run_all.py --plan``; checked against a counted run by ``tests/test_plan.py`` and
        ``tests/test_attribution_methods.py``. ``options`` also holds the reserved entry
        ``"image_size"``: (height, width) or None, from :meth:`passes_for`, for a cost that depends on
        it (``occlusion``'s number of windows), and ``"model"``: the model (its architecture: weights
        may be random) or None, for a cost that depends on it (Score-CAM's number of channels).
    options: ``((name, default), ...)``: the keyword-only parameters of ``compute``, in order.
    needs: what the method needs from the model, a tuple of :data:`NEEDS` keys:
        ``"forward"`` (forward passes only, black-box), ``"gradients"`` (backward passes to the input),
        ``"conv_layer"`` (a convolutional layer's activations and gradients, as Grad-CAM).
    description: ``compute``'s docstring: what it computes, where from, and why its defaults.
    family: the method family (a :data:`FAMILIES` key): the README's method table and the
        leaderboard group by it.
    library: the library that computes it and its call (e.g. ``"captum Saliency"``), or
        ``"bagrepro"`` where no maintained library computes it as defined (the docstring says why).
    applies: None, or ``applies(model, image_size) -> reason | None``: why the method cannot apply
        to the model (an architecture: weights may be random) at ``(height, width)``, found before
        the method runs. ``compute`` calls the same check first, on its first image, so where it
        fails a call spends one forward pass (of one image) and raises :class:`MethodNotApplicable`;
        ``--plan`` calls it (:meth:`not_applicable`) to plan that.
    """

    name: str
    compute: Callable[..., Tensor]
    passes: str
    options: tuple[tuple[str, Any], ...]
    needs: tuple[str, ...]
    description: str
    cost: Callable[[int, dict], tuple[int, int]]
    family: str = "your method"
    library: str = "your code"
    applies: Callable[[nn.Module, tuple[int, int]], str | None] | None = None

    def not_applicable(self, model: nn.Module, image_size: int | tuple[int, int]) -> str | None:
        """Why the method cannot apply to ``model`` at ``image_size`` (side, or (height, width)), as
        its MethodNotApplicable would say; None where it applies or has no check (see ``applies``)."""
        if self.applies is None:
            return None
        size = (int(image_size),) * 2 if isinstance(image_size, int) else tuple(int(side) for side in image_size)
        return self.applies(model, size)

    @property
    def defaults(self) -> dict[str, Any]:
        """The options as a dict, name -> default."""
        return dict(self.options)

    def passes_for(self, images: int, *, image_size: int | tuple[int, int] | None = None,
                   model: nn.Module | None = None, **options) -> tuple[int, int]:
        """(forward, backward) image passes of one call on ``images`` images with ``options``.

        image_size: the images' side, or (height, width); model: the model (random weights do: only
        its architecture counts). Each is needed only where the cost depends on it (``occlusion``
        on the size, Score-CAM on the model: ConfigError without it), ignored elsewhere.
        """
        if image_size is not None:
            image_size = ((int(image_size),) * 2 if isinstance(image_size, int)
                          else tuple(int(side) for side in image_size))
        return self.cost(images, {**self.defaults, **_options_for(self, options), IMAGE_SIZE: image_size,
                                  MODEL: model})


_REGISTRY: dict[str, AttributionMethod] = {}

#: options that bound memory or seed the draws without changing what a method estimates (the README's
#: method table leaves them out of the defaults)
MECHANICS_OPTIONS = frozenset({"internal_batch_size", "perturbations_per_eval", "seed", "cam_batch_size",
                               "pair_batch_size"})

#: the reserved entries of a cost function's options: the images' (height, width), or None; the
#: model (an ``nn.Module``), or None
IMAGE_SIZE = "image_size"
MODEL = "model"


def _declared_options(name: str, compute: Callable) -> tuple[tuple[str, Any], ...]:
    params = list(inspect.signature(compute).parameters.values())
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    options = [p for p in params if p.kind is p.KEYWORD_ONLY]
    if (len(positional) != 3 or len(positional) + len(options) != len(params)
            or any(p.default is p.empty for p in options) or any(p.name in (IMAGE_SIZE, MODEL) for p in options)):
        raise ConfigError(f"attribution method {name!r}: the signature must be (net, images, targets, *, "
                          f"option=default, ...), no option named {IMAGE_SIZE!r} or {MODEL!r} (reserved), "
                          f"got {compute.__name__}{inspect.signature(compute)}")
    return tuple((p.name, p.default) for p in options)


def _one_each(images: int, options: dict) -> tuple[int, int]:
    return images, images


#: the method families, one module each in this package (a plugin's method defaults to "your method")
FAMILIES = {
    "gradient": "gradients and their modifications (gradients.py)",
    "path": "path and reference methods: integrals of gradients along a path from a baseline (path.py)",
    "LRP": "layer-wise relevance propagation and DeepLIFT: modified backward rules (lrp.py)",
    "CAM": "class activation maps of a convolutional layer (cams.py)",
    "perturbation": "perturbation and surrogate models: forward passes on masked inputs (perturbation.py)",
    "your method": "registered outside the package (a --plugin file, a notebook)",
}


def register_attribution(name: str, *, passes: str, needs: tuple[str, ...] = ("gradients",),
                         cost: Callable[[int, dict], tuple[int, int]] = _one_each,
                         family: str = "your method", library: str = "your code",
                         applies: Callable[[nn.Module, tuple[int, int]], str | None] | None = None,
                         ) -> Callable[[Callable[..., Tensor]], Callable[..., Tensor]]:
    """Decorator: register the decorated function as attribution method ``name`` (it is returned
    unchanged, so it stays callable directly).

    The function's options are its keyword-only parameters with their defaults; its docstring (required)
    is the method's description. ``cost``: its image passes per call (default: one forward and one
    backward per image), ``applies``: see :class:`AttributionMethod`. Raises ConfigError for a name already registered, a ``needs`` entry
    that is not a :data:`NEEDS` key, a missing docstring or another signature than
    ``(net, images, targets, *, option=default, ...)``.
    """
    needs = tuple(needs)
    if not isinstance(name, str) or not name:
        raise ConfigError(f"an attribution method needs a non-empty name, got {name!r}")
    if family not in FAMILIES:
        raise ConfigError(f"attribution method {name!r}: family {family!r} must be one of {', '.join(FAMILIES)}")
    unknown_needs = [need for need in needs if need not in NEEDS]
    if not needs or unknown_needs:
        raise ConfigError(f"attribution method {name!r}: needs {needs} must be one or more of {', '.join(NEEDS)}")

    def decorator(compute: Callable[..., Tensor]) -> Callable[..., Tensor]:
        if name in _REGISTRY:
            raise ConfigError(f"attribution method {name!r} is already registered "
                              f"(by {_REGISTRY[name].compute.__qualname__})")
        description = inspect.getdoc(compute)
        if not description:
            raise ConfigError(f"attribution method {name!r}: document it (and its defaults) in a docstring")
        _REGISTRY[name] = AttributionMethod(name=name, compute=compute, passes=passes,
                                            options=_declared_options(name, compute), needs=needs,
                                            description=description, cost=cost,
                                            family=family, library=library, applies=applies)
        return compute

    return decorator


def unregister_attribution(name: str) -> AttributionMethod:
    """Remove method ``name`` from the registry and return it (for tests); ConfigError if unknown."""
    method = get_attribution(name)
    del _REGISTRY[name]
    return method


def attribution_methods() -> tuple[str, ...]:
    """The names of every registered method: the paper's four first (:data:`PAPER_METHODS`), then the
    others in registration order (the package's families, then plugins)."""
    return tuple(sorted(_REGISTRY, key=lambda name: PAPER_METHODS.index(name) if name in PAPER_METHODS
                        else len(PAPER_METHODS)))


def get_attribution(name: str) -> AttributionMethod:
    """The registered method ``name``; ConfigError naming the valid ones when it is unknown."""
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise ConfigError(f"unknown attribution method {name!r}; choose from "
                          f"{', '.join(attribution_methods())}") from None


def _options_for(method: AttributionMethod, options: dict[str, Any]) -> dict[str, Any]:
    """The options ``method`` declares; the others are dropped if some registered method declares
    them, else ConfigError (a typo)."""
    declared = method.defaults
    known = {option for registered in _REGISTRY.values() for option, _ in registered.options}
    unknown = sorted(option for option in options if option not in known)
    if unknown:
        raise ConfigError(f"unknown attribution option(s) {', '.join(unknown)}; the registered methods "
                          f"accept {', '.join(sorted(known)) or 'none'}")
    return {option: value for option, value in options.items() if option in declared}


def run_method(model: nn.Module, images: Tensor, targets, compute: Callable[..., Tensor], options: dict[str, Any]) -> Tensor:
    net = working_copy(model)
    # inference_mode(False): the clones in prepare are normal tensors even under inference mode
    with torch.inference_mode(False), torch.enable_grad():
        images, targets = prepare(images, targets)
        result = compute(net, images, targets, **options)
    return result.detach().float()



@contextlib.contextmanager
def seeded_rng(seed: int, device: torch.device | str = "cpu") -> Iterator[None]:
    """Within the block, torch's CPU generator (and ``device``'s, when it is a CUDA device) and numpy's
    global generator start from ``seed``; on exit all of them are back where they were.

    captum draws from the global generators: ``NoiseTunnel`` with ``torch.normal`` (on the input's
    device), ``GradientShap`` with ``np.random`` (baseline choice, interpolation coefficients),
    ``KernelShap`` and ``Lime`` with torch's CPU generator (coalitions).
    """
    import numpy as np

    device = torch.device(device)
    cuda = [device] if device.type == "cuda" else []
    numpy_state = np.random.get_state()
    try:
        with torch.random.fork_rng(devices=cuda):
            torch.default_generator.manual_seed(seed)
            for cuda_device in cuda:
                with torch.cuda.device(cuda_device):
                    torch.cuda.manual_seed(seed)
            np.random.seed(seed)
            yield
    finally:
        np.random.set_state(numpy_state)


def dataset_references(images: Tensor, references: Tensor | None) -> Tensor:
    """The dataset baseline [R, 3, H, W]: ``references`` (the experiment passes images of the data set
    that are not scored), or None -> the batch's own images."""
    chosen = images if references is None else references
    chosen = chosen.detach().clone().to(images)
    if chosen.dim() != 4 or chosen.shape[1:] != images.shape[1:]:
        raise ConfigError(f"references of shape {tuple(chosen.shape)} do not fit images {tuple(images.shape)}")
    return chosen


def positive(name: str, value, minimum: float = 1) -> None:
    if value < minimum:
        raise ConfigError(f"{name} must be at least {minimum}, got {value}")


def ig_internal_batch_size(batch: int, steps: int, internal_batch_size: int | None = None) -> int:
    """Scaled images per IG pass: ``internal_batch_size`` (default :data:`DEFAULT_IG_BATCH`) rounded
    down to a multiple of ``batch`` (captum runs whole steps), never less than ``batch`` and never more
    than ``steps * batch``."""
    bound = DEFAULT_IG_BATCH if internal_batch_size is None else int(internal_batch_size)
    if bound < 1:
        raise ConfigError(f"internal_batch_size must be positive, got {internal_batch_size}")
    steps_per_pass = min(steps, max(1, bound // batch))
    return steps_per_pass * batch



def attribute(model: nn.Module, images: Tensor, targets, method: str, **options) -> Tensor:
    """White-box attributions of ``model`` for one class per image, by registered method ``method``.

    images [B, 3, H, W] (already normalised: the model's input), targets [B] class indices (an int
    applies to every image) -> attributions [B, 3, H, W] float32 with respect to the model's input.
    The model runs in eval mode on a :func:`working_copy`; the caller's model and tensors are not
    modified, and this works under ``torch.no_grad()`` too.

    method: a name from :func:`attribution_methods` (the paper's: :data:`METHODS`); unknown ->
    ConfigError listing the valid ones.

    options: keyword options; each method gets exactly the ones it declares (:attr:`AttributionMethod.options`,
    e.g. ``ig_steps=100, internal_batch_size=None`` for ``integrated_gradients``, ``eps=1e-4`` for
    ``eps_lrp``), undeclared ones keep the method's default. The rule for the others: an option that
    this method does not declare but some other registered method does is dropped, so one set of
    shared settings can go to every method (the experiments pass ``ig_steps`` to all four); an option
    that no registered method declares is a typo and raises ConfigError.
    """
    spec = get_attribution(method)
    return run_method(model, images, targets, spec.compute, _options_for(spec, options))


