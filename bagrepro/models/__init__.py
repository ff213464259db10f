"""Model zoo: BagNets, torchvision comparison models, stand-ins; see :mod:`.registry`."""

from bagrepro.models.bagnet import BagNet, BagNetConfig, bagnet, reduced_bagnet
from bagrepro.models.preprocess import IMAGENET, Preprocess
from bagrepro.models.registry import (ModelSpec, create_model, get_spec, list_models, register_model,
                       register_models_from_file, resolve_model_names, unregister_model)
from bagrepro.models import zoo  # noqa: F401  (registers the built-in entries)

__all__ = ["BagNet", "BagNetConfig", "IMAGENET", "ModelSpec", "Preprocess", "bagnet", "create_model", "get_spec",
           "list_models", "reduced_bagnet", "register_model", "register_models_from_file", "resolve_model_names",
           "unregister_model"]
