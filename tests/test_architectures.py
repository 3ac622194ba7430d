"""The model registry (bigbatch.model.MODELS, the ``model`` key) and a user's own model, and the dataset
registry (bigbatch.datasets.DATASETS) every dataset fact derives from."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

from bigbatch.config import BUILTIN_MODELS, CHOICES, ConfigError, RunConfig
from bigbatch.datasets import DATASETS
from bigbatch.model import (MODELS, GhostBatchNorm2d, build_model, check_model, model_keys, model_provenance, vgg13)

REPO = Path(__file__).resolve().parent.parent

# one user model file, imported from a temporary package: its norm layers come from the run (ghost BN included)
USER_MODEL = '''
from torch import nn


def tiny(num_classes, in_channels, norm, width_mult=1.0):
    c = max(2, int(8 * width_mult))
    return nn.Sequential(nn.Conv2d(in_channels, c, 3, padding=1), norm(c), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, num_classes))


def no_width(num_classes, in_channels, norm):
    return nn.Sequential(nn.Flatten(), nn.LazyLinear(num_classes))


def wrong_shape(num_classes, in_channels, norm):
    return nn.Sequential(nn.Flatten(), nn.LazyLinear(num_classes + 1))


def broken(num_classes, in_channels, norm):
    raise RuntimeError("no such layer")


def not_a_module(num_classes, in_channels, norm):
    return 42


def missing_norm(num_classes, in_channels):
    return nn.Linear(1, num_classes)
'''


@pytest.fixture
def user_pkg(tmp_path, monkeypatch):
    pkg = tmp_path / "mymodels"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "nets.py").write_text(USER_MODEL)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    for name in [m for m in sys.modules if m.startswith("mymodels")]:
        del sys.modules[name]


def _cfg(**kw) -> RunConfig:
    return RunConfig(**{"dataset": "synthetic", "width_mult": 0.125, **kw})


# ---------------------------------------------------------------------------------------------- built-ins
def test_the_registry_and_the_config_name_the_same_models():
    assert set(MODELS) == set(BUILTIN_MODELS) == {"vgg11", "vgg13", "vgg16", "vgg19", "resnet18"}
    assert RunConfig().model == "vgg13"


@pytest.mark.parametrize("model", sorted(BUILTIN_MODELS))
@pytest.mark.parametrize("norm", CHOICES["norm"])
def test_every_builtin_model_with_every_norm(model, norm):
    """Each builds from a RunConfig, gives (N, classes) logits on 1- and 3-channel 32x32 images, and has
    the run's norm layers (ghost BN with batch_size // virtual_batch_size groups) and no others."""
    cfg = _cfg(model=model, norm=norm, batch_size=64)
    for classes, channels in ((10, 3), (7, 1)):
        net = build_model(cfg, classes, channels).train()
        assert net(torch.randn(4, channels, 32, 32)).shape == (4, classes)
    norms = [m for m in net.modules() if isinstance(m, (nn.BatchNorm2d, GhostBatchNorm2d))]
    if norm == "none":
        assert norms == []
        assert all(m.bias is not None for m in net.modules() if isinstance(m, nn.Conv2d))
    else:
        kind = GhostBatchNorm2d if norm == "ghost" else nn.BatchNorm2d
        assert norms and all(type(m) is kind for m in norms)
        assert all(m.momentum == cfg.bn_momentum for m in norms)
        assert all(m.num_groups == 2 for m in norms) if norm == "ghost" else True
        assert all(m.bias is None for m in net.modules() if isinstance(m, nn.Conv2d))


def test_vgg13_from_the_registry_is_the_paper_model_bit_for_bit():
    cfg = _cfg(norm="ghost", batch_size=64, init="torch")
    torch.manual_seed(3)
    a = build_model(cfg, 10, 3)
    torch.manual_seed(3)
    b = vgg13(10, 3, 0.125, "ghost", 2, cfg.bn_momentum, cfg.dropout, "torch")
    assert list(a.state_dict()) == list(b.state_dict())
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def _vgg_count(widths: list[int]) -> int:
    """3x3 convs without bias + BatchNorm weight and bias per conv + the paper's 512 -> 512 -> 10 classifier."""
    convs = sum(9 * a * b + 2 * b for a, b in zip([3, *widths], widths))
    return convs + 512 * 512 + 512 + 512 * 10 + 10


@pytest.mark.parametrize("model,params", [
    ("resnet18", 11_173_962),
    ("vgg11", _vgg_count([64, 128, 256, 256, 512, 512, 512, 512])),  # 9,491,018
    ("vgg16", _vgg_count([64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512])),
    ("vgg19", _vgg_count([64, 64, 128, 128, *[256] * 4, *[512] * 8])),
])
def test_parameter_counts_at_width_one(model, params):
    """ResNet-18 (CIFAR): the usual 11,173,962 with BatchNorm; the VGGs: torchvision's conv layers and the
    paper's classifier."""
    net = build_model(RunConfig(model=model, norm="batch"), 10, 3)
    assert sum(p.numel() for p in net.parameters()) == params


def test_resnet18_layout_and_width():
    net = build_model(_cfg(model="resnet18", norm="batch"), 10, 3)
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    assert convs[0].kernel_size == (3, 3) and convs[0].stride == (1, 1)  # the CIFAR stem, no max-pool
    assert not any(isinstance(m, nn.MaxPool2d) for m in net.modules())
    assert len(convs) == 1 + 16 + 3  # stem, 8 blocks x 2, 3 downsampling shortcuts
    assert sorted({c.out_channels for c in convs}) == [8, 16, 32, 64]  # 64..512 x 0.125
    assert net.classifier[-1].in_features == 64


@pytest.mark.parametrize("model,key,value", [("resnet18", "dropout", 0.2), ("resnet18", "dropout", 0.0)])
def test_a_key_the_model_ignores_is_refused_not_dropped(model, key, value):
    with pytest.raises(ConfigError, match=f"model={model} has no {key}"):
        RunConfig(model=model, **{key: value})
    RunConfig(model=model, width_mult=0.5, init="torch")  # the keys it reads are fine


@pytest.mark.parametrize("bad", ["vgg12", "resnet", "my.pkg", "my.pkg:", ":fn", "a b:c", ""])
def test_an_unknown_model_name_is_one_line(bad):
    with pytest.raises(ConfigError, match="is not one of: vgg13, vgg11, vgg16, vgg19, resnet18, or package.module:function"):
        RunConfig(model=bad)


# ---------------------------------------------------------------------------------------------- a user's model
def test_a_user_model_gets_the_runs_norm_and_its_keys(user_pkg):
    cfg = _cfg(model="mymodels.nets:tiny", norm="ghost", batch_size=96, width_mult=0.5)
    net = build_model(cfg, 10, 3)
    ghost = [m for m in net.modules() if isinstance(m, GhostBatchNorm2d)]
    assert len(ghost) == 1 and ghost[0].num_groups == 3 and ghost[0].num_features == 4  # 8 x width 0.5
    assert model_keys("mymodels.nets:tiny") == ("width_mult",) and model_keys("mymodels.nets:no_width") == ()
    check_model(cfg, 10, 3)
    none = build_model(cfg.replace(norm="none"), 10, 3)
    assert any(isinstance(m, nn.Identity) for m in none.modules())  # norm(C) is an identity without a norm


def test_a_user_model_trains_through_bigbatch_train_with_ghost_bn(user_pkg):
    from bigbatch.train import train

    cfg = RunConfig(dataset="synthetic", synthetic_size=256, val_size=64, epochs=2, batch_size=64, model="mymodels.nets:tiny",
                    norm="ghost", width_mult=0.5, lr=0.05, device="cpu", gns_images=0, sharpness_images=0)
    out = train(cfg)
    assert out["status"] == "completed" and len(out["history"]) == 2
    assert out["best_val_acc"] > 10.0  # learns something on the synthetic classes


@pytest.mark.parametrize("fn,message", [
    ("nets:tiny", "cannot import nets"),
    ("mymodels.nets:nope", "has no function 'nope'"),
    ("mymodels.nets:broken", "building it failed: RuntimeError: no such layer"),
    ("mymodels.nets:not_a_module", "returned int, not a torch.nn.Module"),
    ("mymodels.nets:missing_norm", "does not take norm"),
])
def test_a_user_model_that_cannot_be_built_is_one_line(user_pkg, fn, message):
    with pytest.raises(ConfigError, match=message) as e:
        build_model(_cfg(model=fn, width_mult=1.0), 10, 3)
    assert "\n" not in str(e.value)


def test_keys_a_user_model_does_not_take_are_refused(user_pkg):
    with pytest.raises(ConfigError, match="does not take width_mult: width_mult=0.125 would be ignored"):
        build_model(_cfg(model="mymodels.nets:no_width"), 10, 3)
    with pytest.raises(ConfigError, match="init='torch' applies to the built-in models only"):
        build_model(_cfg(model="mymodels.nets:tiny", init="torch"), 10, 3)
    build_model(_cfg(model="mymodels.nets:no_width", width_mult=1.0), 10, 3)  # at its default: fine


def test_check_model_catches_a_wrong_output_shape(user_pkg):
    with pytest.raises(ConfigError, match=r"gives \(2, 11\) for 2 images, expected \(2, 10\) logits"):
        check_model(_cfg(model="mymodels.nets:wrong_shape", width_mult=1.0), 10, 3)


def test_provenance_names_the_file_and_its_hash(user_pkg):
    prov = model_provenance("mymodels.nets:tiny")
    path = user_pkg / "mymodels" / "nets.py"
    assert prov == {"model_source": str(path), "model_source_sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
    assert model_provenance("vgg13") == {}


def test_the_train_cli_refuses_a_bad_model_path_in_one_line(tmp_path):
    r = subprocess.run([sys.executable, "-m", "bigbatch.train", "--set", "dataset=synthetic", "model=nowhere.mod:net", "val_size=100",
                        "epochs=1", "gns_images=0", "sharpness_images=0"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "model='nowhere.mod:net': cannot import nowhere" in r.stderr


@pytest.mark.slow
def test_a_user_model_smoke_sweep_with_ghost_bn_logs_its_source(user_pkg, tmp_path):
    """`python -m sweeps.exp3 --smoke-test --set model=...` (exp3: ghost BN) with the user's package on
    PYTHONPATH: the trial trains the user's model and MLflow records its source file and hash."""
    from mlflow.tracking import MlflowClient

    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "PYTHONPATH": f"{user_pkg}{os.pathsep}{REPO}"}
    r = subprocess.run([sys.executable, "-m", "sweeps.exp3", "--smoke-test", "--batch-sizes", "64", "--num-cpus", "1",
                        "--set", "model=mymodels.nets:tiny", "--storage-path", str(tmp_path / "rr"), "--name", "user",
                        "--quiet"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=400)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.get_experiment_by_name("bigbatch-exp3")
    (trial,) = [x for x in client.search_runs([exp.experiment_id]) if x.data.tags.get("bigbatch.role") == "trial"]
    params = trial.data.params
    assert params["model"] == "mymodels.nets:tiny" and params["norm"] == "ghost"
    source = user_pkg / "mymodels" / "nets.py"
    assert params["model_source"] == str(source)
    assert params["model_source_sha256"] == hashlib.sha256(source.read_bytes()).hexdigest()
    assert trial.data.tags["bigbatch.status"] == "completed"


def test_a_sweep_refuses_an_unbuildable_model_before_ray_starts(user_pkg, tmp_path):
    from sweeps.runner import SweepOptions, plan_sweep
    from bigbatch.experiments import load_experiment

    opts = SweepOptions(load_experiment("exp3"), smoke_test=True, overrides={"model": "mymodels.nets:wrong_shape"},
                        storage_path=str(tmp_path / "rr"), tracking_uri=f"sqlite:///{tmp_path / 'db'}")
    with pytest.raises(ConfigError, match="expected \\(2, 10\\) logits"):
        plan_sweep(opts)
    assert not (tmp_path / "db").exists()  # nothing was written


# ---------------------------------------------------------------------------------------------- datasets
def test_every_dataset_fact_derives_from_its_spec():
    from analysis import models as analysis_models
    from bigbatch import data
    from sweeps.table1 import FASHION_MNIST_FILES

    assert CHOICES["dataset"] == tuple(DATASETS)
    assert data.NORMALISATION == {n: (d.mean, d.std) for n, d in DATASETS.items()}
    assert data.NOMINAL_POOL == {"cifar10": 50000, "cifar100": 50000, "fashion-mnist": 60000}
    assert FASHION_MNIST_FILES == DATASETS["fashion-mnist"].files
    assert not hasattr(analysis_models, "DATASET_SHAPE")
    for d in DATASETS.values():
        assert len(d.mean) == len(d.std) == d.in_channels
        assert data.dataset_shape(RunConfig(dataset=d.name)) == (d.num_classes, d.in_channels, d.image_size)


def test_fashion_mnist_file_names_are_torchvisions():
    from torchvision.datasets import FashionMNIST

    assert DATASETS["fashion-mnist"].files == tuple(name for name, _ in FashionMNIST.resources)


def test_the_synthetic_spec_loads_and_matches_its_shape():
    from bigbatch.data import load_data

    cfg = RunConfig(dataset="synthetic", synthetic_size=128, val_size=32)
    s = load_data(cfg, "cpu")
    spec = DATASETS["synthetic"]
    assert (s.num_classes, s.in_channels, s.image_size) == spec.shape
    assert len(s.train) == 96 and len(s.val) == 32 and len(s.test) == 32
    assert s.train.mean.tolist() == pytest.approx(spec.mean)


def test_the_logged_dataset_schema_follows_the_spec():
    from sweeps.tracking import dataset_inputs

    info = {"source": "synthetic", "n_pool": 128, "n_test": 32, "digest": "0" * 32}
    for name in ("fashion-mnist", "cifar10"):
        _, channels, side = DATASETS[name].shape
        (train, *_) = dataset_inputs(RunConfig(dataset=name, val_size=32), info)
        image = json.loads(train.dataset.schema)["mlflow_colspec"][0]
        assert image["name"] == "image" and image["tensor-spec"]["shape"] == [-1, channels, side, side]


def test_the_readme_example_model_builds_and_gets_ghost_bn(tmp_path, monkeypatch):
    """README, "Add your own model": the example file, as printed there, builds through the registry."""
    text = (REPO / "README.md").read_text()
    code = text.split("# mynets/small.py\n", 1)[1].split("```", 1)[0]
    (tmp_path / "mynets").mkdir()
    (tmp_path / "mynets" / "__init__.py").write_text("")
    (tmp_path / "mynets" / "small.py").write_text(code)
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        cfg = RunConfig(model="mynets.small:small_cnn", norm="ghost", batch_size=64, width_mult=0.25)
        check_model(cfg, 10, 1)
        assert sum(isinstance(m, GhostBatchNorm2d) for m in build_model(cfg, 10, 1).modules()) == 3
    finally:
        for name in [m for m in sys.modules if m.startswith("mynets")]:
            del sys.modules[name]
