"""Datasets (CIFAR-10, Fashion-MNIST, ImageFolder, shipped samples) and loaders."""

from gcnn.data.cifar import load_cifar10, read_cifar10_folder
from gcnn.data.datasets import DATASETS, load_dataset, load_sample_dataset
from gcnn.data.fashion_mnist import load_fashion_mnist, read_idx
from gcnn.data.imagefolder import ImageFolderData, load_imagefolder
from gcnn.data.loaders import DeviceLoader, StreamLoader, eval_batches, random_crop_flip
from gcnn.data.safe_pickle import NumpyOnlyUnpickler, load_numpy_pickle
from gcnn.data.samples import load_samples, sample_files
from gcnn.data.tensor_dataset import ImageTensors

__all__ = [
    "DATASETS",
    "DeviceLoader",
    "ImageFolderData",
    "ImageTensors",
    "NumpyOnlyUnpickler",
    "StreamLoader",
    "eval_batches",
    "load_cifar10",
    "load_dataset",
    "load_fashion_mnist",
    "load_imagefolder",
    "load_numpy_pickle",
    "load_sample_dataset",
    "load_samples",
    "random_crop_flip",
    "read_cifar10_folder",
    "read_idx",
    "sample_files",
]
