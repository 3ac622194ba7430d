"""MLflow logging for the sweeps: the schema of docs/architecture.md, resume-safe and failure-tolerant.

Design: the driver creates the MLflow experiment and the sweep's parent run *before* any trial starts
(one writer while a fresh SQLite DB runs its migrations), and each trial logs its own child run from
inside the trial process (``TrialLogger``). Logging from the trial (rather than a driver callback)
because

- the trial owns its checkpoint directory, so the child run id travels with the checkpoint
  (``mlflow_run.json`` beside ``last.pt``): a trial restored by ``--resume`` or retried after a failure
  reopens the same run instead of creating a second one;
- the trial has the artifacts (``best_model.pt``) on its own node; a driver callback on a cluster would
  not see them;
- on a cluster it only needs a tracking URI every node reaches (``mlflow server``, http://...); with a
  SQLite URI the DB file must be on a filesystem every node shares (fine on one machine).

Every epoch is logged once per (run, step): the steps already in the run are read when the trial
(re)starts, and re-run epochs (Tune's resume is at-least-once) are skipped. A tracking server that is
unreachable mid-sweep does not kill trials: epochs are buffered (in memory and in the checkpoint
directory), a warning is printed, and they are sent at the next epoch that reaches the server.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from bigbatch.config import RunConfig

EPOCH_METRICS = ("train_loss", "train_acc", "val_loss", "val_acc", "lr", "momentum", "epoch_seconds", "images_per_second")
SUMMARY_METRICS = ("best_val_acc", "best_epoch", "test_acc", "test_loss", "train_seconds")
RUN_FILE = "mlflow_run.json"  # in the trial's checkpoint directory, next to last.pt
PENDING_FILE = "mlflow_pending.json"  # epochs not yet accepted by the tracking server
STEP_KEY = "val_acc"  # the metric whose steps mark an epoch as logged (epochs go in one log_batch)


class TrackingError(RuntimeError):
    """The tracking store cannot be used (one line, for a user)."""


# ---------------------------------------------------------------------------------------------- URIs
def default_tracking_uri(cwd: str | Path | None = None) -> str:
    """``sqlite:////abs/cwd/mlflow.db``: absolute, because trials run in their own directories."""
    return "sqlite:///" + str(Path(cwd or os.getcwd()).resolve() / "mlflow.db")


def normalize_tracking_uri(uri: str) -> str:
    """Make a relative SQLite path or a bare path absolute (trials chdir)."""
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return "sqlite:///" + str(Path(uri[len("sqlite:///"):]).resolve())
    if "://" not in uri:
        raise TrackingError(f"tracking URI {uri!r} needs a scheme: sqlite:///path.db or http://host:5000")
    return uri


def _sqlite_path(uri: str) -> Path | None:
    return Path(uri[len("sqlite:///"):]) if uri.startswith("sqlite:///") else None


def artifact_root(uri: str) -> str | None:
    """Where a new experiment keeps artifacts: beside a SQLite DB; the server decides for http."""
    path = _sqlite_path(uri)
    return (path.parent / "mlartifacts").as_uri() if path is not None else None


def check_tracking(uri: str, timeout: float = 5.0) -> None:
    """Fail fast (TrackingError) when the tracking store cannot be reached or written."""
    path = _sqlite_path(uri)
    if path is not None:
        parent = path.parent
        try:
            parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise TrackingError(f"cannot create the MLflow DB directory {parent}: {e.strerror}") from None
        if not os.access(parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
            raise TrackingError(f"the MLflow DB {path} is not writable")
        return
    if uri.startswith(("http://", "https://")):
        url = uri.rstrip("/") + "/health"
        try:
            with urllib.request.urlopen(url, timeout=timeout) as r:
                r.read(64)
        except urllib.error.HTTPError as e:  # the server answered: reachable (maybe no /health behind a proxy)
            if e.code >= 500:
                raise TrackingError(f"MLflow tracking server {uri} answered {e.code} {e.reason}") from None
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise TrackingError(f"MLflow tracking server {uri} is unreachable ({reason}); start it with `mlflow server` or pass --tracking-uri") from None


def _client(uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


# ---------------------------------------------------------------------------------------------- provenance
def git_commit(repo: str | Path | None = None) -> str:
    repo = repo or Path(__file__).resolve().parent.parent
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, timeout=10)
        commit = out.stdout.strip()
        if out.returncode != 0 or not commit:
            return "unknown"
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo, capture_output=True, text=True, timeout=10)
        return commit + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def versions() -> dict[str, str]:
    import ray
    import torch

    import mlflow

    return {"bigbatch.torch_version": torch.__version__, "bigbatch.ray_version": ray.__version__, "bigbatch.mlflow_version": mlflow.__version__}


def run_params(cfg: RunConfig) -> dict[str, str]:
    """Every RunConfig key (lists as JSON) plus the derived values."""
    params = {k: json.dumps(v) if isinstance(v, (list, tuple, dict)) else str(v) for k, v in cfg.to_dict().items()}
    params.update(scaled_lr=repr(cfg.scaled_lr), total_epochs=str(cfg.total_epochs), scaled_factor_lr=repr(cfg.scaled_factor_lr))
    return params


# ---------------------------------------------------------------------------------------------- driver side
def setup_sweep(
    uri: str,
    experiment_name: str,
    sweep_name: str,
    tags: dict[str, str],
    params: dict[str, Any],
    parent_run_id: str | None = None,
) -> tuple[str, str]:
    """Create (or find) the MLflow experiment and the sweep's parent run; returns their ids.

    Runs on the driver before any trial: a fresh SQLite DB is migrated here, by one process.
    With ``parent_run_id`` (a resumed sweep) the parent run is reopened instead of created.
    """
    from mlflow.entities import Param, RunTag

    client = _client(uri)
    try:
        exp = client.get_experiment_by_name(experiment_name)
        if exp is None:
            experiment_id = client.create_experiment(experiment_name, artifact_location=artifact_root(uri))
        else:
            experiment_id = exp.experiment_id
            if exp.lifecycle_stage == "deleted":
                client.restore_experiment(experiment_id)
        if parent_run_id is not None:
            client.update_run(parent_run_id, status="RUNNING")
            return experiment_id, parent_run_id
        found = client.search_runs(
            [experiment_id],
            filter_string=f"tags.`bigbatch.sweep` = '{sweep_name}' and tags.`bigbatch.role` = 'sweep'",
            max_results=1,
        )
        if found:
            run_id = found[0].info.run_id
            client.update_run(run_id, status="RUNNING")
            return experiment_id, run_id
        run = client.create_run(experiment_id, run_name=sweep_name, tags={**tags, "bigbatch.role": "sweep", "bigbatch.sweep": sweep_name})
        client.log_batch(run.info.run_id, params=[Param(k, str(v)[:6000]) for k, v in params.items()], tags=[RunTag("bigbatch.status", "running")])
        return experiment_id, run.info.run_id
    except TrackingError:
        raise
    except Exception as e:  # any MLflow/DB failure at start: one line for the user
        raise TrackingError(f"cannot set up MLflow at {uri}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None


def finish_sweep(uri: str, parent_run_id: str, status: str, summary: dict[str, Any] | None = None) -> None:
    """Close the parent run: FINISHED / FAILED / KILLED; best effort."""
    try:
        client = _client(uri)
        for k, v in (summary or {}).items():
            client.log_metric(parent_run_id, k, float(v))
        client.set_tag(parent_run_id, "bigbatch.status", {"FINISHED": "completed", "FAILED": "failed", "KILLED": "interrupted"}.get(status, status))
        client.set_terminated(parent_run_id, status=status)
    except Exception as e:
        print(f"warning: could not close the MLflow parent run {parent_run_id}: {e}", file=sys.stderr)


# ---------------------------------------------------------------------------------------------- trial side
class TrialLogger:
    """The child run of one trial; every call is safe to repeat and never raises on tracking failures."""

    def __init__(self, sweep: dict[str, Any], cfg: RunConfig, trial_id: str, label: str, local_dir: str | Path, device_name: str):
        self.sweep = sweep
        self.uri = sweep["tracking_uri"]
        self.cfg = cfg
        self.trial_id = trial_id
        self.label = label
        self.dir = Path(local_dir)
        self.device_name = device_name
        self.run_id: str | None = None
        self.logged_steps: set[int] = set()
        self.pending: list[dict[str, Any]] = self._read_pending()
        self._warned = False
        self._client = None

    # -- helpers
    @property
    def client(self):
        if self._client is None:
            self._client = _client(self.uri)
        return self._client

    def _warn(self, what: str, e: BaseException) -> None:
        msg = f"warning: MLflow {what} failed for trial {self.trial_id} ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); will retry"
        if not self._warned:
            print(msg, file=sys.stderr, flush=True)
            self._warned = True

    def _read_pending(self) -> list[dict[str, Any]]:
        try:
            return json.loads((self.dir / PENDING_FILE).read_text())
        except (OSError, ValueError):
            return []

    def _write_pending(self) -> None:
        path = self.dir / PENDING_FILE
        if self.pending:
            path.write_text(json.dumps(self.pending))
        elif path.exists():
            path.unlink()

    def tags(self) -> dict[str, str]:
        s = self.sweep
        return {
            "mlflow.parentRunId": s["parent_run_id"],
            "bigbatch.role": "trial",
            "bigbatch.experiment": self.cfg.experiment,
            "bigbatch.paper_row": s.get("paper_row", ""),
            "bigbatch.recipe": self.cfg.recipe,
            "bigbatch.dataset": self.cfg.dataset,
            "bigbatch.trial_id": self.trial_id,
            "bigbatch.sweep": s["sweep_name"],
            "bigbatch.search": s.get("search", "grid"),
            "bigbatch.git_commit": s.get("git_commit", "unknown"),
            "bigbatch.device": self.device_name,
            "bigbatch.status": "running",
            **versions(),
        }

    # -- lifecycle
    def start(self) -> str | None:
        """Find this trial's run (checkpoint file, then tag search) or create it; never raises."""
        try:
            self._start()
        except Exception as e:
            self._warn("start", e)
        return self.run_id

    def _start(self) -> None:
        from mlflow.entities import Param, RunTag

        client = self.client
        run_file = self.dir / RUN_FILE
        if self.run_id is None and run_file.exists():
            try:
                self.run_id = json.loads(run_file.read_text())["run_id"]
            except (OSError, ValueError, KeyError):
                self.run_id = None
        if self.run_id is None:  # started before its first checkpoint was persisted: find it by tag
            found = client.search_runs(
                [self.sweep["experiment_id"]],
                filter_string=f"tags.`bigbatch.sweep` = '{self.sweep['sweep_name']}' and tags.`bigbatch.trial_id` = '{self.trial_id}'",
                max_results=1,
            )
            if found:
                self.run_id = found[0].info.run_id
        if self.run_id is None:
            run = client.create_run(self.sweep["experiment_id"], run_name=self.label, tags=self.tags())
            self.run_id = run.info.run_id
            run_file.write_text(json.dumps({"run_id": self.run_id, "tracking_uri": self.uri}))
            client.log_batch(self.run_id, params=[Param(k, v) for k, v in run_params(self.cfg).items()])
            cfg_path = self.dir / "config.json"
            self.cfg.to_json(cfg_path)
            client.log_artifact(self.run_id, str(cfg_path))
        else:
            run_file.write_text(json.dumps({"run_id": self.run_id, "tracking_uri": self.uri}))
            client.update_run(self.run_id, status="RUNNING")
            client.log_batch(self.run_id, tags=[RunTag("bigbatch.status", "running"), RunTag("bigbatch.device", self.device_name)])
        self.logged_steps = {m.step for m in client.get_metric_history(self.run_id, STEP_KEY)}

    def log_epoch(self, metrics: dict[str, Any]) -> None:
        epoch = int(metrics["epoch"])
        if epoch in self.logged_steps or any(p["epoch"] == epoch for p in self.pending):
            return
        values = {k: float(metrics[k]) for k in EPOCH_METRICS if k in metrics and metrics[k] is not None}
        self.pending.append({"epoch": epoch, "timestamp": int(time.time() * 1000), "values": values})
        self.flush()

    def flush(self) -> bool:
        """Send buffered epochs in order; True when nothing is left pending."""
        from mlflow.entities import Metric

        if self.run_id is None:
            self.start()
        if self.run_id is not None:
            try:
                recovering = self._warned and len(self.pending)
                if recovering:  # after a failure: a batch may have reached the server before its answer was lost
                    self.logged_steps |= {m.step for m in self.client.get_metric_history(self.run_id, STEP_KEY)}
                while self.pending:
                    p = self.pending[0]
                    if p["epoch"] not in self.logged_steps:
                        batch = [Metric(k, v, p["timestamp"], p["epoch"]) for k, v in p["values"].items()]
                        self.client.log_batch(self.run_id, metrics=batch)
                        self.logged_steps.add(p["epoch"])
                    self.pending.pop(0)
                if recovering:
                    print(f"MLflow at {self.uri} answers again: trial {self.trial_id} sent its {recovering} buffered epoch(s)",
                          file=sys.stderr, flush=True)
                    self._warned = False  # warn again at the next outage
            except Exception as e:
                self._warn("logging", e)
        try:
            self._write_pending()
        except OSError:
            pass
        return not self.pending

    def finish(self, summary: dict[str, Any], attempts: int = 4) -> None:
        """Summary metrics, status tag, best model; retried a few times, then a warning."""
        from mlflow.entities import Metric, RunTag

        status = summary.get("status", "completed")
        step = int(summary.get("epochs_run") or 0)
        now = int(time.time() * 1000)
        for attempt in range(attempts):
            try:
                if not self.flush():
                    raise TrackingError("epochs still pending")
                metrics = [Metric(k, float(summary[k]), now, step) for k in SUMMARY_METRICS if summary.get(k) is not None]
                tags = [RunTag("bigbatch.status", status)]
                if summary.get("diverged_epoch") is not None:
                    tags.append(RunTag("bigbatch.diverged_epoch", str(summary["diverged_epoch"])))
                self.client.log_batch(self.run_id, metrics=metrics, tags=tags)
                best = self.dir / "best_model.pt"
                if best.exists():
                    self.client.log_artifact(self.run_id, str(best))
                self.client.set_terminated(self.run_id, status="FINISHED")
                return
            except Exception as e:
                self._warn("final logging", e)
                time.sleep(min(30.0, 2.0 * 2**attempt))
        print(f"warning: trial {self.trial_id}: its summary could not be logged to MLflow at {self.uri}", file=sys.stderr, flush=True)

    def stopped(self) -> None:
        """Stopped early by a Tune scheduler (ASHA): ``bigbatch.status=stopped``; best effort."""
        from mlflow.entities import RunTag

        try:
            self.flush()
            if self.run_id is not None:
                self.client.log_batch(self.run_id, tags=[RunTag("bigbatch.status", "stopped")])
                self.client.set_terminated(self.run_id, status="FINISHED")
        except Exception as e:
            self._warn("stop logging", e)

    def fail(self, error: BaseException) -> None:
        """Mark the run failed (best effort); Tune may retry the trial, which reopens it."""
        from mlflow.entities import RunTag

        try:
            self.flush()
            if self.run_id is not None:
                msg = f"{type(error).__name__}: {error}".splitlines()[0][:5000]
                self.client.log_batch(self.run_id, tags=[RunTag("bigbatch.status", "failed"), RunTag("bigbatch.error", msg)])
                self.client.set_terminated(self.run_id, status="FAILED")
        except Exception as e:
            self._warn("failure logging", e)
