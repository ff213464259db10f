"""Incremental inference: a model's outputs after a small region of its input changed, at the cost of
the region the change reaches.

Masking curves (Fig. 8) mask one patch per step; occlusion maps (captum ``Occlusion``) occlude one
window per input. In both, a model input differs from one whose activations are known by a box of a
few pixels, and in a CNN's early, most expensive layers only the window of every feature map that
the box can reach (its receptive-field growth through convolutions, pooling and strides) changes.
:class:`IncrementalModel` keeps the activations of every *lane* (one image's current input) and, for a
new box, recomputes in each layer only that window, reading the unchanged context from the kept
activations; at the first layer where the window would cover most of the map (``full_fraction``) it
switches to computing the layer whole, and so does every layer after it. This is incremental view
maintenance for CNN inference (Nakandala et al., "Incremental and Approximate Inference for Faster
Occlusion-based Deep CNN Explanations", SIGMOD 2019, "Krypton"), exact: the outputs equal a full
forward pass of the same model up to float rounding (a convolution of a crop may sum in another
order than one of the whole map).

Written here because no maintained library does it for PyTorch models (Krypton's code is a research
prototype for a fixed set of networks; captum and Quantus run a full forward pass per input).

How: the model is traced with ``torch.fx`` (torchvision VGG / ResNet / DenseNet, their inference
copies from :func:`bagrepro.models.fast.fuse_for_inference`, the BagNets). Every graph node whose
value is a feature map [L, C, H, W] that changes in a window is *incremental*: convolutions and
max/average pooling (window geometry: kernel, stride, padding, dilation), element-wise functions
and modules (ReLU, BatchNorm in eval mode, Dropout in eval mode, ...: the same window as their
input), sums and products of two maps (the union of their windows), channel concatenations (the
union) and top-left crops by slicing (shifted). Any other node whose value depends on the input
(pooling to a fixed size, flatten, linear layers, anything unknown) is *full*: computed by the model's
own code on the current maps, as in a plain forward pass, and so is everything after it. Node
values that are not tensors (shapes, sizes) are taken once per :meth:`IncrementalModel.start`.

Windows are batched over lanes: per node the window has one size for every position of the box
(the largest it takes), placed per lane (clamped into the map), so that a step of L lanes is, per
node, one gather of the input windows [L, C, h', w'], one batched operation and one scatter into the
kept map (channels-last, so a window's pixels are rows of a [L*H*W, C] matrix). The layers computed
whole do not depend on earlier steps, only on the kept maps they read (the *boundary*): :meth:`advance`
copies those per step and :meth:`flush` runs the whole layers once for all steps advanced since the
last flush, so a step of a few lanes still reaches them as a large batch (on a CPU, VGG's 25088 x 4096
classifier would otherwise be read from memory once per step). Memory: the kept maps of L lanes
(``state_bytes``; VGG-16 at 224 px: about 60 MB per lane) and the boundary copies of the pending steps.

A model the tracer cannot handle raises :class:`NotIncremental`; callers fall back to full forward
passes (:func:`bagrepro.methods.masking.masking_curves` does so with one log line).
"""

from __future__ import annotations

import logging
import math
import operator
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import fx, nn

#: a node's window is computed whole once it would cover this share of its map's area
FULL_FRACTION = 0.5

#: modules applied element-wise (in eval mode): a window of their output needs only the same window of their input
POINTWISE_MODULES = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SiLU, nn.GELU, nn.Sigmoid, nn.Tanh, nn.Hardswish,
                     nn.Hardsigmoid, nn.Identity, nn.Dropout, nn.BatchNorm2d)
#: functions and tensor methods applied element-wise, with one map argument (others are constants)
POINTWISE_FUNCTIONS = {F.relu, torch.relu, F.relu6, F.leaky_relu, F.silu, F.gelu, torch.sigmoid, torch.tanh,
                       F.hardswish, F.elu}
POINTWISE_METHODS = {"relu", "sigmoid", "tanh", "contiguous", "clone"}
#: element-wise functions of two maps of the same shape (or a map and a constant)
BINARY_FUNCTIONS = {operator.add, operator.mul, operator.sub, torch.add, torch.mul, torch.sub}
BINARY_METHODS = {"add", "mul", "sub"}


class NotIncremental(Exception):
    """The model cannot be evaluated incrementally (the message says why); use full forward passes."""


log = logging.getLogger(__name__)
_REPORTED: set[tuple[str, str]] = set()


def report_fallback(user: str, reason: NotIncremental, instead: str = "full forward passes") -> None:
    """The one log line of a caller (``user``, e.g. 'masking') that falls back for ``reason``: once per
    caller and reason (the reason names the model's class), however often it falls back."""
    if (user, str(reason)) not in _REPORTED:
        _REPORTED.add((user, str(reason)))
        log.warning("%s: %s; %s instead", user, reason, instead)


@dataclass
class _Window:
    """A window operation's geometry along one axis: kernel, stride, padding, dilation."""

    kernel: int
    stride: int
    padding: int
    dilation: int

    @property
    def reach(self) -> int:
        return self.dilation * (self.kernel - 1) + 1


@dataclass
class _Plan:
    """One graph node: how it is computed in a step.

    kind: 'input' (the model input), 'const' (does not depend on the input: taken at start),
    'shape' (not a tensor, e.g. a map's size: taken at start), 'inc' (its window is recomputed),
    'full' (computed whole, batched over the steps of a flush), 'output'. For 'inc': op ('window',
    'pointwise', 'binary', 'cat', 'slice'), size (h, w) of its window, starts [N, 2] (long) the
    window's top-left per box position; for 'inc' and 'input': stored (whether its map is kept:
    something reads it beyond its own window)."""

    node: fx.Node
    kind: str = "full"
    op: str = ""
    inputs: list = field(default_factory=list)  # the argument nodes whose values change
    windows: tuple = ()  # (_Window rows, _Window cols) for op 'window'
    pad_value: float = 0.0
    offset: tuple = (0, 0)  # op 'slice': the slice's start per axis
    shape: tuple = ()  # [C, H, W] of its value
    size: tuple = (0, 0)
    starts: torch.Tensor | None = None
    stored: bool = False
    inplace: bool = False
    macs_full: int = 0  # multiply-adds of the whole node per lane (convolutions and linear layers)
    macs_window: int = 0  # ... of its window


def _constants_broadcast(node: fx.Node, plan: _Plan, values: dict) -> bool:
    """Whether every constant tensor argument of ``node`` is the same at every pixel (so it applies to
    a window as to the map); ``values``: the nodes' values of a full pass."""
    constants = [values[a] for a in node.all_input_nodes if a not in plan.inputs]
    return all(not isinstance(c, torch.Tensor) or c.dim() < 2 or all(d == 1 for d in c.shape[-2:]) for c in constants)


def _pixel_index(starts: torch.Tensor, size: tuple, height: int, width: int):
    """Flat pixel indices ``(lane * H + row) * W + col`` [L, h, w] of per-lane windows (top-left
    ``starts`` [L, 2], ``size`` (h, w)) in [L, H, W] maps, rows and columns clamped into the map, and
    where the window reaches past the map: [L, h, w] bool, or None if nowhere."""
    rows = starts[:, :1] + torch.arange(size[0])  # [L, h]
    cols = starts[:, 1:] + torch.arange(size[1])  # [L, w]
    outside_rows, outside_cols = (rows < 0) | (rows >= height), (cols < 0) | (cols >= width)
    lane = torch.arange(len(starts))[:, None, None]
    flat = (lane * height + rows.clamp(0, height - 1)[:, :, None]) * width + cols.clamp(0, width - 1)[:, None, :]
    if not (outside_rows.any() or outside_cols.any()):
        return flat, None
    return flat, outside_rows[:, :, None] | outside_cols[:, None, :]


def _pair(value) -> tuple[int, int]:
    return (int(value), int(value)) if isinstance(value, int) else tuple(int(v) for v in value)


def _trace(model: nn.Module) -> fx.GraphModule:
    if "forward" in vars(model):  # e.g. bagrepro.models.fast.with_precision: the graph would skip the wrapper
        raise NotIncremental(f"{type(model).__name__}'s forward is replaced on the instance (e.g. autocast by "
                             "--precision bf16); its graph would not run what the replacement does")
    if isinstance(model, fx.GraphModule):
        return model
    try:
        return fx.symbolic_trace(model)
    except Exception as error:  # noqa: BLE001 - any tracing failure means: not incremental
        raise NotIncremental(f"torch.fx cannot trace {type(model).__name__}: {str(error).splitlines()[0]}") from error


def _window_of_module(module: nn.Module) -> tuple[str, tuple, float] | None:
    """(op, (rows, cols) geometry, pad value) of a convolution or pooling module, or None if unsupported."""
    if isinstance(module, nn.Conv2d):
        if isinstance(module.padding, str) or module.padding_mode != "zeros":
            return None
        k, s, p, d = map(_pair, (module.kernel_size, module.stride, module.padding, module.dilation))
        return "conv", tuple(_Window(k[i], s[i], p[i], d[i]) for i in range(2)), 0.0
    if isinstance(module, nn.MaxPool2d):
        if module.ceil_mode or module.return_indices:
            return None
        k, p, d = map(_pair, (module.kernel_size, module.padding, module.dilation))
        s = _pair(module.stride or module.kernel_size)
        return "max", tuple(_Window(k[i], s[i], p[i], d[i]) for i in range(2)), -math.inf
    if isinstance(module, nn.AvgPool2d):
        p = _pair(module.padding)
        if module.ceil_mode or module.divisor_override is not None or (any(p) and not module.count_include_pad):
            return None
        k = _pair(module.kernel_size)
        s = _pair(module.stride or module.kernel_size)
        return "avg", tuple(_Window(k[i], s[i], p[i], 1) for i in range(2)), 0.0
    return None


class IncrementalModel:
    """Outputs of ``model`` for inputs that change, from one step to the next, in one box.

    model: maps [L, C, H, W] inputs to outputs (logits); traced with torch.fx, in eval mode.
    input_shape: (C, H, W); box: (h, w) px of the changing box; positions: [N, 2] top-left (row, col)
    px of every place the box may take (it may hang over the bottom/right border; it is cut there).
    full_fraction: a node whose window would cover this share of its map is computed whole.

    Use: ``start(inputs)`` once per set of lanes (a full pass; returns its outputs), then any number
    of ``step(position_index, source)``: lane i's box at ``positions[position_index[i]]`` takes the
    values of ``source[i]`` there, and the outputs of every lane's new input are returned.
    ``select(lanes)`` keeps (or repeats) lanes, e.g. one base image for many occlusion windows.
    Raises NotIncremental if the model cannot be traced.
    """

    def __init__(self, model: nn.Module, input_shape, box, positions, full_fraction: float = FULL_FRACTION):
        self.graph_module = _trace(model)
        self.input_shape = tuple(int(v) for v in input_shape)
        self.box = _pair(box)
        self.positions = torch.as_tensor(np.asarray(positions), dtype=torch.long).reshape(-1, 2)
        self.full_fraction = full_fraction
        self.modules = dict(self.graph_module.named_modules())
        # the layers computed whole get their inputs in the memory format of the model's weights
        convolutions = [m.weight for m in self.modules.values() if isinstance(m, nn.Conv2d) and m.weight.shape[-1] > 1]
        self.memory_format = _format_of(convolutions[0]) if convolutions else torch.contiguous_format
        placeholders = [n for n in self.graph_module.graph.nodes if n.op == "placeholder"]
        if len(placeholders) != 1:
            raise NotIncremental(f"the traced model takes {len(placeholders)} inputs; incremental inference needs one")
        self.plans: dict[fx.Node, _Plan] | None = None  # built at the first start (needs the nodes' shapes)
        self.states: dict[fx.Node, torch.Tensor] = {}  # kept maps [L, C, H, W], channels-last
        self.cached: dict[fx.Node, object] = {}  # constants and shapes, taken at start
        self.pending: list[dict[fx.Node, torch.Tensor]] = []  # per step advanced: the boundary maps
        self.kept: dict[fx.Node, torch.Tensor] | None = None  # start(keep=True): the maps at start
        self.lanes = 0

    # ---- the plan -------------------------------------------------------------------------------
    def _classify(self, node: fx.Node, values: dict, plans: dict) -> _Plan:
        value = values[node]
        plan = _Plan(node)
        derived = [a for a in node.all_input_nodes if plans[a].kind != "const"]
        changing = [a for a in derived if plans[a].kind != "shape"]
        if node.op == "placeholder":
            plan.kind = "input"
        elif node.op == "output":
            plan.kind = "output"
        elif not derived:
            plan.kind = "const"  # parameters, buffers, constants: taken at start
        elif not isinstance(value, torch.Tensor):
            plan.kind = "shape"  # shapes and sizes of changing maps: fixed while the lanes are
        elif any(plans[a].kind == "full" for a in changing) or value.dim() != 4 or not changing:
            plan.kind = "full"
        else:
            plan.inputs = changing
            self._recognise(node, plan, plans, values)
        if isinstance(value, torch.Tensor) and value.dim() == 4:
            plan.shape = tuple(value.shape[1:])
        plan.inplace = self._inplace(node)
        return plan

    def _inplace(self, node: fx.Node) -> bool:
        if node.op == "call_module":
            return bool(getattr(self.modules[node.target], "inplace", False))
        if node.op in ("call_function", "call_method"):
            name = node.target if isinstance(node.target, str) else getattr(node.target, "__name__", "")
            return bool(node.kwargs.get("inplace", False)) or name.endswith("_")
        return False

    def _recognise(self, node: fx.Node, plan: _Plan, plans: dict, values: dict) -> None:
        """Sets plan.kind 'inc' and its op where the node is a supported map operation, else 'full'."""
        plan.kind = "full"
        if node.op == "call_module":
            module = self.modules[node.target]
            window = _window_of_module(module)
            if window is not None and len(plan.inputs) == 1 and node.args[0] is plan.inputs[0]:
                plan.kind, plan.op = "inc", "window"
                _, plan.windows, plan.pad_value = window
            elif isinstance(module, POINTWISE_MODULES) and len(plan.inputs) == 1:
                if isinstance(module, (nn.BatchNorm2d, nn.Dropout)) and module.training:
                    return  # batch statistics, random masks: not a function of one pixel
                if isinstance(module, nn.BatchNorm2d) and not module.track_running_stats:
                    return
                plan.kind, plan.op = "inc", "pointwise"
            return
        if node.op == "call_function" and node.target in (F.max_pool2d, F.avg_pool2d):
            return  # functional pooling: rare in the supported families; computed whole
        is_function = node.op == "call_function"
        pointwise = node.target in POINTWISE_FUNCTIONS if is_function else node.target in POINTWISE_METHODS
        binary = node.target in BINARY_FUNCTIONS if is_function else node.target in BINARY_METHODS
        if node.op not in ("call_function", "call_method"):
            return
        if pointwise and len(plan.inputs) == 1 and node.args and node.args[0] is plan.inputs[0]:
            if _constants_broadcast(node, plan, values):
                plan.kind, plan.op = "inc", "pointwise"
        elif binary and len(node.args) == 2 and not node.kwargs:
            shapes = [plans[a].shape for a in plan.inputs]
            if all(len(s) == 3 for s in shapes) and len(set(shapes)) == 1 and _constants_broadcast(node, plan, values):
                plan.kind, plan.op = "inc", "binary" if len(plan.inputs) == 2 else "pointwise"
        elif is_function and node.target is torch.cat:
            tensors = node.args[0]
            dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
            if dim in (1, -3) and isinstance(tensors, (list, tuple)) and all(isinstance(t, fx.Node) for t in tensors):
                if all(plans[t].kind in ("input", "inc") for t in tensors):
                    plan.kind, plan.op = "inc", "cat"
        elif is_function and node.target is operator.getitem and len(plan.inputs) == 1:
            index = node.args[1]
            if isinstance(index, tuple) and len(index) == 4 and all(isinstance(i, slice) for i in index):
                if (all(i == slice(None) for i in index[:2]) and all(i.step in (None, 1) for i in index[2:])
                        and all(i.start is None or (isinstance(i.start, int) and i.start >= 0) for i in index[2:])):
                    plan.kind, plan.op = "inc", "slice"

    def _geometry(self, plans: dict) -> None:
        """Windows per box position: sets size/starts (and kind 'full' where the window is too large)."""
        positions = self.positions.numpy()
        boxes: dict[fx.Node, np.ndarray] = {}  # changed region [N, 4]: row_lo, row_hi, col_lo, col_hi (half-open)
        for node, plan in plans.items():
            if plan.kind == "input":
                _, height, width = plan.shape
                rows = np.clip(positions[:, :1] + [0, self.box[0]], 0, height)
                cols = np.clip(positions[:, 1:] + [0, self.box[1]], 0, width)
                boxes[node] = np.concatenate([rows, cols], 1)
            if plan.kind != "inc":
                if plan.kind == "input":
                    self._place(plan, boxes[node])
                continue
            if any(plans[a].kind != "inc" and plans[a].kind != "input" for a in plan.inputs):
                plan.kind = "full"
                continue
            _, height, width = plan.shape
            if plan.op == "window":
                box = boxes[plan.inputs[0]]
                out = np.empty_like(box)
                for axis, (window, limit) in enumerate(zip(plan.windows, (height, width))):
                    lo, hi = box[:, 2 * axis], box[:, 2 * axis + 1]
                    # output o reads input rows o*s - p .. o*s - p + reach - 1
                    out[:, 2 * axis] = np.clip(-((-(lo + window.padding - window.reach + 1)) // window.stride), 0, limit)
                    out[:, 2 * axis + 1] = np.clip((hi - 1 + window.padding) // window.stride + 1, 0, limit)
            elif plan.op == "slice":
                index = plan.node.args[1]
                plan.offset = tuple(int(i.start or 0) for i in index[2:])
                box = boxes[plan.inputs[0]]
                out = np.stack([np.clip(box[:, 0] - plan.offset[0], 0, height), np.clip(box[:, 1] - plan.offset[0], 0, height),
                                np.clip(box[:, 2] - plan.offset[1], 0, width), np.clip(box[:, 3] - plan.offset[1], 0, width)], 1)
            else:  # pointwise, binary, cat: the union of the inputs' windows
                stacked = np.stack([boxes[a] for a in plan.inputs])
                out = np.stack([stacked[:, :, 0].min(0), stacked[:, :, 1].max(0),
                                stacked[:, :, 2].min(0), stacked[:, :, 3].max(0)], 1)
            boxes[node] = out
            self._place(plan, out)
            if plan.size[0] * plan.size[1] >= self.full_fraction * height * width:
                plan.kind = "full"

    @staticmethod
    def _place(plan: _Plan, box: np.ndarray) -> None:
        _, height, width = plan.shape
        size = (max(1, int((box[:, 1] - box[:, 0]).max())), max(1, int((box[:, 3] - box[:, 2]).max())))
        starts = np.stack([np.clip(box[:, 0], 0, height - size[0]), np.clip(box[:, 2], 0, width - size[1])], 1)
        plan.size, plan.starts = size, torch.as_tensor(starts, dtype=torch.long)

    def _storage(self, plans: dict) -> None:
        """The tail (what is computed whole: full nodes, the shapes they read, the output), the
        boundary (kept maps the tail reads) and which maps are kept: the input, and every map read
        beyond its own window (by a window op, a union, the tail)."""
        tail: set[fx.Node] = set()
        for node in reversed(list(plans)):
            plan = plans[node]
            if plan.kind in ("full", "output") or (plan.kind == "shape" and any(u in tail for u in node.users)):
                tail.add(node)
        self.tail = [node for node in plans if node in tail]
        self._tail_set = tail
        self.boundary = [node for node, plan in plans.items()
                         if plan.kind in ("inc", "input") and any(u in tail for u in node.users)]
        for node, plan in plans.items():
            if plan.kind not in ("inc", "input"):
                continue
            plan.stored = plan.kind == "input" or node in self.boundary
            for user in node.users:
                user_plan = plans[user]
                if user_plan.kind != "inc":
                    continue
                same_window = (user_plan.op == "pointwise" and user_plan.size == plan.size
                               and torch.equal(user_plan.starts, plan.starts))
                plan.stored = plan.stored or not same_window

    def _macs(self, plans: dict, values: dict) -> None:
        for node, plan in plans.items():
            if node.op != "call_module":
                continue
            module = self.modules[node.target]
            if isinstance(module, nn.Conv2d) and plan.shape:
                per_output = module.in_channels // module.groups * math.prod(_pair(module.kernel_size))
                plan.macs_full = per_output * math.prod(plan.shape)
                plan.macs_window = per_output * plan.shape[0] * plan.size[0] * plan.size[1]
            elif isinstance(module, nn.Linear):
                value = values[node]
                rows_per_lane = value.numel() // value.shape[-1] // max(1, value.shape[0]) if value.dim() > 1 else 1
                plan.macs_full = module.in_features * module.out_features * rows_per_lane

    def flop_share(self) -> float:
        """Multiply-adds of convolutions and linear layers recomputed per step, over those of a full
        forward pass (per lane; after the first :meth:`start`)."""
        if self.plans is None:
            raise RuntimeError("flop_share needs a start() first")
        full = sum(p.macs_full for p in self.plans.values())
        step = sum(p.macs_window if p.kind == "inc" else p.macs_full for p in self.plans.values())
        return step / full if full else 1.0

    def summary(self) -> dict:
        """Counts of nodes per kind, the first full node and the FLOP share (for logs and benchmarks)."""
        kinds = [p.kind for p in self.plans.values()]
        first_full = next((str(n) for n, p in self.plans.items() if p.kind == "full" and p.macs_full), None)
        return {"incremental": kinds.count("inc"), "full": kinds.count("full"),
                "kept_maps": sum(p.stored for p in self.plans.values()), "boundary_maps": len(self.boundary),
                "first_full_layer": first_full, "flop_share": self.flop_share()}

    # ---- running ----------------------------------------------------------------------------------
    def _run_node(self, node: fx.Node, args, kwargs):
        if node.op == "call_module":
            return self.modules[node.target](*args, **kwargs)
        if node.op == "call_function":
            return node.target(*args, **kwargs)
        if node.op == "call_method":
            return getattr(args[0], node.target)(*args[1:], **kwargs)
        if node.op == "get_attr":
            value = self.graph_module
            for part in node.target.split("."):
                value = getattr(value, part)
            return value
        raise NotIncremental(f"unexpected graph node {node.op}")

    @torch.inference_mode()
    def start(self, inputs: torch.Tensor, keep: bool = False) -> torch.Tensor:
        """A full pass of ``inputs`` [L, C, H, W] (the lanes); keeps the maps the steps need (and,
        with ``keep``, a copy of them for :meth:`select`). Returns the model's outputs. Drops steps
        not flushed yet."""
        if tuple(inputs.shape[1:]) != self.input_shape:
            raise ValueError(f"inputs of shape {tuple(inputs.shape[1:])}, the plan is for {self.input_shape}")
        values: dict[fx.Node, object] = {}
        first = self.plans is None
        plans: dict[fx.Node, _Plan] = {} if first else self.plans
        # once the plan exists, a value no later node reads and that is not kept is freed at once
        remaining = {node: len(node.users) for node in plans}
        output = None
        for node in self.graph_module.graph.nodes:
            if node.op == "placeholder":
                value = inputs.contiguous(memory_format=torch.channels_last)
            elif node.op == "output":
                value = output = fx.node.map_arg(node.args[0], lambda n: values[n])
            else:
                args = fx.node.map_arg(node.args, lambda n: values[n])
                kwargs = fx.node.map_arg(node.kwargs, lambda n: values[n])
                if self._inplace(node):
                    args = tuple(a.clone() if isinstance(a, torch.Tensor) else a for a in args)
                value = self._run_node(node, args, kwargs)
            values[node] = value
            if first:
                plans[node] = self._classify(node, values, plans)
            for argument in () if first else node.all_input_nodes:
                remaining[argument] -= 1
                if remaining[argument] == 0 and not (plans[argument].stored or plans[argument].kind in ("const", "shape")):
                    del values[argument]
        if first:
            self._geometry(plans)
            self._storage(plans)
            self._macs(plans, values)
            self.plans = plans
        self.states = {n: values[n].contiguous(memory_format=torch.channels_last) for n, p in plans.items() if p.stored}
        self.cached = {n: values[n] for n, p in plans.items() if p.kind in ("const", "shape")}
        self.kept = {n: t.clone() for n, t in self.states.items()} if keep else None
        self.lanes = len(inputs)
        self.pending: list[dict[fx.Node, torch.Tensor]] = []
        return output

    def state_bytes(self) -> int:
        """Bytes of the kept maps (all lanes)."""
        return sum(t.numel() * t.element_size() for t in self.states.values())

    def select(self, lanes: torch.Tensor) -> None:
        """New lanes: ``lanes`` [L'] indexes the lanes of the last start (repeats allowed; e.g. one
        base image per occlusion window); their maps are copied, from the copy ``start(..., keep=True)``
        made (so select() may follow steps), else from the current maps."""
        lanes = torch.as_tensor(lanes, dtype=torch.long)
        if self.pending:
            raise RuntimeError("select() between advance() and flush()")
        origin = self.states if self.kept is None else self.kept
        self.states = {n: t[lanes.to(t.device)].contiguous(memory_format=torch.channels_last) for n, t in origin.items()}
        self.lanes = len(lanes)

    def _gather(self, node: fx.Node, starts: torch.Tensor, size: tuple, pad_value: float, crops: dict) -> torch.Tensor:
        """The window [L, C, h, w] of node's current map at per-lane ``starts`` [L, 2] (may reach past
        the map: those elements are ``pad_value``)."""
        plan = self.plans[node]
        if node in crops and plan.size == tuple(size) and torch.equal(crops[node][1], starts):
            return crops[node][0]
        state = self.states[node]
        lanes, channels, height, width = state.shape
        flat, outside = _pixel_index(starts, size, height, width)
        pixels = state.permute(0, 2, 3, 1).reshape(-1, channels)  # a view: the maps are channels-last
        crop = pixels.index_select(0, flat.reshape(-1).to(state.device)).view(lanes, size[0], size[1], channels)
        if outside is not None:
            crop = crop.masked_fill(outside[..., None].to(state.device), pad_value)
        return crop.permute(0, 3, 1, 2)

    def _scatter(self, node: fx.Node, starts: torch.Tensor, crop: torch.Tensor) -> None:
        state = self.states[node]
        channels, height, width = state.shape[1:]
        flat, _ = _pixel_index(starts, crop.shape[-2:], height, width)  # a node's windows lie inside its map
        pixels = state.permute(0, 2, 3, 1).reshape(-1, channels)
        pixels.index_copy_(0, flat.reshape(-1).to(state.device), crop.permute(0, 2, 3, 1).reshape(-1, channels).to(state.dtype))

    def _fire_pre_hooks(self, module: nn.Module, crop: torch.Tensor) -> None:
        """A window entering a module counts as the module being called (e.g. pass counters on the first convolution)."""
        for hook in module._forward_pre_hooks.values():
            hook(module, (crop,))

    @torch.inference_mode()
    def advance(self, position_index: torch.Tensor, source: torch.Tensor) -> None:
        """Each lane's box moves to ``positions[position_index]`` [L] and takes ``source``'s values
        [L, C, H, W] there, on top of the lane's current input; the maps are brought up to date.
        The outputs of the new inputs come from the next :meth:`flush` (which batches the layers
        computed whole over all steps advanced since the last one)."""
        if self.plans is None or not self.lanes:
            raise RuntimeError("advance() needs a start() first")
        position_index = torch.as_tensor(position_index, dtype=torch.long).cpu()
        if len(position_index) != self.lanes:
            raise ValueError(f"{len(position_index)} positions for {self.lanes} lanes")
        crops: dict[fx.Node, tuple[torch.Tensor, torch.Tensor]] = {}  # this step's windows: (values, starts)
        for node, plan in self.plans.items():
            if plan.kind not in ("inc", "input"):
                continue
            starts = plan.starts[position_index]
            crop = self._window(node, plan, starts, source, crops, position_index)
            crops[node] = (crop, starts)
            if plan.stored:
                self._scatter(node, starts, crop)
        self.pending.append({node: self.states[node].clone() for node in self.boundary})

    @torch.inference_mode()
    def flush(self):
        """The outputs of every step advanced since the last flush, steps one after the other
        (rows [S * L, ...] for S steps of L lanes): the nodes computed whole, in one batch."""
        if not self.pending:
            raise RuntimeError("flush() needs an advance() first")
        fresh = {node: torch.cat([snapshot[node] for snapshot in self.pending]).contiguous(memory_format=self.memory_format)
                 for node in self.boundary}
        self.pending = []
        remaining = {node: sum(u in self._tail_set for u in node.users) for node in self.plans}
        output = None
        for node in self.tail:
            args = fx.node.map_arg(node.args, lambda n: fresh[n] if n in fresh else self.cached[n])
            if node.op == "output":
                output = args[0]
                break
            kwargs = fx.node.map_arg(node.kwargs, lambda n: fresh[n] if n in fresh else self.cached[n])
            if self.plans[node].inplace:
                args = tuple(a.clone() if isinstance(a, torch.Tensor) else a for a in args)
            fresh[node] = self._run_node(node, args, kwargs)
            for argument in node.all_input_nodes:  # free what no later node reads
                remaining[argument] -= 1
                if remaining[argument] == 0 and argument in fresh:
                    del fresh[argument]
        return output

    def step(self, position_index: torch.Tensor, source: torch.Tensor):
        """:meth:`advance` then :meth:`flush`: the outputs of the lanes' new inputs."""
        self.advance(position_index, source)
        return self.flush()

    def _window(self, node: fx.Node, plan: _Plan, starts: torch.Tensor, source: torch.Tensor, crops: dict,
                position_index: torch.Tensor) -> torch.Tensor:
        """This step's values of ``node``'s window at ``starts`` [L, 2]: [L, C, h, w]."""
        if plan.kind == "input":  # the box takes the source's values, the rest of the window stays
            current = self._gather(node, starts, plan.size, 0.0, {})
            top = self.positions[position_index]  # [L, 2]
            rows = starts[:, :1] + torch.arange(plan.size[0])
            cols = starts[:, 1:] + torch.arange(plan.size[1])
            inside = (((rows >= top[:, :1]) & (rows < top[:, :1] + self.box[0]))[:, :, None]
                      & ((cols >= top[:, 1:]) & (cols < top[:, 1:] + self.box[1]))[:, None, :])
            height, width = source.shape[-2:]
            flat, _ = _pixel_index(starts, plan.size, height, width)  # the input's windows lie inside it
            flat = flat.to(source.device)
            # [L, C, H*W] is a view for contiguous, channels-last and expanded sources alike
            new = source.flatten(2)[flat // (height * width), :, flat % (height * width)].permute(0, 3, 1, 2).to(current)
            return torch.where(inside[:, None].to(current.device), new, current)
        if plan.op == "window":
            rows, cols = plan.windows
            in_starts = torch.stack([starts[:, 0] * rows.stride - rows.padding, starts[:, 1] * cols.stride - cols.padding], 1)
            in_size = ((plan.size[0] - 1) * rows.stride + rows.reach, (plan.size[1] - 1) * cols.stride + cols.reach)
            crop = self._gather(plan.inputs[0], in_starts, in_size, plan.pad_value, crops)
            module = self.modules[node.target]
            self._fire_pre_hooks(module, crop)
            stride, dilation = (rows.stride, cols.stride), (rows.dilation, cols.dilation)
            if isinstance(module, nn.Conv2d):  # the window in the weights' memory format (a mix is slow in oneDNN)
                crop = crop.contiguous(memory_format=_format_of(module.weight))
                return F.conv2d(crop, module.weight, module.bias, stride, 0, dilation, module.groups)
            kernel = (rows.kernel, cols.kernel)
            if isinstance(module, nn.MaxPool2d):
                return F.max_pool2d(crop, kernel, stride, 0, dilation)
            return F.avg_pool2d(crop, kernel, stride, 0)
        if plan.op == "slice":
            shifted = starts + torch.tensor(plan.offset)
            return self._gather(plan.inputs[0], shifted, plan.size, 0.0, crops)
        windows = {a: self._gather(a, starts, plan.size, 0.0, crops) for a in plan.inputs}
        if plan.op == "cat":
            return torch.cat([windows[t] for t in node.args[0]], 1)
        args = fx.node.map_arg(node.args, lambda n: windows[n] if n in windows else self.cached[n])
        kwargs = dict(fx.node.map_arg(node.kwargs, lambda n: windows[n] if n in windows else self.cached[n]))
        if "inplace" in kwargs:
            kwargs["inplace"] = False
        if plan.inplace and node.op == "call_module":
            args = tuple(a.clone() if isinstance(a, torch.Tensor) else a for a in args)
        return self._run_node(node, args, kwargs)


def _format_of(weight: torch.Tensor) -> torch.memory_format:
    """channels-last for weights stored so (e.g. an inference copy), else the default layout."""
    if weight.dim() == 4 and weight.is_contiguous(memory_format=torch.channels_last) and not weight.is_contiguous():
        return torch.channels_last
    return torch.contiguous_format
