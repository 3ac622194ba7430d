"""The chosen models of Table I in the MLflow Model Registry, one call away.

``python -m analysis.table --register`` registers, for every cell of Table I, the model its selection
rule chose (analysis.table: the setting with the best mean validation accuracy; among its seeds, the run
with the best ``best_val_acc``; the test accuracy never takes part): one registered model per row and
batch size (``bigbatch-exp6-bs1024``, ``bigbatch-exp5-best-bs1024``), its current choice under the alias
``table1``. Each version is an MLflow PyTorch model (a LoggedModel) logged into the chosen trial's run
at registration time, rebuilt from the run's ``config.json`` and ``best_model.pt`` artifacts with
``bigbatch.model.build_model``; ``bigbatch`` travels with it (``code_paths``). Registering again is
idempotent: a cell whose alias already points at a version of the chosen run is left alone.

    from analysis.models import load_model
    model = load_model("exp6", 1024)             # torch.nn.Module in eval mode, on the CPU
    model = load_model("exp5-best", 1024, tracking_uri="http://mlflow-host:5000")
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from bigbatch.config import RunConfig
from bigbatch.datasets import DATASETS
from bigbatch.schema import (BEST_MODEL, CONFIG_ARTIFACT, LOGGED_MODEL_NAME, REGISTRY_ALIAS, TAG_CELL,
                             default_tracking_uri,
                             registered_model_name)

from .runs import AnalysisError, check_tracking_uri, mlflow_session, one_line



@dataclass(frozen=True)
class Registered:
    """One registered cell: the model name, its version under the alias, the run it came from."""

    name: str  # bigbatch-exp6-bs1024
    version: str
    run_id: str
    best_val_acc: float
    test_acc: float
    new: bool  # False: the alias already pointed at a version of this run


def build_from_run(client, run_id: str, dest: Path):
    """The run's best-validation model (eval mode, CPU), rebuilt from its config.json and best_model.pt."""
    import torch

    from bigbatch.model import build_model

    cfg_path = client.download_artifacts(run_id, CONFIG_ARTIFACT, str(dest))
    weights = client.download_artifacts(run_id, BEST_MODEL, str(dest))
    cfg = RunConfig.from_dict(json.loads(Path(cfg_path).read_text()))
    num_classes, in_channels, _ = DATASETS[cfg.dataset].shape
    model = build_model(cfg, num_classes, in_channels)
    model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    return model.eval(), cfg


def chosen_run(runs, cell) -> Any:
    """Among the chosen setting's runs (one per seed), the one with the best validation accuracy."""
    rows = runs[runs["run_id"].isin(cell.run_ids)]
    return rows.sort_values("best_val_acc", ascending=False, kind="stable").iloc[0]


def _log_model(uri: str, run_id: str, name: str, model, in_channels: int) -> str:
    """Log ``model`` into run ``run_id`` as an MLflow PyTorch model registered as ``name``; its version."""
    import mlflow
    import numpy as np
    import torch
    from mlflow.models import infer_signature

    import bigbatch

    logging.getLogger("mlflow").setLevel(logging.ERROR)  # pickle-format advice, "Successfully registered ..."
    client = mlflow.tracking.MlflowClient(tracking_uri=uri)
    info = client.get_run(run_id).info  # reopening the run for the model must not change how it ended
    x = np.zeros((1, in_channels, 32, 32), dtype=np.float32)
    with torch.no_grad():
        y = model(torch.from_numpy(x)).numpy()
    mlflow.set_tracking_uri(uri)
    try:
        with mlflow.start_run(run_id=run_id):
            logged = mlflow.pytorch.log_model(  # pickle (the module, bigbatch's code beside it): loads without tracing
                model, name=LOGGED_MODEL_NAME, registered_model_name=name, signature=infer_signature(x, y),
                serialization_format="pickle", code_paths=[str(Path(bigbatch.__file__).parent)],
                pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", f"mlflow=={mlflow.__version__}", "numpy"],
            )
    finally:
        client.set_terminated(run_id, status=info.status, end_time=info.end_time)
    return str(logged.registered_model_version)


def register_tables(tables: Sequence, runs, tracking_uri: str | None = None, alias: str = REGISTRY_ALIAS) -> list[Registered]:
    """Register every cell's chosen model of ``tables`` (analysis.table.Table, one (dataset, recipe)); see the module doc."""
    if len(tables) != 1:
        combos = "; ".join(t.title for t in tables) or "none"
        raise AnalysisError(f"--register needs one Table I (one dataset and recipe), the runs give {len(tables)} "
                            f"({combos}): choose with --dataset/--recipe")
    uri = check_tracking_uri(tracking_uri or default_tracking_uri())
    (table,) = tables
    out: list[Registered] = []
    for name in ("mlflow", "alembic", "sqlalchemy", "mlflow.models.model"):
        logging.getLogger(name).setLevel(logging.ERROR)
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    try:
        with mlflow_session(uri) as mlflow, tempfile.TemporaryDirectory() as tmp:
            client = mlflow.tracking.MlflowClient(tracking_uri=uri)
            for row in table.all_rows:
                for bs in table.batch_sizes:
                    cell = table.cell(row, bs)
                    if cell is None:
                        continue
                    run = chosen_run(runs, cell)
                    name = registered_model_name(row, bs)
                    try:
                        current = client.get_model_version_by_alias(name, alias)
                    except Exception:  # no such model or alias yet
                        current = None
                    if current is not None and current.run_id == run["run_id"]:
                        out.append(Registered(name, str(current.version), run["run_id"], float(run["best_val_acc"]),
                                              float(run["test_acc"]), False))
                        continue
                    model, cfg = build_from_run(client, run["run_id"], Path(tmp) / run["run_id"])
                    version = _log_model(uri, run["run_id"], name, model, DATASETS[cfg.dataset].in_channels)
                    client.set_registered_model_alias(name, alias, version)
                    client.set_model_version_tag(name, version, TAG_CELL, f"{row} bs={bs}")
                    out.append(Registered(name, version, run["run_id"], float(run["best_val_acc"]), float(run["test_acc"]), True))
    except AnalysisError:
        raise
    except Exception as e:  # noqa: BLE001 - a store or artifact failure: one line for the user
        raise AnalysisError(f"cannot register the Table I models in {uri}: {one_line(e)}") from None
    return out


def load_model(experiment: str, batch_size: int, tracking_uri: str | None = None, alias: str = REGISTRY_ALIAS):
    """The Table I cell's chosen model (``python -m analysis.table --register``) as a torch module in eval mode.

    ``experiment``: a Table I row, ``exp1`` .. ``exp6`` or ``exp5-best``; ``tracking_uri`` defaults to
    ``sqlite:///<cwd>/mlflow.db``, as the sweeps."""
    uri = check_tracking_uri(tracking_uri or default_tracking_uri())
    name = registered_model_name(experiment, batch_size)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    try:
        with mlflow_session(uri) as mlflow:
            import mlflow.pytorch

            model = mlflow.pytorch.load_model(f"models:/{name}@{alias}", map_location="cpu")
    except Exception as e:  # noqa: BLE001
        raise AnalysisError(f"cannot load model {name}@{alias} from {uri}: {one_line(e)} "
                            "(register the Table I models with python -m analysis.table --register)") from None
    return model.eval()


def run_config(experiment: str, batch_size: int, tracking_uri: str | None = None, alias: str = REGISTRY_ALIAS) -> RunConfig:
    """The RunConfig the registered model of a cell was trained with (its run's config.json)."""
    uri = check_tracking_uri(tracking_uri or default_tracking_uri())
    name = registered_model_name(experiment, batch_size)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    try:
        with mlflow_session(uri) as mlflow, tempfile.TemporaryDirectory() as tmp:
            client = mlflow.tracking.MlflowClient(tracking_uri=uri)
            run_id = client.get_model_version_by_alias(name, alias).run_id
            return RunConfig.from_dict(json.loads(Path(client.download_artifacts(run_id, CONFIG_ARTIFACT, tmp)).read_text()))
    except Exception as e:  # noqa: BLE001
        raise AnalysisError(f"cannot read the config of {name}@{alias} from {uri}: {one_line(e)}") from None


def accuracy_on_test_set(model, cfg: RunConfig, device: str = "cpu") -> float:
    """Accuracy (%) of ``model`` on ``cfg``'s test set, evaluated as bigbatch.train does (eval mode,
    ``eval_batch_size`` images at a time, the dataset's fixed normalisation)."""
    import torch

    from bigbatch.data import load_data

    test = load_data(cfg, device).test
    model = model.to(device).eval()
    correct = 0
    with torch.no_grad():
        for start in range(0, len(test), cfg.eval_batch_size):
            x, y = test.get(torch.arange(start, min(start + cfg.eval_batch_size, len(test)), device=device))
            correct += int((model(x).argmax(1) == y).sum())
    return 100.0 * correct / len(test)
