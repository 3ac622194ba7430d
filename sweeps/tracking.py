"""MLflow logging of the sweeps: the layout of docs/architecture.md (names from bigbatch.schema),
resume-safe and failure-tolerant.

The driver opens the MLflow experiment and the sweep's parent run *before* any trial starts
(``open_sweep``: one writer while a fresh SQLite DB runs its migrations) and hands the trials a
``SweepRun``; each trial logs its own child run from inside the trial process (``TrialLogger``), because

- the trial owns its checkpoint directory, so the child run id travels with the checkpoint
  (``RUN_FILE`` beside ``last.pt``): a trial restored by ``--resume`` or retried after a failure reopens
  the same run instead of creating a second one;
- the trial has the artifacts (``best_model.pt``) on its own node; a driver callback on a cluster would
  not see them;
- on a cluster it only needs a tracking URI every node reaches (``mlflow server``, http://...).

Every epoch is logged once per (run, step), from the trial's training history: the history restored
with the checkpoint (``last.pt`` holds it) plus the epochs reported since. The logger sends every
history epoch the run does not hold yet, in order; after a failed send it re-reads the steps the
server stored (an answer lost after the commit does not duplicate an epoch). A tracking server that is
unreachable mid-sweep therefore loses nothing and kills no trial: one warning, and the missing epochs
go out at the next epoch that reaches it, or from the checkpoint's history when the trial is restored.
"""

from __future__ import annotations

import json
import os
import sys
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bigbatch import schema
from bigbatch.config import RunConfig
from bigbatch.datasets import DATASETS
from bigbatch.experiments import Experiment


class TrackingError(RuntimeError):
    """The tracking store cannot be used (one line, for a user)."""


# ---------------------------------------------------------------------------------------------- URIs
def _sqlite_path(uri: str) -> Path | None:
    return Path(uri[len("sqlite:///"):]) if uri.startswith("sqlite:///") else None


def check_tracking(uri: str | None, timeout: float = 5.0) -> str:
    """The absolute tracking URI (None: ``schema.default_tracking_uri()``; a relative SQLite path made
    absolute, as trials chdir), or TrackingError at once when the store cannot be reached or written."""
    if uri is None:
        uri = schema.default_tracking_uri()
    elif uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        uri = "sqlite:///" + str(Path(uri[len("sqlite:///"):]).resolve())
    elif "://" not in uri:
        raise TrackingError(f"tracking URI {uri!r} needs a scheme: sqlite:///path.db or http://host:5000")
    path = _sqlite_path(uri)
    if path is not None:
        parent = path.parent
        try:
            parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise TrackingError(f"cannot create the MLflow DB directory {parent}: {e.strerror}") from None
        if not os.access(parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
            raise TrackingError(f"the MLflow DB {path} is not writable")
        return uri
    if uri.startswith(("http://", "https://")):
        try:
            with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout) as r:
                r.read(64)
        except urllib.error.HTTPError as e:  # the server answered: reachable (maybe no /health behind a proxy)
            if e.code >= 500:
                raise TrackingError(f"MLflow tracking server {uri} answered {e.code} {e.reason}") from None
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise TrackingError(f"MLflow tracking server {uri} is unreachable ({reason}); start it with `mlflow server` or pass --tracking-uri") from None
    return uri


@contextmanager
def store_lock(uri: str):
    """Serialise the set-up of a SQLite store across processes (an exclusive ``flock`` on ``<db>.lock``
    beside it): MLflow creates and migrates a new DB's schema, and gets-or-creates an experiment by
    name, by check-then-act, so two sweeps started at once into one new store raced ("table ...
    already exists", "duplicate column"). No-op for a tracking server, which serialises itself."""
    path = _sqlite_path(uri)
    if path is None:
        yield
        return
    import fcntl

    with open(path.with_name(path.name + ".lock"), "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)  # released when the file closes, also if this process dies
        yield


def mlflow_client(uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def _one_line(e: BaseException) -> str:
    return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"


# ---------------------------------------------------------------------------------------------- the sweep's parent run
@dataclass(frozen=True)
class SweepRun:
    """Where a sweep logs: its MLflow experiment and parent run, and the tags its trials share."""

    tracking_uri: str
    mlflow_experiment: str  # e.g. bigbatch-exp6
    experiment_id: str
    parent_run_id: str
    name: str  # the sweep's name (Tune experiment directory, parent run name)
    paper_row: str
    search: str  # grid | optuna
    git_commit: str

    def to_json(self) -> dict[str, str]:
        return asdict(self)


def sweep_tags(exp: Experiment, dataset: str, search: str, smoke_test: bool, commit: str) -> dict[str, str]:
    """Tags of a sweep's parent run."""
    return {
        schema.TAG_EXPERIMENT: exp.name,
        schema.TAG_PAPER_ROW: exp.label,
        schema.TAG_RECIPE: exp.recipe,
        schema.TAG_DATASET: dataset,
        schema.TAG_SEARCH: search,
        schema.TAG_GIT_COMMIT: commit,
        schema.TAG_SMOKE_TEST: str(smoke_test).lower(),
    }


def open_sweep(uri: str, exp: Experiment, name: str, *, dataset: str, search: str, smoke_test: bool,
               params: dict[str, Any], mlflow_experiment: str | None = None) -> SweepRun:
    """Create (or find) the MLflow experiment and the sweep's parent run, on the driver, before any trial.

    A fresh SQLite DB is migrated here, by one process. A parent run of this sweep name that exists
    (the Optuna search run again with its --name) is reopened instead of created.
    """
    from mlflow.entities import Param, RunTag

    mlflow_experiment = mlflow_experiment or schema.mlflow_experiment(exp.name)
    commit = schema.git_commit()
    try:
        with store_lock(uri):  # schema creation and get-or-create of the experiment, one process at a time
            client = mlflow_client(uri)
            found = client.get_experiment_by_name(mlflow_experiment)
            if found is None:
                path = _sqlite_path(uri)  # artifacts beside a SQLite DB; the server decides for http
                experiment_id = client.create_experiment(mlflow_experiment, artifact_location=(path.parent / "mlartifacts").as_uri() if path else None)
            else:
                experiment_id = found.experiment_id
                if found.lifecycle_stage == "deleted":
                    client.restore_experiment(experiment_id)
        runs = client.search_runs([experiment_id], max_results=1, filter_string=(
            f"tags.`{schema.TAG_SWEEP}` = '{name}' and tags.`{schema.TAG_ROLE}` = '{schema.ROLE_SWEEP}'"))
        parent_run_id = runs[0].info.run_id if runs else None
        if parent_run_id is not None:
            client.update_run(parent_run_id, status="RUNNING")
        else:
            tags = {**sweep_tags(exp, dataset, search, smoke_test, commit), schema.TAG_ROLE: schema.ROLE_SWEEP, schema.TAG_SWEEP: name}
            parent_run_id = client.create_run(experiment_id, run_name=name, tags=tags).info.run_id
            client.log_batch(parent_run_id, params=[Param(k, str(v)[:6000]) for k, v in params.items()],
                             tags=[RunTag(schema.TAG_STATUS, "running")])
    except Exception as e:  # any MLflow/DB failure at start: one line for the user
        raise TrackingError(f"cannot set up MLflow at {uri}: {_one_line(e)}") from None
    return SweepRun(uri, mlflow_experiment, experiment_id, parent_run_id, name, exp.label, search, commit)


def log_sweep_inputs(run: SweepRun, trials: list[tuple[RunConfig, dict[str, Any]]]) -> None:
    """On the driver, before any trial: the parent run logs the dataset inputs its trials will log, one per
    split. MLflow makes an experiment's dataset rows on first use, by check-then-insert: trials that start
    together can race for them, and on SQLite the loser fails with a UNIQUE constraint (seen in the mini
    table run and in ``make demo``). With the rows made here, the trials only link to them. ``trials``:
    (config, prepared dataset) of each trial (``SweepContext.trial_datasets``); repeating this is harmless
    (MLflow keeps one input per dataset). Raises TrackingError."""
    inputs = {(i.dataset.name, i.dataset.digest): i for cfg, info in trials for i in dataset_inputs(cfg, info)}
    if not inputs:
        return
    try:
        mlflow_client(run.tracking_uri).log_inputs(run.parent_run_id, datasets=list(inputs.values()))
    except Exception as e:
        raise TrackingError(f"cannot log the datasets to the MLflow parent run at {run.tracking_uri}: {_one_line(e)}") from None


def reopen_sweep(run: SweepRun) -> None:
    """A resumed sweep: its parent run is RUNNING again (TrackingError when the store fails)."""
    try:
        mlflow_client(run.tracking_uri).update_run(run.parent_run_id, status="RUNNING")
    except Exception as e:
        raise TrackingError(f"cannot reopen the MLflow parent run {run.parent_run_id} at {run.tracking_uri}: {_one_line(e)}") from None


def close_sweep(run: SweepRun, status: str, summary: dict[str, Any] | None = None) -> None:
    """Close the parent run: FINISHED / FAILED / KILLED; best effort."""
    try:
        client = mlflow_client(run.tracking_uri)
        for k, v in (summary or {}).items():
            client.log_metric(run.parent_run_id, k, float(v))
        client.set_tag(run.parent_run_id, schema.TAG_STATUS, {"FINISHED": "completed", "FAILED": "failed", "KILLED": "interrupted"}.get(status, status))
        client.set_terminated(run.parent_run_id, status=status)
    except Exception as e:
        print(f"warning: could not close the MLflow parent run {run.parent_run_id}: {e}", file=sys.stderr)


def mark_stopped(uri: str, run_id: str) -> None:
    """A trial a scheduler (ASHA) stopped never reached the end of train(): ``bigbatch.status=stopped``; best effort."""
    try:
        client = mlflow_client(uri)
        if client.get_run(run_id).data.tags.get(schema.TAG_STATUS) == "running":
            client.set_tag(run_id, schema.TAG_STATUS, "stopped")
            client.set_terminated(run_id, status="FINISHED")
    except Exception as e:
        print(f"warning: could not mark MLflow run {run_id} stopped: {e}", file=sys.stderr)


# ---------------------------------------------------------------------------------------------- trial side
def run_params(cfg: RunConfig) -> dict[str, str]:
    """Every RunConfig key (lists as JSON) plus the derived values (schema.DERIVED_PARAMS); for a user's model,
    its source file and that file's sha256 (bigbatch.model.model_provenance)."""
    from bigbatch.model import model_provenance

    params = {k: json.dumps(v) if isinstance(v, (list, tuple, dict)) else str(v) for k, v in cfg.to_dict().items()}
    params.update({k: repr(getattr(cfg, k)) for k in schema.DERIVED_PARAMS})
    params.update(model_provenance(cfg.model))
    return params


def checkpoint_history(directory: str | Path) -> list[dict[str, Any]]:
    """The per-epoch metrics a checkpoint directory's ``last.pt`` holds (bigbatch.train); [] without one."""
    path = Path(directory) / schema.CHECKPOINT
    if not path.exists():
        return []
    import torch

    try:  # mmap: the history only, without reading the weights
        return list(torch.load(path, map_location="cpu", weights_only=True, mmap=True).get("history", []))
    except Exception:
        return []  # train() refuses an unreadable checkpoint with its own error


@dataclass(frozen=True)
class TrialInfo:
    """What a trial's run is named and tagged with."""

    cfg: RunConfig
    trial_id: str
    label: str  # e.g. exp5 bs=1024 f=2 seed=0 (the run name)
    device_name: str  # the device actually used (tag bigbatch.device)
    dataset: dict[str, Any] | None = None  # bigbatch.data.DatasetInfo (as a dict) the driver prepared: logged as inputs


def dataset_inputs(cfg: RunConfig, info: dict[str, Any]) -> list:
    """The run's dataset as MLflow dataset inputs, metadata only (``MetaDataset``: nothing is uploaded):
    one per split (train, val, test), named ``<dataset>-<split>``, with its image count and a digest of
    the files' content and of the split (split_seed, val_size, train_subset)."""
    import hashlib

    import numpy as np
    from mlflow.data.code_dataset_source import CodeDatasetSource
    from mlflow.data.http_dataset_source import HTTPDatasetSource
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.entities import DatasetInput, InputTag
    from mlflow.types import Schema, TensorSpec

    source = (CodeDatasetSource({"mlflow.source.name": "bigbatch.data.make_synthetic"}) if info["source"] == "synthetic"
              else HTTPDatasetSource(info["source"]))
    _, channels, side = DATASETS[cfg.dataset].shape
    spec = Schema([TensorSpec(np.dtype(np.uint8), (-1, channels, side, side), "image"), TensorSpec(np.dtype(np.int64), (-1,), "label")])
    n_val = cfg.val_size
    sizes = {"train": cfg.train_subset or info["n_pool"] - n_val, "val": n_val, "test": info["n_test"]}
    out = []
    for split in schema.DATASET_SPLITS:
        key = info["digest"] if split == "test" else f"{info['digest']}:{split}:{cfg.split_seed}:{cfg.val_size}:{cfg.train_subset}"
        ds = MetaDataset(source, name=schema.dataset_input_name(cfg.dataset, split), digest=hashlib.md5(key.encode()).hexdigest()[:32],
                         schema=spec)
        out.append(DatasetInput(ds._to_mlflow_entity(), tags=[InputTag(schema.DATASET_CONTEXT_TAG, split),
                                                               InputTag(schema.TAG_INPUT_IMAGES, str(sizes[split]))]))
    return out


class TrialLogger:
    """The child run of one trial; every call is safe to repeat and never raises on tracking failures.

    ``history`` is every epoch of the trial so far (the checkpoint's, then each reported one); ``sync``
    sends those the run lacks. ``client`` is injectable (tests)."""

    def __init__(self, sweep: SweepRun, trial: TrialInfo, directory: str | Path, client=None):
        self.sweep = sweep
        self.trial = trial
        self.dir = Path(directory)
        self.run_id: str | None = None
        self.history: dict[int, dict[str, Any]] = {int(m["epoch"]): m for m in checkpoint_history(self.dir)}
        self.logged: set[int] | None = None  # epochs the run holds; None: unknown (read from the server)
        self._client = client
        self._failing = False  # the last call to the server failed: warned once, tell when it answers again
        self._incomplete = False  # the run exists but its start has not finished filling it in: redo at the next call

    @property
    def client(self):
        if self._client is None:
            self._client = mlflow_client(self.sweep.tracking_uri)
        return self._client

    def unsent(self) -> list[int]:
        """Epochs of the history not known to be in MLflow."""
        return sorted(e for e in self.history if self.logged is None or e not in self.logged)

    def _warn(self, what: str, e: BaseException) -> None:
        if not self._failing:
            print(f"warning: MLflow {what} failed for trial {self.trial.trial_id} ({_one_line(e)}); will retry", file=sys.stderr, flush=True)
            self._failing = True
        self.logged = None  # a batch may have reached the server before its answer was lost: re-read

    def tags(self) -> dict[str, str]:
        import mlflow
        import ray
        import torch

        s, cfg = self.sweep, self.trial.cfg
        return {
            schema.PARENT_RUN_TAG: s.parent_run_id,
            schema.TAG_ROLE: schema.ROLE_TRIAL,
            schema.TAG_EXPERIMENT: cfg.experiment,
            schema.TAG_PAPER_ROW: s.paper_row,
            schema.TAG_RECIPE: cfg.recipe,
            schema.TAG_DATASET: cfg.dataset,
            schema.TAG_TRIAL_ID: self.trial.trial_id,
            schema.TAG_SWEEP: s.name,
            schema.TAG_SEARCH: s.search,
            schema.TAG_GIT_COMMIT: s.git_commit,
            schema.TAG_DEVICE: self.trial.device_name,
            schema.TAG_STATUS: "running",
            schema.TAG_TORCH_VERSION: torch.__version__,
            schema.TAG_RAY_VERSION: ray.__version__,
            schema.TAG_MLFLOW_VERSION: mlflow.__version__,
        }

    # -- lifecycle
    def start(self) -> str | None:
        """Find this trial's run (checkpoint directory, then its trial_id tag) or create it; never raises."""
        try:
            self._start()
        except Exception as e:
            self._warn("start", e)
        return self.run_id

    def _start(self) -> None:
        client, s = self.client, self.sweep
        run_file = self.dir / schema.RUN_FILE
        if self.run_id is None and run_file.exists():
            try:
                self.run_id = json.loads(run_file.read_text())["run_id"]
            except (OSError, ValueError, KeyError):
                pass
        if self.run_id is None:  # started before its first checkpoint was persisted: find it by tag
            found = client.search_runs([s.experiment_id], max_results=1, filter_string=(
                f"tags.`{schema.TAG_SWEEP}` = '{s.name}' and tags.`{schema.TAG_TRIAL_ID}` = '{self.trial.trial_id}'"))
            self.run_id = found[0].info.run_id if found else None
        if self.run_id is None:
            self.run_id = client.create_run(s.experiment_id, run_name=self.trial.label, tags=self.tags()).info.run_id
        self._incomplete = True
        run_file.write_text(json.dumps({"run_id": self.run_id, "tracking_uri": s.tracking_uri}))
        self._fill()

    def _fill(self) -> None:
        """Give the run what it lacks of a started trial: status running, its device, the params, the
        config artifact, the dataset inputs. Each is checked against the stored run first, so a start
        that failed halfway (a lost connection; two trials racing to insert the same dataset row into a
        SQLite store, which MLflow's check-then-insert lets fail with a UNIQUE constraint) is finished by
        the next call, and a restarted trial's run is made whole too."""
        from mlflow.entities import Param, RunTag

        client, cfg = self.client, self.trial.cfg
        run = client.get_run(self.run_id)
        if run.info.status != "RUNNING":
            client.update_run(self.run_id, status="RUNNING")
        tags = {schema.TAG_STATUS: "running", schema.TAG_DEVICE: self.trial.device_name}
        if any(run.data.tags.get(k) != v for k, v in tags.items()):
            client.log_batch(self.run_id, tags=[RunTag(k, v) for k, v in tags.items()])
        params = {k: v for k, v in run_params(cfg).items() if k not in run.data.params}
        if params:
            client.log_batch(self.run_id, params=[Param(k, v) for k, v in params.items()])
        if not any(a.path == schema.CONFIG_ARTIFACT for a in client.list_artifacts(self.run_id)):
            cfg_path = self.dir / schema.CONFIG_ARTIFACT
            cfg.to_json(cfg_path)
            client.log_artifact(self.run_id, str(cfg_path))
        if self.trial.dataset is not None and not run.inputs.dataset_inputs:
            client.log_inputs(self.run_id, datasets=dataset_inputs(cfg, self.trial.dataset))
        self._incomplete = False

    def log_epoch(self, metrics: dict[str, Any]) -> None:
        """Add one reported epoch to the history and send what the run lacks."""
        self.history[int(metrics["epoch"])] = metrics
        self.sync()

    def sync(self) -> bool:
        """Send every history epoch the run lacks, in order, once; True when nothing is left unsent."""
        from mlflow.entities import Metric

        if self.run_id is None or self._incomplete:
            self.start()
        if self.run_id is None:
            return False
        recovering = self._failing
        try:
            if self.logged is None:
                self.logged = {m.step for m in self.client.get_metric_history(self.run_id, schema.STEP_KEY)}
            todo = self.unsent()
            now = int(time.time() * 1000)
            for epoch in todo:
                m = self.history[epoch]
                batch = [Metric(k, float(m[k]), now, epoch) for k in schema.EPOCH_METRICS if m.get(k) is not None]
                batch += [Metric(schema.STEP_EVAL_METRIC, float(acc), now, int(step)) for step, acc in m.get("step_evals") or ()]
                self.client.log_batch(self.run_id, metrics=batch)
                self.logged.add(epoch)
        except Exception as e:
            self._warn("logging", e)
            return False
        if recovering:
            print(f"MLflow at {self.sweep.tracking_uri} answers again: trial {self.trial.trial_id} sent its {len(todo)} buffered epoch(s)",
                  file=sys.stderr, flush=True)
            self._failing = False  # warn again at the next outage
        return True

    def finish(self, summary: dict[str, Any], attempts: int = 4) -> None:
        """Every epoch of the run's history, the summary metrics, status tag, best model; retried a few times."""
        from mlflow.entities import Metric, RunTag

        for m in summary.get("history") or []:
            self.history.setdefault(int(m["epoch"]), m)
        status = summary.get("status", "completed")
        step = int(summary.get("epochs_run") or 0)
        now = int(time.time() * 1000)
        for attempt in range(attempts):
            try:
                if not self.sync():
                    raise TrackingError("epochs still unsent")
                metrics = [Metric(k, float(summary[k]), now, step) for k in schema.SUMMARY_METRICS if summary.get(k) is not None]
                tags = [RunTag(schema.TAG_STATUS, status)]
                if summary.get("diverged_epoch") is not None:
                    tags.append(RunTag(schema.TAG_DIVERGED_EPOCH, str(summary["diverged_epoch"])))
                self.client.log_batch(self.run_id, metrics=metrics, tags=tags)
                best = self.dir / schema.BEST_MODEL
                if best.exists():
                    self.client.log_artifact(self.run_id, str(best))
                self.client.set_terminated(self.run_id, status="FINISHED")
                return
            except Exception as e:
                self._warn("final logging", e)
                time.sleep(min(30.0, 2.0 * 2**attempt))
        print(f"warning: trial {self.trial.trial_id}: its summary could not be logged to MLflow at {self.sweep.tracking_uri}",
              file=sys.stderr, flush=True)

    def _end(self, status: str, mlflow_status: str, extra: dict[str, str] | None = None) -> None:
        from mlflow.entities import RunTag

        self.sync()
        if self.run_id is None:
            return
        try:
            tags = [RunTag(schema.TAG_STATUS, status), *(RunTag(k, v) for k, v in (extra or {}).items())]
            self.client.log_batch(self.run_id, tags=tags)
            self.client.set_terminated(self.run_id, status=mlflow_status)
        except Exception as e:
            self._warn(f"{status} logging", e)

    def stopped(self) -> None:
        """Stopped early by a Tune scheduler (ASHA): ``bigbatch.status=stopped``; best effort."""
        self._end("stopped", "FINISHED")

    def fail(self, error: BaseException) -> None:
        """Mark the run failed (best effort), the error's one line as a tag and its traceback as an artifact;
        Tune may retry the trial, which reopens it."""
        import traceback

        self._end("failed", "FAILED", {schema.TAG_ERROR: f"{type(error).__name__}: {error}".splitlines()[0][:5000]})
        if self.run_id is not None:
            try:
                path = self.dir / schema.TRACEBACK_ARTIFACT
                path.write_text("".join(traceback.format_exception(error)))
                self.client.log_artifact(self.run_id, str(path))
            except Exception as e:
                self._warn("traceback logging", e)
