"""Data sets for coarse2fine: built-in sets that need no download, and ImageNet-style folders.

    ds = build_dataset("default", resolution=32, split="train", flip=True)
    image, label = ds[0]          # FloatTensor [3, 32, 32] in [-1, 1], int

Names: see `list_datasets()` (`coarse2fine data list`). The code store for pre-extracted VQ codes
lives in `coarse2fine.data.codes`.
"""
from coarse2fine.data.datasets import ArrayDataset, ImageDataset
from coarse2fine.data.folder import FolderDataset
from coarse2fine.data.registry import build_dataset, dataset_availability, list_datasets

__all__ = ["ArrayDataset", "FolderDataset", "ImageDataset", "build_dataset", "dataset_availability",
           "list_datasets"]
