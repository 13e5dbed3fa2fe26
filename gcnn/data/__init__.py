"""Datasets and loaders."""

from gcnn.data.samples import load_samples, sample_files

__all__ = ["load_samples", "sample_files"]
