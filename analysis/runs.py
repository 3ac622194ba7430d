"""MLflow -> pandas: the only module of ``analysis`` that touches MLflow.

``load_runs`` reads every trial run of the MLflow experiments named ``bigbatch-*`` (the schema is in
docs/architecture.md) into one tidy DataFrame, one row per run, with the params cast back from
MLflow's strings to the RunConfig types. ``load_history`` reads per-epoch metrics as a long
DataFrame. Everything else in ``analysis`` works on these two DataFrames.

    runs = load_runs("sqlite:////abs/mlflow.db", experiments=["exp5"], recipe="text")
    hist = load_history("sqlite:////abs/mlflow.db", runs.run_id, metrics=("val_acc", "val_loss"))
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import sqlite3
from pathlib import Path
from typing import Any, Iterable, get_origin, get_type_hints

import pandas as pd

from bigbatch.config import RunConfig
from bigbatch.experiments import EXPERIMENTS, load_experiment

EXPERIMENT_PREFIX = "bigbatch-"  # MLflow experiment names: bigbatch-exp1 .. bigbatch-exp6
OPTUNA_EXPERIMENT = "bigbatch-optuna-factor-lr"  # the Optuna search over factor_lr
TAG = "bigbatch."  # prefix of every bigbatch tag
STATUSES = ("completed", "diverged", "stopped", "failed", "running")  # stopped: early-stopped by ASHA (Optuna)
FINISHED = ("completed", "diverged")  # runs that carry final metrics (test_acc of the best-val model)
SUMMARY_METRICS = ("best_val_acc", "best_epoch", "test_acc", "test_loss", "train_seconds")
EPOCH_METRICS = ("train_loss", "train_acc", "val_loss", "val_acc", "lr", "momentum", "epoch_seconds",
                 "images_per_second")
DERIVED_PARAMS = {"scaled_lr": float, "total_epochs": int, "scaled_factor_lr": float}

# The leading columns of load_runs' DataFrame, in this order; every other param follows, sorted.
COLUMNS = (
    "experiment", "paper_row", "batch_size", "recipe", "dataset", "seed", "factor_lr", "scaled_factor_lr",
    "scaled_lr", "total_epochs", "status", "best_val_acc", "best_epoch", "test_acc", "test_loss",
    "train_seconds", "epoch_seconds", "val_acc", "run_id", "run_name", "mlflow_experiment", "sweep", "search",
    "role", "trial_id", "parent_run_id", "smoke_test", "mlflow_status", "start_time", "end_time",
)
# tag -> column (the tag ``bigbatch.device`` is the device the run used; the param ``device`` is the request)
EXTRA_TAGS = {"git_commit": "git_commit", "device": "run_device", "torch_version": "torch_version",
              "ray_version": "ray_version"}


class AnalysisError(Exception):
    """Bad input to the analysis (unreachable store, no runs, unknown filter). One line, for a user."""


def default_tracking_uri() -> str:
    """The tracking URI used when none is given: ``sqlite:///<abs cwd>/mlflow.db`` (as the sweeps)."""
    try:  # one default for the whole project: the sweeps' (light module: no ray, no mlflow at import)
        from sweeps.tracking import default_tracking_uri as sweeps_default

        return sweeps_default()
    except Exception:  # noqa: BLE001 - sweeps absent
        return f"sqlite:///{Path.cwd().resolve() / 'mlflow.db'}"


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


def _quiet_mlflow() -> None:
    for name in ("mlflow", "alembic", "sqlalchemy"):
        logging.getLogger(name).setLevel(logging.WARNING)
    # an unreachable server should fail in seconds, not after minutes of retries
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "15")


def _client(uri: str):
    _quiet_mlflow()
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    msg = text[0] if text else type(e).__name__
    return msg if len(msg) < 300 else msg[:297] + "..."


# ---------------------------------------------------------------------------------------- casting
_HINTS = get_type_hints(RunConfig)
PARAM_TYPES: dict[str, Any] = {
    **{k: (tuple if get_origin(v) is tuple else v) for k, v in _HINTS.items()},
    **DERIVED_PARAMS,
}


def _to_bool(v: str) -> bool | None:
    s = v.strip().lower()
    if s in ("true", "1", "yes"):
        return True
    if s in ("false", "0", "no"):
        return False
    return None


def _to_int(v: str) -> int | None:
    try:
        return int(v)
    except ValueError:
        try:
            f = float(v)
        except ValueError:
            return None
        return int(f) if math.isfinite(f) and f == int(f) else None


def _to_float(v: str) -> float | None:
    try:
        return float(v)
    except ValueError:
        return None


def _to_tuple(v: str) -> tuple | None:
    try:
        x = json.loads(v)
    except json.JSONDecodeError:
        try:  # Python repr of a tuple, e.g. "(30, 60, 90)"
            x = json.loads(v.replace("(", "[").replace(")", "]"))
        except json.JSONDecodeError:
            return None
    return tuple(x) if isinstance(x, list) else (x,)


def _guess(v: str) -> Any:
    s = v.strip()
    if re.fullmatch(r"[+-]?\d+", s):
        return int(s)
    f = _to_float(s)
    if f is not None:
        return f
    b = _to_bool(s)
    return v if b is None else b


def cast_param(key: str, value: str | None) -> Any:
    """One MLflow param string -> its RunConfig type (int, float, bool, tuple, str); None if missing."""
    if value is None:
        return None
    kind = PARAM_TYPES.get(key)
    if kind is bool:
        return _to_bool(value)
    if kind is int:
        return _to_int(value)
    if kind is float:
        return _to_float(value)
    if kind is tuple:
        return _to_tuple(value)
    if kind is str:
        return value
    return _guess(value)


def _series(values: list[Any], kind: Any) -> pd.Series:
    if kind is int:
        return pd.Series(values, dtype="Int64") if any(v is None for v in values) else pd.Series(values, dtype="int64")
    if kind is float:
        return pd.Series([math.nan if v is None else v for v in values], dtype="float64")
    if kind is bool:
        return pd.Series(values, dtype="boolean") if any(v is None for v in values) else pd.Series(values, dtype=bool)
    return pd.Series(values, dtype=object)


# ---------------------------------------------------------------------------------------- loading
def list_experiments(tracking_uri: str | None = None) -> dict[str, str]:
    """MLflow experiment name -> id, for every experiment named ``bigbatch-*``."""
    uri = check_tracking_uri(tracking_uri or default_tracking_uri())
    try:
        client = _client(uri)
        out, token = {}, None
        while True:
            page = client.search_experiments(filter_string=f"name LIKE '{EXPERIMENT_PREFIX}%'",
                                             max_results=1000, page_token=token)
            out.update({e.name: e.experiment_id for e in page})
            token = page.token
            if not token:
                return out
    except AnalysisError:
        raise
    except Exception as e:  # noqa: BLE001 - any store failure is a one-line user error
        msg = _one_line(e)
        if uri.startswith(("http://", "https://")) and ("Max retries" in msg or "onnection" in msg):
            raise AnalysisError(f"MLflow tracking server {uri} is unreachable (start it with `mlflow server`, "
                                "or pass --tracking-uri)") from None
        raise AnalysisError(f"cannot read MLflow tracking URI {uri}: {msg}") from None


def _mlflow_name(experiment: str) -> str:
    return experiment if experiment.startswith(EXPERIMENT_PREFIX) else EXPERIMENT_PREFIX + experiment


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
        wanted = {_mlflow_name(e) for e in experiments}
        names = {n: i for n, i in names.items() if n in wanted}
    records: list[dict[str, Any]] = []
    if names:
        id_to_name = {i: n for n, i in names.items()}
        try:
            client = _client(uri)
            token = None
            while True:
                page = client.search_runs(list(id_to_name), max_results=10000, page_token=token)
                records.extend(_record(r, id_to_name) for r in page)
                token = page.token
                if not token:
                    break
        except Exception as e:  # noqa: BLE001
            raise AnalysisError(f"cannot read runs from MLflow tracking URI {uri}: {_one_line(e)}") from None
    smoke = {r["run_id"]: r["smoke_test"] for r in records if r["role"] == "sweep"}
    for r in records:  # the sweep's parent run carries the smoke-test tag for its trials
        if r["smoke_test"] is None:
            r["smoke_test"] = smoke.get(r["parent_run_id"])
    df = _frame(records)
    if not include_parents and len(df):
        df = df[df["role"] != "sweep"]
    if dataset is not None and len(df):
        df = df[df["dataset"] == dataset]
    if recipe is not None and len(df):
        df = df[df["recipe"] == recipe]
    return df.sort_values(["experiment", "batch_size", "start_time"], na_position="last",
                          kind="stable").reset_index(drop=True) if len(df) else df.reset_index(drop=True)


_MLFLOW_STATUS = {"FINISHED": "completed", "FAILED": "failed", "KILLED": "failed", "RUNNING": "running",
                  "SCHEDULED": "running"}


def _record(run: Any, id_to_name: dict[str, str]) -> dict[str, Any]:
    info, data = run.info, run.data
    tags, params, metrics = dict(data.tags), dict(data.params), dict(data.metrics)
    mlflow_experiment = id_to_name.get(info.experiment_id, "")
    role = tags.get(TAG + "role") or ("trial" if params else "sweep")
    experiment = tags.get(TAG + "experiment") or params.get("experiment") or mlflow_experiment[len(EXPERIMENT_PREFIX):]
    paper_row = tags.get(TAG + "paper_row")
    if not paper_row and experiment in EXPERIMENTS:
        paper_row = load_experiment(experiment).label
    status = tags.get(TAG + "status") or _MLFLOW_STATUS.get(info.status, str(info.status).lower())
    if status == "running" and info.status in ("FAILED", "KILLED"):
        status = "failed"  # the trial died without updating its tag
    rec: dict[str, Any] = {
        "experiment": experiment,
        "paper_row": paper_row or experiment,
        "recipe": tags.get(TAG + "recipe") or params.get("recipe"),
        "dataset": tags.get(TAG + "dataset") or params.get("dataset"),
        "status": status,
        "run_id": info.run_id,
        "run_name": info.run_name or tags.get("mlflow.runName"),
        "mlflow_experiment": mlflow_experiment,
        "sweep": tags.get(TAG + "sweep"),
        "search": tags.get(TAG + "search"),
        "role": role,
        "trial_id": tags.get(TAG + "trial_id"),
        "parent_run_id": tags.get("mlflow.parentRunId"),
        "smoke_test": _to_bool(tags[TAG + "smoke_test"]) if TAG + "smoke_test" in tags else None,
        "mlflow_status": info.status,
        "start_time": info.start_time,
        "end_time": info.end_time,
        **{col: tags.get(TAG + t) for t, col in EXTRA_TAGS.items()},
    }
    for key in SUMMARY_METRICS + ("epoch_seconds", "val_acc"):
        rec[key] = metrics.get(key)
    for key, value in params.items():
        if key in ("experiment", "recipe", "dataset"):
            continue  # the tags above are authoritative; the params agree with them
        rec["param:" + key] = value
    return rec


def _frame(records: list[dict[str, Any]]) -> pd.DataFrame:
    param_keys = sorted({k for r in records for k in r if k.startswith("param:")})
    cols: dict[str, pd.Series] = {}
    for col in COLUMNS + tuple(EXTRA_TAGS.values()):
        key = "param:" + col
        if key in param_keys:
            values = [cast_param(col, r.get(key)) for r in records]
            cols[col] = _series(values, PARAM_TYPES.get(col, object))
        elif col in ("batch_size", "seed", "total_epochs") and col not in cols:
            cols[col] = _series([None] * len(records), int)
        elif col in ("factor_lr", "scaled_factor_lr", "scaled_lr") + SUMMARY_METRICS + ("epoch_seconds", "val_acc"):
            cols[col] = _series([r.get(col) for r in records], float)
        elif col in ("start_time", "end_time"):
            cols[col] = pd.to_datetime(pd.Series([r.get(col) for r in records], dtype="float64"), unit="ms", utc=True)
        else:
            cols[col] = pd.Series([r.get(col) for r in records], dtype=object)
    for key in param_keys:
        col = key[len("param:"):]
        if col in cols:
            continue
        values = [cast_param(col, r.get(key)) for r in records]
        kind = PARAM_TYPES.get(col)
        if kind is None:  # an unknown param: a numeric column when every value is a number
            nums = [v for v in values if v is not None]
            if nums and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in nums):
                kind = int if all(isinstance(v, int) for v in nums) else float
        cols[col] = _series(values, kind)
    df = pd.DataFrame(cols, index=range(len(records)))
    if len(df):
        df["best_epoch"] = df["best_epoch"].round().astype("Int64")
    return df


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
        client = _client(uri)
        for run_id in run_ids:
            for key in metrics:
                for m in client.get_metric_history(run_id, key):
                    rows.append((run_id, key, int(m.step), float(m.value), int(m.timestamp)))
    except Exception as e:  # noqa: BLE001
        raise AnalysisError(f"cannot read metric history from {uri}: {_one_line(e)}") from None
    df = pd.DataFrame(rows, columns=["run_id", "metric", "step", "value", "timestamp"])
    df = df.astype({"run_id": object, "metric": object, "step": "int64", "value": "float64", "timestamp": "int64"})
    df = df.sort_values(["run_id", "metric", "step", "timestamp"], kind="stable")
    df = df.drop_duplicates(["run_id", "metric", "step"], keep="last")
    return df.drop(columns="timestamp").reset_index(drop=True)
