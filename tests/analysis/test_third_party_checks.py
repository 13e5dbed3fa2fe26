"""``gcnn check`` writes a report for every architecture issue 10 names (random weights, the
shipped real CIFAR-10 images, small exact sizes). The three model sources' preprocessing and
labels are tested in ``test_third_party.py``; this file covers the remaining architectures."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gcnn.cli import main
from gcnn.data.samples import SAMPLES_DIR

TEN = {"num_classes": 10}
CASES = [  # (model source, exact input width, builder keyword arguments)
    ("vgg11_bn", 32, TEN),
    ("resnet50", 33, TEN),
    ("mobilenet_v3_small", 33, TEN),
    ("efficientnet_b0", 33, TEN),
    ("densenet121", 61, TEN),  # exact at 32k + 29
    ("timm:resnet50", 33, TEN),
    ("timm:efficientnet_b0", 33, TEN),
    ("timm:tf_efficientnet_b0", 33, TEN),  # static TF "same" padding
    ("timm:mobilenetv3_large_100", 33, TEN),
    ("timm:vgg11_bn", 32, {**TEN, "mlp_ratio": 1 / 64}),  # a 64-wide pre-logits conv
]


@pytest.mark.parametrize(("arch", "size", "kwargs"), CASES, ids=[c[0] for c in CASES])
def test_gcnn_check_writes_a_report(tmp_path: Path, arch: str, size: int, kwargs: dict) -> None:
    if arch.startswith("timm:"):
        pytest.importorskip("timm")
    out = tmp_path / "report"
    argv = [
        "check", "--arch", arch, "--model-kwargs", json.dumps(kwargs),
        "--data", str(SAMPLES_DIR / "cifar10"), "--image-size", str(size),
        "--num-images", "4", "--num-eval", "4", "--batch-size", "4",
        "--alphas", "0", "0.5", "1", "--methods", "interpolate", "--out", str(out),
    ]  # fmt: skip
    assert main(argv) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["exact_size"] is True and report["image_size"] == [size, size]
    assert report["model_source"]["spec"] == arch and report["layers"]
    assert report["statistics"]["mirror_closed"] is True
    assert set(json.loads((out / "permutations.json").read_text())) == {
        la["name"] for la in report["layers"]
    }
    # the nearest GCNN of any net is exactly flip-invariant at an exact size ...
    nearest = report["nearest_gcnn"]
    assert nearest["certified"], nearest
    # ... while the random net itself is not a GCNN: the certificate is not vacuous
    assert report["verdict"]["gcnn"] is False
    assert nearest["output_difference_to_model"] > 100 * nearest["tolerance"]
