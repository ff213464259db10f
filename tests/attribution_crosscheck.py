"""Independent cross-checks of bagrepro.methods.attribution, used by the tests only (not library code).

captum's ``LRP`` and ``DeepLift`` hook ReLU *modules*, which fails on torchvision's ResNets (one
``nn.ReLU`` module called several times per forward) and misses DenseNet's functional ``F.relu`` (see
bagrepro.methods.attribution's module docstring). :func:`unshare_relus` builds, with ``torch.fx``, a copy in
which every ReLU call has its own ``nn.ReLU`` module; :func:`captum_deeplift` runs captum's
``DeepLift`` on that copy, which the tests compare with the library's ReLU-override DeepLIFT.
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor, nn

from bagrepro.methods.attribution import RELU_CALLS, prepare, working_copy
from bagrepro.core.errors import ConfigError


def _is_relu_node(node: torch.fx.Node, gm: torch.fx.GraphModule) -> bool:
    if node.op == "call_module":
        return isinstance(gm.get_submodule(node.target), nn.ReLU)
    if node.op == "call_function":
        return node.target in RELU_CALLS
    if node.op == "call_method":
        return node.target in ("relu", "relu_")
    return False


def unshare_relus(model: nn.Module) -> torch.fx.GraphModule:
    """A copy of ``model`` (torch.fx graph, eval mode) in which every ReLU call is its own non-inplace
    ``nn.ReLU`` module: a module called three times becomes three modules, ``F.relu`` becomes a module.

    Parameters and buffers are shared with ``model`` (see ``working_copy``); outputs are identical.
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


def captum_deeplift(model: nn.Module, images: Tensor, targets) -> Tensor:
    """captum's ``DeepLift`` (rescale, zero baseline) on :func:`unshare_relus`'s copy of ``model``.

    For comparison only. It falls back to the plain gradient (at x, not the midpoint) below
    |delta| = 1e-10, and registers a max-pool rule (without effect after a ReLU in captum 0.9; see
    bagrepro.methods.attribution's module docstring).
    """
    from captum.attr import DeepLift

    net = unshare_relus(model)
    with torch.inference_mode(False), torch.enable_grad(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Setting forward, backward hooks", category=UserWarning)
        images, targets = prepare(images, targets)
        result = DeepLift(net, multiply_by_inputs=True).attribute(
            images.requires_grad_(True), baselines=torch.zeros_like(images), target=targets)
    return result.detach().float()
