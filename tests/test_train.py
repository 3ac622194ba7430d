"""The training loop: metrics, the selection rule, divergence, exact resume, atomic checkpoints, the CLI."""
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bigbatch import train as train_mod
from bigbatch.config import ConfigError, RunConfig
from bigbatch.train import BEST_MODEL, CHECKPOINT, TrainingError, main, train

ROOT = Path(__file__).resolve().parents[1]

# A narrow VGG13 on a few hundred synthetic images: seconds per run on a 2-core CPU.
TINY = dict(dataset="synthetic", synthetic_size=384, val_size=128, width_mult=0.125, batch_size=32,
            epochs=3, eval_batch_size=256, seed=0, device="cpu", lr=0.05,
            gns_images=0, sharpness_images=0)  # the measurements: tests/test_measure.py
# Every source of randomness and state at once: ghost BN, cyclic lr with cycling momentum,
# all augmentations, augmented validation, weight decay, a kept partial batch.
STATEFUL = dict(TINY, norm="ghost", virtual_batch_size=16, schedule="cyclic", factor_lr=4.0, cyclic_step_epochs=1,
                cycle_momentum=True, rotate_p=1.0, translate_p=1.0, augment_val=True, weight_decay=1e-4,
                drop_last=False, epochs=4, batch_size=40)

TIMING = ("epoch_seconds", "images_per_second", "gns_seconds")
REQUIRED_EPOCH_KEYS = {"epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "epoch_seconds",
                       "images_per_second", "momentum", "best_val_acc", "best_epoch", "checkpointed"}


def test_reports_every_epoch_and_summarises():
    seen = []
    summary = train(RunConfig(**TINY), report=seen.append)
    assert [m["epoch"] for m in seen] == [1, 2, 3]
    for m in seen:
        assert REQUIRED_EPOCH_KEYS <= set(m)
        assert 0 <= m["val_acc"] <= 100 and m["images_per_second"] > 0 and not m["checkpointed"]
    assert summary["status"] == "completed"
    assert summary["epochs_run"] == 3 and summary["steps_per_epoch"] == 256 // 32
    best = max(seen, key=lambda m: m["val_acc"])  # first maximum: strictly-better rule
    assert summary["best_val_acc"] == best["val_acc"] and summary["best_epoch"] == best["epoch"]
    assert {"test_acc", "test_loss"} <= set(summary) and 0 <= summary["test_acc"] <= 100
    assert seen[-1]["train_loss"] < seen[0]["train_loss"]  # it learns


def test_test_accuracy_is_of_the_best_validation_model(monkeypatch):
    """Selection rule: the model tested is the one of the best validation epoch, not the last."""
    cfg = RunConfig(**dict(TINY, epochs=3))
    accs = iter([(1.0, 50.0), (1.0, 90.0), (1.0, 10.0)])  # val (loss, acc) per epoch: best is epoch 2
    real_eval = train_mod.evaluate
    states = {}

    def fake_eval(run, dataset, augment=False):
        if dataset is run.data.val:
            states[run.epoch + 1] = {k: v.clone() for k, v in run.model.state_dict().items()}
            return next(accs)
        tested = run.model.state_dict()
        assert all(torch.equal(tested[k], states[2][k]) for k in tested)
        return real_eval(run, dataset, augment)

    monkeypatch.setattr(train_mod, "evaluate", fake_eval)
    summary = train(cfg)
    assert (summary["best_val_acc"], summary["best_epoch"]) == (90.0, 2)


def test_divergence_in_the_first_epoch_reports_chance_level():
    seen = []
    summary = train(RunConfig(**dict(TINY, lr=1e6, epochs=3)), report=seen.append)
    assert summary["status"] == "diverged"
    assert summary["test_acc"] == pytest.approx(10.0) and summary["best_val_acc"] == pytest.approx(10.0)
    assert summary["best_epoch"] == 0 and math.isnan(summary["test_loss"])
    assert summary["diverged_epoch"] == 1 and summary["epochs_run"] == 0 and seen == []


def test_divergence_after_good_epochs_reports_the_best_model_before_it(tmp_path, monkeypatch):
    """The loss turns non-finite in epoch 3 (the weights are poisoned with NaN as it starts): the run is
    'diverged' at epoch 3, and its summary is that of the best validation epoch before (epoch 1 here,
    not the last good one), tested with those weights: the weights of best_model.pt."""
    states = {}
    _scripted_val(monkeypatch, [60.0, 20.0], states)
    real_epoch = train_mod.train_epoch

    def poisoned_epoch(run):
        if run.epoch == 2:
            with torch.no_grad():
                for p in run.model.parameters():
                    p.fill_(float("nan"))
        return real_epoch(run)

    monkeypatch.setattr(train_mod, "train_epoch", poisoned_epoch)
    cfg = RunConfig(**dict(TINY, epochs=4))
    seen = []
    summary = train(cfg, report=seen.append, checkpoint_dir=tmp_path)
    assert (summary["status"], summary["diverged_epoch"], summary["epochs_run"]) == ("diverged", 3, 2)
    assert [m["epoch"] for m in seen] == [1, 2]
    assert (summary["best_val_acc"], summary["best_epoch"]) == (60.0, 1)
    best = torch.load(tmp_path / BEST_MODEL, weights_only=True)
    assert _same_state(best, states[1])
    # the test figures are those of the best model, evaluated afresh
    run = train_mod.setup(cfg)
    run.model.load_state_dict(best)
    test_loss, test_acc = train_mod.evaluate(run, run.data.test)
    assert (summary["test_acc"], summary["test_loss"]) == (test_acc, test_loss)
    assert math.isfinite(test_loss)  # not the chance-level placeholder (NaN)


def test_same_seed_same_metrics_on_cpu():
    a = train(RunConfig(**STATEFUL))
    b = train(RunConfig(**STATEFUL))
    assert a["history"] and [
        {k: v for k, v in m.items() if k not in TIMING} for m in a["history"]
    ] == [{k: v for k, v in m.items() if k not in TIMING} for m in b["history"]]
    assert (a["test_acc"], a["test_loss"]) == (b["test_acc"], b["test_loss"])


def _strip(history):
    return [{k: v for k, v in m.items() if k not in (*TIMING, "checkpointed")} for m in history]


class Stop(Exception):
    pass


def test_interrupted_and_resumed_run_equals_uninterrupted(tmp_path):
    cfg = RunConfig(**STATEFUL)
    full = train(cfg)

    def die_after_2(m):
        if m["epoch"] == 2:
            raise Stop  # the process dies after epoch 2's checkpoint is on disk

    with pytest.raises(Stop):
        train(cfg, report=die_after_2, checkpoint_dir=tmp_path)
    assert (tmp_path / CHECKPOINT).exists() and (tmp_path / BEST_MODEL).exists()
    resumed_reports = []
    resumed = train(cfg, report=resumed_reports.append, checkpoint_dir=tmp_path)
    assert [m["epoch"] for m in resumed_reports] == [3, 4]  # only the epochs still to run
    assert _strip(resumed["history"]) == _strip(full["history"])
    assert (resumed["test_acc"], resumed["test_loss"], resumed["best_epoch"]) == (
        full["test_acc"], full["test_loss"], full["best_epoch"])
    # a finished checkpoint resumes to the same summary without training
    again = train(cfg, report=lambda m: pytest.fail("no epoch should run"), checkpoint_dir=tmp_path)
    assert again["test_acc"] == full["test_acc"]


def test_checkpoint_every_n_epochs(tmp_path):
    seen = []
    train(RunConfig(**dict(TINY, epochs=3)), report=seen.append, checkpoint_dir=tmp_path, checkpoint_every=2)
    assert [m["checkpointed"] for m in seen] == [False, True, True]  # the last epoch always


def test_checkpoint_of_another_config_is_refused(tmp_path):
    train(RunConfig(**dict(TINY, epochs=1)), checkpoint_dir=tmp_path)
    with pytest.raises(ConfigError, match=r"written for another config \(lr=0.05, now 0.1\)"):
        train(RunConfig(**dict(TINY, epochs=1, lr=0.1)), checkpoint_dir=tmp_path)


def test_checkpoint_from_before_a_key_existed_resumes_as_its_default(tmp_path):
    """A checkpoint written before the init key existed was trained with its default (authors)."""
    import torch

    from bigbatch.train import CHECKPOINT

    full = train(RunConfig(**dict(TINY, epochs=2)), checkpoint_dir=tmp_path)
    state = torch.load(tmp_path / CHECKPOINT, weights_only=True)
    del state["config"]["init"]  # as an older bigbatch wrote it
    torch.save(state, tmp_path / CHECKPOINT)
    with pytest.raises(ConfigError, match=r"another config \(init='authors', now 'torch'\)"):
        train(RunConfig(**dict(TINY, epochs=2, init="torch")), checkpoint_dir=tmp_path)
    again = train(RunConfig(**dict(TINY, epochs=2)), report=lambda m: pytest.fail("finished: no epoch should run"),
                  checkpoint_dir=tmp_path)
    assert again["test_acc"] == full["test_acc"]


def test_interrupted_checkpoint_write_keeps_the_previous_one(tmp_path, monkeypatch):
    cfg = RunConfig(**dict(TINY, epochs=3))
    real_save = torch.save
    calls = {"n": 0}

    def torn_save(obj, f, *a, **k):
        calls["n"] += 1
        if isinstance(obj, dict) and obj.get("epoch") == 2:
            f.write(b"half a checkpoint")
            raise OSError("disk full")
        return real_save(obj, f, *a, **k)

    monkeypatch.setattr(torch, "save", torn_save)
    with pytest.raises(OSError):
        train(cfg, checkpoint_dir=tmp_path)
    monkeypatch.setattr(torch, "save", real_save)
    state = torch.load(tmp_path / CHECKPOINT, weights_only=True)
    assert state["epoch"] == 1  # the epoch-1 checkpoint is intact
    seen = []
    train(cfg, report=seen.append, checkpoint_dir=tmp_path)
    assert [m["epoch"] for m in seen] == [2, 3]


def test_batch_larger_than_training_set():
    with pytest.raises(ConfigError, match=r"batch_size=512 is larger than the training set \(256 images\)"):
        train(RunConfig(**dict(TINY, batch_size=512)))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without a GPU")
def test_missing_gpu_is_a_clear_error():
    with pytest.raises(TrainingError, match="device='cuda' but no CUDA GPU is visible"):
        train(RunConfig(**dict(TINY, device="cuda")))


# ---- CLI ----
def _cli(args, cwd):
    return subprocess.run([sys.executable, "-m", "bigbatch.train", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=300)


def test_cli_prints_json_lines_and_resumes(tmp_path):
    sets = ["--set", *(f"{k}={json.dumps(v)}" for k, v in dict(TINY, epochs=2).items())]
    r = _cli(["--config", "exp3", *sets, "--checkpoint-dir", str(tmp_path / "ck")], ROOT)
    assert r.returncode == 0, r.stderr
    lines = [json.loads(line) for line in r.stdout.splitlines()]
    assert [m["epoch"] for m in lines[:-1]] == [1, 2]
    summary = lines[-1]["summary"]
    assert summary["status"] == "completed" and summary["config"]["norm"] == "ghost"
    r2 = _cli(["--config", "exp3", *sets, "--checkpoint-dir", str(tmp_path / "ck")], ROOT)
    assert json.loads(r2.stdout.splitlines()[-1])["summary"]["test_acc"] == summary["test_acc"]


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--config", "{missing}"], "config file not found"),
        (["--config", "{bad}"], "malformed JSON"),
        (["--set", "batch_sise=64"], "unknown config key 'batch_sise'"),
        (["--set", "batch_size=0"], "batch_size must be a positive integer"),
        (["--set", "batch_size=abc"], "batch_size must be int"),
        (["--config", "exp9"], "config file not found"),
        (["--config", "exp5", "--recipe", "nope"], "unknown recipe 'nope'"),
        (["--set", "dataset=synthetic", "val_size=5000"], "val_size"),
        (["--set", "dataset=cifar10", "download=false", "data_dir={missing}"], "not found"),
        (["--set", "dataset=synthetic", "device=cuda"] if not torch.cuda.is_available() else ["--set", "device=cuda:99"], "GPU"),
    ],
)
def test_cli_bad_input_exits_2_with_one_line(args, fragment, tmp_path, capsys):
    (tmp_path / "bad.json").write_text('{"batch_size": ')
    args = [a.format(missing=tmp_path / "nope", bad=tmp_path / "bad.json") for a in args]
    code = main(args)
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: ") and err.count("\n") == 1 and fragment in err, err


def _scripted_val(monkeypatch, accs, states):
    """Make validation return scripted accuracies; remember the model state at each epoch's validation."""
    accs = iter(accs)
    real_eval = train_mod.evaluate

    def fake_eval(run, dataset, augment=False):
        if dataset is run.data.val:
            states[run.epoch + 1] = {k: v.clone() for k, v in train_mod.raw_model(run).state_dict().items()}
            return 1.0, next(accs)
        return real_eval(run, dataset, augment)

    monkeypatch.setattr(train_mod, "evaluate", fake_eval)


def _same_state(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_best_model_file_follows_an_improvement_between_checkpoints(tmp_path, monkeypatch):
    """checkpoint_every=2: the best epoch (3) is not a checkpoint epoch and epoch 4 does not improve;
    best_model.pt (the MLflow artifact) must still hold epoch 3's weights."""
    states = {}
    _scripted_val(monkeypatch, [10.0, 50.0, 90.0, 20.0], states)
    summary = train(RunConfig(**dict(TINY, epochs=4)), checkpoint_dir=tmp_path, checkpoint_every=2)
    assert summary["best_epoch"] == 3
    assert _same_state(torch.load(tmp_path / BEST_MODEL, weights_only=True), states[3])


def test_last_checkpoint_carries_the_best_model_only_when_it_changed(tmp_path, monkeypatch):
    states = {}
    _scripted_val(monkeypatch, [50.0, 10.0], states)
    cfg = RunConfig(**dict(TINY, epochs=2))

    def look(m):
        best = torch.load(tmp_path / CHECKPOINT, weights_only=True)["best"]
        assert (best["state"] is not None) == (m["epoch"] == 1), m["epoch"]  # epoch 2 did not improve

    train(cfg, report=look, checkpoint_dir=tmp_path)
    assert _same_state(torch.load(tmp_path / BEST_MODEL, weights_only=True), states[1])


def test_crash_between_last_and_best_files_resumes_exactly(tmp_path, monkeypatch):
    cfg = RunConfig(**STATEFUL)
    full = train(cfg)
    real_save = train_mod._atomic_save

    def crash_on_best(obj, path):
        if path.name == BEST_MODEL:
            raise Stop  # last.pt of this epoch is complete, best_model.pt is not written
        real_save(obj, path)

    monkeypatch.setattr(train_mod, "_atomic_save", crash_on_best)
    with pytest.raises(Stop):
        train(cfg, checkpoint_dir=tmp_path)
    assert (tmp_path / CHECKPOINT).exists() and not (tmp_path / BEST_MODEL).exists()
    monkeypatch.setattr(train_mod, "_atomic_save", real_save)
    resumed = train(cfg, checkpoint_dir=tmp_path)
    assert _strip(resumed["history"]) == _strip(full["history"])
    assert (resumed["test_acc"], resumed["best_epoch"]) == (full["test_acc"], full["best_epoch"])
    assert (tmp_path / BEST_MODEL).exists()
