"""sweeps.tracking without Ray: the parent run is made once, a trial's run is found again after a restart
(by the id in its checkpoint directory, or by its trial_id tag), epochs are logged once, and a tracking
server that goes away mid-run costs no epoch: the trial goes on, and the epochs MLflow lacks are logged
from the training history (in memory, or the checkpoint's last.pt after a restart)."""

from __future__ import annotations

import json

import pytest
import torch

from bigbatch.config import RunConfig
from bigbatch.experiments import load_experiment
from bigbatch.schema import CHECKPOINT, RUN_FILE
from bigbatch.train import train
from sweeps.tracking import (SweepRun, TrackingError, TrialInfo, TrialLogger, check_tracking, checkpoint_history, mlflow_client, open_sweep,
                            run_params)


def epoch(e: int) -> dict:
    return dict(epoch=e, train_loss=1.0 / e, train_acc=10.0 * e, val_loss=1.0 / e, val_acc=10.0 * e, lr=0.1, momentum=0.0,
                epoch_seconds=1.0, images_per_second=100.0, best_val_acc=10.0 * e, best_epoch=e, checkpointed=True)


@pytest.fixture
def sweep(tmp_path) -> SweepRun:
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    exp = load_experiment("exp6")
    kw = dict(dataset="synthetic", search="grid", smoke_test=True, params={"num_trials": 1})
    run = open_sweep(uri, exp, "s1", **kw)
    assert run.mlflow_experiment == "bigbatch-exp6" and run.paper_row == exp.label
    assert open_sweep(uri, exp, "s1", **kw) == run  # found again, not duplicated
    return run


def logger_for(sweep: SweepRun, cfg: RunConfig, trial_id: str, label: str, d, **kw) -> TrialLogger:
    return TrialLogger(sweep, TrialInfo(cfg, trial_id, label, "cpu"), d, **kw)


def steps(logger: TrialLogger, key: str = "val_acc") -> list[int]:
    return [m.step for m in logger.client.get_metric_history(logger.run_id, key)]


def test_restarted_trial_reopens_its_run_and_logs_each_epoch_once(sweep, tmp_path):
    cfg = RunConfig(experiment="exp6", dataset="synthetic")
    d = tmp_path / "ckpt"
    d.mkdir()
    a = logger_for(sweep, cfg, "t1", "exp6 bs=32 f=10 seed=0", d)
    run_id = a.start()
    assert json.loads((d / RUN_FILE).read_text())["run_id"] == run_id
    a.log_epoch(epoch(1))
    a.log_epoch(epoch(2))
    a.log_epoch(epoch(2))  # a duplicate report
    b = logger_for(sweep, cfg, "t1", "exp6 bs=32 f=10 seed=0", d)  # restored from the checkpoint dir
    assert b.start() == run_id
    for e in (2, 3):  # epoch 2 re-run after a resume from the epoch-1 checkpoint
        b.log_epoch(epoch(e))
    c = logger_for(sweep, cfg, "t1", "x", tmp_path / "empty")  # killed before its first checkpoint persisted
    (tmp_path / "empty").mkdir()
    assert c.start() == run_id  # found by its trial_id tag
    b.finish({"status": "completed", "best_val_acc": 30.0, "best_epoch": 3, "test_acc": 29.0, "test_loss": 1.0,
              "train_seconds": 3.0, "epochs_run": 3})
    assert steps(b) == [1, 2, 3] and steps(b, "lr") == [1, 2, 3]
    run = b.client.get_run(run_id)
    assert run.data.tags["bigbatch.status"] == "completed" and run.data.metrics["test_acc"] == 29.0
    assert run.data.tags["mlflow.parentRunId"] == sweep.parent_run_id
    assert len(b.client.search_runs([sweep.experiment_id], "tags.`bigbatch.role` = 'trial'")) == 1


def test_unreachable_tracking_server_loses_no_epoch(sweep, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    with pytest.raises(TrackingError, match="unreachable"):
        check_tracking("http://127.0.0.1:9")
    cfg = RunConfig(experiment="exp6", dataset="synthetic")
    d = tmp_path / "ckpt"
    d.mkdir()
    dead = SweepRun(**{**sweep.to_json(), "tracking_uri": "http://127.0.0.1:9"})
    logger = logger_for(dead, cfg, "t2", "exp6 bs=64", d)
    assert logger.start() is None  # no exception: the trial goes on
    logger.log_epoch(epoch(1))
    logger.log_epoch(epoch(2))
    assert logger.unsent() == [1, 2]
    assert capsys.readouterr().err.count("warning: MLflow") == 1  # warned once
    # The trial is restored elsewhere from its checkpoint (bigbatch.train keeps the history in last.pt) and
    # the server is back (here: the sweep's real store): the epochs MLflow lacks come from that history.
    torch.save({"epoch": 2, "history": [epoch(1), epoch(2)]}, d / CHECKPOINT)
    again = logger_for(sweep, cfg, "t2", "exp6 bs=64", d)
    assert again.unsent() == [1, 2]
    again.log_epoch(epoch(3))
    assert steps(again) == [1, 2, 3] and again.unsent() == []
    again.log_epoch(epoch(3))  # a re-run epoch (Tune's resume is at-least-once): not logged twice
    assert steps(again) == [1, 2, 3]


@pytest.mark.slow
def test_checkpoint_history_reads_what_train_saves(tmp_path):
    cfg = RunConfig(dataset="synthetic", synthetic_size=384, val_size=128, width_mult=0.125, epochs=2, eval_batch_size=256,
                    device="cpu")
    seen = []
    summary = train(cfg, report=seen.append, checkpoint_dir=tmp_path)
    history = checkpoint_history(tmp_path)
    assert [m["epoch"] for m in history] == [1, 2] and history == summary["history"]
    assert all(history[i]["val_acc"] == seen[i]["val_acc"] for i in range(2))
    assert checkpoint_history(tmp_path / "nowhere") == []


def test_diverged_run_is_a_result(sweep, tmp_path):
    cfg = RunConfig(experiment="exp3", dataset="synthetic", batch_size=1024)
    d = tmp_path / "ckpt"
    d.mkdir()
    logger = logger_for(sweep, cfg, "t3", "exp3 bs=1024 seed=0", d)
    logger.start()
    logger.log_epoch(epoch(1))
    logger.finish({"status": "diverged", "best_val_acc": 10.0, "best_epoch": 0, "test_acc": 10.0, "test_loss": float("nan"),
                   "train_seconds": 1.0, "epochs_run": 1, "diverged_epoch": 2})
    run = logger.client.get_run(logger.run_id)
    assert run.info.status == "FINISHED" and run.data.tags["bigbatch.status"] == "diverged"
    assert run.data.tags["bigbatch.diverged_epoch"] == "2" and run.data.metrics["test_acc"] == 10.0


def test_git_commit_is_the_one_the_process_started_with(tmp_path):
    """A table run of an hour records the commit of the code it imported, not HEAD at its end."""
    import subprocess

    from bigbatch.schema import git_commit

    def git(*args):
        return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=tmp_path,
                              check=True, capture_output=True, text=True).stdout.strip()

    git("init", "-q")
    (tmp_path / "f").write_text("1")
    git("add", "f")
    git("commit", "-qm", "one")
    first = git("rev-parse", "HEAD")
    assert git_commit(tmp_path) == first
    (tmp_path / "f").write_text("2")
    git("commit", "-qam", "two")
    assert git("rev-parse", "HEAD") != first and git_commit(tmp_path) == first
    assert git_commit(tmp_path / "no-such-repo") == "unknown"


@pytest.mark.parametrize("fails", ["log_inputs", "log_batch"])
def test_a_start_that_failed_halfway_is_finished_by_the_next_call(sweep, tmp_path, capsys, fails):
    """Two trials of the mini preset's exp6 started at once: the second one's log_inputs lost MLflow's
    check-then-insert race for the shared dataset row (sqlite3.IntegrityError: UNIQUE constraint failed:
    datasets...), and its run kept no dataset inputs. Here the first start fails at that step (or earlier,
    logging the params); the next epoch's call fills in what the run lacks, and nothing twice."""
    from dataclasses import asdict

    from mlflow.exceptions import MlflowException

    from bigbatch.data import prepare_data

    cfg = RunConfig(experiment="exp6", dataset="synthetic", synthetic_size=256, val_size=64)
    d = tmp_path / "ckpt"
    d.mkdir()
    logger = TrialLogger(sweep, TrialInfo(cfg, "t4", "exp6 bs=64", "cpu", asdict(prepare_data(cfg))), d)
    real = getattr(logger.client, fails)
    tries = []

    def flaky(*args, **kwargs):
        if fails == "log_inputs" or kwargs.get("params"):
            tries.append(1)
            if len(tries) == 1:
                raise MlflowException("(sqlite3.IntegrityError) UNIQUE constraint failed: datasets.experiment_id, datasets.name")
        return real(*args, **kwargs)

    setattr(logger.client, fails, flaky)
    run_id = logger.start()
    assert run_id is not None and "warning: MLflow start failed for trial t4" in capsys.readouterr().err
    run = logger.client.get_run(run_id)
    assert not run.inputs.dataset_inputs
    logger.log_epoch(epoch(1))
    logger.log_epoch(epoch(2))
    run = logger.client.get_run(run_id)
    assert sorted(i.dataset.name for i in run.inputs.dataset_inputs) == ["synthetic-test", "synthetic-train", "synthetic-val"]
    assert run.data.params["val_size"] == "64" and len(run.data.params) == len(run_params(cfg))
    assert [a.path for a in logger.client.list_artifacts(run_id)] == ["config.json"]
    assert run.info.status == "RUNNING" and steps(logger) == [1, 2]
    assert len(tries) == 2  # the failed try and one more


def test_a_restarted_trial_fills_in_what_its_run_lacks(sweep, tmp_path):
    """A trial killed after its run was created but before the params reached it (an old store, or a
    crash): when it is restarted from its checkpoint directory, its run gets them, and keeps its id."""
    cfg = RunConfig(experiment="exp6", dataset="synthetic")
    d = tmp_path / "ckpt"
    d.mkdir()
    a = logger_for(sweep, cfg, "t5", "exp6 bs=128", d)
    bare = a.client.create_run(sweep.experiment_id, run_name="exp6 bs=128", tags=a.tags()).info.run_id
    (d / RUN_FILE).write_text(json.dumps({"run_id": bare, "tracking_uri": sweep.tracking_uri}))
    a.client.set_terminated(bare, status="FAILED")
    assert a.start() == bare
    run = a.client.get_run(bare)
    assert run.info.status == "RUNNING" and run.data.params["experiment"] == "exp6"
    assert [x.path for x in a.client.list_artifacts(bare)] == ["config.json"]


def test_the_driver_makes_the_dataset_rows_so_trials_that_start_together_do_not_race(sweep, tmp_path):
    """MLflow makes an experiment's dataset rows by check-then-insert at a run's first log_inputs: trials
    that start together raced for them (a UNIQUE constraint error in the mini table run and in make demo).
    log_sweep_inputs makes them on the parent run first; a trial then adds no dataset row, only its link."""
    import sqlite3

    from sweeps.space import SweepContext, build_space, prepare_space_data
    from sweeps.tracking import log_sweep_inputs, mlflow_client

    space = build_space(load_experiment("exp6"), batch_sizes=[64, 128], seeds=2, smoke_test=True)
    ctx = SweepContext(space.base, sweep, (), 1, prepare_space_data(space))
    trials = ctx.trial_datasets(space)
    assert len(trials) == 4  # 2 batch sizes x 2 seeds, all on the prepared synthetic set
    db = sweep.tracking_uri.removeprefix("sqlite:///")
    rows = lambda: sqlite3.connect(db).execute("select count(*) from datasets").fetchone()[0]  # noqa: E731
    assert rows() == 0
    log_sweep_inputs(sweep, trials)
    log_sweep_inputs(sweep, trials)  # repeated (a resumed sweep): nothing twice
    parent = mlflow_client(sweep.tracking_uri).get_run(sweep.parent_run_id)
    assert sorted(i.dataset.name for i in parent.inputs.dataset_inputs) == ["synthetic-test", "synthetic-train", "synthetic-val"]
    assert rows() == 3
    cfg, info = trials[0]
    d = tmp_path / "ckpt"
    d.mkdir()
    logger = TrialLogger(sweep, TrialInfo(cfg, "t6", "exp6 bs=64", "cpu", info), d)
    logger.start()
    assert len(logger.client.get_run(logger.run_id).inputs.dataset_inputs) == 3 and rows() == 3



def test_init_key_is_a_logged_param():
    from bigbatch.config import RunConfig

    assert run_params(RunConfig(init="torch"))["init"] == "torch"
    assert run_params(RunConfig())["init"] == "authors"


RACE = """
import sys, time
from bigbatch.experiments import load_experiment
from sweeps.tracking import open_sweep
start = float(sys.argv[3])
while time.time() < start:  # every process reaches the new store at the same moment
    time.sleep(0.001)
run = open_sweep(sys.argv[1], load_experiment(sys.argv[2]), sys.argv[2] + "-sweep", dataset="synthetic", search="grid",
                 smoke_test=True, params={{}})
print(run.parent_run_id)
"""


@pytest.mark.slow
def test_sweeps_started_at_once_into_one_new_store_all_open(tmp_path):
    """Two sweeps started together (exp5 and exp6 in two terminals) and two of the same experiment: MLflow's
    schema creation and get-or-create of the experiment race in a new SQLite store unless serialised."""
    import subprocess
    import sys
    import time

    from bigbatch.experiments import load_experiment  # noqa: F401 (import cost paid before the clock)

    uri = f"sqlite:///{tmp_path / 'new.db'}"
    start = time.time() + 8  # after every interpreter has imported mlflow
    procs = [subprocess.Popen([sys.executable, "-c", RACE.format(), uri, exp, str(start)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for exp in ("exp5", "exp6", "exp6", "exp5")]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0, 0], [err.strip().splitlines()[-1:] for _, err in outs]
    client = mlflow_client(uri)
    names = sorted(e.name for e in client.search_experiments())
    assert names == ["Default", "bigbatch-exp5", "bigbatch-exp6"]  # each experiment once
