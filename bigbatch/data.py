"""Datasets resident on the training device, the train/val split, and batched GPU augmentation.

The whole dataset lives on the device as uint8 (N, C, H, W) plus int64 labels; a batch is a gather
by an index tensor followed by one float conversion and normalisation (airbench / nanoGPT style:
no DataLoader, no worker processes, no per-image Python loop). Augmentation warps a whole
normalised batch with a single ``affine_grid`` + ``grid_sample``.

Normalisation: mean and std are per channel, computed exactly (from a 256-bin histogram per
channel, in float64) over the *training split* only, then stored as float32 in [0, 1] units, like
``torchvision.transforms.Normalize``. For CIFAR-10 they are within ~0.002 of the usual constants
(0.4914, 0.4822, 0.4465) / (0.2470, 0.2435, 0.2616); val and test are normalised with the training
split's statistics.

Files read: the official CIFAR python pickles (``cifar-10-batches-py``, ``cifar-100-python``) and the
Fashion-MNIST idx files. The pickles are loaded with :mod:`pickle`, which can execute code: only
point ``data_dir`` at files you trust (torchvision does the same).
"""

from __future__ import annotations

import gzip
import math
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "DataError",
    "DataSplits",
    "DeviceDataset",
    "Augmenter",
    "load_data",
    "epoch_order",
    "split_indices",
    "write_cifar",
    "check_sizes",
    "require_batch_fits",
]


class DataError(Exception):
    """A dataset that cannot be loaded (missing or corrupt files, download impossible, bad sizes).

    The message is one line, meant for a user.
    """


# ----------------------------------------------------------------------------- datasets on device
class DeviceDataset:
    """A labelled image set held entirely on one device.

    ``x``: uint8 (N, C, H, W); ``y``: int64 (N,); ``mean``/``std``: float32 (C,) in [0, 1] units.
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor, mean: torch.Tensor, std: torch.Tensor,
                 device: torch.device | str | None = None):
        """Wrap tensors; with ``device``, move them there first."""
        if device is not None:
            x, y, mean, std = (t.to(device) for t in (x, y, mean, std))
        if x.dtype != torch.uint8 or x.dim() != 4:
            raise ValueError(f"x must be uint8 (N, C, H, W), got {x.dtype} {tuple(x.shape)}")
        if y.shape != (x.shape[0],):
            raise ValueError(f"y must have shape ({x.shape[0]},), got {tuple(y.shape)}")
        self.x = x.contiguous()
        self.y = y.long()
        self.mean = mean.float()
        self.std = std.float()
        # x_float = x * scale + shift  ==  (x / 255 - mean) / std, precomputed per channel.
        self._scale = (1.0 / (255.0 * self.std)).view(1, -1, 1, 1)
        self._shift = (-self.mean / self.std).view(1, -1, 1, 1)

    @property
    def device(self) -> torch.device:
        """The device holding the data."""
        return self.x.device

    def __len__(self) -> int:
        """Number of images."""
        return self.x.shape[0]

    def get(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The images and labels at ``idx`` (an index tensor on the device), normalised float32.

        On CUDA the images come back in channels_last memory format.
        """
        x = torch.addcmul(self._shift, self.x[idx].float(), self._scale)
        if x.is_cuda:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, self.y[idx]


@dataclass
class DataSplits:
    """The three splits of one dataset, with the facts the model needs."""

    train: DeviceDataset
    val: DeviceDataset
    test: DeviceDataset
    num_classes: int
    in_channels: int
    image_size: int
    name: str


def epoch_order(n: int, generator: torch.Generator, device: torch.device | str) -> torch.Tensor:
    """The permutation of ``range(n)`` for one epoch, drawn on ``device`` from ``generator``.

    The generator must live on the same device (``torch.Generator(device=device)``).
    """
    return torch.randperm(n, generator=generator, device=device)


def split_indices(n_pool: int, val_size: int, split_seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Train and val indices into a pool of ``n_pool`` images (CPU int64 tensors).

    Identical to ``random_split(range(n_pool), [n_pool - val_size, val_size],
    generator=torch.Generator().manual_seed(split_seed))``, as in the authors' code.
    """
    if val_size >= n_pool:
        raise DataError(f"val_size={val_size} leaves no training images (the training pool has {n_pool})")
    perm = torch.randperm(n_pool, generator=torch.Generator().manual_seed(split_seed))
    return perm[: n_pool - val_size], perm[n_pool - val_size:]


def _channel_stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact per-channel mean and (population) std of uint8 images, in [0, 1] units, float32."""
    values = torch.arange(256, dtype=torch.float64, device=x.device)
    means, stds = [], []
    for c in range(x.shape[1]):
        counts = torch.bincount(x[:, c].reshape(-1), minlength=256).double()
        total = counts.sum()
        mean = (counts * values).sum() / total
        var = (counts * (values - mean) ** 2).sum() / total
        means.append(mean / 255.0)
        stds.append(var.sqrt() / 255.0)
    mean_t, std_t = torch.stack(means).float(), torch.stack(stds).float()
    return mean_t, std_t.clamp_min(1e-6)  # a constant channel must not divide by zero


# ----------------------------------------------------------------------------- load_data
# Training-pool sizes of the official files (the synthetic pool is cfg.synthetic_size).
NOMINAL_POOL = {"cifar10": 50000, "cifar100": 50000, "fashion-mnist": 60000}


def check_sizes(cfg: Any) -> int | None:
    """The number of training images ``cfg`` trains on, checked without loading any file.

    Raises :class:`DataError` (val_size or train_subset too large) or ``ConfigError`` (a batch larger
    than the training set) with the messages ``load_data`` / ``train`` would give later, so that a
    sweep refuses such a config before any trial starts. Assumes the official sizes of CIFAR and
    Fashion-MNIST (files with fewer images are still caught when they are loaded); None for an
    unknown dataset.
    """
    pool = cfg.synthetic_size if cfg.dataset == "synthetic" else NOMINAL_POOL.get(cfg.dataset)
    if pool is None:
        return None
    if cfg.val_size >= pool:
        raise DataError(f"val_size={cfg.val_size} leaves no training images (the training pool has {pool})")
    n = pool - cfg.val_size
    if cfg.train_subset > n:
        raise DataError(f"train_subset={cfg.train_subset} is larger than the training split "
                        f"({n} images = {pool} - val_size {cfg.val_size})")
    n = cfg.train_subset or n
    require_batch_fits(cfg.batch_size, n)
    return n


def require_batch_fits(batch_size: int, n_train: int) -> None:
    """ConfigError unless one batch fits in the training set (shared by check_sizes and the trainer)."""
    from .config import ConfigError

    if batch_size > n_train:
        raise ConfigError(f"batch_size={batch_size} is larger than the training set ({n_train} images)")


def load_data(cfg: Any, device: torch.device | str) -> DataSplits:
    """Load ``cfg.dataset``, split its training pool into train/val, and put all three on ``device``.

    Uses ``cfg.dataset``, ``data_dir``, ``download``, ``val_size``, ``split_seed``, ``train_subset``
    and ``synthetic_size``. Raises :class:`DataError` (one line) for anything a user must fix.
    """
    device = torch.device(device)
    if cfg.dataset in ("cifar10", "cifar100"):
        pool_x, pool_y, test_x, test_y, num_classes = _load_cifar(cfg.dataset, Path(cfg.data_dir), cfg.download)
    elif cfg.dataset == "fashion-mnist":
        pool_x, pool_y, test_x, test_y, num_classes = _load_fashion_mnist(Path(cfg.data_dir))
    elif cfg.dataset == "synthetic":
        pool_x, pool_y, test_x, test_y, num_classes = make_synthetic(cfg.synthetic_size)
    else:
        raise DataError(f"unknown dataset {cfg.dataset!r}")

    train_idx, val_idx = split_indices(len(pool_y), cfg.val_size, cfg.split_seed)
    if cfg.train_subset > 0:
        if cfg.train_subset > len(train_idx):
            raise DataError(
                f"train_subset={cfg.train_subset} is larger than the training split "
                f"({len(train_idx)} images = {len(pool_y)} - val_size {cfg.val_size})"
            )
        train_idx = train_idx[: cfg.train_subset]

    train_x, train_y = pool_x[train_idx], pool_y[train_idx]
    mean, std = _channel_stats(train_x)

    def make(x: torch.Tensor, y: torch.Tensor) -> DeviceDataset:
        return DeviceDataset(x, y, mean, std, device=device)

    return DataSplits(
        train=make(train_x, train_y),
        val=make(pool_x[val_idx], pool_y[val_idx]),
        test=make(test_x, test_y),
        num_classes=num_classes,
        in_channels=pool_x.shape[1],
        image_size=pool_x.shape[2],
        name=cfg.dataset,
    )


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


# ----------------------------------------------------------------------------- CIFAR
_CIFAR = {
    # folder, train files, test file, meta file, labels key, label-names key, pretty name, url, md5
    "cifar10": dict(
        folder="cifar-10-batches-py",
        train=[f"data_batch_{i}" for i in range(1, 6)],
        test="test_batch",
        meta="batches.meta",
        labels="labels",
        names="label_names",
        pretty="CIFAR-10",
        url="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        md5="c58f30108f718f92721af3b95e74349a",
    ),
    "cifar100": dict(
        folder="cifar-100-python",
        train=["train"],
        test="test",
        meta="meta",
        labels="fine_labels",
        names="fine_label_names",
        pretty="CIFAR-100",
        url="https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
        md5="eb9058c3a382ffc7106e4002c42a8d85",
    ),
}


def _download_cifar(spec: dict, root: Path) -> None:
    """Fetch and extract the official archive into ``root`` (torchvision's URL and md5 check)."""
    from torchvision.datasets.utils import download_and_extract_archive

    created = [p for p in (root, *root.parents) if not p.exists()]  # deepest first
    before = set(root.iterdir()) if root.is_dir() else set()
    try:
        root.mkdir(parents=True, exist_ok=True)
        download_and_extract_archive(spec["url"], download_root=str(root), md5=spec["md5"])
    except Exception as e:  # network, disk, md5, tar errors: all the user can do is the same
        # leave nothing behind: a partial archive would only confuse the next attempt
        for leftover in (set(root.iterdir()) if root.is_dir() else set()) - before:
            if leftover.is_file():
                leftover.unlink(missing_ok=True)
        for d in created:
            try:
                d.rmdir()
            except OSError:
                pass
        raise DataError(f"cannot download {spec['pretty']} (offline?): {_one_line(e)}") from None


def _read_pickle(path: Path, pretty: str) -> Any:
    if not path.is_file():
        raise DataError(f"{pretty} file missing: {path}")
    try:
        with open(path, "rb") as f:
            return pickle.load(f, encoding="latin1")
    except Exception as e:  # pickle raises many types on garbage or truncation
        raise DataError(f"corrupt {pretty} file {path}: {_one_line(e)}") from None


def _read_cifar_batch(path: Path, spec: dict, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    d = _read_pickle(path, spec["pretty"])
    pretty = spec["pretty"]
    if not isinstance(d, dict) or "data" not in d or spec["labels"] not in d:
        keys = sorted(map(str, d)) if isinstance(d, dict) else type(d).__name__
        raise DataError(f"corrupt {pretty} file {path}: expected keys 'data' and {spec['labels']!r}, got {keys}")
    data, labels = d["data"], np.asarray(d[spec["labels"]])
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        got = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise DataError(f"corrupt {pretty} file {path}: 'data' must be uint8 (N, 3072), got {got}")
    if labels.shape != (data.shape[0],) or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(
            f"corrupt {pretty} file {path}: {data.shape[0]} images but labels of shape {labels.shape} ({labels.dtype})"
        )
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise DataError(
            f"corrupt {pretty} file {path}: labels must lie in [0, {num_classes}), got {labels.min()}..{labels.max()}"
        )
    return data, labels.astype(np.int64)


def _load_cifar(name: str, data_dir: Path, download: bool):
    spec = _CIFAR[name]
    folder = data_dir / spec["folder"]
    if not folder.is_dir():
        if not download:
            raise DataError(
                f"{spec['pretty']} not found in {folder} and download=false; "
                "set download=true or point data_dir at it"
            )
        _download_cifar(spec, data_dir)
        if not folder.is_dir():
            raise DataError(f"downloaded {spec['pretty']} archive did not contain {folder}")

    meta = _read_pickle(folder / spec["meta"], spec["pretty"])
    names = meta.get(spec["names"]) if isinstance(meta, dict) else None
    if not isinstance(names, list) or not names:
        raise DataError(f"corrupt {spec['pretty']} file {folder / spec['meta']}: no {spec['names']!r} list")
    num_classes = len(names)

    parts = [_read_cifar_batch(folder / f, spec, num_classes) for f in spec["train"]]
    train_x = np.concatenate([p[0] for p in parts])
    train_y = np.concatenate([p[1] for p in parts])
    test_x, test_y = _read_cifar_batch(folder / spec["test"], spec, num_classes)

    def to_tensors(x: np.ndarray, y: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.from_numpy(x).view(-1, 3, 32, 32), torch.from_numpy(y)

    return (*to_tensors(train_x, train_y), *to_tensors(test_x, test_y), num_classes)


def write_cifar(dir: str | Path, n_train: int = 500, n_test: int = 100, num_classes: int = 10,
                seed: int = 0, variant: str = "cifar10") -> Path:
    """Write a tiny, learnable dataset in the official CIFAR python format; return its folder.

    ``variant="cifar10"``: ``dir/cifar-10-batches-py`` with ``data_batch_1..5`` (splitting
    ``n_train``), ``test_batch`` and ``batches.meta``. ``variant="cifar100"``: ``dir/cifar-100-python``
    with ``train``, ``test`` and ``meta`` (fine and coarse labels). Images come from
    :func:`make_synthetic`'s class patterns, so a small model learns them.
    """
    spec = _CIFAR[variant]
    folder = Path(dir) / spec["folder"]
    folder.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(seed)
    x_all, y_all = _synthetic_images(n_train + n_test, num_classes, gen)
    x_all = x_all.reshape(len(x_all), 3072).numpy()
    y_all = y_all.tolist()

    def dump(name: str, obj: dict) -> None:
        with open(folder / name, "wb") as f:
            pickle.dump(obj, f, protocol=2)

    def batch(lo: int, hi: int, label: str) -> dict:
        d = {"batch_label": label, "data": x_all[lo:hi].copy(), spec["labels"]: y_all[lo:hi],
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


# ----------------------------------------------------------------------------- Fashion-MNIST
_FASHION_FILES = [
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
]


def _find_idx_file(folders: list[Path], name: str) -> Path | None:
    for folder in folders:
        for candidate in (folder / name, folder / name.removesuffix(".gz")):
            if candidate.is_file():
                return candidate
    return None


def _read_idx(path: Path) -> np.ndarray:
    """Parse an idx file (optionally gzipped): magic 0 0 0x08 ndim, big-endian int32 dims, uint8 data."""
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as f:
            raw = f.read()
    except Exception as e:
        raise DataError(f"corrupt Fashion-MNIST file {path}: {_one_line(e)}") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08 or raw[3] < 1:
        raise DataError(f"corrupt Fashion-MNIST file {path}: bad idx magic {raw[:4].hex() or 'empty'}")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"corrupt Fashion-MNIST file {path}: truncated header")
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">i4", count=ndim, offset=4))
    expected = header + math.prod(dims)
    if len(raw) != expected:
        raise DataError(f"corrupt Fashion-MNIST file {path}: {len(raw)} bytes, expected {expected} for shape {dims}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def _load_fashion_mnist(data_dir: Path):
    folders = [data_dir, data_dir / "fashion-mnist"]
    paths = [_find_idx_file(folders, name) for name in _FASHION_FILES]
    if any(p is None for p in paths):
        missing = [n for n, p in zip(_FASHION_FILES, paths) if p is None]
        raise DataError(
            f"Fashion-MNIST files not found in {data_dir} (or {data_dir / 'fashion-mnist'}): "
            f"expected {', '.join(_FASHION_FILES)} (missing: {', '.join(missing)}); no download is offered"
        )
    arrays = [_read_idx(p) for p in paths]
    out = []
    for (images, labels), (img_path, lab_path) in zip((arrays[0:2], arrays[2:4]), (paths[0:2], paths[2:4])):
        if images.ndim != 3 or images.shape[1:] != (28, 28):
            raise DataError(f"corrupt Fashion-MNIST file {img_path}: expected (N, 28, 28) images, got {images.shape}")
        if labels.shape != (images.shape[0],):
            raise DataError(f"corrupt Fashion-MNIST file {lab_path}: {labels.shape} labels for {images.shape[0]} images")
        if labels.size and labels.max() >= 10:
            raise DataError(f"corrupt Fashion-MNIST file {lab_path}: label {labels.max()} out of range 0..9")
        x = torch.from_numpy(images.copy()).unsqueeze(1)  # (N, 1, 28, 28)
        x = F.pad(x, (2, 2, 2, 2))  # zero border -> (N, 1, 32, 32), the VGG input size
        out += [x, torch.from_numpy(labels.astype(np.int64))]
    return (*out, 10)


# ----------------------------------------------------------------------------- synthetic
_SYNTHETIC_SEED = 20240601  # the synthetic data never changes; the split still follows split_seed


def _synthetic_images(n: int, num_classes: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` learnable uint8 (n, 3, 32, 32) images: per class a low-frequency colour pattern + noise."""
    proto_gen = torch.Generator().manual_seed(_SYNTHETIC_SEED)  # class patterns: the same in every set
    coords = torch.linspace(-math.pi, math.pi, 32)
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")
    freq = torch.randint(0, 3, (num_classes, 3, 2), generator=proto_gen).float()  # 0..2 cycles per axis
    phase = torch.rand(num_classes, 3, 1, 1, generator=proto_gen) * 2 * math.pi
    colour = torch.rand(num_classes, 3, 1, 1, generator=proto_gen) * 2 - 1
    wave = torch.sin(freq[..., 0, None, None] * xx + freq[..., 1, None, None] * yy + phase)
    protos = 0.5 * colour + 0.5 * wave  # (K, 3, 32, 32) in [-1, 1]

    y = torch.randint(0, num_classes, (n,), generator=gen)
    gain = 0.6 + 0.8 * torch.rand(n, 1, 1, 1, generator=gen)  # per-image contrast
    noise = torch.randn(n, 3, 32, 32, generator=gen)
    x = 128 + 50 * gain * protos[y] + 70 * noise
    return x.round().clamp(0, 255).to(torch.uint8), y


def make_synthetic(size: int):
    """The synthetic dataset: ``size`` training-pool and ``size // 4`` test images, 10 classes.

    Deterministic (a fixed seed); each class is a distinct low-frequency colour pattern under
    heavy pixel noise, so a tiny model gets clearly above chance within an epoch or two.
    Returns ``(pool_x, pool_y, test_x, test_y, num_classes)``.
    """
    gen = torch.Generator().manual_seed(_SYNTHETIC_SEED + 1)
    x, y = _synthetic_images(size + max(1, size // 4), 10, gen)
    return x[:size], y[:size], x[size:], y[size:], 10


# ----------------------------------------------------------------------------- augmentation
class Augmenter:
    """Random flip / rotation / translation of a whole normalised batch in one affine warp.

    Per sample: a horizontal flip with probability ``cfg.hflip_p``; a rotation uniform in
    ``+-cfg.rotate_degrees`` with probability ``cfg.rotate_p``; a translation uniform in
    ``+-cfg.translate_frac`` of the side, independently per axis, with probability
    ``cfg.translate_p``. Applied in that order to the content, by one ``affine_grid`` +
    ``grid_sample`` (bilinear, zero padding = the mean colour of normalised images,
    align_corners=False). Random numbers come from the augmenter's own generator on the device,
    a fixed six per sample per call, so the stream does not depend on the probabilities.

    Call it on training batches only; the training loop decides when.
    """

    def __init__(self, cfg: Any, device: torch.device | str, seed: int):
        """Read the probabilities and magnitudes from ``cfg``; seed a generator on ``device``."""
        self.device = torch.device(device)
        self.hflip_p = float(cfg.hflip_p)
        self.rotate_p = float(cfg.rotate_p)
        self.rotate_degrees = float(cfg.rotate_degrees)
        self.translate_p = float(cfg.translate_p)
        self.translate_frac = float(cfg.translate_frac)
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(seed)

    @property
    def is_identity(self) -> bool:
        """True when no sample can ever change (then ``__call__`` returns its input as is)."""
        no_rotate = self.rotate_p == 0 or self.rotate_degrees == 0
        no_translate = self.translate_p == 0 or self.translate_frac == 0
        return self.hflip_p == 0 and no_rotate and no_translate

    def draw(self, n: int) -> dict[str, torch.Tensor]:
        """Draw the parameters for ``n`` samples: ``flip`` (bool), ``angle`` (degrees), ``tx``, ``ty``
        (fractions of the width / height; positive moves content right / down)."""
        r = torch.rand(n, 6, generator=self.generator, device=self.device)
        rot_on = (r[:, 1] < self.rotate_p).float()
        tr_on = (r[:, 3] < self.translate_p).float()
        return {
            "flip": r[:, 0] < self.hflip_p,
            "angle": (2 * r[:, 2] - 1) * self.rotate_degrees * rot_on,
            "tx": (2 * r[:, 4] - 1) * self.translate_frac * tr_on,
            "ty": (2 * r[:, 5] - 1) * self.translate_frac * tr_on,
        }

    @staticmethod
    def warp(x: torch.Tensor, flip: torch.Tensor, angle: torch.Tensor, tx: torch.Tensor,
             ty: torch.Tensor) -> torch.Tensor:
        """Apply flip, then rotation by ``angle`` degrees, then translation, to a batch (N, C, H, W)."""
        n, _, h, w = x.shape
        a = torch.deg2rad(angle.float())
        c, s = torch.cos(a), torch.sin(a)
        f = torch.where(flip, -1.0, 1.0).to(c)
        # affine_grid maps output to input coordinates (normalised to [-1, 1] per axis):
        # p_in = F R(-angle) (p_out - t), written in pixel units then rescaled for the aspect ratio.
        m00, m01 = f * c, f * s * (h / w)
        m10, m11 = -s * (w / h), c
        t0, t1 = 2 * tx.float(), 2 * ty.float()
        theta = torch.stack([
            torch.stack([m00, m01, -(m00 * t0 + m01 * t1)], dim=1),
            torch.stack([m10, m11, -(m10 * t0 + m11 * t1)], dim=1),
        ], dim=1).to(x.dtype)  # (N, 2, 3)
        grid = F.affine_grid(theta, [n, x.shape[1], h, w], align_corners=False)
        out = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        if x.is_cuda:
            out = out.contiguous(memory_format=torch.channels_last)
        return out

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Augment a normalised batch (N, C, H, W); returns ``x`` itself when nothing can change."""
        if self.is_identity or x.shape[0] == 0:
            return x
        return self.warp(x, **self.draw(x.shape[0]))

    def state_dict(self) -> dict[str, torch.Tensor]:
        """``{"generator": ByteTensor}``: the generator state, for an exact resume."""
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restore a state from :meth:`state_dict`."""
        self.generator.set_state(state["generator"].cpu())
