"""The CAM family: class activation maps of a convolutional layer (Grad-CAM through captum).

Layouts as everywhere in the package: images [B, 3, H, W] (normalised), targets [B] -> [B, 3, H, W]:
a CAM is a [B, H, W] map, returned as that map / 3 on each colour channel (the channel sum is the map).
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor, nn

from bagrepro.methods.attribution.registry import MethodNotApplicable, register_attribution

register = functools.partial(register_attribution, family="CAM")


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


