"""sweeps.tracking without Ray: the parent run is made once, a trial's run is found again after a restart
(by the id in its checkpoint directory, or by its trial_id tag), epochs are logged once, and a tracking
server that goes away mid-run buffers epochs instead of killing the trial."""

from __future__ import annotations

import json

import pytest

from bigbatch.config import RunConfig
from sweeps.tracking import PENDING_FILE, RUN_FILE, TrialLogger, check_tracking, TrackingError, setup_sweep


def epoch(e: int) -> dict:
    return dict(epoch=e, train_loss=1.0 / e, train_acc=10.0 * e, val_loss=1.0 / e, val_acc=10.0 * e, lr=0.1, momentum=0.0,
                epoch_seconds=1.0, images_per_second=100.0, best_val_acc=10.0 * e, best_epoch=e, checkpointed=True)


@pytest.fixture
def sweep(tmp_path):
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    exp_id, parent = setup_sweep(uri, "bigbatch-exp6", "s1", {"bigbatch.experiment": "exp6"}, {"num_trials": 1})
    assert setup_sweep(uri, "bigbatch-exp6", "s1", {}, {}) == (exp_id, parent)  # found again, not duplicated
    return {"tracking_uri": uri, "experiment_id": exp_id, "parent_run_id": parent, "sweep_name": "s1", "paper_row": "row",
            "search": "grid", "git_commit": "abc"}


def steps(logger: TrialLogger, key: str = "val_acc") -> list[int]:
    return [m.step for m in logger.client.get_metric_history(logger.run_id, key)]


def test_restarted_trial_reopens_its_run_and_logs_each_epoch_once(sweep, tmp_path):
    cfg = RunConfig(experiment="exp6", dataset="synthetic")
    d = tmp_path / "ckpt"
    d.mkdir()
    a = TrialLogger(sweep, cfg, "t1", "exp6 bs=32 f=10 seed=0", d, "cpu")
    run_id = a.start()
    assert json.loads((d / RUN_FILE).read_text())["run_id"] == run_id
    a.log_epoch(epoch(1))
    a.log_epoch(epoch(2))
    a.log_epoch(epoch(2))  # a duplicate report
    b = TrialLogger(sweep, cfg, "t1", "exp6 bs=32 f=10 seed=0", d, "cpu")  # restored from the checkpoint dir
    assert b.start() == run_id
    for e in (2, 3):  # epoch 2 re-run after a resume from the epoch-1 checkpoint
        b.log_epoch(epoch(e))
    c = TrialLogger(sweep, cfg, "t1", "x", tmp_path / "empty", "cpu")  # killed before its first checkpoint persisted
    (tmp_path / "empty").mkdir()
    assert c.start() == run_id  # found by its trial_id tag
    b.finish({"status": "completed", "best_val_acc": 30.0, "best_epoch": 3, "test_acc": 29.0, "test_loss": 1.0,
              "train_seconds": 3.0, "epochs_run": 3})
    assert steps(b) == [1, 2, 3] and steps(b, "lr") == [1, 2, 3]
    run = b.client.get_run(run_id)
    assert run.data.tags["bigbatch.status"] == "completed" and run.data.metrics["test_acc"] == 29.0
    assert run.data.tags["mlflow.parentRunId"] == sweep["parent_run_id"]
    assert len(b.client.search_runs([sweep["experiment_id"]], "tags.`bigbatch.role` = 'trial'")) == 1


def test_unreachable_tracking_server_buffers_then_flushes(sweep, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    with pytest.raises(TrackingError, match="unreachable"):
        check_tracking("http://127.0.0.1:9")
    cfg = RunConfig(experiment="exp6", dataset="synthetic")
    d = tmp_path / "ckpt"
    d.mkdir()
    dead = {**sweep, "tracking_uri": "http://127.0.0.1:9"}
    logger = TrialLogger(dead, cfg, "t2", "exp6 bs=64", d, "cpu")
    assert logger.start() is None  # no exception: the trial goes on
    logger.log_epoch(epoch(1))
    logger.log_epoch(epoch(2))
    assert [p["epoch"] for p in json.loads((d / PENDING_FILE).read_text())] == [1, 2]  # travels with the checkpoint
    assert capsys.readouterr().err.count("warning: MLflow") == 1  # warned once
    # the server is back (here: the sweep's real store); a restarted trial reads the pending epochs from its directory
    again = TrialLogger(sweep, cfg, "t2", "exp6 bs=64", d, "cpu")
    again.log_epoch(epoch(3))
    assert steps(again) == [1, 2, 3] and not (d / PENDING_FILE).exists()


def test_diverged_run_is_a_result(sweep, tmp_path):
    cfg = RunConfig(experiment="exp3", dataset="synthetic", batch_size=1024)
    d = tmp_path / "ckpt"
    d.mkdir()
    logger = TrialLogger(sweep, cfg, "t3", "exp3 bs=1024 seed=0", d, "cpu")
    logger.start()
    logger.log_epoch(epoch(1))
    logger.finish({"status": "diverged", "best_val_acc": 10.0, "best_epoch": 0, "test_acc": 10.0, "test_loss": float("nan"),
                   "train_seconds": 1.0, "epochs_run": 1, "diverged_epoch": 2})
    run = logger.client.get_run(logger.run_id)
    assert run.info.status == "FINISHED" and run.data.tags["bigbatch.status"] == "diverged"
    assert run.data.tags["bigbatch.diverged_epoch"] == "2" and run.data.metrics["test_acc"] == 10.0
