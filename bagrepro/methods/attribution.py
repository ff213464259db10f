"""White-box attribution heatmaps for the spatial-sensitivity experiment (paper.md section 3, item 10).

The paper computed its white-box heatmaps with DeepExplain; the definitions below follow it:

- ``saliency``: |d logit_t / d x| (captum ``Saliency(abs=True)``).
- ``integrated_gradients``: x * mean_k grad(k/n * x), k = 1..n, zero baseline, n = 100 (captum
  ``IntegratedGradients(multiply_by_inputs=True)``, ``method='riemann_right'``: alphas 1/n .. 1 as in
  DeepExplain), with a bounded ``internal_batch_size`` (captum otherwise sends all n * B scaled
  images through the model at once).
- ``eps_lrp``: gradient x input where the gradient of every ReLU is replaced by
  ``output / (input + eps * sign(input))``, sign(0) = +1, eps = 1e-4; every other op (convolution,
  batch norm, pooling including max-pool, residual addition, concatenation) keeps its gradient.
- ``deeplift``: rescale rule, zero baseline: the gradient of every ReLU is replaced by
  ``(out - out_ref) / (in - in_ref)`` where ``|in - in_ref| > 1e-5``, else by the ReLU's gradient at
  the midpoint ``(in + in_ref) / 2``; attribution = that gradient x (x - baseline). As in
  DeepExplain, max-pool keeps its plain gradient. That is exact for summation-to-delta where the
  reference is constant inside every pooling window (the stem max-pool of ResNet/DenseNet under a zero
  baseline: the stem conv maps 0 to 0, so its BN/ReLU output is constant per channel), not on VGG's later max-pools, so on VGG the sum of
  DeepLIFT attributions is not exactly logit(x) - logit(0) (DeepExplain's isn't either). The paper used
  DeepExplain, hence this choice. captum's ``DeepLift`` registers a MaxPool rule meant to keep the
  summation, but in captum 0.9 it has no effect where a ReLU module feeds the max-pool (VGG, the
  ResNet/DenseNet stems): the ReLU's hook recomputes its input gradient from the output gradient it
  captured before the max-pool's hook ran, so captum's numbers equal the ones here (measured: 8e-8
  relative on a Conv-ReLU-MaxPool net, with captum's MaxPool rule called and changing its gradient).

How the ReLU rules are applied. captum's ``LRP`` and ``DeepLift`` attach hooks to ReLU *modules*:
torchvision's ResNet ``Bottleneck``/``BasicBlock`` call one ``nn.ReLU`` module several times per
forward (captum's ``DeepLift`` then raises, its ``LRP`` returns meaningless relevance), and DenseNet
ends with a functional ``F.relu`` that module hooks never see. So the ReLU itself is overridden
instead: inside :func:`relu_override` a :class:`torch.overrides.TorchFunctionMode` routes every ReLU
call -- ``nn.ReLU`` modules (which call ``F.relu``), ``F.relu``, ``torch.relu``, ``Tensor.relu`` and
their in-place variants -- to a ``torch.autograd.Function`` whose forward is the ordinary ReLU and
whose backward applies the rule. Every call creates its own autograd context, so a module reused
three times is three independent ReLUs, and functional calls are covered like module calls. In-place
calls are computed out of place (the caller's tensor is left alone and the result is returned; every
torchvision model uses the returned value). The mode is thread-local and only active inside the
``with`` block; no module or global function is patched.

DeepExplain replaces the gradient of Elu, Sigmoid, Tanh and Softplus too; those have no rule here, so
``eps_lrp`` and ``deeplift`` raise :class:`MethodNotApplicable` (a ConfigError) on a model that calls
one rather than silently keeping its gradient.

Further methods (not in the paper; registered after its four, one line each):

- ``input_x_gradient``: gradient x input (captum ``InputXGradient``).
- ``smoothgrad``: mean signed gradient over Gaussian-noised copies of the input (captum
  ``NoiseTunnel(Saliency)``, ``nt_type='smoothgrad'``), seeded.
- ``guided_backprop``: gradient where every ReLU passes back ``relu(grad) * (x > 0)``; through the ReLU
  override (captum's ``GuidedBackprop`` hooks ReLU modules: same problem as above).
- ``deconvolution``: gradient where every ReLU passes back ``relu(grad)``; through the ReLU override
  (instead of captum's ``Deconvolution``).
- ``gradient_shap``: expected gradients over the zero and a seeded noise baseline (captum
  ``GradientShap``), seeded.
- ``occlusion``: logit drop when a square window is set to 0 (captum ``Occlusion``'s numbers), forward
  only, by incremental inference (:mod:`bagrepro.methods.incremental`: each occluded input recomputes only
  what its window reaches) where the model can be traced, else by captum.
- ``kernel_shap`` / ``lime``: surrogate linear models on a grid of square cells (captum ``KernelShap`` /
  ``Lime``), seeded, forward only.
- ``grad_cam``: Grad-CAM of the last convolutional block (:func:`gradcam_layer`; captum
  ``LayerGradCam``), upsampled bilinearly to the input.

A method that cannot apply to a model (Grad-CAM without a convolutional map, the ReLU rules on a
model with a sigmoid) raises :class:`MethodNotApplicable`; experiments record its message per
(model, method). The seeded methods draw inside :func:`seeded_rng`: a run is deterministic and the
caller's torch and numpy random states are left as they were.

The caller's model is never modified: every method runs on :func:`working_copy`, a structural deep
copy that shares the parameter and buffer tensors (nothing is duplicated or written), put in eval mode
with every ``nn.ReLU`` made non-inplace. Copying the structure costs tens of milliseconds (DenseNet-169:
~50 ms), so copies are not cached: a cache could go stale if the caller reloads weights in place.

The tests cross-check the rescale rule here against captum's ``DeepLift`` run on a ``torch.fx`` copy of
the model in which every ReLU call has its own ``nn.ReLU`` module (``tests/attribution_crosscheck.py``:
``unshare_relus``, ``captum_deeplift``); that code is for comparison only and not part of the library.

The methods form a registry. Each is ONE function decorated with :func:`register_attribution`::

    @register_attribution("my_method", passes="1 forward + 1 backward", needs=("gradients",))
    def _my_method(net, images, targets, *, my_option: float = 0.5) -> Tensor:
        '''What it computes, its source, and why each default.'''

It is called on the working copy with the prepared tensors (grad enabled, outside inference mode),
returns [B, 3, H, W] attributions, and declares its options as keyword-only parameters with defaults;
:func:`attribute` then dispatches to it by name (see there for how options are passed). The registry
keeps registration order: :func:`attribution_methods` lists every registered name, :data:`METHODS`
(= :data:`PAPER_METHODS`) only the paper's four, in the order the experiments' CSVs use. A method uses
captum where captum computes it as defined and is written out only where captum cannot be used (the
ReLU rules above: ``eps_lrp``, ``deeplift``, ``guided_backprop``, ``deconvolution``).

Layouts: images [B, 3, H, W] (normalised: the model's input), targets [B] class indices, attributions
[B, 3, H, W] float32 with respect to the model's input. Everything is batched over images.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import inspect
import itertools
from typing import Any, Callable, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from bagrepro.core.errors import ConfigError
from bagrepro.methods.incremental import IncrementalModel, NotIncremental, report_fallback


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

#: DeepExplain's threshold on |in - in_ref| below which DeepLIFT falls back to the midpoint gradient
DEEPLIFT_DELTA_THRESHOLD = 1e-5

ReluRule = Callable[[Tensor], Tensor]

_RELU_CALLS = frozenset({F.relu, torch.relu, torch.relu_, Tensor.relu, Tensor.relu_})
# DeepExplain overrides these too; without a rule here their gradient would silently stay plain
_UNSUPPORTED_NONLINEAR = {
    torch.sigmoid: "sigmoid", Tensor.sigmoid: "sigmoid", torch.tanh: "tanh", Tensor.tanh: "tanh",
    F.elu: "elu", F.softplus: "softplus",
}


# ---- the ReLU override ----------------------------------------------------------------------------

class _ReluWithMultiplier(torch.autograd.Function):
    """ReLU forward; backward multiplies the incoming gradient by a precomputed ``multiplier``.

    The multiplier (the rule's replacement for the ReLU's derivative) is computed in the forward from
    the input and saved instead of the input, so the memory is the same as a plain ReLU's.
    """

    @staticmethod
    def forward(ctx, x: Tensor, multiplier: Tensor) -> Tensor:
        ctx.save_for_backward(multiplier)
        return torch.relu(x)

    @staticmethod
    def backward(ctx, grad_output: Tensor):
        (multiplier,) = ctx.saved_tensors
        return grad_output * multiplier, None


def epsilon_rule(eps: float = 1e-4) -> ReluRule:
    """DeepExplain's epsilon-LRP ReLU: gradient := grad * relu(x) / (x + eps * sign(x)), sign(0) = +1."""

    def rule(x: Tensor) -> Tensor:
        with torch.no_grad():
            sign = torch.where(x >= 0, 1.0, -1.0).to(x.dtype)
            multiplier = torch.relu(x) / (x + eps * sign)
        return _ReluWithMultiplier.apply(x, multiplier)

    return rule


def rescale_multiplier(x: Tensor, x_ref: Tensor, threshold: float = DEEPLIFT_DELTA_THRESHOLD) -> Tensor:
    """DeepLIFT rescale multiplier of a ReLU (DeepExplain's definition); broadcasts x_ref over x.

    (relu(x) - relu(x_ref)) / (x - x_ref) where |x - x_ref| > threshold, else the ReLU's derivative at
    the midpoint (1 where x + x_ref > 0, else 0).
    """
    delta_in = x - x_ref
    large = delta_in.abs() > threshold
    ratio = (torch.relu(x) - torch.relu(x_ref)) / torch.where(large, delta_in, torch.ones_like(delta_in))
    midpoint_grad = ((x + x_ref) > 0).to(x.dtype)
    return torch.where(large, ratio, midpoint_grad)


class _ReluOverrideMode(TorchFunctionMode):
    def __init__(self, rule: ReluRule, strict: bool):
        super().__init__()
        self.rule = rule
        self.strict = strict

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _RELU_CALLS:
            # in-place variants are computed out of place: the returned value is what the model uses
            return self.rule(args[0])
        if self.strict and func in _UNSUPPORTED_NONLINEAR:
            raise MethodNotApplicable(f"the model calls {_UNSUPPORTED_NONLINEAR[func]}, which has no "
                                      "attribution rule here (only ReLU is overridden)")
        return func(*args, **kwargs)


@contextlib.contextmanager
def relu_override(rule: ReluRule, *, strict: bool = True) -> Iterator[None]:
    """Within the block, every ReLU call on this thread is computed as ``rule(x)``.

    Covers ``nn.ReLU`` modules (shared or not, inplace or not), ``F.relu``, ``torch.relu``,
    ``Tensor.relu`` and the in-place variants (computed out of place). ``rule`` must return
    ``relu(x)``; typically it is an autograd Function with a replaced backward (:func:`epsilon_rule`).
    With ``strict``, calling sigmoid/tanh/elu/softplus inside the block raises
    :class:`MethodNotApplicable`. Only the forward needs to run inside the block: the backward uses
    what each call saved.
    """
    with _ReluOverrideMode(rule, strict):
        yield


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

def _prepare(images: Tensor, targets) -> tuple[Tensor, Tensor]:
    if not isinstance(images, Tensor) or images.dim() != 4:
        raise ConfigError(f"images must be a [B, C, H, W] tensor, got {getattr(images, 'shape', type(images))}")
    images = images.detach().clone()  # never hand the caller's tensor to captum (it sets requires_grad)
    targets = torch.as_tensor(targets, dtype=torch.long, device=images.device).reshape(-1).clone()
    if targets.numel() == 1 and images.shape[0] > 1:
        targets = targets.expand(images.shape[0])
    if targets.numel() != images.shape[0]:
        raise ConfigError(f"need one target per image: {targets.numel()} targets for {images.shape[0]} images")
    return images, targets


def _target_logits(outputs: Tensor, targets: Tensor) -> Tensor:
    return outputs.gather(1, targets[:, None])[:, 0]


def _modified_gradient(model: nn.Module, images: Tensor, targets: Tensor, rule: ReluRule,
                       strict: bool = True) -> Tensor:
    x = images.detach().requires_grad_(True)
    with relu_override(rule, strict=strict):
        selected = _target_logits(model(x), targets).sum()
    (grad,) = torch.autograd.grad(selected, x)
    return grad



# ---- the registry ------------------------------------------------------------------------------------

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
        it (``occlusion``'s number of windows).
    options: ``((name, default), ...)``: the keyword-only parameters of ``compute``, in order.
    needs: what the method needs from the model, a tuple of :data:`NEEDS` keys:
        ``"forward"`` (forward passes only, black-box), ``"gradients"`` (backward passes to the input),
        ``"conv_layer"`` (a convolutional layer's activations and gradients, as Grad-CAM).
    description: ``compute``'s docstring: what it computes, where from, and why its defaults.
    """

    name: str
    compute: Callable[..., Tensor]
    passes: str
    options: tuple[tuple[str, Any], ...]
    needs: tuple[str, ...]
    description: str
    cost: Callable[[int, dict], tuple[int, int]]

    @property
    def defaults(self) -> dict[str, Any]:
        """The options as a dict, name -> default."""
        return dict(self.options)

    def passes_for(self, images: int, *, image_size: int | tuple[int, int] | None = None,
                   **options) -> tuple[int, int]:
        """(forward, backward) image passes of one call on ``images`` images with ``options``.

        image_size: the images' side, or (height, width); needed only where the cost depends on it
        (``occlusion``: ConfigError without it), ignored elsewhere.
        """
        if image_size is not None:
            image_size = ((int(image_size),) * 2 if isinstance(image_size, int)
                          else tuple(int(side) for side in image_size))
        return self.cost(images, {**self.defaults, **_options_for(self, options), IMAGE_SIZE: image_size})


_REGISTRY: dict[str, AttributionMethod] = {}

#: the reserved entry of a cost function's options: the images' (height, width), or None
IMAGE_SIZE = "image_size"


def _declared_options(name: str, compute: Callable) -> tuple[tuple[str, Any], ...]:
    params = list(inspect.signature(compute).parameters.values())
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    options = [p for p in params if p.kind is p.KEYWORD_ONLY]
    if (len(positional) != 3 or len(positional) + len(options) != len(params)
            or any(p.default is p.empty for p in options) or any(p.name == IMAGE_SIZE for p in options)):
        raise ConfigError(f"attribution method {name!r}: the signature must be (net, images, targets, *, "
                          f"option=default, ...), no option named {IMAGE_SIZE!r} (reserved), "
                          f"got {compute.__name__}{inspect.signature(compute)}")
    return tuple((p.name, p.default) for p in options)


def _one_each(images: int, options: dict) -> tuple[int, int]:
    return images, images


def register_attribution(name: str, *, passes: str, needs: tuple[str, ...] = ("gradients",),
                         cost: Callable[[int, dict], tuple[int, int]] = _one_each,
                         ) -> Callable[[Callable[..., Tensor]], Callable[..., Tensor]]:
    """Decorator: register the decorated function as attribution method ``name`` (it is returned
    unchanged, so it stays callable directly).

    The function's options are its keyword-only parameters with their defaults; its docstring (required)
    is the method's description. ``cost``: its image passes per call (default: one forward and one
    backward per image), see :class:`AttributionMethod`. Raises ConfigError for a name already registered, a ``needs`` entry
    that is not a :data:`NEEDS` key, a missing docstring or another signature than
    ``(net, images, targets, *, option=default, ...)``.
    """
    needs = tuple(needs)
    if not isinstance(name, str) or not name:
        raise ConfigError(f"an attribution method needs a non-empty name, got {name!r}")
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
                                            description=description, cost=cost)
        return compute

    return decorator


def unregister_attribution(name: str) -> AttributionMethod:
    """Remove method ``name`` from the registry and return it (for tests); ConfigError if unknown."""
    method = get_attribution(name)
    del _REGISTRY[name]
    return method


def attribution_methods() -> tuple[str, ...]:
    """The names of every registered method, in registration order (the paper's four first)."""
    return tuple(_REGISTRY)


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


def _run(model: nn.Module, images: Tensor, targets, compute: Callable[..., Tensor], options: dict[str, Any]) -> Tensor:
    net = working_copy(model)
    # inference_mode(False): the clones in _prepare are normal tensors even under inference mode
    with torch.inference_mode(False), torch.enable_grad():
        images, targets = _prepare(images, targets)
        result = compute(net, images, targets, **options)
    return result.detach().float()


# ---- the paper's four methods (DeepExplain's definitions; see the module docstring) -------------------

@register_attribution("saliency", passes="1 forward + 1 backward", needs=("gradients",))
def _saliency(net: nn.Module, images: Tensor, targets: Tensor) -> Tensor:
    """Saliency map (Simonyan et al. 2014): |d logit_t / d x| for every input element (each colour
    channel separately, as DeepExplain's ``saliency``). No options. captum ``Saliency(abs=True)``."""
    from captum.attr import Saliency

    return Saliency(net).attribute(images.requires_grad_(True), target=targets, abs=True)


def ig_internal_batch_size(batch: int, steps: int, internal_batch_size: int | None = None) -> int:
    """Scaled images per IG pass: ``internal_batch_size`` (default :data:`DEFAULT_IG_BATCH`) rounded
    down to a multiple of ``batch`` (captum runs whole steps), never less than ``batch`` and never more
    than ``steps * batch``."""
    bound = DEFAULT_IG_BATCH if internal_batch_size is None else int(internal_batch_size)
    if bound < 1:
        raise ConfigError(f"internal_batch_size must be positive, got {internal_batch_size}")
    steps_per_pass = min(steps, max(1, bound // batch))
    return steps_per_pass * batch


@register_attribution("integrated_gradients", passes="n forward + n backward", needs=("gradients",),
                      cost=lambda images, options: (options["ig_steps"] * images,) * 2)
def _integrated_gradients(net: nn.Module, images: Tensor, targets: Tensor, *, ig_steps: int = 100,
                          internal_batch_size: int | None = None) -> Tensor:
    """Integrated Gradients (Sundararajan et al. 2017), zero baseline: x * mean_k grad(k/n * x),
    k = 1..n (right Riemann sum, DeepExplain's alphas 1/n .. 1). captum
    ``IntegratedGradients(multiply_by_inputs=True)`` with ``method='riemann_right'``.

    Options: ``ig_steps`` = n = 100, DeepExplain's default ``steps`` (the paper kept DeepExplain's
    defaults; Sundararajan et al. report 20-300 steps as enough); ``internal_batch_size`` = None, i.e.
    :data:`DEFAULT_IG_BATCH` scaled images per pass (see :func:`ig_internal_batch_size`; it bounds
    memory and does not change the definition).
    """
    from captum.attr import IntegratedGradients

    if ig_steps < 2:  # captum's Riemann sums assert n > 1
        raise ConfigError(f"ig_steps must be at least 2, got {ig_steps}")
    return IntegratedGradients(net, multiply_by_inputs=True).attribute(
        images.requires_grad_(True), baselines=torch.zeros_like(images), target=targets, n_steps=ig_steps,
        method="riemann_right", internal_batch_size=ig_internal_batch_size(images.shape[0], ig_steps, internal_batch_size))


@register_attribution("eps_lrp", passes="1 forward + 1 backward", needs=("gradients",))
def _eps_lrp(net: nn.Module, images: Tensor, targets: Tensor, *, eps: float = 1e-4) -> Tensor:
    """epsilon-LRP (Bach et al. 2015) in DeepExplain's gradient form (Ancona et al. 2018): gradient x
    input where every ReLU's gradient is ``relu(x) / (x + eps * sign(x))``, sign(0) = +1, through the
    ReLU override (captum's ``LRP`` cannot handle reused or functional ReLUs; module docstring).

    Options: ``eps`` = 1e-4, DeepExplain's default ``epsilon``. Models calling sigmoid/tanh/elu/softplus
    are refused (:class:`MethodNotApplicable`).
    """
    return _modified_gradient(net, images, targets, epsilon_rule(eps)) * images


def _deeplift_with_baselines(net: nn.Module, images: Tensor, targets: Tensor, baselines: Tensor | None) -> Tensor:
    if baselines is None:  # the zero baseline is shared: one reference pass of a single image
        baselines = torch.zeros_like(images[:1])
    else:  # never the caller's tensor, and a normal tensor even when it was made under inference mode
        baselines = baselines.detach().clone()
    baselines = baselines.to(images).detach()
    if baselines.shape[0] not in (1, images.shape[0]) or baselines.shape[1:] != images.shape[1:]:
        raise ConfigError(f"baselines of shape {tuple(baselines.shape)} do not fit images {tuple(images.shape)}")

    # pass 1: record the input of every ReLU call on the reference, in call order
    reference_inputs: list[Tensor] = []

    def record(x: Tensor) -> Tensor:
        reference_inputs.append(x.detach())
        return torch.relu(x)

    with torch.no_grad(), relu_override(record):
        net(baselines)

    # pass 2: the images; the k-th ReLU call is paired with the k-th reference input
    calls = iter(reference_inputs)

    def rescale(x: Tensor) -> Tensor:
        x_ref = next(calls, None)
        if x_ref is None or x_ref.shape[1:] != x.shape[1:]:
            raise ConfigError("DeepLIFT: the model's ReLU calls differ between the reference and the image pass")
        with torch.no_grad():
            multiplier = rescale_multiplier(x, x_ref)
        return _ReluWithMultiplier.apply(x, multiplier)

    grad = _modified_gradient(net, images, targets, rescale)
    if next(calls, None) is not None:
        raise ConfigError("DeepLIFT: the model's ReLU calls differ between the reference and the image pass")
    return grad * (images - baselines)


@register_attribution("deeplift", passes="1 forward + 1 backward, and one reference pass per call",
                      needs=("gradients",), cost=lambda images, options: (images + 1, images))
def _deeplift(net: nn.Module, images: Tensor, targets: Tensor) -> Tensor:
    """DeepLIFT (Shrikumar et al. 2017), rescale rule, zero baseline (DeepExplain's default), through
    the ReLU override: every ReLU's gradient becomes ``(out - out_ref) / (in - in_ref)``, or the ReLU's
    gradient at the midpoint where ``|in - in_ref| <= 1e-5`` (:data:`DEEPLIFT_DELTA_THRESHOLD`);
    attribution = that gradient x (x - 0). The zero reference's forward runs once per batch. No
    options (another baseline: :func:`deeplift_rescale`). Models calling sigmoid/tanh/elu/softplus are
    refused (:class:`MethodNotApplicable`).
    """
    return _deeplift_with_baselines(net, images, targets, None)


# ---- further methods (not in the paper; see the module docstring) ------------------------------------

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


def _positive(name: str, value, minimum: float = 1) -> None:
    if value < minimum:
        raise ConfigError(f"{name} must be at least {minimum}, got {value}")


@register_attribution("input_x_gradient", passes="1 forward + 1 backward", needs=("gradients",))
def _input_x_gradient(net: nn.Module, images: Tensor, targets: Tensor) -> Tensor:
    """Gradient x input (Shrikumar et al. 2016): x * d logit_t / d x, per colour channel. No options.
    captum ``InputXGradient``."""
    from captum.attr import InputXGradient

    return InputXGradient(net).attribute(images.requires_grad_(True), target=targets)


@register_attribution("smoothgrad", passes="s forward + s backward (s = smoothgrad_samples)",
                      needs=("gradients",),
                      cost=lambda images, options: (options["smoothgrad_samples"] * images,) * 2)
def _smoothgrad(net: nn.Module, images: Tensor, targets: Tensor, *, noise_level: float = 0.15,
                smoothgrad_samples: int = 50, internal_batch_size: int | None = None, seed: int = 0) -> Tensor:
    """SmoothGrad (Smilkov et al. 2017): mean over s noisy copies x + N(0, sigma^2) of the signed
    gradient d logit_t / d x. captum ``NoiseTunnel(Saliency)`` with ``nt_type='smoothgrad'`` and
    ``abs=False``.

    Options: ``noise_level`` = 0.15: sigma = noise_level x (max - min of the batch's input values);
    Smilkov et al. recommend 10-20 % of the input range. ``smoothgrad_samples`` = s = 50, Smilkov et
    al.'s default. ``internal_batch_size`` = None: at most :data:`DEFAULT_IG_BATCH` noisy images per
    pass (as Integrated Gradients' option: :func:`ig_internal_batch_size`; memory only).
    ``seed`` = 0: the noise is drawn inside :func:`seeded_rng`, so a call is deterministic and leaves
    the caller's random state alone (sigma depends on the whole batch, so a batch's maps are not
    those of its images one at a time).
    """
    from captum.attr import NoiseTunnel, Saliency

    _positive("smoothgrad_samples", smoothgrad_samples)
    _positive("noise_level", noise_level, 0)
    sigma = float(noise_level) * float(images.max() - images.min())
    per_pass = ig_internal_batch_size(images.shape[0], smoothgrad_samples, internal_batch_size) // images.shape[0]
    with seeded_rng(seed, images.device):
        return NoiseTunnel(Saliency(net)).attribute(
            images, nt_type="smoothgrad", nt_samples=smoothgrad_samples, nt_samples_batch_size=per_pass,
            stdevs=sigma, target=targets, abs=False)


class _GuidedRelu(torch.autograd.Function):
    """ReLU forward; backward ``relu(grad_out) * (x > 0)`` (guided backpropagation)."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        out = torch.relu(x)
        ctx.save_for_backward(out)  # out > 0 exactly where x > 0
        return out

    @staticmethod
    def backward(ctx, grad_output: Tensor):
        (out,) = ctx.saved_tensors
        return grad_output.clamp(min=0) * (out > 0).to(grad_output.dtype)


class _DeconvRelu(torch.autograd.Function):
    """ReLU forward; backward ``relu(grad_out)`` (the deconvnet's backward ReLU)."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        return torch.relu(x)

    @staticmethod
    def backward(ctx, grad_output: Tensor):
        return grad_output.clamp(min=0)


@register_attribution("guided_backprop", passes="1 forward + 1 backward", needs=("gradients",))
def _guided_backprop(net: nn.Module, images: Tensor, targets: Tensor) -> Tensor:
    """Guided backpropagation (Springenberg et al. 2015): the gradient of logit_t in which every ReLU
    passes back ``relu(grad_out) * (x > 0)``; not multiplied by the input (as captum's
    ``GuidedBackprop`` returns it). Through the ReLU override, since captum's module hooks miss reused
    and functional ReLUs (module docstring); equal to captum's where every ReLU is its own module
    (tested). Other non-linearities keep their gradient, as in captum. No options.
    """
    return _modified_gradient(net, images, targets, _GuidedRelu.apply, strict=False)


@register_attribution("deconvolution", passes="1 forward + 1 backward", needs=("gradients",))
def _deconvolution(net: nn.Module, images: Tensor, targets: Tensor) -> Tensor:
    """Deconvnet (Zeiler & Fergus 2014, in Springenberg et al. 2015's gradient form): the gradient of
    logit_t in which every ReLU passes back ``relu(grad_out)`` whatever its input; not multiplied by
    the input (as captum's ``Deconvolution``). Through the ReLU override like ``guided_backprop``;
    other non-linearities keep their gradient, as in captum. No options.
    """
    return _modified_gradient(net, images, targets, _DeconvRelu.apply, strict=False)


def gradient_shap_baselines(images: Tensor, seed: int = 0) -> Tensor:
    """``gradient_shap``'s two reference images [2, C, H, W]: the zero image (the data set's mean
    colour in normalised space) and a Gaussian N(0, 1) noise image drawn from a generator seeded with
    ``seed`` (the data's own spread in normalised space)."""
    shape = (1, *images.shape[1:])
    noise = torch.randn(shape, generator=torch.Generator().manual_seed(seed))
    return torch.cat([torch.zeros(shape), noise]).to(images)


def _shap_images_per_pass(samples: int, internal_batch_size: int | None) -> int:
    bound = DEFAULT_IG_BATCH if internal_batch_size is None else int(internal_batch_size)
    _positive("internal_batch_size", bound)
    return max(1, bound // samples)


@register_attribution("gradient_shap", passes="s forward + s backward (s = shap_samples)", needs=("gradients",),
                      cost=lambda images, options: (options["shap_samples"] * images,) * 2)
def _gradient_shap(net: nn.Module, images: Tensor, targets: Tensor, *, shap_samples: int = 20,
                   internal_batch_size: int | None = None, seed: int = 0) -> Tensor:
    """GradientSHAP (Lundberg & Lee 2017; captum ``GradientShap``): expected gradients, the mean over
    s samples of ``(x - b) * grad(b + u (x - b))`` with the reference b drawn from
    :func:`gradient_shap_baselines` (zero image, seeded N(0, 1) noise image) and u ~ U(0, 1); captum's
    default ``stdevs=0`` (no noise added to the input).

    Options: ``shap_samples`` = s = 20 (captum's ``n_samples`` defaults to 5; 20 lowers the sampling
    variance for 4x the cost). ``internal_batch_size`` = None, i.e. :data:`DEFAULT_IG_BATCH`: captum
    sends all s x B samples at once, so the images go in chunks of ``max(1, bound // s)`` (memory
    only). ``seed`` = 0: the noise image, the reference choices and u are drawn inside
    :func:`seeded_rng`, reseeded per chunk, so with one image per chunk (the default) an image's map
    does not depend on the rest of the batch.
    """
    from captum.attr import GradientShap

    _positive("shap_samples", shap_samples)
    baselines = gradient_shap_baselines(images, seed)
    chunk = _shap_images_per_pass(shap_samples, internal_batch_size)
    parts = []
    for start in range(0, images.shape[0], chunk):
        with seeded_rng(seed, images.device):
            parts.append(GradientShap(net).attribute(
                images[start:start + chunk], baselines=baselines, n_samples=shap_samples, stdevs=0.0,
                target=targets[start:start + chunk]))
    return torch.cat(parts)


def occlusion_grid(height: int, width: int, window: int, stride: int) -> tuple[int, int]:
    """Window positions captum's ``Occlusion`` visits per column and per row: ``1 + ceil((side -
    window) / stride)`` per axis (the last one may hang over the border and is cut there)."""
    if window > min(height, width) or stride > window or stride < 1:
        raise ConfigError(f"occlusion: need stride ({stride}) <= window ({window}) <= image side "
                          f"({height}x{width}) and stride >= 1")
    return 1 + -(-(height - window) // stride), 1 + -(-(width - window) // stride)


def occlusion_windows(height: int, width: int, window: int, stride: int) -> int:
    """The number of window positions captum's ``Occlusion`` visits (:func:`occlusion_grid`)."""
    rows, cols = occlusion_grid(height, width, window, stride)
    return rows * cols


def _occlusion_cost(images: int, options: dict) -> tuple[int, int]:
    size = options[IMAGE_SIZE]
    if size is None:
        raise ConfigError("occlusion: its number of passes depends on the image size; pass image_size")
    windows = occlusion_windows(*size, options["occlusion_window"], options["occlusion_stride"])
    return images * (1 + windows), 0


@register_attribution("occlusion", passes="1 + (windows) forward, no backward", needs=("forward",),
                      cost=_occlusion_cost)
def _occlusion(net: nn.Module, images: Tensor, targets: Tensor, *, occlusion_window: int = 16,
               occlusion_stride: int = 8, perturbations_per_eval: int = 16) -> Tensor:
    """Occlusion (Zeiler & Fergus 2014; captum ``Occlusion``): a square window over all colour
    channels is set to the baseline 0 (the data set's mean colour), and every element gets the mean,
    over the window positions covering it, of the drop logit_t(x) - logit_t(x occluded). One pass of
    the unoccluded images, then one per window position (:func:`occlusion_windows`).

    Computed by :func:`incremental_occlusion` (the same numbers as captum's, to float rounding, at the
    cost of what each window reaches); a model torch.fx cannot trace goes through captum itself.

    Options: ``occlusion_window`` = 16 px and ``occlusion_stride`` = 8 px (half-overlapping windows,
    the size of a BagNet-17 patch; Zeiler & Fergus slid a grey square over the image).
    ``perturbations_per_eval`` = 16: at most that many model inputs per forward pass (captum's
    ``perturbations_per_eval`` counts windows per pass, each for every image: there
    ``max(1, 16 // batch)`` windows; memory only).
    """
    _positive("perturbations_per_eval", perturbations_per_eval)
    channels, height, width = images.shape[1:]
    occlusion_windows(height, width, occlusion_window, occlusion_stride)  # checks the geometry
    try:
        return incremental_occlusion(net, images, targets, occlusion_window, occlusion_stride, perturbations_per_eval)
    except NotIncremental as reason:
        report_fallback("occlusion", reason, "captum's Occlusion")
    from captum.attr import Occlusion

    return Occlusion(net).attribute(
        images, sliding_window_shapes=(channels, occlusion_window, occlusion_window),
        strides=(channels, occlusion_stride, occlusion_stride), baselines=0.0, target=targets,
        perturbations_per_eval=max(1, perturbations_per_eval // images.shape[0]))


def occlusion_positions(height: int, width: int, window: int, stride: int) -> Tensor:
    """Top-left (row, col) px of captum ``Occlusion``'s window positions, row-major: [N, 2]
    (:func:`occlusion_windows` per axis; the last may hang over the border)."""
    rows, cols = occlusion_grid(height, width, window, stride)
    return torch.cartesian_prod(torch.arange(rows) * stride, torch.arange(cols) * stride)


@torch.inference_mode()
def incremental_occlusion(net: nn.Module, images: Tensor, targets: Tensor, window: int, stride: int,
                          inputs_per_pass: int = 16) -> Tensor:
    """captum ``Occlusion``'s attribution (baseline 0, a window x window square over all channels,
    moved by ``stride``) by incremental inference: one full pass of the images keeps their maps,
    then every occluded input recomputes only the part of each layer its window reaches
    (:class:`bagrepro.methods.incremental.IncrementalModel`), ``inputs_per_pass`` at a time.

    images [B, C, H, W], targets [B] -> [B, C, H, W]: per pixel the mean over the windows covering
    it of logit_t(x) - logit_t(x with the window set to 0), the same value in every channel.
    Raises NotIncremental where the model cannot be traced (the caller then uses captum)."""
    batch, channels, height, width = images.shape
    positions = occlusion_positions(height, width, window, stride)
    evaluator = IncrementalModel(net, (channels, height, width), (window, window), positions)
    clean = evaluator.start(images, keep=True).float().gather(1, targets[:, None])[:, 0]  # [B]
    # every (image, window) pair is a lane; lanes advance once from their image's kept maps
    image_of_lane = torch.arange(batch).repeat_interleave(len(positions))
    position_of_lane = torch.arange(len(positions)).repeat(batch)
    drops = torch.empty(batch * len(positions), device=images.device)
    zeros = torch.zeros(1, channels, height, width, dtype=images.dtype, device=images.device)
    for start in range(0, len(drops), inputs_per_pass):
        lanes = slice(start, start + inputs_per_pass)
        evaluator.select(image_of_lane[lanes])
        evaluator.advance(position_of_lane[lanes], zeros.expand(len(image_of_lane[lanes]), -1, -1, -1))
        occluded = evaluator.flush().float().gather(1, targets[image_of_lane[lanes], None].to(images.device))[:, 0]
        drops[lanes] = clean[image_of_lane[lanes].to(images.device)] - occluded
    rows, cols = occlusion_grid(height, width, window, stride)
    # spread each window's drop over its pixels and divide by the windows covering each pixel: a
    # transposed convolution with a ones kernel places the window at stride steps, cut at the border
    ones = torch.ones(1, 1, window, window, device=images.device)
    summed = F.conv_transpose2d(drops.reshape(batch, 1, rows, cols), ones, stride=stride)[..., :height, :width]
    covering = F.conv_transpose2d(torch.ones(1, 1, rows, cols, device=images.device), ones, stride=stride)
    attribution = summed / covering[..., :height, :width]
    return attribution.expand(-1, channels, -1, -1).to(images.dtype).contiguous()


def cell_feature_mask(height: int, width: int, cell: int, device: torch.device | str = "cpu") -> Tensor:
    """[H, W] long: the index ``row // cell * ncols + col // cell`` of the square cell each pixel is in
    (ncols = ceil(W / cell); the last row and column of cells may be smaller)."""
    _positive("cell", cell)
    rows = torch.arange(height, device=device) // cell
    cols = torch.arange(width, device=device) // cell
    return rows[:, None] * (-(-width // cell)) + cols[None, :]


def _surrogate(explainer, images: Tensor, targets: Tensor, cell: int, samples: int,
               perturbations_per_eval: int, seed: int) -> Tensor:
    """captum Lime/KernelShap one image at a time (captum fits one model per image anyway, and on a
    batch first runs an extra forward of it), reseeded per image, with the cell mask and baseline 0;
    each cell's coefficient is put on every element (3 channels x pixels) of the cell, as captum does."""
    _positive("samples", samples)
    _positive("perturbations_per_eval", perturbations_per_eval)
    channels, height, width = images.shape[1:]
    mask = cell_feature_mask(height, width, cell, images.device)
    maps = []
    for index in range(images.shape[0]):
        with seeded_rng(seed, images.device):
            coefs = explainer.attribute(
                images[index:index + 1], baselines=0.0, target=targets[index:index + 1],
                feature_mask=mask[None, None], n_samples=samples,
                perturbations_per_eval=perturbations_per_eval, return_input_shape=False)
        maps.append(coefs.reshape(-1).to(images)[mask].expand(channels, height, width))
    return torch.stack(maps)


@register_attribution("kernel_shap", passes="k forward (k = kernel_shap_samples), no backward",
                      needs=("forward",),
                      cost=lambda images, options: (options["kernel_shap_samples"] * images, 0))
def _kernel_shap(net: nn.Module, images: Tensor, targets: Tensor, *, cell: int = 16,
                 kernel_shap_samples: int = 200, perturbations_per_eval: int = 16, seed: int = 0) -> Tensor:
    """KernelSHAP (Lundberg & Lee 2017; captum ``KernelShap``): Shapley values of square cells of
    ``cell`` px (all colour channels of a cell one feature; :func:`cell_feature_mask`), an absent cell
    set to the baseline 0 (the data set's mean colour); a weighted linear regression on k coalitions
    sampled with the Shapley kernel (captum's ``SkLearnLinearRegression``; its first two coalitions
    are all cells and none). Each cell's value is put on every element of the cell (captum's
    output), so a map's sum is 3 x cell area x the cells' Shapley values.

    Options: ``cell`` = 16 px (a 14 x 14 grid at 224 px; the size of a BagNet-17 patch),
    ``kernel_shap_samples`` = k = 200 (captum's ``n_samples`` defaults to 25, too few for 196
    features), ``perturbations_per_eval`` = 16 model inputs per pass (memory only), ``seed`` = 0
    (coalitions drawn inside :func:`seeded_rng`, reseeded per image).
    """
    from captum.attr import KernelShap

    return _surrogate(KernelShap(net), images, targets, cell, kernel_shap_samples, perturbations_per_eval, seed)


@register_attribution("lime", passes="k forward (k = lime_samples), no backward", needs=("forward",),
                      cost=lambda images, options: (options["lime_samples"] * images, 0))
def _lime(net: nn.Module, images: Tensor, targets: Tensor, *, cell: int = 16, lime_samples: int = 200,
          perturbations_per_eval: int = 16, seed: int = 0) -> Tensor:
    """LIME (Ribeiro et al. 2016; captum ``Lime``) on the same cells and baseline as ``kernel_shap``:
    k coalitions with each cell present with probability 1/2, weighted by captum's default similarity
    (exponential kernel of the cosine distance between the image and the perturbed image, width
    1.0), fitted by captum's default interpretable model ``SkLearnLasso(alpha=0.01)``; each cell's
    coefficient is put on every element of the cell.

    Options: ``cell`` = 16 px, ``lime_samples`` = k = 200 (captum's default 25 is too few for 196
    cells), ``perturbations_per_eval`` = 16 model inputs per pass (memory only), ``seed`` = 0
    (reseeded per image, :func:`seeded_rng`). captum's other defaults are kept as they are.
    """
    from captum.attr import Lime

    return _surrogate(Lime(net), images, targets, cell, lime_samples, perturbations_per_eval, seed)


def gradcam_layer(net: nn.Module, images: Tensor) -> nn.Module:
    """The "last convolutional block" Grad-CAM uses: one forward of ``images`` (without grad) with
    hooks, and the module whose forward finishes last among those that contain an ``nn.Conv2d``
    (themselves or a descendant) and output a 4-D tensor larger than 1 x 1 spatially. torchvision
    ResNet: ``layer4``; VGG and DenseNet: ``features``; BagNet: ``layer4``. Run it on an eval-mode
    model (a train-mode forward would update BatchNorm statistics). MethodNotApplicable if none.
    """
    with_conv: set[int] = set()

    def mark(module: nn.Module) -> bool:
        found = isinstance(module, nn.Conv2d)
        for child in module.children():
            found = mark(child) or found
        if found:
            with_conv.add(id(module))
        return found

    if not mark(net):
        raise MethodNotApplicable("grad_cam: the model has no convolution (nn.Conv2d)")
    finished: list[nn.Module] = []

    def hook(module, _inputs, output):
        if isinstance(output, Tensor) and output.dim() == 4 and output.shape[-2] * output.shape[-1] > 1:
            finished.append(module)

    handles = [m.register_forward_hook(hook) for m in net.modules() if id(m) in with_conv]
    try:
        with torch.no_grad():
            net(images)
    finally:
        for handle in handles:
            handle.remove()
    if not finished:
        raise MethodNotApplicable(f"grad_cam: no convolutional block outputs a spatial map larger than 1x1 "
                                  f"at {images.shape[-2]}x{images.shape[-1]} px")
    return finished[-1]


@register_attribution("grad_cam",
                      passes="1 forward, and one layer-finding pass per call; no backward to the input",
                      needs=("conv_layer",), cost=lambda images, options: (images + 1, 0))
def _grad_cam(net: nn.Module, images: Tensor, targets: Tensor) -> Tensor:
    """Grad-CAM (Selvaraju et al. 2017; captum ``LayerGradCam`` with ``relu_attributions=True``) of the
    layer :func:`gradcam_layer` picks (found on the first image: one extra forward per call):
    relu(sum_k alpha_k A_k) with alpha_k the spatial mean of d logit_t / d A_k, upsampled bilinearly to
    the input size (captum ``LayerAttribution.interpolate``) and returned as that map / 3 on each
    colour channel, so the channel sum is the Grad-CAM map. The gradient stops at the layer (no
    backward to the input). No options.
    """
    from captum.attr import LayerAttribution, LayerGradCam

    layer = gradcam_layer(net, images[:1])
    cam = LayerGradCam(net, layer).attribute(images, target=targets, relu_attributions=True)
    channels, height, width = images.shape[1:]
    cam = LayerAttribution.interpolate(cam, (int(height), int(width)), interpolate_mode="bilinear")
    return (cam / channels).expand(-1, channels, -1, -1).contiguous()


# ---- public entry points -----------------------------------------------------------------------------

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
    return _run(model, images, targets, spec.compute, _options_for(spec, options))


def epsilon_lrp(model: nn.Module, images: Tensor, targets, *, eps: float = 1e-4) -> Tensor:
    """DeepExplain's epsilon-LRP (see the module docstring); same layouts as :func:`attribute`."""
    return attribute(model, images, targets, "eps_lrp", eps=eps)


def deeplift_rescale(model: nn.Module, images: Tensor, targets, *, baselines: Tensor | None = None) -> Tensor:
    """DeepExplain's DeepLIFT (rescale) through the ReLU override; ``baselines`` [1 or B, 3, H, W]
    (default: zero). Sum of attributions = logit(x) - logit(baseline) when every non-linearity is a
    ReLU (max-pool keeps its gradient: exact only where the reference is constant in each window)."""
    return _run(model, images, targets, _deeplift_with_baselines, {"baselines": baselines})
