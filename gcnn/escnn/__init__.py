"""escnn backend: VGG11 and ResNet50 GCNNs built from escnn's ``flip2dOnR2`` fields.

Optional: needs ``pip install "gcnn[escnn]"`` (escnn 1.0.11; see ``docs/escnn.md``). Importing
this package without escnn raises an :class:`ImportError` that says how to install it; the rest
of :mod:`gcnn` never imports escnn.

* :func:`vgg11_flip_escnn`, :func:`resnet50_flip_escnn`: drop-ins for :func:`gcnn.vgg11_flip`
  and :func:`gcnn.resnet50_flip` (same arguments, channel counts and pair layout; plain tensors
  in and out). Registered as ``create_model("vgg11_flip_escnn")`` etc.
* ``model.export()``: the plain model (``gcnn.VGG`` / torchvision ``ResNet``), identical outputs.
* :func:`escnn_to_flip` / :func:`flip_to_escnn`: exact conversion to and from the hand-written
  flip models on any :class:`~gcnn.nn.Fields` layouts (escnn direct sums of trivial, then
  regular fields; the escnn layers use a kernel basis that spans every flip-equivariant
  filter).
"""

from __future__ import annotations

import warnings

_INSTALL_HINT = (
    "gcnn.escnn needs the optional escnn backend. Install it with\n"
    "    apt-get install -y gfortran   # py3nj, an escnn dependency, builds Fortran code\n"
    '    pip install "gcnn[escnn]"      # escnn==1.0.11, lie_learn (pins numpy<2), py3nj\n'
    "or run .ci/install from a gcnn checkout (see docs/escnn.md)."
)

try:
    with warnings.catch_warnings():
        # Without py3nj, escnn warns at import (SO(3) Clebsch-Gordan fallback): irrelevant to
        # the flip group, and it must not break a `-W error` run.
        warnings.filterwarnings("ignore", message=".*py3nj.*")
        import escnn as _escnn  # noqa: F401
except ImportError as err:  # pragma: no cover - exercised in a subprocess test
    raise ImportError(f"{_INSTALL_HINT}\n(import escnn failed: {err})") from err

from gcnn.escnn.convert import escnn_to_flip, flip_to_escnn  # noqa: E402
from gcnn.escnn.layers import (  # noqa: E402
    EscnnBatchNorm2d,
    EscnnConv2d,
    EscnnInvariantLinear,
    EscnnPointwise,
    flip_gspace,
    full_basis_r2conv,
)
from gcnn.escnn.models import (  # noqa: E402
    EscnnResNet,
    EscnnVGG,
    resnet50_flip_escnn,
    vgg11_flip_escnn,
)

__all__ = [
    "EscnnBatchNorm2d",
    "EscnnConv2d",
    "EscnnInvariantLinear",
    "EscnnPointwise",
    "EscnnResNet",
    "EscnnVGG",
    "escnn_to_flip",
    "flip_gspace",
    "flip_to_escnn",
    "full_basis_r2conv",
    "resnet50_flip_escnn",
    "vgg11_flip_escnn",
]
