"""ImageFolder trees stream through a DataLoader (a tree built from the shipped real images)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from gcnn.data import StreamLoader, eval_batches, load_dataset, sample_files


def make_tree(root: Path) -> Path:
    """``root/{train,val}/class<label>/*.png`` holding the 20 real CIFAR-10 samples each."""
    for f in sample_files("cifar10"):
        label = f.stem.rsplit("_", 1)[1]
        for split in ("train", "val"):
            (root / split / f"class{label}").mkdir(parents=True, exist_ok=True)
            shutil.copy(f, root / split / f"class{label}" / f.name)
    return root


def test_imagefolder_streams_resized_crops(tmp_path: Path) -> None:
    data = load_dataset("imagefolder", make_tree(tmp_path), image_size=24, resize=28)
    assert data.num_classes == len(data.classes) == len(list((tmp_path / "train").iterdir()))
    loader = StreamLoader(data, 5, torch.device("cpu"), seed=0, workers=1)
    batches = list(loader.epoch(0))
    assert len(batches) == loader.steps_per_epoch == 4
    assert batches[0][0].shape == (5, 3, 24, 24) and batches[0][0].dtype == torch.float32
    resumed = list(loader.epoch(0, start=1))
    assert [y.tolist() for _, y in resumed] == [y.tolist() for _, y in batches[1:]]
    test = list(eval_batches(data, 100, torch.device("cpu")))
    assert sum(len(y) for _, y in test) == 20 and test[0][0].shape[1:] == (3, 24, 24)


def test_imagefolder_without_val_split_says_what_layout_it_needs(tmp_path: Path) -> None:
    (tmp_path / "train" / "a").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="root/train/<class>"):
        load_dataset("imagefolder", tmp_path)


def test_training_on_an_imagefolder_tree(tmp_path: Path) -> None:
    from gcnn.train import DistContext, TrainConfig, train_seed

    root = make_tree(tmp_path / "tree")
    data = load_dataset("imagefolder", root, image_size=32, resize=36)
    cfg = TrainConfig(arch="vgg11_flip", regime="gcnn", data="imagefolder", data_root=str(root),
                      arch_kwargs={"width": 0.125}, epochs=1, batch_size=10, workers=0)  # fmt: skip
    sidecar = train_seed(cfg, data, 0, tmp_path / "out", DistContext(), progress=False)
    assert (
        sidecar["train_images"] == 20 and sidecar["arch_kwargs"]["num_classes"] == data.num_classes
    )
    assert sidecar["test_acc"] == sidecar["test_acc_tta"]  # a GCNN: flip TTA changes nothing
    assert (
        tmp_path / "out" / "vgg11_flip_gcnn_imagefolder" / "seed0" / "model.safetensors"
    ).is_file()
