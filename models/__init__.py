"""Keras 3 models for measuring vanishing gradients.

Builds deep MLPs and CNNs from registry names (activations, initializers)
and finds their hidden layers by name. Nothing here trains or touches files.
Importing the package does not import Keras; building a model does.
"""

from vgbench.models import activations, initializers, registry
from vgbench.models.architectures import HiddenLayer, build_model, hidden_layers, output_layer
from vgbench.models.registry import UnknownNameError

__all__ = [
    "HiddenLayer",
    "UnknownNameError",
    "activations",
    "build_model",
    "hidden_layers",
    "initializers",
    "output_layer",
    "registry",
]
