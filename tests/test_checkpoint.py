"""Checkpoints: safetensors and weights-only torch files, clear errors, builders' weights=."""

from __future__ import annotations

import pytest
import torch
import torchvision

import gcnn
from gcnn.checkpoint import CheckpointError, load_weights, read_state_dict, save_weights


def test_safetensors_round_trip_through_the_builders(tmp_path) -> None:
    model = gcnn.vgg11_flip(width=0.25)
    path = save_weights(model, tmp_path / "flip.safetensors")
    loaded = gcnn.create_model("vgg11_flip", width=0.25, weights=path)
    x = torch.rand(2, 3, 32, 32)
    torch.testing.assert_close(loaded.eval()(x), model.eval()(x), rtol=0, atol=0)
    assert not list(tmp_path.glob("*.tmp"))


def test_torchvision_checkpoint_format_loads_unchanged(tmp_path) -> None:
    """A torchvision ResNet50 state dict (random init, saved as torchvision ships them)."""
    reference = torchvision.models.resnet50()
    torch.save(reference.state_dict(), tmp_path / "resnet50.pth")
    model = gcnn.resnet50(weights=tmp_path / "resnet50.pth")
    for key, value in reference.state_dict().items():
        assert torch.equal(model.state_dict()[key], value)


def test_wrapped_and_prefixed_state_dicts(tmp_path) -> None:
    model = gcnn.vgg11(width=0.125)
    state = {f"module._orig_mod.{k}": v for k, v in model.state_dict().items()}
    torch.save({"state_dict": state, "epoch": 3}, tmp_path / "ddp.pt")
    assert read_state_dict(tmp_path / "ddp.pt").keys() == model.state_dict().keys()


def test_pickled_code_is_refused(tmp_path) -> None:
    torch.save(torch.nn.Linear(2, 2), tmp_path / "module.pt")  # a whole module: needs code
    with pytest.raises(CheckpointError, match="pickled code"):
        read_state_dict(tmp_path / "module.pt")


def test_wrong_architecture_lists_the_keys(tmp_path) -> None:
    path = save_weights(gcnn.vgg11(width=0.25), tmp_path / "vgg.safetensors")
    with pytest.raises(
        CheckpointError, match="missing keys: conv1.weight.*unexpected keys: features"
    ):
        load_weights(gcnn.resnet50(), path)
    with pytest.raises(
        CheckpointError, match=r"shape mismatch.*features.0.weight \(16, 3, 3, 3\)≠"
    ):
        load_weights(gcnn.vgg11(), path)


def test_missing_and_garbage_files(tmp_path) -> None:
    with pytest.raises(CheckpointError, match="not found"):
        read_state_dict(tmp_path / "nope.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a tensor file")
    with pytest.raises(CheckpointError, match="not a readable safetensors"):
        read_state_dict(tmp_path / "junk.safetensors")
    (tmp_path / "junk.pt").write_bytes(b"not a tensor file")
    with pytest.raises(CheckpointError, match="not a torch checkpoint"):
        read_state_dict(tmp_path / "junk.pt")


def test_registry() -> None:
    assert {"vgg11", "vgg11_flip", "resnet50", "resnet50_flip"} <= set(gcnn.list_models())
    with pytest.raises(ValueError, match="unknown model 'vgg12'; known models: .*vgg11"):
        gcnn.create_model("vgg12")
