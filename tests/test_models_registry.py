"""analysis.models (issue 12.4): a smoke sweep's runs carry their dataset as MLflow inputs; ``python -m
analysis.table --register`` puts each Table I cell's chosen model in the Model Registry (alias table1, an
MLflow PyTorch model); ``load_model`` gives it back in eval mode and its test accuracy equals the logged one."""

from __future__ import annotations

import shutil

import pytest

from reliability_helpers import run


@pytest.mark.slow
def test_register_and_load_round_trip(exp6_smoke, tmp_path):
    """On the session's exp6 smoke store (tests/conftest.py; its mlflow.db copied here, as registering writes)."""
    from mlflow.tracking import MlflowClient

    from analysis.models import accuracy_on_test_set, load_model, run_config

    store, _, _ = exp6_smoke
    shutil.copy(store / "mlflow.db", tmp_path / "m.db")
    uri = f"sqlite:///{tmp_path / 'm.db'}"

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("bigbatch-exp6")
    trials = [t for t in client.search_runs([exp.experiment_id]) if t.data.tags.get("bigbatch.role") == "trial"]
    assert sorted(int(t.data.params["batch_size"]) for t in trials) == [32, 64, 128, 256, 512, 1024]
    for t in trials:  # the dataset of each run (mlflow.log_input, metadata only): one input per split
        inputs = {d.dataset.name: {tag.key: tag.value for tag in d.tags} for d in t.inputs.dataset_inputs}
        assert set(inputs) == {"synthetic-train", "synthetic-val", "synthetic-test"}
        assert inputs["synthetic-train"]["mlflow.data.context"] == "train"
        assert int(inputs["synthetic-val"]["bigbatch.images"]) == int(t.data.params["val_size"])
        assert int(inputs["synthetic-train"]["bigbatch.images"]) == int(t.data.params["synthetic_size"]) - int(t.data.params["val_size"])
        assert t.data.params["download"] == "False"  # trials never download: the driver prepared the data

    reg = run(["-m", "analysis.table", "--tracking-uri", uri, "--register"], cwd=tmp_path, timeout=300)
    assert reg.returncode == 0, reg.stdout[-3000:] + reg.stderr[-3000:]
    for bs in (64, 128):
        assert f"registered bigbatch-exp6-bs{bs} version 1 (alias table1)" in reg.stderr, reg.stderr[-3000:]
    again = run(["-m", "analysis.table", "--tracking-uri", uri, "--register"], cwd=tmp_path, timeout=300)
    assert again.returncode == 0 and "unchanged  bigbatch-exp6-bs64 version 1" in again.stderr, again.stderr[-3000:]

    for bs in (64, 128):
        model = load_model("exp6", bs, tracking_uri=uri)
        assert not model.training
        version = client.get_model_version_by_alias(f"bigbatch-exp6-bs{bs}", "table1")
        logged = client.get_run(version.run_id)
        assert logged.info.status == "FINISHED" and logged.data.tags["bigbatch.status"] in ("completed", "diverged")
        assert logged.data.params["batch_size"] == str(bs)
        cfg = run_config("exp6", bs, tracking_uri=uri)
        assert accuracy_on_test_set(model, cfg) == logged.data.metrics["test_acc"]
