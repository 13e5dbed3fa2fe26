"""Analysis data from image folders: labels (numeric, synsets, class map, none), preprocessing."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from gcnn.analysis.data import load_analysis_data
from gcnn.data.labels import imagenet_synsets
from gcnn.data.preprocessing import PRESETS, resolve_preprocessing
from gcnn.data.samples import SAMPLES_DIR

CIFAR = sorted((SAMPLES_DIR / "cifar10").glob("*.png"))


def _tree(root: Path, names: dict[int, str]) -> Path:
    """The shipped CIFAR-10 PNGs sorted into class folders named by ``names[label]``."""
    for f in CIFAR:
        label = int(f.stem.rsplit("_", 1)[1])
        (root / names[label]).mkdir(parents=True, exist_ok=True)
        shutil.copy(f, root / names[label] / f.name)
    return root


def _labels(data) -> list[int]:  # noqa: ANN001
    return [int(v) for _, y in data.train for v in y]


def _truth() -> list[int]:
    return sorted(int(f.stem.rsplit("_", 1)[1]) for f in CIFAR)


@pytest.mark.parametrize("style", ["numeric", "synsets", "class_map"])
def test_class_folders_keep_the_models_labels(tmp_path: Path, style: str) -> None:
    """Numeric folders, synset folders (a subset: 10 classes of 1000) and a class map all give
    every image its true label; sorted folder order would not (negative control)."""
    synsets = imagenet_synsets()
    targets = {c: 100 * c + 7 for c in range(10)}  # standard indices the folders stand for
    if style == "numeric":
        names = {c: str(targets[c]) for c in range(10)}
    elif style == "synsets":
        names = {c: synsets[targets[c]] for c in range(10)}
    else:
        names = {c: f"class-{9 - c}" for c in range(10)}  # sorted order reverses the labels
    root = _tree(tmp_path / "data", names)
    class_map = None
    if style == "class_map":
        class_map = {names[c]: targets[c] for c in range(10)}
        (tmp_path / "map.json").write_text(json.dumps(class_map))
    data = load_analysis_data(
        str(root), image_size=32, num_train=20, num_test=20, class_map=class_map
    )
    expected = sorted(targets[c] for c in _truth())
    assert sorted(_labels(data)) == expected
    assert data.labels == {"numeric": "numeric folders", "synsets": "imagenet synsets",
                           "class_map": "class map"}[style]  # fmt: skip
    if style == "class_map":
        plain = load_analysis_data(str(root), image_size=32, num_train=20, num_test=20)
        assert plain.labels == "sorted folder names"
        assert sorted(_labels(plain)) != expected


def test_unlabelled_folder_has_no_labels() -> None:
    data = load_analysis_data(str(SAMPLES_DIR / "cifar10"), image_size=24, num_train=5, num_test=5)
    assert data.labels == "none" and all(y is None for _, y in data.train)
    assert data.preprocessing["source"] == "imagenet" and data.preprocessing["resize"] == 27


def test_mean_std_are_applied_in_pixel_units() -> None:
    """x' = (x/255 − mean) / std: the imagenet batch is the un-normalised one, normalised."""
    root = str(SAMPLES_DIR / "cifar10")
    tf_port = resolve_preprocessing(PRESETS["none"], mean=(0.498,) * 3, std=(0.502,) * 3)
    for pre in (PRESETS["imagenet"], PRESETS["inception"], tf_port):
        got = load_analysis_data(root, image_size=32, num_train=4, num_test=4, preprocessing=pre)
        unnormalised = resolve_preprocessing(pre, mean=(0.0,) * 3, std=(1.0,) * 3)
        raw = load_analysis_data(
            root, image_size=32, num_train=4, num_test=4, preprocessing=unnormalised
        ).train[0][0]
        m = torch.tensor(pre.mean).view(1, 3, 1, 1)
        s = torch.tensor(pre.std).view(1, 3, 1, 1)
        torch.testing.assert_close(got.train[0][0], (raw - m) / s)
        assert got.preprocessing["mean"] == list(pre.mean)
    tensors = load_analysis_data("cifar10-samples", num_train=4, num_test=4,
                                 preprocessing=PRESETS["inception"])  # fmt: skip
    assert tensors.preprocessing["source"] == "inception"
    assert float(tensors.train[0][0].min()) >= -1 - 1e-6  # (x − 0.5)/0.5 lies in [−1, 1]
    own = load_analysis_data("cifar10-samples", num_train=4, num_test=4)
    assert own.preprocessing["source"] == "dataset"
    assert not torch.allclose(own.train[0][0], tensors.train[0][0])
