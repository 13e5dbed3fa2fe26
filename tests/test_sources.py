"""Model sources (gcnn.sources), preprocessing presets and labels: every form, every error."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn

import gcnn
from gcnn.cli import main
from gcnn.data.labels import class_indices, imagenet_synsets, read_class_map
from gcnn.data.preprocessing import PRESETS, resolve_preprocessing, timm_preprocessing
from gcnn.sources import ModelSourceError, build_model, parse_model_kwargs, resolve_model


@pytest.mark.parametrize(
    ("spec", "kind", "cls"),
    [
        ("vgg11", "gcnn", gcnn.models.vgg.VGG),
        ("resnet18", "torchvision", torchvision.models.ResNet),
        ("tests.analysis.custom_net:build", "callable", nn.Module),
        ("tests.analysis.custom_net:CustomNet", "callable", nn.Module),
    ],
)
def test_each_kind_of_source_builds_its_model(spec: str, kind: str, cls: type) -> None:
    source = resolve_model(spec)
    assert source.kind == kind
    assert isinstance(source.build(num_classes=7), cls)


def test_timm_source_uses_pretrained_false_and_its_own_preprocessing() -> None:
    pytest.importorskip("timm")
    source = resolve_model("timm:tf_efficientnet_b0")
    assert source.kind == "timm" and source.channels_kwarg == "in_chans"
    model = source.build(num_classes=5)
    assert model.num_classes == 5
    pre, size = timm_preprocessing(model, source.name)
    assert size == 224 and pre.interpolation == "bicubic" and pre.crop_pct == 0.875
    assert pre.source == "timm:tf_efficientnet_b0"
    inception = timm_preprocessing(resolve_model("timm:inception_v3").build(), "inception_v3")[0]
    assert inception.mean == (0.5, 0.5, 0.5)  # a TF port: (x - 0.5) / 0.5


def test_checkpoint_shapes_give_the_class_count_and_channels(tmp_path: Path) -> None:
    """No sidecar: num_classes (and timm's in_chans) are read off the checkpoint; the loaded
    weights are the saved ones."""
    pytest.importorskip("timm")
    import timm

    saved = timm.create_model("resnet18", pretrained=False, num_classes=3, in_chans=1)
    path = tmp_path / "ckpt.pt"
    torch.save(saved.state_dict(), path)
    model, source = build_model("timm:resnet18", path)
    assert model.num_classes == 3 and model.conv1.in_channels == 1
    torch.testing.assert_close(model.fc.weight, saved.fc.weight)
    custom = tmp_path / "custom.safetensors"
    from safetensors.torch import save_file

    from tests.analysis.custom_net import build

    save_file(build(num_classes=4, width=6).state_dict(), str(custom))
    model, _ = build_model("tests.analysis.custom_net:build", custom, {"width": 6})
    assert model.fc.out_features == 4


@pytest.mark.parametrize(
    ("spec", "kwargs", "message"),
    [
        ("resnt18", {}, r"unknown --arch \(model\) 'resnt18'.*Did you mean resnet18"),
        ("timm:resnet5", {}, r"unknown timm model 'resnet5'; did you mean resnet50"),
        ("timm:", {}, r"timm: needs a model name"),
        ("no_such_pkg.nets:build", {}, r"cannot import 'no_such_pkg.nets'"),
        ("tests.analysis.custom_net:nothing", {}, r"has no attribute 'nothing'"),
        ("tests.analysis.custom_net:math", {}, r"not callable"),
        ("tests.analysis.custom_net:", {}, r"write package.module:callable"),
        ("tests.analysis.custom_net:build", {"depth": 3}, r"does not take the keyword arguments"),
        ("torch:zeros", {"size": (2,)}, r"returned Tensor, not a torch.nn.Module"),
        ("vgg11", {"width": "wide"}, r"."),
    ],
)
def test_each_error_is_one_line(spec: str, kwargs: dict, message: str) -> None:
    if spec.startswith("timm:"):
        pytest.importorskip("timm")
    with pytest.raises((ModelSourceError, TypeError, ValueError), match=message) as info:
        build_model(spec, None, kwargs)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("text", "message"),
    [("{width: 1}", "not JSON"), ("[1, 2]", "must be a JSON object")],
)
def test_model_kwargs_must_be_a_json_object(text: str, message: str) -> None:
    with pytest.raises(ModelSourceError, match=message):
        parse_model_kwargs(text)
    assert parse_model_kwargs('{"width": 0.5}') == {"width": 0.5}


def test_cli_errors_exit_2_with_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (
        ["exactness", "--arch", "resnt18", "--size", "33"],
        ["exactness", "--arch", "tests.analysis.custom_net:build", "--size", "33",
         "--model-kwargs", "[1]"],
        ["check", "--arch", "no_such_pkg:build", "--data", "cifar10-samples", "--out", "x"],
    ):  # fmt: skip
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1, err


def test_exactness_cli_on_a_custom_module(capsys: pytest.CaptureFixture[str]) -> None:
    """module:callable with kwargs; exit 0 at an exact width, 1 at an inexact one, and the
    numerical check agrees."""
    spec = ["--arch", "tests.analysis.custom_net:build", "--model-kwargs", '{"width": 4}']
    assert main(["exactness", *spec, "--size", "16", "37", "--certify"]) == 0
    printed = capsys.readouterr().out
    assert "flip-exact at 16×37" in printed and "exact, agrees" in printed
    assert main(["exactness", *spec, "--size", "16", "36", "--certify"]) == 1
    printed = capsys.readouterr().out
    assert "stem (conv k=3 s=2" in printed and "Nearest exact widths: 29, 37" in printed
    assert "not exact, agrees" in printed


def test_preprocessing_presets_and_flags() -> None:
    assert PRESETS["inception"].mean == (0.5, 0.5, 0.5)
    tf_port = resolve_preprocessing(PRESETS["imagenet"], mean=(0.498,) * 3, std=(0.502,) * 3)
    assert tf_port.source == "custom" and tf_port.crop_pct == 0.875
    assert resolve_preprocessing(PRESETS["imagenet"], "none").std == (1.0, 1.0, 1.0)
    assert PRESETS["imagenet"].resize_for(224) == 256
    for bad in ({"preset": "tf"}, {"std": (0.0, 1.0, 1.0)}, {"crop_pct": 1.5},
                {"interpolation": "lanczos"}, {"mean": (0.5, 0.5)}):  # fmt: skip
        with pytest.raises(ValueError):
            resolve_preprocessing(PRESETS["imagenet"], **bad)


def test_labels_numeric_synsets_class_map_and_sorted(tmp_path: Path) -> None:
    synsets = imagenet_synsets()
    assert len(synsets) == 1000 and synsets[0] == "n01440764" and len(set(synsets)) == 1000
    assert class_indices(["10", "2", "0"]) == ({"0": 0, "10": 10, "2": 2}, "numeric folders")
    index, how = class_indices([synsets[417], synsets[3]])
    assert how == "imagenet synsets" and index == {synsets[3]: 3, synsets[417]: 417}
    assert class_indices(["dog", "cat"]) == ({"cat": 0, "dog": 1}, "sorted folder names")
    path = tmp_path / "map.json"
    path.write_text(json.dumps({"cat": 281, "dog": 207}))
    assert class_indices(["dog", "cat"], read_class_map(path))[0] == {"cat": 281, "dog": 207}
    with pytest.raises(ValueError, match="no index for the folders"):
        class_indices(["cow"], read_class_map(path))
    with pytest.raises(ValueError, match="not ImageNet-1k classes"):
        class_indices(["n99999999"])
    path.write_text("[1]")
    with pytest.raises(ValueError, match="folder name → class index"):
        read_class_map(path)


def test_a_run_folder_is_read_like_its_checkpoint() -> None:

    from gcnn.sources import build_model

    folder = Path(__file__).resolve().parents[1] / "models" / "vgg11-w025-fmnist-cnn"
    by_folder, source = build_model(None, folder)
    by_file, _ = build_model(None, folder / "model.safetensors")
    assert source.spec == "vgg11"
    a, b = by_folder.state_dict(), by_file.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(ModelSourceError, match="no model.json"):
        build_model(None, folder.parent)  # a folder without a run in it
