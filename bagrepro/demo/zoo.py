"""The demo zoo: small stand-ins for the paper's models, trained on the demo world on a CPU.

One table, :data:`DEMO_ZOO`: zoo name -> :class:`DemoModel` (architecture, training recipe, the paper
roles it stands in for, display name). Adding a demo model is one entry here: the demo profile takes
its models and its role -> model mapping (:data:`bagrepro.demo.DEMO_ROLES`) from this table, using
the profile registers every entry in the model registry (:mod:`bagrepro.demo.plugin`) and
:mod:`bagrepro.demo.training` trains it (cached). Torch-free (architectures are named, and built by
:mod:`bagrepro.demo.architectures` only when asked), so the demo profile is known without torch.

- ``demo_bagnet9`` / ``demo_bagnet17`` / ``demo_bagnet33``: narrow BagNets (one block per layer) with
  the released receptive fields, stride and valid convolutions.
- ``demo_vgg16``: VGG-16's 13-convolution "D" layout with BatchNorm, channels / 4 to / 8.
- ``demo_resnet50``: ResNet-50's Bottleneck stages, planes / 4, fewer blocks.
- ``demo_densenet169``: DenseNet-169's layout shortened, growth rate 8.

(:mod:`bagrepro.demo.architectures` has the builders; ``bench/demo_zoo.py`` prints the accuracies and
training times the recipes give.)
"""

from __future__ import annotations

from dataclasses import dataclass

from bagrepro.core.errors import ConfigError
from bagrepro.core.recipe import TrainRecipe

#: the architecture families :mod:`bagrepro.demo.architectures` builds (one function of each name)
FAMILIES = ("bagnet", "vgg", "resnet", "densenet")


@dataclass(frozen=True)
class DemoModel:
    """One demo model.

    family: the architecture, one of :data:`FAMILIES` (the builder of that name in
    :mod:`~bagrepro.demo.architectures`, ``builder(settings, num_classes) -> nn.Module``); settings:
    the builder's settings. Family and settings (:attr:`architecture`) enter the cache key of the
    trained weights, so changing either retrains. recipe: how it is trained; roles: the paper models
    it stands in for ('bagnet33', 'vgg16', ...): the first is its own, the others it covers while no
    entry has them as its own (the demo VGG-16 also stands in for VGG-11 and, as the texturiser,
    VGG-19); paper_name: its display name in tables and figures.
    """

    family: str
    settings: dict
    recipe: TrainRecipe
    roles: tuple[str, ...]
    paper_name: str

    def __post_init__(self):
        if self.family not in FAMILIES:
            raise ConfigError(f"demo model family '{self.family}' is unknown; families: {', '.join(FAMILIES)}")
        if not self.roles:
            raise ConfigError(f"demo model {self.paper_name}: name the paper role(s) it stands in for")

    @property
    def role(self) -> str:
        """The paper model it stands in for first."""
        return self.roles[0]

    @property
    def architecture(self) -> dict:
        """Family and settings (a copy): what the cache key of the trained weights records."""
        return {"family": self.family, **self.settings}

    @property
    def receptive_field(self) -> int | None:
        """q for a BagNet, None for a deep model."""
        return self.settings["q"] if self.family == "bagnet" else None

    def build(self, num_classes: int):
        """The untrained model, an ``nn.Module`` (its initial weights come from the global torch RNG)."""
        from bagrepro.demo import architectures  # torch: only when a model is built

        return getattr(architectures, self.family)(self.settings, num_classes)


#: the demo zoo, zoo name -> entry. BagNets cost 3-4x more per image than the deep models here (less
#: downsampling), so they get fewer epochs; the small DenseNet needs a higher learning rate to learn
#: the lattice classes in time.
DEMO_ZOO: dict[str, DemoModel] = {
    "demo_bagnet9": DemoModel("bagnet", {"q": 9, "width": 16, "blocks": 1},
                              TrainRecipe(epochs=4), roles=("bagnet9",), paper_name="BagNet-9 (demo)"),
    "demo_bagnet17": DemoModel("bagnet", {"q": 17, "width": 16, "blocks": 1},
                               TrainRecipe(epochs=4), roles=("bagnet17",), paper_name="BagNet-17 (demo)"),
    "demo_bagnet33": DemoModel("bagnet", {"q": 33, "width": 16, "blocks": 1},
                               TrainRecipe(epochs=4), roles=("bagnet33",), paper_name="BagNet-33 (demo)"),
    # VGG-16 "D" layout (13 conv + 3 linear), channels / 4 in the first three blocks and / 8 in the
    # last two, BatchNorm after every conv (at / 8 throughout it never learnt the lattice classes)
    "demo_vgg16": DemoModel(
        "vgg",
        {"cfg": [16, 16, "M", 32, 32, "M", 64, 64, 64, "M", 64, 64, 64, "M", 64, 64, 64, "M"],
         "batch_norm": True, "pool": 2, "hidden": 128, "dropout": 0.3},
        TrainRecipe(epochs=7), roles=("vgg16", "vgg11", "vgg19"), paper_name="VGG-16 (demo)"),
    # ResNet-50 stages (Bottleneck, expansion 4), planes 16/32/64/128 (64/128/256/512 / 4)
    "demo_resnet50": DemoModel("resnet", {"layers": [1, 2, 2, 1], "width": 16},
                               TrainRecipe(epochs=6), roles=("resnet50", "resnet152"),
                               paper_name="ResNet-50 (demo)"),
    # DenseNet-169 layout (6, 12, 32, 32) shortened to (2, 4, 8, 6), growth 8 instead of 32
    "demo_densenet169": DemoModel(
        "densenet",
        {"growth_rate": 8, "block_config": [2, 4, 8, 6], "num_init_features": 16, "bn_size": 4},
        TrainRecipe(epochs=8, lr=3e-3), roles=("densenet169",), paper_name="DenseNet-169 (demo)"),
}


def demo_model(name: str) -> DemoModel:
    """The :data:`DEMO_ZOO` entry of ``name`` (a ConfigError for an unknown name)."""
    try:
        return DEMO_ZOO[name]
    except KeyError:
        raise ConfigError(f"unknown demo model '{name}'; choose from {', '.join(DEMO_ZOO)}") from None
