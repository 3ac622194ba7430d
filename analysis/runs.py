"""MLflow -> pandas: the only module of ``analysis`` that reads MLflow.

``load_runs`` reads every trial run of the MLflow experiments named ``bigbatch-*`` with
``mlflow.search_runs`` into one tidy DataFrame, one row per run: the ``tags.bigbatch.*`` columns
renamed (see ``TAG_COLUMNS``), the ``params.*`` strings cast back to their RunConfig types, the summary
metrics as floats. ``load_history`` reads per-epoch metrics as a long DataFrame. Everything else in
``analysis`` works on these two DataFrames. Every MLflow name comes from ``bigbatch.schema``.

    runs = load_runs("sqlite:////abs/mlflow.db", experiments=["exp5"], recipe="text")
    hist = load_history("sqlite:////abs/mlflow.db", runs.run_id, metrics=("val_acc", "val_loss"))
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sqlite3
from pathlib import Path
from typing import Any, Iterable, get_origin, get_type_hints

import pandas as pd

from bigbatch.config import RunConfig
from bigbatch.experiments import EXPERIMENTS, load_experiment
from bigbatch.schema import (DERIVED_PARAMS, EXPERIMENT_PREFIX, PARENT_RUN_TAG, ROLE_SWEEP, ROLE_TRIAL,
                             SUMMARY_METRICS, TAG_DATASET, TAG_DEVICE, TAG_DIVERGED_EPOCH, TAG_EXPERIMENT,
                             TAG_GIT_COMMIT, TAG_PAPER_ROW, TAG_RAY_VERSION, TAG_RECIPE, TAG_ROLE, TAG_SEARCH,
                             TAG_SMOKE_TEST, TAG_STATUS, TAG_SWEEP, TAG_TORCH_VERSION, TAG_TRIAL_ID,
                             default_tracking_uri, mlflow_experiment)

# The leading columns of load_runs' DataFrame, in this order; every other param follows, sorted.
COLUMNS = (
    "experiment", "paper_row", "batch_size", "recipe", "dataset", "seed", "factor_lr", "scaled_factor_lr",
    "scaled_lr", "total_epochs", "status", "diverged_epoch", "best_val_acc", "best_epoch", "test_acc", "test_loss",
    "train_seconds", "epoch_seconds", "val_acc", "run_id", "run_name", "mlflow_experiment", "sweep", "search",
    "role", "trial_id", "parent_run_id", "smoke_test", "mlflow_status", "start_time", "end_time",
    "git_commit", "run_device", "torch_version", "ray_version",
)
# tag -> column. bigbatch.device is the device the run used (the param ``device`` is the request).
TAG_COLUMNS = {
    TAG_EXPERIMENT: "experiment", TAG_PAPER_ROW: "paper_row", TAG_RECIPE: "recipe", TAG_DATASET: "dataset",
    TAG_STATUS: "status", TAG_DIVERGED_EPOCH: "diverged_epoch", TAG_SWEEP: "sweep", TAG_SEARCH: "search",
    TAG_ROLE: "role", TAG_TRIAL_ID: "trial_id", PARENT_RUN_TAG: "parent_run_id", TAG_SMOKE_TEST: "smoke_test",
    TAG_GIT_COMMIT: "git_commit", TAG_DEVICE: "run_device", TAG_TORCH_VERSION: "torch_version",
    TAG_RAY_VERSION: "ray_version", "mlflow.runName": "run_name",
}
# Metrics kept as columns: the summary, and the last logged epoch's val_acc and epoch_seconds.
METRIC_COLUMNS = (*SUMMARY_METRICS, "epoch_seconds", "val_acc")
# MLflow's run status -> bigbatch.status, for a run without the tag.
_MLFLOW_STATUS = {"FINISHED": "completed", "FAILED": "failed", "KILLED": "failed", "RUNNING": "running",
                  "SCHEDULED": "running"}

# Every param's type: the RunConfig fields (lists as tuples) and the derived params of bigbatch.schema.
PARAM_TYPES: dict[str, Any] = {
    **{k: (tuple if get_origin(v) is tuple else v) for k, v in get_type_hints(RunConfig).items()},
    **DERIVED_PARAMS,
}


class AnalysisError(Exception):
    """Bad input to the analysis (unreachable store, no runs, unknown filter). One line, for a user."""


# ---------------------------------------------------------------------------------------- checks
def check_tracking_uri(uri: str) -> str:
    """Refuse, without writing anything, a URI that cannot hold bigbatch runs.

    MLflow creates an empty database for a SQLite path that does not exist (and migrates a file that
    is not an MLflow database): both are checked here, read-only, first.
    """
    if not isinstance(uri, str) or not uri.strip():
        raise AnalysisError("empty tracking URI")
    uri = uri.strip()
    if uri.startswith("sqlite:"):
        if not uri.startswith("sqlite:///"):
            raise AnalysisError(f"malformed SQLite tracking URI {uri!r} (expected sqlite:////abs/path.db)")
        path = Path(uri[len("sqlite:///"):].split("?", 1)[0])
        if str(path) in ("", ":memory:"):
            raise AnalysisError(f"in-memory SQLite URI {uri!r} holds no runs")
        if not path.is_file():
            raise AnalysisError(f"no MLflow database at {path} (tracking URI {uri})")
        try:
            con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
            try:
                tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            finally:
                con.close()
        except sqlite3.Error as e:
            raise AnalysisError(f"{path} is not a readable SQLite database: {e}") from None
        if not {"experiments", "runs"} <= tables:
            raise AnalysisError(f"{path} is not an MLflow database (no experiments/runs tables)")
    elif "://" not in uri or uri.startswith("file:"):
        path = Path(uri[len("file://"):] if uri.startswith("file://") else uri)
        if not path.is_dir():
            raise AnalysisError(f"no MLflow store at {path} (tracking URI {uri})")
    return uri


def one_line(e: BaseException) -> str:
    """An exception as one short line (the first line of its message)."""
    text = str(e).strip().splitlines()
    msg = text[0] if text else type(e).__name__
    return msg if len(msg) < 300 else msg[:297] + "..."


@contextlib.contextmanager
def mlflow_session(uri: str):
    """``mlflow`` pointed at ``uri`` (restored after), quiet (no artifact progress bars), failing fast
    on an unreachable server."""
    for name in ("mlflow", "alembic", "sqlalchemy"):
        logging.getLogger(name).setLevel(logging.WARNING)
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "15")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    import mlflow

    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    try:
        yield mlflow
    finally:
        mlflow.set_tracking_uri(previous)


# ---------------------------------------------------------------------------------------- casting
def _to_bool(s: pd.Series) -> pd.Series:
    out = s.astype("string").str.strip().str.lower().map({"true": True, "1": True, "yes": True, "false": False,
                                                         "0": False, "no": False})
    return out.astype(bool) if out.notna().all() else out.astype("boolean")


def _to_tuple(v: Any) -> tuple | None:
    if not isinstance(v, str):
        return None
    for text in (v, v.replace("(", "[").replace(")", "]")):  # JSON list, or the repr of a tuple
        try:
            x = json.loads(text)
        except json.JSONDecodeError:
            continue
        return tuple(x) if isinstance(x, list) else (x,)
    return None


def cast_param(key: str, values: pd.Series) -> pd.Series:
    """A column of MLflow param strings -> its RunConfig type (int, float, bool, tuple, str).

    A param of no known type becomes numeric when every value is a number, else stays text.
    """
    kind = PARAM_TYPES.get(key)
    if kind is bool:
        return _to_bool(values)
    if kind is tuple:
        return values.map(_to_tuple).astype(object)
    if kind is str:
        return values.astype(object).where(values.notna(), None)
    nums = pd.to_numeric(values, errors="coerce")
    if kind is None:
        if not nums.notna().any() or nums.notna().sum() < values.notna().sum():
            return values.astype(object).where(values.notna(), None)
        whole = (nums.dropna() % 1 == 0).all() and not values.dropna().astype(str).str.contains(r"[.eE]").any()
        kind = int if whole else float
    if kind is int:
        ints = nums.where(nums % 1 == 0).astype("Int64")
        return ints.astype("int64") if ints.notna().all() else ints
    return nums.astype("float64")


# ---------------------------------------------------------------------------------------- loading
def list_experiments(tracking_uri: str | None = None) -> dict[str, str]:
    """MLflow experiment name -> id, for every experiment named ``bigbatch-*``."""
    uri = check_tracking_uri(tracking_uri or default_tracking_uri())
    try:
        with mlflow_session(uri) as mlflow:
            return {e.name: e.experiment_id
                    for e in mlflow.search_experiments(filter_string=f"name LIKE '{EXPERIMENT_PREFIX}%'")}
    except Exception as e:  # noqa: BLE001 - any store failure is a one-line user error
        msg = one_line(e)
        if uri.startswith(("http://", "https://")) and ("Max retries" in msg or "onnection" in msg):
            raise AnalysisError(f"MLflow tracking server {uri} is unreachable (start it with `mlflow server`, "
                                "or pass --tracking-uri)") from None
        raise AnalysisError(f"cannot read MLflow tracking URI {uri}: {msg}") from None


def load_runs(
    tracking_uri: str | None = None,
    experiments: Iterable[str] | None = None,
    dataset: str | None = None,
    recipe: str | None = None,
    include_parents: bool = False,
) -> pd.DataFrame:
    """Every bigbatch trial run as one row (see COLUMNS); empty DataFrame when there are none.

    ``experiments``: MLflow experiment names with or without the ``bigbatch-`` prefix (``exp5``,
    ``optuna-factor-lr``); default all ``bigbatch-*``. ``dataset``/``recipe`` filter the rows.
    ``include_parents`` keeps the sweeps' parent runs (role ``sweep``; they carry no params).
    """
    uri = check_tracking_uri(tracking_uri or default_tracking_uri())
    names = list_experiments(uri)
    if experiments is not None:
        wanted = {mlflow_experiment(e) for e in experiments}
        names = {n: i for n, i in names.items() if n in wanted}
    raw = pd.DataFrame()
    if names:
        try:
            with mlflow_session(uri) as mlflow:
                raw = mlflow.search_runs(experiment_ids=list(names.values()))
        except Exception as e:  # noqa: BLE001
            raise AnalysisError(f"cannot read runs from MLflow tracking URI {uri}: {one_line(e)}") from None
    df = tidy_runs(raw, {i: n for n, i in names.items()})
    if not include_parents:
        df = df[df["role"] != ROLE_SWEEP]
    if dataset is not None:
        df = df[df["dataset"] == dataset]
    if recipe is not None:
        df = df[df["recipe"] == recipe]
    return df.sort_values(["experiment", "batch_size", "start_time"], na_position="last",
                          kind="stable").reset_index(drop=True)


def tidy_runs(raw: pd.DataFrame, experiment_names: dict[str, str]) -> pd.DataFrame:
    """``mlflow.search_runs``' frame -> load_runs' (parent runs included): tags renamed, params cast."""
    index = raw.index

    def column(name: str) -> pd.Series:
        s = raw[name] if name in raw.columns else pd.Series(None, index=index, dtype=object)
        return s.astype(object).where(s.notna(), None)

    out = {col: column("tags." + tag) for tag, col in TAG_COLUMNS.items()}
    params = {c[len("params."):]: raw[c] for c in raw.columns if c.startswith("params.")}
    has_params = pd.DataFrame(params, index=index).notna().any(axis=1) if params else pd.Series(False, index=index)
    out["mlflow_experiment"] = column("experiment_id").map(experiment_names)
    out["role"] = out["role"].fillna(has_params.map({True: ROLE_TRIAL, False: ROLE_SWEEP}))
    for key in ("experiment", "recipe", "dataset"):  # the tags are authoritative; the params agree with them
        if key in params:
            out[key] = out[key].fillna(column("params." + key))
    out["experiment"] = out["experiment"].fillna(
        out["mlflow_experiment"].map(lambda n: n.removeprefix(EXPERIMENT_PREFIX) if isinstance(n, str) else None))
    labels = {e: load_experiment(e).label for e in EXPERIMENTS}
    out["paper_row"] = out["paper_row"].fillna(out["experiment"].map(labels)).fillna(out["experiment"])
    mlflow_status = column("status")
    status = out["status"].fillna(mlflow_status.map(_MLFLOW_STATUS)).fillna(mlflow_status.str.lower())
    died = (status == "running") & mlflow_status.isin(["FAILED", "KILLED"])  # died without updating its tag
    out["status"] = status.mask(died, "failed")
    out["mlflow_status"] = mlflow_status
    out["run_id"] = column("run_id")
    smoke = _to_bool(out["smoke_test"]).astype(object)
    by_run = dict(zip(out["run_id"], smoke))  # the sweep's parent run carries the smoke-test tag of its trials
    out["smoke_test"] = smoke.where(smoke.notna(), out["parent_run_id"].map(by_run)).astype(object)
    out["smoke_test"] = out["smoke_test"].where(out["smoke_test"].notna(), None)
    out["diverged_epoch"] = pd.to_numeric(out["diverged_epoch"], errors="coerce").astype("Int64")
    for key in METRIC_COLUMNS:
        out[key] = pd.to_numeric(column("metrics." + key), errors="coerce").astype("float64")
    out["best_epoch"] = out["best_epoch"].round().astype("Int64")
    for key in ("start_time", "end_time"):
        out[key] = pd.to_datetime(raw[key], utc=True) if key in raw.columns else pd.Series(pd.NaT, index=index,
                                                                                            dtype="datetime64[ns, UTC]")
    for key, values in params.items():
        if key not in ("experiment", "recipe", "dataset"):
            out[key] = cast_param(key, values)
    for key in ("batch_size", "seed", "total_epochs"):
        if key not in out:
            out[key] = pd.Series(pd.NA, index=index, dtype="Int64")
    for key in ("factor_lr", "scaled_factor_lr", "scaled_lr"):
        if key not in out:
            out[key] = pd.Series(float("nan"), index=index, dtype="float64")
    # a trial logged before the model key existed trained the default model; tables split on it (identity)
    model = out["model"] if "model" in out else pd.Series(None, index=index, dtype=object)
    out["model"] = model.astype(object).where(model.notna() | (out["role"] == ROLE_SWEEP), RunConfig.model)
    df = pd.DataFrame(out, index=index)
    return df[list(COLUMNS) + sorted(set(df.columns) - set(COLUMNS))].reset_index(drop=True)


def load_history(
    tracking_uri: str | None,
    run_ids: Iterable[str],
    metrics: Iterable[str] = ("val_acc", "val_loss"),
) -> pd.DataFrame:
    """Per-epoch metrics as a long DataFrame: run_id, metric, step (the epoch), value.

    A step logged twice (a resumed trial re-running an epoch) keeps its latest value.
    """
    uri = check_tracking_uri(tracking_uri or default_tracking_uri())
    rows: list[tuple[str, str, int, float, int]] = []
    try:
        with mlflow_session(uri):
            from mlflow.tracking import MlflowClient

            client = MlflowClient(tracking_uri=uri)
            for run_id in run_ids:
                for key in metrics:
                    rows += [(run_id, key, int(m.step), float(m.value), int(m.timestamp))
                             for m in client.get_metric_history(run_id, key)]
    except Exception as e:  # noqa: BLE001
        raise AnalysisError(f"cannot read metric history from {uri}: {one_line(e)}") from None
    df = pd.DataFrame(rows, columns=["run_id", "metric", "step", "value", "timestamp"])
    df = df.astype({"run_id": object, "metric": object, "step": "int64", "value": "float64", "timestamp": "int64"})
    df = df.sort_values(["run_id", "metric", "step", "timestamp"], kind="stable")
    df = df.drop_duplicates(["run_id", "metric", "step"], keep="last")
    return df.drop(columns="timestamp").reset_index(drop=True)
