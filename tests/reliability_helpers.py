"""Helpers of the reliability tests (tests/test_reliability_*.py, tests/test_determinism.py).

Every CLI runs as a subprocess in its own session (``start_new_session=True``) with a unique
``BIGBATCH_TEST_TAG`` in its environment; Ray's raylet, GCS and workers inherit it, so after a kill the
tests find every process the run started, wherever Ray re-parented or re-grouped it (trial workers have
process groups of their own), and make sure none is left running.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
TIMING_KEYS = ("epoch_seconds", "images_per_second", "train_seconds", "gns_seconds", "sharpness_seconds")
EPOCH_KEYS = ("train_loss", "train_acc", "val_loss", "val_acc", "lr", "momentum")  # deterministic per-epoch metrics


FAULT_ENV = "BIGBATCH_FAULT_INJECT"  # a fault to inject, read by tests/fault_inject/sitecustomize.py
FAULT_DIR = Path(__file__).resolve().parent / "fault_inject"


def env(**extra: str) -> dict[str, str]:
    e = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(REPO),
         "BIGBATCH_TEST_TAG": f"reliability-{uuid.uuid4().hex}"}
    e.pop(FAULT_ENV, None)
    e.update(extra)
    if FAULT_ENV in extra:  # every Python process of the run, Ray's workers included, imports the hook at start-up
        e["PYTHONPATH"] = os.pathsep.join([str(FAULT_DIR), e["PYTHONPATH"]])
    return e


def tagged_pids(tag: str) -> list[int]:
    """Live processes whose environment holds ``BIGBATCH_TEST_TAG=tag``."""
    needle = f"BIGBATCH_TEST_TAG={tag}".encode()
    pids = []
    for d in os.listdir("/proc"):
        if not d.isdigit() or int(d) == os.getpid():
            continue
        try:
            with open(f"/proc/{d}/environ", "rb") as f:
                if needle in f.read().split(b"\0"):
                    with open(f"/proc/{d}/stat") as s:
                        if s.read().rsplit(")", 1)[1].split()[0] != "Z":  # zombies are not running
                            pids.append(int(d))
        except OSError:
            continue
    return pids


def reap(proc: subprocess.Popen, tag: str, grace: float = 30.0) -> list[int]:
    """SIGKILL the process group of ``proc``, then wait for every tagged process to exit.

    Returns the pids still alive after ``grace`` seconds (then SIGKILLed one by one, by pid)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()
    deadline = time.time() + grace
    while time.time() < deadline and tagged_pids(tag):
        time.sleep(0.5)
    left = tagged_pids(tag)
    for pid in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return left


def start(args: list[str], cwd: Path, log: Path, **extra: str) -> tuple[subprocess.Popen, str]:
    e = env(**extra)
    with open(log, "w") as f:
        proc = subprocess.Popen([sys.executable, *args], cwd=cwd, env=e, stdout=f, stderr=subprocess.STDOUT,
                                start_new_session=True)
    return proc, e["BIGBATCH_TEST_TAG"]


def run(args: list[str], cwd: Path, timeout: float = 300, **extra: str) -> subprocess.CompletedProcess:
    """Run a CLI to its end (its own session; on a timeout the whole session is killed)."""
    e = env(**extra)
    proc = subprocess.Popen([sys.executable, *args], cwd=cwd, env=e, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        reap(proc, e["BIGBATCH_TEST_TAG"], grace=5)
        raise
    reap(proc, e["BIGBATCH_TEST_TAG"], grace=20)  # Ray helpers still shutting down: gone, or killed by pid
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate, timeout: float, what: str, proc: subprocess.Popen | None = None, log: Path | None = None,
             poll: float = 0.1) -> None:
    deadline = time.time() + timeout
    while not predicate():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"exited {proc.returncode} before {what}:\n" + (log.read_text()[-4000:] if log else ""))
        if time.time() > deadline:
            raise AssertionError(f"no {what} within {timeout:.0f} s:\n" + (log.read_text()[-4000:] if log else ""))
        time.sleep(poll)


# ---------------------------------------------------------------------------------------------- MLflow
def trial_runs(uri: str, experiment: str) -> list[Any]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None, f"no MLflow experiment {experiment} in {uri}"
    return [r for r in client.search_runs([exp.experiment_id], max_results=1000)
            if r.data.tags.get("bigbatch.role") == "trial"]


def trial_results(uri: str, experiment: str = "bigbatch-exp6") -> dict[tuple, dict[str, Any]]:
    """(batch_size, lr, seed) -> status, summary metrics and the per-epoch history of every trial run.

    Fails on duplicates: two runs of one trial, or a metric step logged twice."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    out: dict[tuple, dict[str, Any]] = {}
    for run in trial_runs(uri, experiment):
        p = run.data.params
        key = (int(p["batch_size"]), float(p["lr"]), int(p["seed"]))
        assert key not in out, f"two MLflow runs for trial {key}"
        hist = {}
        for name in EPOCH_KEYS:
            points = client.get_metric_history(run.info.run_id, name)
            steps = [m.step for m in points]
            assert len(steps) == len(set(steps)), f"duplicate steps of {name} in {key}: {steps}"
            hist[name] = [m.value for m in sorted(points, key=lambda m: m.step)]
            hist[name + ".steps"] = sorted(steps)
        out[key] = {
            "status": run.data.tags.get("bigbatch.status"),
            "mlflow_status": run.info.status,
            "error": run.data.tags.get("bigbatch.error"),
            "trial_id": run.data.tags.get("bigbatch.trial_id"),
            "summary": {k: run.data.metrics.get(k) for k in ("best_val_acc", "best_epoch", "test_acc", "test_loss")},
            "history": hist,
        }
    return out
