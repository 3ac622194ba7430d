"""End to end: real smoke sweeps (Ray Tune + MLflow, as a user runs them) -> Table I, figures, report.

The store is written by ``python -m sweeps.exp1 --smoke-test --batch-sizes 32 128 1024`` and
``python -m sweeps.exp5 --smoke-test --batch-sizes 32 1024`` (factor_lr in {10, 5, 2}: the nuisance
choice; Table I's exp5 row keeps the paper's f = 10, the extra row exp5-best chooses f by validation).
The table is checked against MLflow read directly with the MLflow client, independently of
analysis.runs.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from fixtures import md_rows

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def sweep_store(tmp_path_factory) -> str:
    if importlib.util.find_spec("sweeps") is None or importlib.util.find_spec("sweeps.exp1") is None:
        pytest.skip("the sweeps package (python -m sweeps.expN) is not importable")
    tmp = tmp_path_factory.mktemp("e2e")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "PYTHONUNBUFFERED": "1"}
    for exp, extra in (("exp1", ["--batch-sizes", "32", "128", "1024"]), ("exp5", ["--batch-sizes", "32", "1024"])):
        cmd = [sys.executable, "-m", f"sweeps.{exp}", "--smoke-test", "--quiet", "--tracking-uri", uri,
               "--storage-path", str(tmp / "ray_results"), "--name", f"e2e-{exp}", *extra]
        r = subprocess.run(cmd, cwd=tmp, env=env, capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, f"{' '.join(cmd)} exited {r.returncode}:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return uri


def _mlflow_truth(uri: str) -> pd.DataFrame:
    """Trial runs read with the MLflow client directly (not through analysis.runs)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    rows = []
    for name in ("bigbatch-exp1", "bigbatch-exp5"):
        exp = client.get_experiment_by_name(name)
        for run in client.search_runs([exp.experiment_id], max_results=1000):
            if run.data.tags.get("bigbatch.role") != "trial":
                continue
            rows.append({"experiment": run.data.tags["bigbatch.experiment"], "run_id": run.info.run_id,
                         "batch_size": int(run.data.params["batch_size"]),
                         "factor_lr": float(run.data.params["factor_lr"]),
                         "status": run.data.tags["bigbatch.status"],
                         "best_val_acc": run.data.metrics["best_val_acc"], "test_acc": run.data.metrics["test_acc"],
                         "sharpness": run.data.metrics.get("sharpness"),
                         "gns_epochs": len(client.get_metric_history(run.info.run_id, "gns"))})
    return pd.DataFrame(rows)


def test_smoke_sweep_table(sweep_store):
    from analysis.runs import load_runs
    from analysis.table import build_table, render

    truth = _mlflow_truth(sweep_store)
    assert len(truth) == 3 + 2 * 3 and set(truth["status"]) <= {"completed", "diverged"}
    runs = load_runs(sweep_store)
    assert len(runs) == len(truth) and set(runs["run_id"]) == set(truth["run_id"])
    assert (runs["smoke_test"] == True).all()  # noqa: E712 - from the sweeps' parent runs
    t = build_table(runs)
    assert (t.dataset, t.recipe) == ("synthetic", "text")
    assert t.rows == [f"exp{i}" for i in range(1, 7)] and t.batch_sizes == [32, 64, 128, 256, 512, 1024]
    # shape: six rows, six batch-size columns; exp1 at 32/128/1024 and exp5 at 32/1024, the rest '-'
    exp1_bs = [32, 128, 1024]
    assert set(t.cells) == {("exp1", b) for b in exp1_bs} | {(r, b) for r in ("exp5", "exp5-best") for b in (32, 1024)}
    assert t.extra_rows == ["exp5-best"]
    rows = md_rows(render(t, "markdown"))
    assert len(rows) == 1 + 6 + 1  # header, the paper's six rows, exp5's best-f row
    baseline = next(r for r in rows if r[0] == "Baseline")
    assert [baseline[i] == "-" for i in range(1, 7)] == [False, True, False, True, True, False]
    # the exp5 row is the paper's: its f = 10 run only
    for bs in (32, 1024):
        f10 = truth[(truth["experiment"] == "exp5") & (truth["batch_size"] == bs) & (truth["factor_lr"] == 10.0)]
        c = t.cell("exp5", bs)
        assert c.run_ids == f10["run_id"].tolist() and c.test_acc == pytest.approx(f10["test_acc"].iloc[0])
    # the selection rule, checked against MLflow directly: best validation, never best test
    for bs in (32, 1024):
        cell_truth = truth[(truth["experiment"] == "exp5") & (truth["batch_size"] == bs)]
        c = t.cell("exp5-best", bs)
        assert c.searched == {"factor_lr": [2.0, 5.0, 10.0]} and c.n_runs == 3
        assert c.best_val_acc == pytest.approx(cell_truth["best_val_acc"].max())
        chosen = cell_truth[cell_truth["factor_lr"] == c.setting["factor_lr"]]
        assert chosen["best_val_acc"].iloc[0] == pytest.approx(cell_truth["best_val_acc"].max())
        assert c.test_acc == pytest.approx(chosen["test_acc"].iloc[0])
        assert c.run_ids == chosen["run_id"].tolist()
        assert bool(c.edge) == (c.setting["factor_lr"] in (2.0, 10.0))
    for bs in exp1_bs:
        row = truth[(truth["experiment"] == "exp1") & (truth["batch_size"] == bs)]
        assert t.cell("exp1", bs).test_acc == pytest.approx(row["test_acc"].iloc[0])
        assert t.cell("exp1", bs).setting == {}
    # the paper comparison
    data = json.loads(render(t, "json", paper=True))["tables"][0]
    exp1 = next(r for r in data["rows"] if r["experiment"] == "exp1")
    assert exp1["paper_spread"] == pytest.approx(46.91)
    c32 = exp1["cells"]["32"]
    assert c32["paper"] == pytest.approx(86.37) and c32["diff"] == pytest.approx(c32["test_acc"] - 86.37)
    vals = [exp1["cells"][str(b)]["test_acc"] for b in exp1_bs]
    assert exp1["cells"]["64"] is None
    assert exp1["spread"] == pytest.approx(max(vals) - min(vals))
    paper_md = render(t, "markdown", paper=True)
    assert f"({86.37:.2f}, {c32['test_acc'] - 86.37:+.2f})" in paper_md


def test_smoke_sweep_cli_figures_report(sweep_store, tmp_path):
    import matplotlib.image as mpimg
    import numpy as np

    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    r = subprocess.run([sys.executable, "-m", "analysis.table", "--tracking-uri", sweep_store, "--paper",
                        "--format", "csv"], capture_output=True, text=True, timeout=300, env=env, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    import io

    df = pd.read_csv(io.StringIO(r.stdout))
    assert len(df) == 7 and df.loc[df["experiment"] == "exp1", "32_paper"].iloc[0] == pytest.approx(86.37)

    r = subprocess.run([sys.executable, "-m", "analysis.figures", "--tracking-uri", sweep_store, "--out",
                        str(tmp_path / "figs")], capture_output=True, text=True, timeout=300, env=env, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    figs = [Path(p) for p in r.stdout.split()]
    # the measurements (issue 11): every trial logged its sharpness, and the noise scale where it was finite
    truth = _mlflow_truth(sweep_store)
    assert truth["sharpness"].notna().all() and truth["gns_epochs"].sum() > 0
    names = sorted(p.name for p in figs)
    gns_figs = {n for n in names if n.startswith("gns_")}
    assert set(names) - gns_figs == {"curves_exp1.png", "curves_exp5.png", "factor_lr_vs_batch_size.png",
                                     "test_acc_vs_batch_size.png", "sharpness_vs_batch_size.png"}
    assert gns_figs and gns_figs <= {"gns_exp1.png", "gns_exp5.png"}
    for p in figs:
        assert p.stat().st_size > 15 * 1024
        img = mpimg.imread(p)
        assert img.shape[0] >= 400 and img.shape[1] >= 600 and float(np.std(img[..., :3])) > 0.02

    r = subprocess.run([sys.executable, "-m", "analysis.report", "--tracking-uri", sweep_store, "--out",
                        str(tmp_path / "report")], capture_output=True, text=True, timeout=300, env=env, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    md_path, html_path = (Path(p) for p in r.stdout.split())
    md = md_path.read_text()
    for link in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md):
        assert (md_path.parent / link).stat().st_size > 15 * 1024
    assert "smoke-test" in md and "## What is missing" in md and "exp2 (Scaled Epochs)" in md
    assert "exp1: no finished run at batch size 64, 256, 512" in md
    assert "| bigbatch-exp5 | 6 |" in re.sub(r" +", " ", md)
    total = re.search(r"sum of `train_seconds`\): \*\*([0-9.]+) (s|min|h)\*\*", md)
    assert total and float(total.group(1)) > 0 and not math.isnan(float(total.group(1)))
    assert "<table>" in html_path.read_text()
    assert "## Why large batches lose: gradient noise scale and sharpness" in md and "Sharpness per Table I cell" in md
