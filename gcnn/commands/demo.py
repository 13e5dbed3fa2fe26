"""``gcnn demo``: a flip VGG11 against a plain one on real CIFAR-10 test images."""

from __future__ import annotations

import argparse

import torch

from gcnn.data.samples import load_samples
from gcnn.exactness import flip_exactness
from gcnn.models import vgg11, vgg11_flip
from gcnn.testing import assert_same_outputs, flip_equivariance_error


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="show flip invariance of vgg11_flip vs vgg11 on the shipped real images",
        description="Build vgg11 and vgg11_flip (random init, float64), run them on the 20 "
        "real CIFAR-10 test images that ship with gcnn, and print the invariance error of "
        "each, the exactness rule at 32 and 36 pixels, and the export check.",
    )
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    torch.manual_seed(args.seed)
    images, _ = load_samples("cifar10")
    x = images.double() / 255
    flip, plain = vgg11_flip().double().eval(), vgg11().double().eval()
    rows = [
        ("vgg11_flip", flip_equivariance_error(flip, x)),
        ("vgg11 (plain)", flip_equivariance_error(plain, x)),
    ]
    print("20 real CIFAR-10 images, float64: ‖f(flip x) − f(x)‖ / ‖f(x)‖")
    for name, err in rows:
        print(f"  {name:<14} {err:.2e}")
    for size in (32, 36):
        print(f"  rule at {size}: {flip_exactness(flip, size)}")
    err = assert_same_outputs(flip, flip.export(), x)
    print(f"  export() → plain VGG, output difference {err:.1e}")
    return 0
