"""The datasets, by name: one spec each, and every other place that needs a dataset fact reads it here.

The ``dataset`` key's allowed values (bigbatch.config), the loading (bigbatch.data), the sizes checked on a
sweep's driver, the MLflow dataset schema (sweeps.tracking), the model shapes of the analysis and table1's
file checks all derive from ``DATASETS``. Adding a dataset is one entry here (its loader may live beside it)
plus its test; a name missing from one of those places can no longer fail silently.

This module imports no torch at import time (bigbatch.config reads it); the loaders import what they need.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

# (pool_x, pool_y, test_x, test_y): uint8 (N, C, H, W) images at the model's size, int64 labels
Arrays = tuple[Any, Any, Any, Any]


@dataclass(frozen=True)
class DatasetSpec:
    """Everything bigbatch needs to know about one dataset."""

    name: str  # the value of the dataset key
    title: str  # its name in messages ("CIFAR-10")
    num_classes: int
    in_channels: int
    image_size: int  # side of the square images the model sees (after any padding)
    pool: int | None  # training-pool images (train + val before the split) of the official files; None: cfg.synthetic_size
    mean: tuple[float, ...]  # per-channel normalisation in [0, 1] units, fixed per dataset (never the split's statistics)
    std: tuple[float, ...]
    load: Callable[[Path, bool, Any], Arrays]  # (data_dir, download, cfg) -> the arrays; DataError (one line) when it cannot
    source: Callable[[], str]  # where the files come from (the download URL), or "synthetic"
    files: tuple[str, ...] = ()  # the files a data directory must hold, where they are fixed (table1's checks)

    @property
    def shape(self) -> tuple[int, int, int]:
        """(num_classes, in_channels, image_size)."""
        return self.num_classes, self.in_channels, self.image_size


def _cifar(name: str) -> Callable[[Path, bool, Any], Arrays]:
    def load(root: Path, download: bool, cfg: Any) -> Arrays:
        from .data import load_cifar

        return load_cifar(name, root, download)

    return load


def _cifar_url(name: str) -> Callable[[], str]:
    def url() -> str:
        from torchvision.datasets import CIFAR10, CIFAR100

        return (CIFAR10 if name == "cifar10" else CIFAR100).url

    return url


def _fashion_mnist(root: Path, download: bool, cfg: Any) -> Arrays:
    from .data import load_fashion_mnist

    return load_fashion_mnist(root, download, DATASETS["fashion-mnist"].files)


def _fashion_mnist_url() -> str:
    from torchvision.datasets import FashionMNIST

    return FashionMNIST.mirrors[0]


def _synthetic(root: Path, download: bool, cfg: Any) -> Arrays:
    from .data import make_synthetic

    return make_synthetic(cfg.synthetic_size)[:4]


DATASETS: dict[str, DatasetSpec] = {spec.name: spec for spec in (
    # the usual constants: statistics of CIFAR-10's 50k training images (the authors' Normalize)
    DatasetSpec("cifar10", "CIFAR-10", 10, 3, 32, 50000, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616),
                _cifar("cifar10"), _cifar_url("cifar10")),
    # the usual constants: statistics of CIFAR-100's 50k training images
    DatasetSpec("cifar100", "CIFAR-100", 100, 3, 32, 50000, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762),
                _cifar("cifar100"), _cifar_url("cifar100")),
    # 28x28 zero-padded to 32x32; normalisation computed once, in float64, over the 60k training images as the
    # model sees them (padded): 0.218999832, 0.331811373 (unpadded: the usual 0.2860 / 0.3530);
    # tests/test_data.py recomputes them when the files are present
    DatasetSpec("fashion-mnist", "Fashion-MNIST", 10, 1, 32, 60000, (0.2190,), (0.3318,), _fashion_mnist,
                _fashion_mnist_url, files=("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
                                           "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")),
    # generated (bigbatch.data.make_synthetic); normalisation computed once, in float64, over
    # make_synthetic(1024)'s training pool (the default synthetic_size)
    DatasetSpec("synthetic", "synthetic", 10, 3, 32, None, (0.4920, 0.5028, 0.5307), (0.2677, 0.2670, 0.2663),
                _synthetic, lambda: "synthetic"),
)}


def dataset_spec(name: str) -> DatasetSpec:
    """The spec called ``name``; ValueError naming the valid ones otherwise."""
    try:
        return DATASETS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown dataset {name!r}; valid: {', '.join(DATASETS)}") from None


__all__ = ["DATASETS", "DatasetSpec", "dataset_spec"]
