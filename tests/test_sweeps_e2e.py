"""sweeps end to end: `python -m sweeps.exp6 --smoke-test` as a user runs it, into the default SQLite store,
and the MLflow layout of docs/architecture.md checked with the MLflow client."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
EPOCH_METRICS = ("train_loss", "train_acc", "val_loss", "val_acc", "lr", "momentum", "epoch_seconds", "images_per_second")
SUMMARY_METRICS = ("best_val_acc", "best_epoch", "test_acc", "test_loss", "train_seconds")
TAGS = ("bigbatch.experiment", "bigbatch.paper_row", "bigbatch.recipe", "bigbatch.dataset", "bigbatch.status",
        "bigbatch.trial_id", "bigbatch.sweep", "bigbatch.search", "bigbatch.git_commit", "bigbatch.device",
        "bigbatch.torch_version", "bigbatch.ray_version", "mlflow.parentRunId")


def trial_runs(uri: str, experiment: str):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None, f"no MLflow experiment {experiment}"
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get("bigbatch.role") == "sweep"]
    children = [r for r in runs if r.data.tags.get("bigbatch.role") == "trial"]
    return client, parents, children


# exp6_smoke: the session-scoped smoke sweep of tests/conftest.py (shared with tests/test_models_registry.py)


@pytest.mark.slow
def test_exp6_smoke_runs_to_the_end_with_a_trial_table(exp6_smoke):
    tmp, r, wall = exp6_smoke
    out = r.stdout
    for column in ("bs", "epoch", "val_acc", "lr", "img/s"):
        assert column in out
    assert "sweep smoke6: 6 finished, 0 errored, 0 unfinished" in out
    assert "mlflow ui --backend-store-uri sqlite:///" in out
    assert (tmp / "mlflow.db").exists()  # the default tracking URI: a SQLite file in the working directory
    assert json.loads((tmp / "rr" / "smoke6" / "bigbatch_sweep.json").read_text())["options"]["smoke_test"] is True
    print(f"exp6 smoke wall time: {wall:.1f} s")


def test_exp6_smoke_mlflow_layout(exp6_smoke):
    tmp, _, _ = exp6_smoke
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    client, parents, children = trial_runs(uri, "bigbatch-exp6")
    assert [e.name for e in client.search_experiments() if e.name.startswith("bigbatch-")] == ["bigbatch-exp6"]
    assert len(parents) == 1 and parents[0].info.run_name == "smoke6" and parents[0].info.status == "FINISHED"
    assert parents[0].data.tags["bigbatch.smoke_test"] == "true"
    assert len(children) == 6
    names = sorted(c.info.run_name for c in children)
    assert "exp6 bs=1024 f=1.77 seed=0" in names and "exp6 bs=32 f=10 seed=0" in names
    for run in children:
        tags, params, metrics = run.data.tags, run.data.params, run.data.metrics
        for tag in TAGS:
            assert tag in tags, tag
        assert tags["mlflow.parentRunId"] == parents[0].info.run_id
        assert tags["bigbatch.status"] in ("completed", "diverged") and run.info.status == "FINISHED"
        assert tags["bigbatch.experiment"] == "exp6" and tags["bigbatch.recipe"] == "text" and tags["bigbatch.dataset"] == "synthetic"
        assert tags["bigbatch.search"] == "grid" and tags["bigbatch.device"].startswith("cpu")
        for key in ("batch_size", "factor_lr", "milestones", "scaled_lr", "total_epochs", "scaled_factor_lr", "width_mult", "recipe"):
            assert key in params, key
        assert json.loads(params["milestones"]) == [30, 60, 90]
        assert float(params["scaled_factor_lr"]) == pytest.approx(10 * (32 / int(params["batch_size"])) ** 0.5)
        epochs = int(params["total_epochs"])
        for key in EPOCH_METRICS:
            steps = [m.step for m in client.get_metric_history(run.info.run_id, key)]
            assert steps == list(range(1, epochs + 1)), (key, steps)
        for key in SUMMARY_METRICS:
            assert key in metrics, key
        arts = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {"config.json", "best_model.pt"} <= arts
        cfg = json.loads(Path(client.download_artifacts(run.info.run_id, "config.json", str(tmp / run.info.run_id))).read_text())
        assert cfg["batch_size"] == int(params["batch_size"]) and cfg["experiment"] == "exp6"
