"""How a model is trained: one recipe dataclass for the demo zoo and for training on your data.

Torch-free (the demo zoo's table and ``run_all.py --list`` read it without loading torch). The loop
that follows a recipe is :func:`bagrepro.methods.training.fit`.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TrainRecipe:
    """Optimiser, schedule, epochs, augmentation and input size of one training run.

    optimizer: 'adamw' (beta1 = momentum) or 'sgd' (momentum, optionally Nesterov); weight decay
    applies to weights, not to biases or normalisation parameters. The learning rate rises linearly
    from 0 over ``warmup_epochs`` to ``lr`` and follows a half cosine to 0 at the end; the last
    partial batch of an epoch is dropped (an epoch is ``len(train) // batch_size`` steps).
    Augmentation: random horizontal / vertical flips; with ``random_crop``, a random
    ``image_size`` crop of the image resized to ``image_size / CROP_FRACTION`` (torchvision's
    ImageNet recipe, which trained the released BagNets: random 224 crops of images resized to 256);
    evaluation takes the centre crop. image_size: side of the training inputs in px (None: the
    images as they come, e.g. the demo world's). channels_last: train in channels-last memory format
    (faster on CPUs; the weights returned are ordinary contiguous tensors). bn_recalibration_images:
    training images (centre crops) used to re-estimate BatchNorm statistics after training (0: keep
    the running averages; the released BagNet stem has BatchNorm momentum 0.001, whose running
    averages move little in a few hundred steps). seed: initialisation of new layers, data order,
    augmentation and dropout.
    """

    epochs: int = 4
    batch_size: int = 32
    optimizer: str = "adamw"
    lr: float = 1e-3
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 0.05
    warmup_epochs: float = 0.3
    label_smoothing: float = 0.0
    hflip: bool = True
    vflip: bool = True
    random_crop: bool = False
    image_size: int | None = None
    channels_last: bool = True
    seed: int = 0
    bn_recalibration_images: int = 1000


#: the share of the resized image a centre crop keeps (224 of 256, torchvision's ImageNet recipe)
CROP_FRACTION = 0.875


def resized_side(image_size: int) -> int:
    """Side the shorter edge is resized to before an ``image_size`` crop (256 for 224)."""
    return round(image_size / CROP_FRACTION)


#: training on your data (``run_all.py --profile custom --data DIR --train``): fine-tuning from
#: ImageNet weights with SGD as in the paper's training (momentum 0.9, lr 0.01), a new head, random
#: 224 crops of images resized to 256 and horizontal flips (a scene is not the same upside down), a
#: cosine schedule over 10 epochs; BatchNorm statistics re-estimated on the new data at the end.
FINETUNE_RECIPE = TrainRecipe(epochs=10, batch_size=32, optimizer="sgd", lr=0.01, momentum=0.9, nesterov=True,
                              weight_decay=1e-4, warmup_epochs=0.5, hflip=True, vflip=False, random_crop=True,
                              image_size=224)
