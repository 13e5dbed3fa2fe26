"""gcnn: layerwise flip-equivariant GCNNs (VGG11, ResNet50) and tools to study flip symmetry."""

from gcnn import nn, testing
from gcnn.checkpoint import CheckpointError, load_weights, read_state_dict, save_weights
from gcnn.exactness import ExactnessReport, FlipExactnessWarning, flip_exactness
from gcnn.models import (
    create_model,
    list_models,
    register_model,
    resnet50,
    resnet50_flip,
    vgg11,
    vgg11_flip,
)

__version__ = "0.1.0"

__all__ = [
    "CheckpointError",
    "ExactnessReport",
    "FlipExactnessWarning",
    "__version__",
    "create_model",
    "flip_exactness",
    "list_models",
    "load_weights",
    "nn",
    "read_state_dict",
    "register_model",
    "resnet50",
    "resnet50_flip",
    "save_weights",
    "testing",
    "vgg11",
    "vgg11_flip",
]
