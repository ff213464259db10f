"""The CAM family: class activation maps of a convolutional layer (Grad-CAM through captum; Grad-CAM++,
XGrad-CAM, Layer-CAM, HiRes-CAM, Score-CAM, Ablation-CAM, Eigen-CAM and FullGrad through
pytorch-grad-cam, imported when a method runs).

Layouts as everywhere in the package: images [B, 3, H, W] (normalised), targets [B] -> [B, 3, H, W]:
a CAM is a [B, H, W] map, returned as that map / 3 on each colour channel (the channel sum is the map).
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor, nn

from bagrepro.core.errors import ConfigError
from bagrepro.methods.attribution.registry import IMAGE_SIZE, MODEL, MethodNotApplicable, positive, register_attribution

register = functools.partial(register_attribution, family="CAM")


def hooked_forward(net: nn.Module, images: Tensor, modules, hook) -> None:
    """One forward of ``images`` without grad with ``hook(module, inputs, output)`` on each of
    ``modules`` (a forward hook), removed afterwards whatever happens."""
    handles = [module.register_forward_hook(hook) for module in modules]
    try:
        with torch.no_grad():
            net(images)
    finally:
        for handle in handles:
            handle.remove()


def blank_image(model: nn.Module, size: tuple[int, int]) -> Tensor:
    """One all-zero image [1, 3, H, W] of ``size`` in the model's dtype and on its device."""
    probe = next(model.parameters())
    return torch.zeros(1, 3, *size, dtype=probe.dtype, device=probe.device)


def _last_spatial_block(net: nn.Module, images: Tensor, method: str) -> tuple[nn.Module, int]:
    """:func:`gradcam_layer`'s module and its output channels, from one hooked forward of ``images``."""
    with_conv: set[int] = set()

    def mark(module: nn.Module) -> bool:
        found = isinstance(module, nn.Conv2d)
        for child in module.children():
            found = mark(child) or found
        if found:
            with_conv.add(id(module))
        return found

    if not mark(net):
        raise MethodNotApplicable(f"{method}: the model has no convolution (nn.Conv2d)")
    finished: list[tuple[nn.Module, int]] = []

    def hook(module, _inputs, output):
        if isinstance(output, Tensor) and output.dim() == 4 and output.shape[-2] * output.shape[-1] > 1:
            finished.append((module, output.shape[1]))

    hooked_forward(net, images, [m for m in net.modules() if id(m) in with_conv], hook)
    if not finished:
        raise MethodNotApplicable(f"{method}: no convolutional block outputs a spatial map larger than 1x1 "
                                  f"at {images.shape[-2]}x{images.shape[-1]} px")
    return finished[-1]


def gradcam_layer(net: nn.Module, images: Tensor, method: str = "grad_cam") -> nn.Module:
    """The "last convolutional block" Grad-CAM uses: one forward of ``images`` (without grad) with
    hooks, and the module whose forward finishes last among those that contain an ``nn.Conv2d``
    (themselves or a descendant) and output a 4-D tensor larger than 1 x 1 spatially. torchvision
    ResNet: ``layer4``; VGG and DenseNet: ``features``; BagNet: ``layer4``. Run it on an eval-mode
    model (a train-mode forward would update BatchNorm statistics). MethodNotApplicable if none.
    """
    return _last_spatial_block(net, images, method)[0]


@register("grad_cam", library="captum LayerGradCam",
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




# ---- pytorch-grad-cam ----------------------------------------------------------------------------------------
#: method name -> (pytorch-grad-cam class, what its channel weights are, its paper)
GRAD_CAM_LIBRARY = {
    "grad_cam_plus_plus": ("GradCAMPlusPlus", "second-order gradient weights", "Chattopadhay et al. 2018"),
    "xgrad_cam": ("XGradCAM", "gradients normalised by the activations' sum", "Fu et al. 2020"),
    "layer_cam": ("LayerCAM", "the positive gradient per position, not per channel", "Jiang et al. 2021"),
    "hires_cam": ("HiResCAM", "the gradient times the activation, element-wise", "Draelos & Carin 2020"),
    "score_cam": ("ScoreCAM", "the softmax over channels of the class score of the input masked by each "
                              "upsampled, min-max normalised channel (gradient-free)", "Wang et al. 2020"),
    "ablation_cam": ("AblationCAM", "the class score's drop when each channel is zeroed (gradient-free)",
                     "Desai & Ramaswamy 2020"),
    "eigen_cam": ("EigenCAM", "the first principal component of the activations: class-agnostic, the same map "
                              "for every class", "Muhammad & Yeasin 2020"),
    "full_grad": ("FullGrad", "input gradient x input plus every convolution's and BatchNorm's bias-gradient "
                              "map, summed; it ignores the chosen layer", "Srinivas & Fleuret 2019"),
}
#: the gradient-free methods that make one pass per channel of the layer, and their library batch
PER_CHANNEL = {"score_cam": 16, "ablation_cam": 32}


def _layer_channels(name: str, options: dict) -> tuple[int, bool]:
    """The channels of the layer :func:`gradcam_layer` picks on ``options``' model and image size, and
    whether that layer holds the model's first convolution (Ablation-CAM's ablated passes then start
    at the layer's output: no image enters the first convolution)."""
    from bagrepro.core.passes import first_convolution

    model, size = options[MODEL], options[IMAGE_SIZE]
    if model is None or size is None:
        raise ConfigError(f"{name}: its passes depend on the model's layer and the image size; pass model and image_size")
    layer, channels = _last_spatial_block(model.eval(), blank_image(model, size), name)
    return channels, any(module is first_convolution(model) for module in layer.modules())


def _library_cam_cost(name: str):
    def cost(images: int, options: dict) -> tuple[int, int]:  # + 1: the layer-finding pass of one image
        if name == "score_cam":  # the activations' pass, then one per channel and image
            return images * (1 + _layer_channels(name, options)[0]) + 1, 0
        if name == "ablation_cam":  # the activations' pass, the clean scores' pass, one per channel and image
            channels, holds_stem = _layer_channels(name, options)
            return images * (2 + (0 if holds_stem else channels)) + 1, 0
        if name == "full_grad":  # + 1: the bias-order pass; its bias gradients and the input gradient: one backward
            return images + 1, images
        return images + 1, 0  # one forward; the gradient stops at the layer
    return cost


def library_cam(net: nn.Module, images: Tensor, targets: Tensor, method: str, batch_size: int | None = None) -> Tensor:
    """pytorch-grad-cam's ``method`` class (:data:`GRAD_CAM_LIBRARY`) on the layer
    :func:`gradcam_layer` picks (found on the first image: one extra forward), for each image's
    target class (``ClassifierOutputTarget``), in one call on the batch: its maps, each ReLU'd,
    min-max normalised to [0, 1] per image and resized to the input (the library's
    ``scale_cam_image``), [B, H, W] -> returned as map / 3 on each colour channel. ``batch_size``:
    Score-CAM's and Ablation-CAM's masked inputs per forward pass (the library reads it off the
    object). Their progress bars are silenced."""
    import contextlib
    import io

    import pytorch_grad_cam
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    # FullGrad takes every bias layer, not one: its first pass checks their order (full_grad_problem)
    layers = [] if method == "full_grad" else [gradcam_layer(net, images[:1], method)]
    cam_class = getattr(pytorch_grad_cam, GRAD_CAM_LIBRARY[method][0])
    # the library prints progress bars (stderr)
    with cam_class(model=net, target_layers=layers) as cam, contextlib.redirect_stderr(io.StringIO()):
        if batch_size is not None:
            cam.batch_size = batch_size
        maps = cam(input_tensor=images, targets=[ClassifierOutputTarget(int(t)) for t in targets])  # [B, H, W]
    maps = torch.as_tensor(maps, dtype=torch.float32, device=images.device)
    channels = images.shape[1]
    return (maps[:, None] / channels).expand(-1, channels, -1, -1).contiguous()


def _bias_layers(net: nn.Module) -> list[nn.Module]:
    """The layers FullGrad takes, in registration order (pytorch-grad-cam's predicate): every
    ``nn.Conv2d`` and ``nn.BatchNorm2d`` (exact types) with a bias."""
    return [m for m in net.modules() if type(m) in (nn.Conv2d, nn.BatchNorm2d) and m.bias is not None]


def full_grad_problem(net: nn.Module, images: Tensor) -> str | None:
    """Why FullGrad cannot apply to ``net``, or None: one forward of ``images`` (no grad) recording the
    order the bias layers (:func:`_bias_layers`) run in. pytorch-grad-cam pairs the i-th registered
    layer's bias with the i-th gradient it records (forward order), so a model that calls them in
    another order, or one of them not exactly once, would pair biases with other layers' gradients:
    a shape error, or, where the channels happen to agree, a wrong map."""
    layers = _bias_layers(net)
    if not layers:
        return "full_grad: the model has no convolution or BatchNorm with a bias"
    called: list[int] = []
    hooked_forward(net, images, layers, lambda module, _i, _o: called.append(id(module)))
    if called != [id(layer) for layer in layers]:
        return ("full_grad: the model does not run its convolutions and BatchNorms in the order it registers "
                "them, once each, and pytorch-grad-cam's FullGrad pairs their biases with the gradients in that order")
    return None


def _full_grad_applies(model: nn.Module, size: tuple[int, int]) -> str | None:
    return full_grad_problem(model.eval(), blank_image(model, size))


def _register_library_cam(name: str) -> None:
    class_name, weights, paper = GRAD_CAM_LIBRARY[name]
    passes = {"score_cam": "1 + (channels of the layer) forward, no backward",
              "ablation_cam": "2 + (channels of the layer) forward (0 channels' where the layer holds the stem), no backward",
              "full_grad": "1 forward + 1 backward"}.get(name, "1 forward; no backward to the input")
    if name in PER_CHANNEL:
        def compute(net: nn.Module, images: Tensor, targets: Tensor, *, cam_batch_size: int = PER_CHANNEL[name]) -> Tensor:
            positive("cam_batch_size", cam_batch_size)
            return library_cam(net, images, targets, name, cam_batch_size)
        options = (f" Options: ``cam_batch_size`` = {PER_CHANNEL[name]}, the library's default batch of "
                   "masked inputs per forward pass (memory only).")
    elif name == "full_grad":
        def compute(net: nn.Module, images: Tensor, targets: Tensor) -> Tensor:
            problem = full_grad_problem(net, images[:1])
            if problem is not None:
                raise MethodNotApplicable(problem)
            return library_cam(net, images, targets, name)
        options = (" No options. Its first pass (of one image) checks that the model calls its bias layers "
                   "in the order it registers them, once each (the library pairs each layer's bias with the "
                   "gradients in that order); MethodNotApplicable where it does not (the BagNet).")
    else:
        def compute(net: nn.Module, images: Tensor, targets: Tensor) -> Tensor:
            return library_cam(net, images, targets, name)
        options = " No options: the library's defaults (no test-time augmentation, no eigen-smoothing)."
    if name == "full_grad":
        compute.__doc__ = (f"{class_name} ({paper}; pytorch-grad-cam ``{class_name}``): {weights}; the library's "
                           f"map per image (each part min-max normalised to [0, 1] and resized to the input), as "
                           f"map / 3 on each colour channel.{options}")
    else:
        compute.__doc__ = (f"{class_name} ({paper}; pytorch-grad-cam ``{class_name}``): the channels of the layer "
                           f":func:`gradcam_layer` picks, weighted by {weights}; the library's map per image (ReLU, "
                           f"min-max normalised to [0, 1], resized to the input), as map / 3 on each colour "
                           f"channel; one layer-finding pass per call.{options}")
    compute.__name__ = compute.__qualname__ = f"_{name}"
    register(name, library=f"pytorch-grad-cam {class_name}",
             passes=passes + (", and one bias-order pass per call" if name == "full_grad"
                              else ", and one layer-finding pass per call"),
             needs=("gradients",) if name == "full_grad" else ("conv_layer",),
             cost=_library_cam_cost(name), applies=_full_grad_applies if name == "full_grad" else None)(compute)


for _name in GRAD_CAM_LIBRARY:
    _register_library_cam(_name)
