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
``eps_lrp`` and ``deeplift`` raise :class:`~bagrepro.errors.ConfigError` on a model that calls one
rather than silently keeping its gradient.

The caller's model is never modified: every method runs on :func:`working_copy`, a structural deep
copy that shares the parameter and buffer tensors (nothing is duplicated or written), put in eval mode
with every ``nn.ReLU`` made non-inplace. Copying the structure costs tens of milliseconds (DenseNet-169:
~50 ms), so copies are not cached: a cache could go stale if the caller reloads weights in place.

:func:`unshare_relus` additionally builds (with ``torch.fx``) a copy in which every ReLU call has its
own ``nn.ReLU`` module; captum's ``DeepLift`` runs on that copy (:func:`captum_deeplift`), which the
tests use as an independent cross-check of the rescale rule here.

Layouts: images [B, 3, H, W] (normalised: the model's input), targets [B] class indices, attributions
[B, 3, H, W] float32 with respect to the model's input. Everything is batched over images.
"""

from __future__ import annotations

import contextlib
import copy
import itertools
import warnings
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from .errors import ConfigError

METHODS = ("saliency", "integrated_gradients", "eps_lrp", "deeplift")

#: default bound on the number of scaled images per Integrated-Gradients pass (rounded down to a
#: multiple of the batch size, at least the batch size): 32 VGG-16 inputs at 224 px take roughly
#: 2-3 GB (measured on the CPU: an 8-input pass raised peak memory by ~340 MB over a 2-image one).
DEFAULT_IG_BATCH = 32

#: DeepExplain's threshold on |in - in_ref| below which DeepLIFT falls back to the midpoint gradient
DEEPLIFT_DELTA_THRESHOLD = 1e-5

#: forward/backward passes per image for each method (informational; ``n`` = ig_steps). DeepLIFT's
#: reference pass runs once per batch (the zero baseline is shared by all images).
PASSES_PER_IMAGE = {
    "saliency": "1 forward + 1 backward",
    "integrated_gradients": "n forward + n backward",
    "eps_lrp": "1 forward + 1 backward",
    "deeplift": "2 forward (reference + image) + 1 backward",
}

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
            raise ConfigError(f"the model calls {_UNSUPPORTED_NONLINEAR[func]}, which has no attribution "
                              "rule here (only ReLU is overridden)")
        return func(*args, **kwargs)


@contextlib.contextmanager
def relu_override(rule: ReluRule, *, strict: bool = True) -> Iterator[None]:
    """Within the block, every ReLU call on this thread is computed as ``rule(x)``.

    Covers ``nn.ReLU`` modules (shared or not, inplace or not), ``F.relu``, ``torch.relu``,
    ``Tensor.relu`` and the in-place variants (computed out of place). ``rule`` must return
    ``relu(x)``; typically it is an autograd Function with a replaced backward (:func:`epsilon_rule`).
    With ``strict``, calling sigmoid/tanh/elu/softplus inside the block raises ConfigError. Only the
    forward needs to run inside the block: the backward uses what each call saved.
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


def _is_relu_node(node: torch.fx.Node, gm: torch.fx.GraphModule) -> bool:
    if node.op == "call_module":
        return isinstance(gm.get_submodule(node.target), nn.ReLU)
    if node.op == "call_function":
        return node.target in _RELU_CALLS
    if node.op == "call_method":
        return node.target in ("relu", "relu_")
    return False


def unshare_relus(model: nn.Module) -> torch.fx.GraphModule:
    """A copy of ``model`` (torch.fx graph, eval mode) in which every ReLU call is its own non-inplace
    ``nn.ReLU`` module: a module called three times becomes three modules, ``F.relu`` becomes a module.

    Parameters and buffers are shared with ``model`` (see :func:`working_copy`); outputs are identical.
    This is what captum's module-hook methods (``DeepLift``) need. Raises ConfigError when the model
    cannot be traced symbolically.
    """
    base = working_copy(model)
    try:
        gm = torch.fx.symbolic_trace(base)
    except Exception as error:  # fx raises many kinds (TraceError, TypeError, ...)
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ConfigError(f"cannot trace {type(model).__name__} with torch.fx to unshare its ReLUs: {message}") from error
    for index, node in enumerate([n for n in gm.graph.nodes if _is_relu_node(n, gm)]):
        name = f"unshared_relu_{index}"
        gm.add_submodule(name, nn.ReLU(inplace=False))
        with gm.graph.inserting_after(node):
            replacement = gm.graph.call_module(name, (node.args[0],))
        node.replace_all_uses_with(replacement)
        gm.graph.erase_node(node)
    gm.graph.eliminate_dead_code()
    gm.delete_all_unused_submodules()
    gm.recompile()
    return gm.eval()


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


def _modified_gradient(model: nn.Module, images: Tensor, targets: Tensor, rule: ReluRule) -> Tensor:
    x = images.detach().requires_grad_(True)
    with relu_override(rule):
        selected = _target_logits(model(x), targets).sum()
    (grad,) = torch.autograd.grad(selected, x)
    return grad


# ---- the four methods (on a working copy) ----------------------------------------------------------

def _saliency(net: nn.Module, images: Tensor, targets: Tensor) -> Tensor:
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


def _integrated_gradients(net: nn.Module, images: Tensor, targets: Tensor, steps: int,
                          internal_batch_size: int | None) -> Tensor:
    from captum.attr import IntegratedGradients

    if steps < 1:
        raise ConfigError(f"ig_steps must be at least 1, got {steps}")
    return IntegratedGradients(net, multiply_by_inputs=True).attribute(
        images.requires_grad_(True), baselines=torch.zeros_like(images), target=targets, n_steps=steps, method="riemann_right",
        internal_batch_size=ig_internal_batch_size(images.shape[0], steps, internal_batch_size))


def _eps_lrp(net: nn.Module, images: Tensor, targets: Tensor, eps: float) -> Tensor:
    return _modified_gradient(net, images, targets, epsilon_rule(eps)) * images


def _deeplift(net: nn.Module, images: Tensor, targets: Tensor, baselines: Tensor | None) -> Tensor:
    if baselines is None:  # the zero baseline is shared: one reference pass of a single image
        baselines = torch.zeros_like(images[:1])
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


# ---- public entry points -----------------------------------------------------------------------------

def attribute(model: nn.Module, images: Tensor, targets, method: str, *, ig_steps: int = 100,
              internal_batch_size: int | None = None, eps: float = 1e-4) -> Tensor:
    """White-box attributions of ``model`` for one class per image.

    images [B, 3, H, W] (already normalised: the model's input), targets [B] class indices (an int
    applies to every image) -> attributions [B, 3, H, W] float32 with respect to the model's input.
    The model runs in eval mode on a :func:`working_copy`; the caller's model and tensors are not
    modified, and this works under ``torch.no_grad()`` too.

    method: one of :data:`METHODS`; ``ig_steps`` and ``internal_batch_size`` apply to
    ``integrated_gradients`` (see :func:`ig_internal_batch_size`), ``eps`` to ``eps_lrp``.
    """
    if method not in METHODS:
        raise ConfigError(f"unknown attribution method {method!r}; choose from {', '.join(METHODS)}")
    net = working_copy(model)
    # inference_mode(False): the clones in _prepare are normal tensors even under inference mode
    with torch.inference_mode(False), torch.enable_grad():
        images, targets = _prepare(images, targets)
        if method == "saliency":
            result = _saliency(net, images, targets)
        elif method == "integrated_gradients":
            result = _integrated_gradients(net, images, targets, ig_steps, internal_batch_size)
        elif method == "eps_lrp":
            result = _eps_lrp(net, images, targets, eps)
        else:
            result = _deeplift(net, images, targets, None)
    return result.detach().float()


def epsilon_lrp(model: nn.Module, images: Tensor, targets, *, eps: float = 1e-4) -> Tensor:
    """DeepExplain's epsilon-LRP (see the module docstring); same layouts as :func:`attribute`."""
    return attribute(model, images, targets, "eps_lrp", eps=eps)


def deeplift_rescale(model: nn.Module, images: Tensor, targets, *, baselines: Tensor | None = None) -> Tensor:
    """DeepExplain's DeepLIFT (rescale) through the ReLU override; ``baselines`` [1 or B, 3, H, W]
    (default: zero). Sum of attributions = logit(x) - logit(baseline) when every non-linearity is a
    ReLU (max-pool keeps its gradient: exact only where the reference is constant in each window)."""
    net = working_copy(model)
    with torch.inference_mode(False), torch.enable_grad():
        images, targets = _prepare(images, targets)
        base = None if baselines is None else baselines.detach().clone()
        return _deeplift(net, images, targets, base).detach().float()


def captum_deeplift(model: nn.Module, images: Tensor, targets) -> Tensor:
    """captum's ``DeepLift`` (rescale, zero baseline) on :func:`unshare_relus`'s copy of ``model``.

    For comparison only. It falls back to the plain gradient (at x, not the midpoint) below
    |delta| = 1e-10, and registers a max-pool rule (without effect after a ReLU in captum 0.9; see the
    module docstring).
    """
    from captum.attr import DeepLift

    net = unshare_relus(model)
    with torch.inference_mode(False), torch.enable_grad(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Setting forward, backward hooks", category=UserWarning)
        images, targets = _prepare(images, targets)
        result = DeepLift(net, multiply_by_inputs=True).attribute(
            images.requires_grad_(True), baselines=torch.zeros_like(images), target=targets)
    return result.detach().float()
