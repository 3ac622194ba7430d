"""bigbatch.data: loaders, split, device batches, augmentation. Runs in a few seconds on 2 CPU cores."""

import pickle
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from bigbatch.config import RunConfig
from bigbatch.data import (
    Augmenter,
    DataError,
    DeviceDataset,
    epoch_order,
    load_data,
    split_indices,
    write_cifar,
)

FASHION_DIR = Path("/work/shared/data/fashion-mnist")
NO_AUG = dict(hflip_p=0.0, rotate_p=0.0, translate_p=0.0)


def cifar_cfg(tmp_path, **kw):
    return RunConfig(data_dir=str(tmp_path), download=False, val_size=100, **kw)


def all_of(ds):
    return ds.get(torch.arange(len(ds), device=ds.device))


# ----------------------------------------------------------------------------- CIFAR
def test_write_cifar_official_layout(tmp_path):
    folder = write_cifar(tmp_path, n_train=500, n_test=100)
    assert folder == tmp_path / "cifar-10-batches-py"
    names = sorted(p.name for p in folder.iterdir())
    assert names == ["batches.meta"] + [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    with open(folder / "data_batch_1", "rb") as f:
        d = pickle.load(f, encoding="latin1")
    assert d["data"].dtype.name == "uint8" and d["data"].shape == (100, 3072) and len(d["labels"]) == 100


def test_load_cifar10_shapes_dtypes_split(tmp_path):
    write_cifar(tmp_path, n_train=500, n_test=100)
    s = load_data(cifar_cfg(tmp_path), "cpu")
    assert (len(s.train), len(s.val), len(s.test)) == (400, 100, 100)
    assert (s.num_classes, s.in_channels, s.image_size, s.name) == (10, 3, 32, 'cifar10')
    for ds in (s.train, s.val, s.test):
        assert ds.x.dtype == torch.uint8 and ds.x.shape[1:] == (3, 32, 32)
        assert ds.y.dtype == torch.int64 and 0 <= ds.y.min() and ds.y.max() < 10
        assert ds.mean.dtype == ds.std.dtype == torch.float32 and ds.mean.shape == (3,)
    x, y = s.train.get(torch.tensor([0, 5, 7]))
    assert x.dtype == torch.float32 and x.shape == (3, 3, 32, 32) and y.tolist() == s.train.y[[0, 5, 7]].tolist()


def test_split_is_random_split_and_deterministic(tmp_path):
    write_cifar(tmp_path, n_train=500, n_test=100)
    train_idx, val_idx = split_indices(500, 100, 42)
    ref = torch.utils.data.random_split(range(500), [400, 100], generator=torch.Generator().manual_seed(42))
    assert train_idx.tolist() == list(ref[0].indices) and val_idx.tolist() == list(ref[1].indices)
    # the loaded splits are the pool at those indices, and reloading gives the same split
    pool = torch.cat([s for s in _pool(tmp_path)])
    a = load_data(cifar_cfg(tmp_path, split_seed=42), "cpu")
    b = load_data(cifar_cfg(tmp_path, split_seed=42), "cpu")
    c = load_data(cifar_cfg(tmp_path, split_seed=7), "cpu")
    assert torch.equal(a.train.x, pool[train_idx]) and torch.equal(a.val.x, pool[val_idx])
    assert torch.equal(a.train.x, b.train.x) and torch.equal(a.val.y, b.val.y)
    assert not torch.equal(a.train.x, c.train.x)


def _pool(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    for i in range(1, 6):
        with open(folder / f"data_batch_{i}", "rb") as f:
            yield torch.from_numpy(pickle.load(f, encoding="latin1")["data"]).view(-1, 3, 32, 32)


def test_train_subset_and_bad_sizes(tmp_path):
    write_cifar(tmp_path, n_train=500, n_test=100)
    full = load_data(cifar_cfg(tmp_path), "cpu")
    sub = load_data(cifar_cfg(tmp_path, train_subset=50), "cpu")
    assert len(sub.train) == 50 and torch.equal(sub.train.x, full.train.x[:50])
    assert torch.equal(sub.val.x, full.val.x)
    with pytest.raises(DataError, match="val_size=500.*500"):
        load_data(cifar_cfg(tmp_path).replace(val_size=500), "cpu")
    with pytest.raises(DataError, match="train_subset=401.*400"):
        load_data(cifar_cfg(tmp_path, train_subset=401), "cpu")


def test_cifar100_variant(tmp_path):
    folder = write_cifar(tmp_path, n_train=300, n_test=50, num_classes=100, variant="cifar100")
    assert folder.name == "cifar-100-python"
    s = load_data(cifar_cfg(tmp_path, dataset="cifar100"), "cpu")
    assert (len(s.train), len(s.val), len(s.test), s.num_classes) == (200, 100, 50, 100)
    assert s.train.y.max() < 100 and s.name == "cifar100"


def test_missing_without_download(tmp_path):
    with pytest.raises(DataError) as e:
        load_data(cifar_cfg(tmp_path / "nowhere"), "cpu")
    msg = str(e.value)
    assert str(tmp_path / "nowhere" / "cifar-10-batches-py") in msg and "download=false" in msg
    assert "\n" not in msg


def test_download_failure_is_one_line(tmp_path, monkeypatch):
    import torchvision.datasets.utils as tvu

    calls = []

    def offline(url, download_root, **kw):
        calls.append((url, kw.get("md5")))
        raise OSError("[Errno -3] Temporary failure\nin name resolution")

    monkeypatch.setattr(tvu, "download_and_extract_archive", offline)
    with pytest.raises(DataError, match=r"^cannot download CIFAR-10 \(offline\?\): .*name resolution") as e:
        load_data(cifar_cfg(tmp_path).replace(download=True), "cpu")
    assert "\n" not in str(e.value)
    assert calls == [("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz", "c58f30108f718f92721af3b95e74349a")]


@pytest.mark.parametrize("damage", ["truncate", "garbage", "wrong_shape", "missing"])
def test_corrupt_cifar_file(tmp_path, damage):
    folder = write_cifar(tmp_path, n_train=500, n_test=100)
    path = folder / "data_batch_3"
    if damage == "truncate":
        path.write_bytes(path.read_bytes()[:1000])
    elif damage == "garbage":
        path.write_bytes(b"not a pickle at all")
    elif damage == "wrong_shape":
        with open(path, "rb") as f:
            d = pickle.load(f, encoding="latin1")
        d["data"] = d["data"][:, :1024]
        with open(path, "wb") as f:
            pickle.dump(d, f)
    else:
        path.unlink()
    with pytest.raises(DataError) as e:
        load_data(cifar_cfg(tmp_path), "cpu")
    assert str(path) in str(e.value) and "\n" not in str(e.value)


# ----------------------------------------------------------------------------- other datasets
@pytest.mark.skipif(not FASHION_DIR.is_dir(), reason=f"Fashion-MNIST not present in {FASHION_DIR}")
def test_fashion_mnist():
    for data_dir in (FASHION_DIR, FASHION_DIR.parent):  # the folder itself, or its parent
        s = load_data(RunConfig(dataset="fashion-mnist", data_dir=str(data_dir), val_size=10000), "cpu")
        assert (len(s.train), len(s.val), len(s.test)) == (50000, 10000, 10000)
    assert (s.num_classes, s.in_channels, s.image_size) == (10, 1, 32)
    assert s.train.x.shape[1:] == (1, 32, 32) and s.train.x.dtype == torch.uint8
    border = torch.ones(32, 32, dtype=torch.bool)
    border[2:30, 2:30] = False
    assert s.train.x[:, 0, border].max() == 0 and s.test.x[:, 0, border].max() == 0
    assert s.train.x[:, 0, 2:30, 2:30].float().mean() > 50  # real content inside the padding
    assert sorted(s.test.y.unique().tolist()) == list(range(10))


def test_fashion_mnist_missing(tmp_path):
    with pytest.raises(DataError, match=f"Fashion-MNIST files not found in {tmp_path}.*train-images-idx3-ubyte.gz"):
        load_data(RunConfig(dataset="fashion-mnist", data_dir=str(tmp_path)), "cpu")


def test_synthetic_deterministic_and_learnable():
    cfg = RunConfig(dataset="synthetic", synthetic_size=1024, val_size=256)
    a, b = load_data(cfg, "cpu"), load_data(cfg, "cpu")
    assert (len(a.train), len(a.val), len(a.test)) == (768, 256, 256)
    assert torch.equal(a.train.x, b.train.x) and torch.equal(a.test.y, b.test.y)
    assert a.train.x.shape[1:] == (3, 32, 32) and a.num_classes == 10
    # a tiny conv net, 2 epochs of SGD, is clearly above chance (10 %)
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(4),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10),
    )
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    gen = torch.Generator().manual_seed(0)
    for _ in range(2):
        order = epoch_order(len(a.train), gen, "cpu")
        for i in range(0, len(order) - 31, 32):
            x, y = a.train.get(order[i:i + 32])
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
    xv, yv = all_of(a.val)
    with torch.no_grad():
        acc = (model(xv).argmax(1) == yv).float().mean().item()
    assert acc > 0.3


def test_normalisation_over_train_split(tmp_path):
    write_cifar(tmp_path, n_train=500, n_test=100)
    s = load_data(cifar_cfg(tmp_path), "cpu")
    x, _ = all_of(s.train)
    assert torch.allclose(x.mean((0, 2, 3)), torch.zeros(3), atol=1e-4)
    assert torch.allclose(x.std((0, 2, 3), unbiased=False), torch.ones(3), atol=1e-4)
    # val/test share the train statistics; get() is (x / 255 - mean) / std
    assert torch.equal(s.test.mean, s.train.mean) and torch.equal(s.val.std, s.train.std)
    xt, _ = s.test.get(torch.tensor([3]))
    ref = (s.test.x[3:4].float() / 255 - s.train.mean.view(1, 3, 1, 1)) / s.train.std.view(1, 3, 1, 1)
    assert torch.allclose(xt, ref, atol=1e-5)


def test_epoch_order():
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    a, b = epoch_order(100, g1, "cpu"), epoch_order(100, g2, "cpu")
    assert torch.equal(a, b) and sorted(a.tolist()) == list(range(100))
    assert not torch.equal(epoch_order(100, g1, "cpu"), a)


# ----------------------------------------------------------------------------- augmentation
def aug(seed=0, **kw):
    return Augmenter(RunConfig(**{**NO_AUG, **kw}), "cpu", seed)


def batch(n=8, seed=0):
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def test_identity_fast_path_and_identity_warp():
    x = batch()
    assert aug()(x) is x
    assert aug(rotate_p=1.0, rotate_degrees=0.0, translate_p=1.0, translate_frac=0.0)(x) is x
    zeros = torch.zeros(8)
    warped = Augmenter.warp(x, zeros.bool(), zeros, zeros, zeros)
    assert torch.allclose(warped, x, atol=1e-5)


def test_flip_equals_torch_flip():
    x = batch()
    assert torch.allclose(aug(hflip_p=1.0)(x), torch.flip(x, [3]), atol=1e-5)


def test_deterministic_and_resumable():
    kw = dict(hflip_p=0.5, rotate_p=0.5, translate_p=0.5)
    x = batch(16)
    assert torch.equal(aug(1, **kw)(x), aug(1, **kw)(x))
    assert not torch.equal(aug(1, **kw)(x), aug(2, **kw)(x))
    a = aug(1, **kw)
    a(x)
    state = a.state_dict()
    assert set(state) == {"generator"} and state["generator"].dtype == torch.uint8
    nxt = a(x)
    b = aug(99, **kw)
    b.load_state_dict(state)
    assert torch.equal(b(x), nxt)


def test_flip_fraction():
    x = batch(2000)
    out = aug(hflip_p=0.3)(x)
    flipped = torch.isclose(out, torch.flip(x, [3]), atol=1e-5).flatten(1).all(1)
    same = torch.isclose(out, x, atol=1e-5).flatten(1).all(1)
    assert bool((flipped ^ same).all())  # every sample is one or the other
    assert abs(flipped.float().mean().item() - 0.3) < 0.04


def test_small_rotation_keeps_centre():
    x = torch.zeros(64, 3, 32, 32)
    x[:, :, 12:20, 12:20] = 1.0
    out = aug(rotate_p=1.0, rotate_degrees=10.0)(x)
    assert torch.allclose(out[:, :, 15:17, 15:17], torch.ones(64, 3, 2, 2), atol=1e-4)
    changed = (out - x).abs().flatten(1).amax(1) > 1e-3
    assert changed.float().mean() > 0.9  # the block's corners moved in almost every sample


def test_translation_shifts_content():
    x = batch(2)
    zeros = torch.zeros(2)
    # exact: 4 px right (tx = 4/32), 2 px up (ty = -2/32); vacated pixels are 0 (the mean colour)
    out = Augmenter.warp(x, zeros.bool(), zeros, torch.full((2,), 4 / 32), torch.full((2,), -2 / 32))
    ref = torch.zeros_like(x)
    ref[:, :, :30, 4:] = x[:, :, 2:, :28]
    assert torch.allclose(out, ref, atol=1e-5)
    # random: a single bright pixel moves, by at most translate_frac of the side per axis
    img = torch.zeros(200, 1, 32, 32)
    img[:, :, 16, 16] = 1.0
    moved = aug(translate_p=1.0, translate_frac=0.25)(img)
    coords = torch.arange(32.0)
    mass = moved.sum((1, 2, 3))
    cx = (moved.sum((1, 2)) * coords).sum(1) / mass
    cy = (moved.sum((1, 3)) * coords).sum(1) / mass
    dx, dy = cx - 16, cy - 16
    assert dx.abs().max() <= 8 + 1e-4 and dy.abs().max() <= 8 + 1e-4
    assert dx.abs().mean() > 2 and dy.abs().mean() > 2  # uniform in +-8 px: mean |d| = 4


def test_device_dataset_get_on_index_tensor():
    x = torch.randint(0, 256, (10, 3, 4, 4), dtype=torch.uint8)
    ds = DeviceDataset(x, torch.arange(10), torch.full((3,), 0.5), torch.full((3,), 0.25), device="cpu")
    xb, yb = ds.get(torch.tensor([9, 0]))
    assert len(ds) == 10 and yb.tolist() == [9, 0]
    assert torch.allclose(xb, (x[[9, 0]].float() / 255 - 0.5) / 0.25, atol=1e-5)
