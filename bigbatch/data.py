"""Datasets resident on the training device, the train/val split, and batched augmentation on the device.

The whole dataset lives on the device as uint8 (N, C, H, W) plus int64 labels; a batch is a gather
by an index tensor followed by one float conversion and normalisation (airbench / nanoGPT style:
no DataLoader, no worker processes, no per-image Python loop). Augmentation warps a whole
normalised batch with a single ``affine_grid`` + ``grid_sample``, as torchvision's transforms did
image by image in the authors' code.

Files: :mod:`torchvision.datasets` does the library work. ``CIFAR10`` / ``CIFAR100`` download the
official archive, check every file's md5 and parse the pickles (with :mod:`pickle`, which can run
code: the md5 check is what makes that safe). ``FashionMNIST`` downloads and md5-checks the idx
archives into ``data_dir/FashionMNIST/raw``; a folder that already holds the four ``.gz`` files
(``data_dir`` itself or ``data_dir/fashion-mnist``) is read as it is, with torchvision's idx reader.

``prepare_data(cfg)`` does the file work alone (check, or download once, and fingerprint; nothing on a
device): the sweeps call it on their driver before Ray starts and give the trials ``download=false``.

Tests: the CIFAR files that ``tests/fixtures.py`` writes in the official format are not the official
files, so torchvision's md5 check refuses them. The fixture therefore patches torchvision's expected
md5 lists (``CIFAR10.train_list`` / ``test_list`` / ``meta``) with the md5 of the files it wrote, in
the test process only (pytest's monkeypatch): the tests run this module's one code path, md5 check
included, and nothing here can skip the check.

Normalisation uses fixed per-dataset constants (:data:`NORMALISATION`), as the authors' code did,
never statistics of the split: every val_size / train_subset sees the same mean and std.
"""

from __future__ import annotations

import math
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F

from .datasets import DATASETS, dataset_spec

__all__ = [
    "DataError",
    "DataSplits",
    "DeviceDataset",
    "Augmenter",
    "NORMALISATION",
    "load_data",
    "make_synthetic",
    "epoch_order",
    "split_indices",
    "check_sizes",
    "require_batch_fits",
    "DatasetInfo",
    "prepare_data",
    "dataset_shape",
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

        The images come back in channels_last memory format, the model's (bigbatch.train.setup).
        """
        x = torch.addcmul(self._shift, self.x[idx].float(), self._scale)
        return x.contiguous(memory_format=torch.channels_last), self.y[idx]


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


# Per-channel (mean, std) in [0, 1] units, as torchvision's Normalize takes them, and the training-pool sizes of
# the official files: read from each dataset's spec (bigbatch.datasets, where the constants are explained).
NORMALISATION: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {n: (d.mean, d.std) for n, d in DATASETS.items()}
NOMINAL_POOL = {n: d.pool for n, d in DATASETS.items() if d.pool is not None}


def dataset_shape(cfg: Any) -> tuple[int, int, int]:
    """(num_classes, in_channels, image_size) of ``cfg.dataset``, from its spec (no file read)."""
    return dataset_spec(cfg.dataset).shape


def check_sizes(cfg: Any) -> int | None:
    """The number of training images ``cfg`` trains on, checked without loading any file.

    Raises :class:`DataError` (val_size or train_subset too large) or ``ConfigError`` (a batch larger
    than the training set) with the messages ``load_data`` / ``train`` would give later, so that a
    sweep refuses such a config before any trial starts. Assumes the official sizes of CIFAR and
    Fashion-MNIST; None for an unknown dataset.
    """
    spec = DATASETS.get(cfg.dataset)
    if spec is None:
        return None
    pool = spec.pool or cfg.synthetic_size
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


@dataclass(frozen=True)
class DatasetInfo:
    """What :func:`prepare_data` found: the dataset's files are present and valid (JSON-able fields)."""

    name: str  # cfg.dataset
    root: str  # the data directory ("" for synthetic)
    source: str  # where the files come from: torchvision's download URL, or "synthetic"
    n_pool: int  # training-pool images (train + val before the split)
    n_test: int
    num_classes: int
    digest: str  # md5 of every image and label (pool, then test), hex


def prepare_data(cfg: Any) -> DatasetInfo:
    """Make ``cfg.dataset`` ready in ``cfg.data_dir``, once, before any training process reads it.

    Reads the files (md5-checked by torchvision) or, with ``cfg.download``, downloads them first; loads
    them into CPU memory only to check and fingerprint them (nothing goes to a device). Raises
    :class:`DataError` (one line naming the dataset, the directory and what to do) when they cannot
    be had. The sweeps call it on the driver, then give their trials ``download=false``.
    """
    import hashlib

    spec, root = _spec(cfg), Path(cfg.data_dir)
    pool_x, pool_y, test_x, test_y = spec.load(root, cfg.download, cfg)
    source, num_classes = spec.source(), spec.num_classes
    h = hashlib.md5()
    for t in (pool_x, pool_y, test_x, test_y):
        h.update(t.contiguous().numpy().tobytes())
    return DatasetInfo(cfg.dataset, "" if cfg.dataset == "synthetic" else str(root), source, len(pool_y), len(test_y),
                       num_classes, h.hexdigest())


def load_data(cfg: Any, device: torch.device | str) -> DataSplits:
    """Load ``cfg.dataset``, split its training pool into train/val, and put all three on ``device``.

    Uses ``cfg.dataset``, ``data_dir``, ``download``, ``val_size``, ``split_seed``, ``train_subset``
    and ``synthetic_size``. Raises :class:`DataError` (one line) for anything a user must fix.
    """
    spec = _spec(cfg)
    pool_x, pool_y, test_x, test_y = spec.load(Path(cfg.data_dir), cfg.download, cfg)
    num_classes = spec.num_classes
    train_idx, val_idx = split_indices(len(pool_y), cfg.val_size, cfg.split_seed)
    if cfg.train_subset > len(train_idx):
        raise DataError(f"train_subset={cfg.train_subset} is larger than the training split "
                        f"({len(train_idx)} images = {len(pool_y)} - val_size {cfg.val_size})")
    if cfg.train_subset > 0:
        train_idx = train_idx[: cfg.train_subset]

    mean, std = torch.tensor(spec.mean), torch.tensor(spec.std)

    def make(x: torch.Tensor, y: torch.Tensor) -> DeviceDataset:
        return DeviceDataset(x, y, mean, std, device=device)

    return DataSplits(
        train=make(pool_x[train_idx], pool_y[train_idx]),
        val=make(pool_x[val_idx], pool_y[val_idx]),
        test=make(test_x, test_y),
        num_classes=num_classes,
        in_channels=pool_x.shape[1],
        image_size=pool_x.shape[2],
        name=cfg.dataset,
    )


def _spec(cfg: Any):
    try:
        return dataset_spec(cfg.dataset)
    except ValueError as e:
        raise DataError(str(e)) from None


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def _download(pretty: str, root: Path, fetch: Callable[[], Any]) -> None:
    """Run torchvision's download (URL, md5 check, extraction) into ``root``; on failure, a one-line
    DataError and nothing left behind (a partial archive would only confuse the next attempt)."""
    created = [p for p in (root, *root.parents) if not p.exists()]  # deepest first
    before = set(root.iterdir()) if root.is_dir() else set()
    try:
        fetch()
    except Exception as e:  # network, disk, md5, archive errors: all the user can do is the same
        if created:
            shutil.rmtree(created[-1], ignore_errors=True)
        else:
            for new in set(root.iterdir()) - before:
                shutil.rmtree(new, ignore_errors=True) if new.is_dir() else new.unlink(missing_ok=True)
        raise DataError(f"cannot download {pretty} (offline?) into {root}: {_one_line(e)}; "
                        "fetch the files elsewhere and point data_dir at them with download=false") from None


# ----------------------------------------------------------------------------- CIFAR
def load_cifar(name: str, root: Path, download: bool):
    """CIFAR-10 or -100 from ``root`` (torchvision's folder; downloaded first with ``download``), md5-checked:
    (pool_x, pool_y, test_x, test_y), uint8 (N, 3, 32, 32) and int64."""
    from torchvision.datasets import CIFAR10, CIFAR100
    from torchvision.datasets.utils import check_integrity

    cls, pretty = {"cifar10": (CIFAR10, "CIFAR-10"), "cifar100": (CIFAR100, "CIFAR-100")}[name]
    folder = root / cls.base_folder
    if not folder.is_dir():
        if not download:
            raise DataError(f"{pretty} not found in {folder} and download=false; "
                            "set download=true or point data_dir at it")
        _download(pretty, root, lambda: cls(str(root), train=False, download=True))
    try:
        train, test = cls(str(root), train=True), cls(str(root), train=False)  # md5-checks every file
    except RuntimeError:  # torchvision: "Dataset not found or corrupted": name the file
        files = [*cls.train_list, *cls.test_list, (cls.meta["filename"], cls.meta["md5"])]
        bad = next((folder / f for f, md5 in files if not check_integrity(str(folder / f), md5)), folder)
        problem = f"corrupt {pretty} file {bad} (md5 mismatch)" if bad.exists() else f"{pretty} file missing: {bad}"
        raise DataError(f"{problem}; delete {folder} and set download=true to fetch it again") from None

    def images(ds) -> torch.Tensor:
        return torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()  # torchvision holds (N, H, W, C)

    return images(train), torch.tensor(train.targets), images(test), torch.tensor(test.targets)


# ----------------------------------------------------------------------------- Fashion-MNIST
def load_fashion_mnist(root: Path, download: bool, names: tuple[str, ...]):
    """Fashion-MNIST's four idx ``names`` (train images, train labels, test images, test labels) from ``root``,
    ``root/fashion-mnist`` or torchvision's ``root/FashionMNIST/raw`` (downloaded there with ``download``):
    (pool_x, pool_y, test_x, test_y), uint8 (N, 1, 32, 32) zero-padded from 28x28, and int64."""
    from torchvision.datasets import FashionMNIST
    from torchvision.datasets.mnist import read_image_file, read_label_file
    from torchvision.datasets.utils import extract_archive
    torchvision_dir = root / "FashionMNIST" / "raw"  # where FashionMNIST(root, download=True) puts them
    folders = [root, root / "fashion-mnist", torchvision_dir]
    folder = next((d for d in folders if all((d / n).is_file() for n in names)), None)
    if folder is None:
        if not download:
            raise DataError(f"Fashion-MNIST files not found in {root} (nor in {root / 'fashion-mnist'} or "
                            f"{torchvision_dir}): expected {', '.join(names)}; set download=true or point data_dir at them")
        _download("Fashion-MNIST", root, lambda: FashionMNIST(str(root), train=False, download=True))
        folder = torchvision_dir
    tensors = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, read in zip(names, (read_image_file, read_label_file) * 2):
            try:
                tensors.append(read(extract_archive(str(folder / name), tmp)))
            except Exception as e:  # gzip, header or size errors
                raise DataError(f"corrupt Fashion-MNIST file {folder / name}: {_one_line(e)}; replace it with the "
                                f"official file, or delete {folder} and set download=true") from None
    train_x, train_y, test_x, test_y = tensors
    for x, y in ((train_x, train_y), (test_x, test_y)):
        if x.shape[1:] != (28, 28) or y.shape != x.shape[:1] or y.max() > 9:
            raise DataError(f"corrupt Fashion-MNIST files in {folder}: {tuple(x.shape)} images, {tuple(y.shape)} "
                            f"labels up to {y.max()}, expected (N, 28, 28), (N,), 0..9; replace them with the official files")

    def pad(x: torch.Tensor) -> torch.Tensor:
        return F.pad(x.unsqueeze(1), (2, 2, 2, 2))  # zero border -> (N, 1, 32, 32), the VGG input size

    return pad(train_x), train_y, pad(test_x), test_y


# ----------------------------------------------------------------------------- synthetic
_SYNTHETIC_SEED = 20240601  # the synthetic data never changes; the split still follows split_seed


def make_synthetic(size: int):
    """The synthetic dataset: ``size`` training-pool and ``max(1, size // 4)`` test images, 10 classes.

    Deterministic (a fixed seed); each class is a distinct low-frequency colour pattern under
    heavy pixel noise, so a tiny model gets clearly above chance within an epoch or two.
    Returns ``(pool_x, pool_y, test_x, test_y, num_classes)``: uint8 (N, 3, 32, 32) and int64 (N,).
    """
    proto_gen = torch.Generator().manual_seed(_SYNTHETIC_SEED)  # the class patterns
    coords = torch.linspace(-math.pi, math.pi, 32)
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")
    freq = torch.randint(0, 3, (10, 3, 2), generator=proto_gen).float()  # 0..2 cycles per axis
    phase = torch.rand(10, 3, 1, 1, generator=proto_gen) * 2 * math.pi
    colour = torch.rand(10, 3, 1, 1, generator=proto_gen) * 2 - 1
    wave = torch.sin(freq[..., 0, None, None] * xx + freq[..., 1, None, None] * yy + phase)
    protos = 0.5 * colour + 0.5 * wave  # (10, 3, 32, 32) in [-1, 1]

    gen = torch.Generator().manual_seed(_SYNTHETIC_SEED + 1)
    n = size + max(1, size // 4)
    y = torch.randint(0, 10, (n,), generator=gen)
    gain = 0.6 + 0.8 * torch.rand(n, 1, 1, 1, generator=gen)  # per-image contrast
    noise = torch.randn(n, 3, 32, 32, generator=gen)
    x = (128 + 50 * gain * protos[y] + 70 * noise).round().clamp(0, 255).to(torch.uint8)
    return x[:size], y[:size], x[size:], y[size:], 10


# ----------------------------------------------------------------------------- augmentation
class Augmenter:
    """torchvision's ``RandomHorizontalFlip``, ``RandomRotation``, ``RandomAffine(translate=...)`` on a
    whole normalised batch, in one affine warp on the device.

    Per sample: a horizontal flip with probability ``cfg.hflip_p``; then a rotation about the image
    centre by an angle uniform in ``+-cfg.rotate_degrees`` (counter-clockwise positive, as torchvision)
    with probability ``cfg.rotate_p``; then, with probability ``cfg.translate_p``, a shift by whole
    pixels, ``round(uniform(-m, m))`` with ``m = cfg.translate_frac`` times the width (x) or height (y),
    as ``RandomAffine`` draws it. Sampling is ``cfg.augment_interpolation`` (nearest, torchvision's
    default, or bilinear); pixels from outside the image are 0 (the mean colour of normalised images,
    torchvision's fill 0 after Normalize). The three steps compose into one ``affine_grid`` +
    ``grid_sample`` plus a mask of the pixels the integer shift brought in from outside; under nearest
    sampling this equals torchvision's three resamplings (tests/test_data.py compares them).
    Random numbers come from the augmenter's own generator on the device, a fixed six per sample per
    call, so the stream does not depend on the probabilities.

    Call it on training batches only; the training loop decides when.
    """

    def __init__(self, cfg: Any, device: torch.device | str, seed: int):
        """Read the probabilities, magnitudes and sampling mode from ``cfg``; seed a generator on ``device``."""
        self.device = torch.device(device)
        self.hflip_p = float(cfg.hflip_p)
        self.rotate_p = float(cfg.rotate_p)
        self.rotate_degrees = float(cfg.rotate_degrees)
        self.translate_p = float(cfg.translate_p)
        self.translate_frac = float(cfg.translate_frac)
        self.mode = cfg.augment_interpolation
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(seed)

    @property
    def is_identity(self) -> bool:
        """True when no sample can ever change (then ``__call__`` returns its input as is)."""
        no_rotate = self.rotate_p == 0 or self.rotate_degrees == 0
        no_translate = self.translate_p == 0 or self.translate_frac == 0
        return self.hflip_p == 0 and no_rotate and no_translate

    def draw(self, n: int, height: int, width: int) -> dict[str, torch.Tensor]:
        """Draw the parameters for ``n`` images of ``height`` x ``width``: ``flip`` (bool), ``angle``
        (degrees, counter-clockwise), ``tx``, ``ty`` (whole pixels; positive moves content right / down)."""
        r = torch.rand(n, 6, generator=self.generator, device=self.device)
        rot_on = (r[:, 1] < self.rotate_p).float()
        tr_on = (r[:, 3] < self.translate_p).float()
        return {
            "flip": r[:, 0] < self.hflip_p,
            "angle": (2 * r[:, 2] - 1) * self.rotate_degrees * rot_on,
            "tx": torch.round((2 * r[:, 4] - 1) * self.translate_frac * width) * tr_on,
            "ty": torch.round((2 * r[:, 5] - 1) * self.translate_frac * height) * tr_on,
        }

    @staticmethod
    def warp(x: torch.Tensor, flip: torch.Tensor, angle: torch.Tensor, tx: torch.Tensor, ty: torch.Tensor,
             mode: str = "nearest") -> torch.Tensor:
        """Flip, then rotate by ``angle`` degrees, then shift by ``tx``, ``ty`` whole pixels, a batch (N, C, H, W)."""
        n, _, h, w = x.shape
        a = torch.deg2rad(angle.float())
        c, s = torch.cos(a), torch.sin(a)
        f = torch.where(flip, -1.0, 1.0).to(c)
        tx, ty = tx.float(), ty.float()
        # affine_grid maps each output pixel p to the input point it samples; in pixel units about the
        # centre (y down) p_in = F R (p - t), R = [[c, -s], [s, c]] (torchvision's inverse rotation),
        # F the flip; rescaled here to affine_grid's coordinates, [-1, 1] per axis.
        m00, m01 = f * c, -f * s * (h / w)
        m10, m11 = s * (w / h), c
        t0, t1 = 2 * tx / w, 2 * ty / h
        theta = torch.stack([
            torch.stack([m00, m01, -(m00 * t0 + m01 * t1)], dim=1),
            torch.stack([m10, m11, -(m10 * t0 + m11 * t1)], dim=1),
        ], dim=1).to(x.dtype)  # (N, 2, 3)
        grid = F.affine_grid(theta, [n, x.shape[1], h, w], align_corners=False)
        out = F.grid_sample(x, grid, mode=mode, padding_mode="zeros", align_corners=False)
        # the shift comes last: where it brought pixels in from outside the rotated image, they are fill (0)
        cols = torch.arange(w, device=x.device) - tx[:, None]
        rows = torch.arange(h, device=x.device) - ty[:, None]
        inside = ((rows >= 0) & (rows < h))[:, :, None] & ((cols >= 0) & (cols < w))[:, None, :]
        out = out.masked_fill(~inside[:, None], 0.0)
        return out.contiguous(memory_format=torch.channels_last)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Augment a normalised batch (N, C, H, W); returns ``x`` itself when nothing can change."""
        if self.is_identity or x.shape[0] == 0:
            return x
        n, _, h, w = x.shape
        return self.warp(x, **self.draw(n, h, w), mode=self.mode)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """``{"generator": ByteTensor}``: the generator state, for an exact resume."""
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restore a state from :meth:`state_dict`."""
        self.generator.set_state(state["generator"].cpu())
