"""Test fixtures: data in the official CIFAR python format (``from fixtures import write_cifar, trust_cifar``)
and ``md_rows``, the rows of a Markdown table.

torchvision md5-checks every CIFAR file, so files written here load only after :func:`trust_cifar`
has put their md5 in torchvision's expected lists, in this test process (pytest's monkeypatch
undoes it after the test). Without it they read as corrupt: a subprocess sees exactly that.
"""

from __future__ import annotations

import hashlib
import pickle
from pathlib import Path

import numpy as np
import torch

FOLDER = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python"}


def write_cifar(dir: str | Path, n_train: int = 500, n_test: int = 100, num_classes: int = 10,
                seed: int = 0, variant: str = "cifar10") -> Path:
    """Write a tiny dataset of random images in the official CIFAR python format; return its folder.

    ``variant="cifar10"``: ``dir/cifar-10-batches-py`` with ``data_batch_1..5`` (splitting
    ``n_train``), ``test_batch`` and ``batches.meta``. ``variant="cifar100"``: ``dir/cifar-100-python``
    with ``train``, ``test`` and ``meta`` (fine and coarse labels).
    """
    folder = Path(dir) / FOLDER[variant]
    folder.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(seed)
    x_all = torch.randint(0, 256, (n_train + n_test, 3072), dtype=torch.uint8, generator=gen).numpy()
    y_all = torch.randint(0, num_classes, (n_train + n_test,), generator=gen).tolist()
    labels = "labels" if variant == "cifar10" else "fine_labels"

    def dump(name: str, obj: dict) -> None:
        with open(folder / name, "wb") as f:
            pickle.dump(obj, f, protocol=2)

    def batch(lo: int, hi: int, label: str) -> dict:
        d = {"batch_label": label, "data": x_all[lo:hi].copy(), labels: y_all[lo:hi],
             "filenames": [f"img_{i}.png" for i in range(lo, hi)]}
        if variant == "cifar100":
            d["coarse_labels"] = [y % 20 for y in y_all[lo:hi]]
        return d

    names = [f"class_{k}" for k in range(num_classes)]
    if variant == "cifar10":
        bounds = np.linspace(0, n_train, 6).round().astype(int)
        for i in range(5):
            dump(f"data_batch_{i + 1}", batch(bounds[i], bounds[i + 1], f"training batch {i + 1} of 5"))
        dump("test_batch", batch(n_train, n_train + n_test, "testing batch 1 of 1"))
        dump("batches.meta", {"label_names": names, "num_cases_per_batch": n_train // 5, "num_vis": 3072})
    else:
        dump("train", batch(0, n_train, "training"))
        dump("test", batch(n_train, n_train + n_test, "testing"))
        dump("meta", {"fine_label_names": names, "coarse_label_names": [f"super_{k}" for k in range(20)]})
    return folder


def trust_cifar(monkeypatch, folder: Path, variant: str = "cifar10") -> None:
    """Make torchvision's CIFAR md5 check accept the files now in ``folder`` (for this test only)."""
    from torchvision.datasets import CIFAR10, CIFAR100

    cls = {"cifar10": CIFAR10, "cifar100": CIFAR100}[variant]

    def md5(name: str) -> str:
        return hashlib.md5((Path(folder) / name).read_bytes()).hexdigest()

    monkeypatch.setattr(cls, "train_list", [[f, md5(f)] for f, _ in cls.train_list])
    monkeypatch.setattr(cls, "test_list", [[f, md5(f)] for f, _ in cls.test_list])
    monkeypatch.setattr(cls, "meta", {**cls.meta, "md5": md5(cls.meta["filename"])})


def md_rows(md: str) -> list[list[str]]:
    """The rows of the first Markdown pipe table in ``md`` (header first, separator left out), cells stripped."""
    lines = md.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    rows = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        if not set(line) <= set("|:- "):
            rows.append([c.strip() for c in line.strip().strip("|").split("|")])
    return rows
