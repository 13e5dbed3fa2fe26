"""Hand-written flip-equivariant layers (plain torch). Every layer can ``export()`` itself."""

from gcnn.nn.batchnorm import FlipBatchNorm2d
from gcnn.nn.conv import FlipConv2d, set_conv_path
from gcnn.nn.export import export_modules
from gcnn.nn.fields import (
    FIELD_TYPES,
    Fields,
    FieldSpec,
    FieldType,
    flip_action,
    involution_layout,
    swap_pairs,
)
from gcnn.nn.isotypic import CONV_PATHS, ConvPath
from gcnn.nn.linear import FlipLinear
from gcnn.nn.module import FlipHook, FlipModule
from gcnn.nn.pooling import InvariantLinear, PairPool

__all__ = [
    "CONV_PATHS",
    "ConvPath",
    "FIELD_TYPES",
    "FieldSpec",
    "FieldType",
    "Fields",
    "FlipBatchNorm2d",
    "FlipConv2d",
    "FlipHook",
    "FlipLinear",
    "FlipModule",
    "InvariantLinear",
    "PairPool",
    "export_modules",
    "flip_action",
    "involution_layout",
    "set_conv_path",
    "swap_pairs",
]
