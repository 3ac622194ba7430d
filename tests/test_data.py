"""bigbatch.data: loaders, split, device batches, augmentation. Runs in a few seconds on 2 CPU cores."""

import pickle
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from bigbatch.config import RunConfig
from bigbatch.data import NORMALISATION, Augmenter, DataError, DeviceDataset, epoch_order, load_data, split_indices
from fixtures import trust_cifar, write_cifar

FASHION_DIR = Path("/work/shared/data/fashion-mnist")
NO_AUG = dict(hflip_p=0.0, rotate_p=0.0, translate_p=0.0)


def cifar_cfg(tmp_path, **kw):
    return RunConfig(**{"data_dir": str(tmp_path), "download": False, "val_size": 100, **kw})


@pytest.fixture
def cifar(tmp_path, monkeypatch):
    """A tiny CIFAR-10 in the official format under tmp_path, accepted by torchvision's md5 check."""
    folder = write_cifar(tmp_path, n_train=500, n_test=100)
    trust_cifar(monkeypatch, folder)
    return folder


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



def test_load_cifar10_shapes_dtypes_split(cifar, tmp_path):
    s = load_data(cifar_cfg(tmp_path), "cpu")
    assert (len(s.train), len(s.val), len(s.test)) == (400, 100, 100)
    assert (s.num_classes, s.in_channels, s.image_size, s.name) == (10, 3, 32, 'cifar10')
    for ds in (s.train, s.val, s.test):
        assert ds.x.dtype == torch.uint8 and ds.x.shape[1:] == (3, 32, 32)
        assert ds.y.dtype == torch.int64 and 0 <= ds.y.min() and ds.y.max() < 10
        assert ds.mean.dtype == ds.std.dtype == torch.float32 and ds.mean.shape == (3,)
    x, y = s.train.get(torch.tensor([0, 5, 7]))
    assert x.dtype == torch.float32 and x.shape == (3, 3, 32, 32) and y.tolist() == s.train.y[[0, 5, 7]].tolist()
    # the test set is the test_batch file, image for image (CHW rows of 3072 bytes)
    with open(cifar / "test_batch", "rb") as f:
        d = pickle.load(f, encoding="latin1")
    assert torch.equal(s.test.x, torch.from_numpy(d["data"]).view(-1, 3, 32, 32)) and s.test.y.tolist() == d["labels"]


def test_split_is_random_split_and_deterministic(cifar, tmp_path):
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


def test_train_subset_and_bad_sizes(cifar, tmp_path):
    full = load_data(cifar_cfg(tmp_path), "cpu")
    sub = load_data(cifar_cfg(tmp_path, train_subset=50), "cpu")
    assert len(sub.train) == 50 and torch.equal(sub.train.x, full.train.x[:50])
    assert torch.equal(sub.val.x, full.val.x)
    with pytest.raises(DataError, match="val_size=500.*500"):
        load_data(cifar_cfg(tmp_path).replace(val_size=500), "cpu")
    with pytest.raises(DataError, match="train_subset=401.*400"):
        load_data(cifar_cfg(tmp_path, train_subset=401), "cpu")


def test_cifar100_variant(tmp_path, monkeypatch):
    folder = write_cifar(tmp_path, n_train=300, n_test=50, num_classes=100, variant="cifar100")
    assert folder.name == "cifar-100-python"
    trust_cifar(monkeypatch, folder, "cifar100")
    s = load_data(cifar_cfg(tmp_path, dataset="cifar100"), "cpu")
    assert (len(s.train), len(s.val), len(s.test), s.num_classes) == (200, 100, 50, 100)
    assert s.train.y.max() < 100 and s.name == "cifar100"


def test_fixture_files_fail_the_md5_check_unless_trusted(tmp_path):
    # torchvision's md5 check is on: files that are not the official ones read as corrupt
    folder = write_cifar(tmp_path, n_train=50, n_test=10)
    with pytest.raises(DataError, match=f"^corrupt CIFAR-10 file {folder / 'data_batch_1'} \\(md5 mismatch\\)"):
        load_data(cifar_cfg(tmp_path).replace(val_size=10), "cpu")


def test_missing_without_download(tmp_path):
    with pytest.raises(DataError) as e:
        load_data(cifar_cfg(tmp_path / "nowhere"), "cpu")
    msg = str(e.value)
    assert str(tmp_path / "nowhere" / "cifar-10-batches-py") in msg and "download=false" in msg
    assert "\n" not in msg


@pytest.mark.parametrize("dataset", ["cifar10", "fashion-mnist"])
def test_download_failure_is_one_line_and_leaves_nothing(tmp_path, monkeypatch, dataset):
    import torchvision.datasets.cifar as tv_cifar
    import torchvision.datasets.mnist as tv_mnist

    calls = []

    def offline(url, download_root, **kw):
        calls.append((url, kw.get("md5")))
        Path(download_root).mkdir(parents=True, exist_ok=True)
        (Path(download_root) / "partial.tar.gz").write_bytes(b"half an archive")
        raise OSError("[Errno -3] Temporary failure\nin name resolution")

    monkeypatch.setattr(tv_cifar, "download_and_extract_archive", offline)
    monkeypatch.setattr(tv_mnist, "download_and_extract_archive", offline)
    root = tmp_path / "new" / "data"
    pretty = {"cifar10": "CIFAR-10", "fashion-mnist": "Fashion-MNIST"}[dataset]
    with pytest.raises(DataError, match=rf"^cannot download {pretty} \(offline\?\) into {root}: .*name resolution") as e:
        load_data(RunConfig(dataset=dataset, data_dir=str(root), download=True), "cpu")
    assert "\n" not in str(e.value)
    assert not (tmp_path / "new").exists()  # the directories it created are gone again
    if dataset == "cifar10":  # torchvision's URL and md5
        assert calls == [("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz", "c58f30108f718f92721af3b95e74349a")]
    else:  # FashionMNIST tries its mirror for the first file, then gives up
        assert calls[0][0].endswith("train-images-idx3-ubyte.gz") and calls[0][1] == "8d4fb7e6c68d591d4c3dfef9ec88bf0d"


@pytest.mark.parametrize("dataset", ["cifar10", "fashion-mnist"])
def test_download_goes_through_torchvision(tmp_path, monkeypatch, dataset):
    # torchvision's download step is replaced by a local copy; the rest (layout, md5 of the CIFAR
    # files, extraction, parsing) is torchvision's and this module's own path
    import shutil

    import torchvision.datasets.cifar as tv_cifar
    import torchvision.datasets.mnist as tv_mnist
    from torchvision.datasets.utils import extract_archive

    if dataset == "fashion-mnist" and not FASHION_DIR.is_dir():
        pytest.skip(f"Fashion-MNIST not present in {FASHION_DIR}")

    def fake_cifar(url, download_root, **kw):
        trust_cifar(monkeypatch, write_cifar(download_root, n_train=500, n_test=100))

    def fake_fashion(url, download_root, filename, md5):
        shutil.copy(FASHION_DIR / filename, Path(download_root) / filename)
        extract_archive(str(Path(download_root) / filename))

    monkeypatch.setattr(tv_cifar, "download_and_extract_archive", fake_cifar)
    monkeypatch.setattr(tv_mnist, "download_and_extract_archive", fake_fashion)
    root = tmp_path / "data"
    s = load_data(RunConfig(dataset=dataset, data_dir=str(root), download=True, val_size=100), "cpu")
    assert len(s.test) == (100 if dataset == "cifar10" else 10000)
    assert (root / ("cifar-10-batches-py" if dataset == "cifar10" else "FashionMNIST/raw")).is_dir()


@pytest.mark.parametrize("damage", ["truncate", "garbage", "wrong_shape", "missing"])
def test_corrupt_cifar_file(cifar, tmp_path, damage):
    path = cifar / "data_batch_3"
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
    msg = str(e.value)
    assert str(path) in msg and "\n" not in msg and "download=true" in msg
    assert msg.startswith(f"CIFAR-10 file missing: {path}" if damage == "missing" else f"corrupt CIFAR-10 file {path}")


# ----------------------------------------------------------------------------- other datasets
@pytest.mark.skipif(not FASHION_DIR.is_dir(), reason=f"Fashion-MNIST not present in {FASHION_DIR}")
def test_fashion_mnist():
    for data_dir in (FASHION_DIR, FASHION_DIR.parent):  # the folder itself, or its parent
        s = load_data(RunConfig(dataset="fashion-mnist", data_dir=str(data_dir), val_size=10000, download=False), "cpu")
        assert (len(s.train), len(s.val), len(s.test)) == (50000, 10000, 10000)
    assert (s.num_classes, s.in_channels, s.image_size) == (10, 1, 32)
    assert s.train.x.shape[1:] == (1, 32, 32) and s.train.x.dtype == torch.uint8
    border = torch.ones(32, 32, dtype=torch.bool)
    border[2:30, 2:30] = False
    assert s.train.x[:, 0, border].max() == 0 and s.test.x[:, 0, border].max() == 0
    assert s.train.x[:, 0, 2:30, 2:30].float().mean() > 50  # real content inside the padding
    assert sorted(s.test.y.unique().tolist()) == list(range(10))


@pytest.mark.skipif(not FASHION_DIR.is_dir(), reason=f"Fashion-MNIST not present in {FASHION_DIR}")
def test_fashion_mnist_torchvision_layout_and_corrupt_file(tmp_path):
    # torchvision's own layout (where download=true puts the files) is found too
    raw = tmp_path / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for f in FASHION_DIR.iterdir():
        (raw / f.name).symlink_to(f)
    s = load_data(RunConfig(dataset="fashion-mnist", data_dir=str(tmp_path), val_size=10000, download=False), "cpu")
    assert len(s.train) == 50000
    bad = raw / "t10k-labels-idx1-ubyte.gz"
    bad.unlink()
    bad.write_bytes((FASHION_DIR / bad.name).read_bytes()[:100])  # truncated gzip
    with pytest.raises(DataError, match=f"^corrupt Fashion-MNIST file {bad}: ") as e:
        load_data(RunConfig(dataset="fashion-mnist", data_dir=str(tmp_path), download=False), "cpu")
    assert "\n" not in str(e.value)


def test_fashion_mnist_missing(tmp_path):
    with pytest.raises(DataError, match=f"^Fashion-MNIST files not found in {tmp_path} .*train-images-idx3-ubyte.gz.*download=true") as e:
        load_data(RunConfig(dataset="fashion-mnist", data_dir=str(tmp_path), download=False), "cpu")
    assert "\n" not in str(e.value)


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


# ----------------------------------------------------------------------------- normalisation
def _stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and population std of uint8 images, in [0, 1] units (float64)."""
    v = x.double() / 255
    return v.mean((0, 2, 3)), v.std((0, 2, 3), unbiased=False)


def test_normalisation_constants_do_not_depend_on_the_split(cifar, tmp_path):
    # the authors' code: fixed per-dataset constants, never statistics of the 40k split
    runs = [load_data(cifar_cfg(tmp_path, **kw), "cpu") for kw in (dict(val_size=100), dict(val_size=200),
                                                                    dict(train_subset=50), dict(split_seed=7))]
    for s in runs:
        for ds in (s.train, s.val, s.test):
            assert ds.mean.tolist() == pytest.approx(NORMALISATION["cifar10"][0], abs=1e-7)
            assert ds.std.tolist() == pytest.approx(NORMALISATION["cifar10"][1], abs=1e-7)
    assert NORMALISATION["cifar10"] == ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))
    # get() is (x / 255 - mean) / std, float32
    s = runs[0]
    xt, _ = s.test.get(torch.tensor([3]))
    ref = (s.test.x[3:4].float() / 255 - s.test.mean.view(1, 3, 1, 1)) / s.test.std.view(1, 3, 1, 1)
    assert torch.allclose(xt, ref, atol=1e-5)
    # every dataset has constants, one per channel
    assert set(NORMALISATION) == {"cifar10", "cifar100", "fashion-mnist", "synthetic"}
    assert all(len(m) == len(sd) for m, sd in NORMALISATION.values())


def test_synthetic_constants_are_its_pool_statistics():
    a = load_data(RunConfig(dataset="synthetic", synthetic_size=1024, val_size=256), "cpu")
    b = load_data(RunConfig(dataset="synthetic", synthetic_size=512, val_size=100), "cpu")
    assert torch.equal(a.train.mean, b.train.mean) and torch.equal(a.train.std, b.val.std)
    mean, std = _stats(torch.cat([a.train.x, a.val.x]))  # the pool of make_synthetic(1024)
    assert torch.allclose(mean.float(), a.train.mean, atol=1e-4) and torch.allclose(std.float(), a.train.std, atol=1e-4)


@pytest.mark.skipif(not FASHION_DIR.is_dir(), reason=f"Fashion-MNIST not present in {FASHION_DIR}")
def test_fashion_mnist_constants_are_its_padded_training_statistics():
    s = load_data(RunConfig(dataset="fashion-mnist", data_dir=str(FASHION_DIR), val_size=5000, download=False), "cpu")
    mean, std = _stats(torch.cat([s.train.x, s.val.x]))  # all 60k training images, padded to 32x32
    assert torch.allclose(mean.float(), s.train.mean, atol=1e-4) and torch.allclose(std.float(), s.train.std, atol=1e-4)
    assert s.train.mean.tolist() == pytest.approx(NORMALISATION["fashion-mnist"][0])


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


def _torchvision(fn, x, p, interpolation, fill):
    """The authors' pipeline, image by image: hflip, rotate(angle), affine(translate=(tx, ty)), on the same draws."""
    out = []
    for i in range(len(x)):
        img = fn.hflip(x[i]) if p["flip"][i] else x[i]
        img = fn.rotate(img, float(p["angle"][i]), interpolation=interpolation, fill=fill)
        img = fn.affine(img, angle=0.0, translate=[int(p["tx"][i]), int(p["ty"][i])], scale=1.0, shear=[0.0, 0.0],
                        interpolation=interpolation, fill=fill)
        out.append(img)
    return torch.stack(out)


@pytest.mark.parametrize("api", ["v1", "v2"])
def test_warp_equals_torchvision_nearest(api):
    import torchvision.transforms.functional as tf1
    import torchvision.transforms.v2.functional as tf2
    from torchvision.transforms import InterpolationMode

    x = batch(256, seed=1)
    p = aug(1, hflip_p=0.5, rotate_p=1.0, translate_p=1.0).draw(256, 32, 32)
    # RandomAffine's draws: whole pixels, round(uniform(-3.2, 3.2)), so -3..3, both signs present
    assert p["tx"].unique().tolist() == [-3, -2, -1, 0, 1, 2, 3] and p["ty"].unique().tolist() == [-3, -2, -1, 0, 1, 2, 3]
    assert p["angle"].abs().max() <= 15 and p["angle"].min() < -10 and p["angle"].max() > 10
    ref = _torchvision({"v1": tf1, "v2": tf2}[api], x, p, InterpolationMode.NEAREST, fill=0)
    out = Augmenter.warp(x, **p)
    # Equal up to nearest-neighbour rounding ties: a sample point within float error of a half pixel
    # may round the other way. Measured over 6,000 images (6.1M pixels): 12 pixels differ (2e-6), all
    # in flipped images; every other pixel is bit for bit torchvision's.
    differ = (out != ref).any(1)
    assert differ.sum() <= 4, f"{int(differ.sum())} of {differ.numel()} pixels differ from torchvision"
    # the sign conventions matter: the opposite rotation or shift is far from torchvision's
    for wrong in ({**p, "angle": -p["angle"]}, {**p, "tx": -p["tx"]}, {**p, "ty": -p["ty"]}):
        assert (Augmenter.warp(x, **wrong) != ref).any(1).float().mean() > 0.05


def test_warp_bilinear_matches_torchvision_bilinear():
    import torchvision.transforms.functional as tf1
    from torchvision.transforms import InterpolationMode

    x = batch(100, seed=2)
    p = aug(2, hflip_p=0.5, rotate_p=1.0, translate_p=1.0).draw(100, 32, 32)
    # fill=None: zero padding; torchvision's fill=0 with bilinear also darkens the border pixels by the
    # interpolated in-image mask a second time (the default nearest mode has no such blend)
    ref = _torchvision(tf1, x, p, InterpolationMode.BILINEAR, fill=None)
    assert torch.allclose(Augmenter.warp(x, **p, mode="bilinear"), ref, atol=1e-4)
    assert aug(augment_interpolation="bilinear", rotate_p=1.0).mode == "bilinear"
    assert RunConfig().augment_interpolation == "nearest"


def test_identity_fast_path_and_identity_warp():
    x = batch()
    assert aug()(x) is x
    assert aug(rotate_p=1.0, rotate_degrees=0.0, translate_p=1.0, translate_frac=0.0)(x) is x
    zeros = torch.zeros(8)
    for mode in ("nearest", "bilinear"):
        assert torch.allclose(Augmenter.warp(x, zeros.bool(), zeros, zeros, zeros, mode=mode), x, atol=1e-5)
    assert torch.equal(Augmenter.warp(x, zeros.bool(), zeros, zeros, zeros), x)


def test_flip_equals_torch_flip():
    x = batch()
    assert torch.equal(aug(hflip_p=1.0)(x), torch.flip(x, [3]))


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
    # six random numbers per sample, whatever the probabilities: the stream position is the same
    for probs in (NO_AUG, dict(hflip_p=1.0, rotate_p=1.0, translate_p=1.0)):
        c = aug(1, **probs)
        c.draw(16, 32, 32)
        assert torch.equal(c.generator.get_state(), state["generator"])


def test_flip_fraction():
    x = batch(2000)
    out = aug(hflip_p=0.3)(x)
    flipped = torch.isclose(out, torch.flip(x, [3]), atol=1e-5).flatten(1).all(1)
    same = torch.isclose(out, x, atol=1e-5).flatten(1).all(1)
    assert bool((flipped ^ same).all())  # every sample is one or the other
    assert abs(flipped.float().mean().item() - 0.3) < 0.04


def test_small_rotation_keeps_centre():
    x = torch.zeros(64, 3, 32, 32)
    x[:, :, 8:24, 8:24] = 1.0
    out = aug(rotate_p=1.0, rotate_degrees=10.0)(x)
    assert torch.equal(out[:, :, 12:20, 12:20], torch.ones(64, 3, 8, 8))
    changed = (out - x).abs().flatten(1).amax(1) > 1e-3
    assert changed.float().mean() > 0.6  # the block's corners moved to other whole pixels in most samples


def test_translation_shifts_content_by_whole_pixels():
    x = batch(2)
    zeros = torch.zeros(2)
    # exact: 4 px right, 2 px up; vacated pixels are 0 (the mean colour)
    out = Augmenter.warp(x, zeros.bool(), zeros, torch.full((2,), 4.0), torch.full((2,), -2.0))
    ref = torch.zeros_like(x)
    ref[:, :, :30, 4:] = x[:, :, 2:, :28]
    assert torch.equal(out, ref)
    # random: whole-pixel shifts up to round(translate_frac * 32) = 8 px per axis, uniform as RandomAffine draws them
    img = torch.zeros(400, 1, 32, 32)
    img[:, :, 16, 16] = 1.0
    moved = aug(translate_p=1.0, translate_frac=0.25)(img)
    assert torch.equal(moved.sum((1, 2, 3)), torch.ones(400))  # one whole pixel, moved
    pos = moved.flatten(1).argmax(1)
    dx, dy = pos % 32 - 16, pos // 32 - 16
    assert dx.abs().max() == 8 and dy.abs().max() == 8 and dx.min() == -8 and dy.min() == -8
    assert dx.abs().float().mean() > 2 and dy.abs().float().mean() > 2  # uniform in +-8 px: mean |d| = 4


def test_device_dataset_get_on_index_tensor():
    x = torch.randint(0, 256, (10, 3, 4, 4), dtype=torch.uint8)
    ds = DeviceDataset(x, torch.arange(10), torch.full((3,), 0.5), torch.full((3,), 0.25), device="cpu")
    xb, yb = ds.get(torch.tensor([9, 0]))
    assert len(ds) == 10 and yb.tolist() == [9, 0]
    assert torch.allclose(xb, (x[[9, 0]].float() / 255 - 0.5) / 0.25, atol=1e-5)
