"""Unit tests of analysis/ on an MLflow store written with the MLflow client, following the schema of
docs/architecture.md exactly (what the sweeps write). The end-to-end test on a real smoke sweep is
tests/test_analysis_e2e.py.

The store (``fake_store``) holds, by design:
- exp1 at every batch size with two seeds (mean and std), and one failed trial;
- exp2 without batch size 1024 (a '-' cell);
- exp5 with factor_lr in {10, 5, 2} per batch size: its Table I row keeps f=10 (the paper's row); the
  extra row "best f by validation" chooses among all three; at 1024 the best-validation setting (f=2) has
  a WORSE test accuracy than f=5 (the selection rule must pick f=2) and lies on the edge of the grid;
- exp6 with one trial at 1024 that diverged at epoch 3 after two good epochs (issue 9.1: it reports the
  best model seen before, tag bigbatch.diverged_epoch = 3);
- the lr grid (bigbatch-lr-grid): exp1 at bs 32 with lr in {0.001, 0.003, 0.01, 0.03, 0.1}, where 0.03
  has the best validation and 0.01 the best test accuracy, and 0.1 diverged in its first epoch;
- no exp3 and no exp4 (absent experiments);
- an Optuna search over factor_lr at 256, 512 and 1024;
- a parent run per sweep.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from bigbatch.experiments import load_experiment
from fixtures import md_rows

EPOCHS = 5

# (experiment, batch_size, overrides, seed) -> (final val acc, test acc, status)
EXP1 = {32: 86.0, 64: 85.0, 128: 82.0, 256: 74.0, 512: 59.0, 1024: 40.0}
EXP2 = {32: 86.5, 64: 86.0, 128: 85.0, 256: 83.0, 512: 84.0}
# exp5: factor_lr -> (val, test) per batch size
EXP5 = {
    32: {10: (90.0, 90.5), 5: (91.0, 90.9), 2: (89.0, 89.5)},
    64: {10: (91.0, 91.2), 5: (90.0, 90.1), 2: (88.0, 88.3)},
    128: {10: (90.5, 90.7), 5: (90.0, 90.2), 2: (89.0, 89.0)},
    256: {10: (90.0, 90.6), 5: (90.4, 90.4), 2: (89.0, 89.1)},
    512: {10: (89.0, 89.9), 5: (90.2, 90.1), 2: (89.9, 90.0)},
    1024: {10: (82.0, 82.5), 5: (88.0, 89.9), 2: (89.5, 88.8)},  # best val f=2, best test f=5
}
EXP6 = {32: 90.9, 64: 91.2, 128: 91.0, 256: 90.8, 512: 90.6, 1024: 89.6}
OPTUNA = {256: {3.0: 90.1, 4.5: 90.6, 8.0: 89.0}, 512: {2.0: 89.5, 3.1: 90.4, 6.0: 88.0},
          1024: {1.5: 88.9, 2.2: 89.6, 4.0: 87.0}}
# lr grid: lr -> (val, test); 0.1 diverged in its first epoch (chance level)
LR_GRID = {0.001: (70.0, 69.5), 0.003: (80.0, 79.0), 0.01: (85.0, 85.5), 0.03: (85.4, 84.9), 0.1: (10.0, 10.0)}
DIVERGED_AT = 3  # the exp6 trial at 1024 diverged at this epoch, after two good ones


def _param_str(v):
    if isinstance(v, (list, tuple)):
        return json.dumps(list(v))
    return str(v)


def build_store(db: Path) -> str:
    """Write the fake sweeps into a fresh SQLite MLflow store; returns its tracking URI."""
    from mlflow.entities import Metric, Param, RunTag
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{db}"
    client = MlflowClient(tracking_uri=uri)
    t0 = 1_700_000_000_000
    clock = [t0]

    def tick(ms=1000):
        clock[0] += ms
        return clock[0]

    exp_ids: dict[str, str] = {}
    parents: dict[str, str] = {}

    def experiment_id(mlflow_name):
        if mlflow_name not in exp_ids:
            exp_ids[mlflow_name] = client.create_experiment(mlflow_name)
        return exp_ids[mlflow_name]

    def parent(mlflow_name, sweep, search):
        if sweep not in parents:
            run = client.create_run(experiment_id(mlflow_name), run_name=sweep, start_time=tick(),
                                    tags={"bigbatch.role": "sweep", "bigbatch.sweep": sweep, "bigbatch.search": search})
            client.set_terminated(run.info.run_id, "FINISHED", end_time=tick())
            parents[sweep] = run.info.run_id
        return parents[sweep]

    def trial(name, bs, seed, val, test, status="completed", mlflow_name=None, search="grid", diverged_at=None,
              **overrides):
        exp = load_experiment(name)
        cfg = exp.run_config(bs, seed=seed, epochs=EPOCHS, **overrides)
        mlflow_name = mlflow_name or f"bigbatch-{name}"
        sweep = f"{mlflow_name[len('bigbatch-'):]}-sweep"
        pid = parent(mlflow_name, sweep, search)
        f = overrides.get("factor_lr")
        run_name = f"{name} bs={bs}" + (f" f={f:g}" if f is not None else "") + f" seed={seed}"
        tags = {
            "mlflow.parentRunId": pid, "bigbatch.role": "trial", "bigbatch.experiment": name,
            "bigbatch.paper_row": exp.label, "bigbatch.recipe": cfg.recipe, "bigbatch.dataset": cfg.dataset,
            "bigbatch.status": "running", "bigbatch.trial_id": f"t{len(clock)}_{tick(1)}",
            "bigbatch.sweep": sweep, "bigbatch.search": search, "bigbatch.git_commit": "abc123",
            "bigbatch.device": "cpu", "bigbatch.torch_version": "2.14.1", "bigbatch.ray_version": "2.60.0",
        }
        run = client.create_run(experiment_id(mlflow_name), run_name=run_name, start_time=tick(), tags=tags)
        rid = run.info.run_id
        params = {**cfg.to_dict(), "scaled_lr": cfg.scaled_lr, "total_epochs": cfg.total_epochs,
                  "scaled_factor_lr": cfg.scaled_factor_lr}
        client.log_batch(rid, params=[Param(k, _param_str(v)) for k, v in params.items()])
        if status == "failed":
            client.set_tag(rid, "bigbatch.status", "failed")
            client.set_terminated(rid, "FAILED", end_time=tick())
            return rid
        epochs = diverged_at if status == "diverged" else EPOCHS
        metrics, best, best_epoch = [], -1.0, 0
        for e in range(1, epochs + 1):
            ts = tick(100)
            if status == "diverged" and e == epochs:  # the diverging epoch: loss not finite, chance accuracy
                va, vl = 10.0, float("nan")
            elif status == "diverged":  # good epochs before it, the last one the best (= val)
                va, vl = val - 3.0 * (epochs - 1 - e), 0.5
            else:  # rises towards val; the last epoch is the best
                va, vl = val - 3.0 * (epochs - e), 0.3 + 0.2 * (epochs - e) + (100 - val) / 50
            if va > best and not (status == "diverged" and e == epochs):  # a diverged epoch is never the best
                best, best_epoch = va, e
            for key, value in {"train_loss": vl * 0.8, "train_acc": va + 2, "val_loss": vl, "val_acc": va,
                               "lr": cfg.scaled_lr, "momentum": 0.0, "epoch_seconds": 2.0 * bs / 32 + 1,
                               "images_per_second": 1000.0}.items():
                metrics.append(Metric(key, value, ts, e))
        if status == "diverged" and best_epoch == 0:  # no epoch finished: chance level
            best = 10.0
        train_seconds = epochs * (2.0 * bs / 32 + 1)
        ts = tick()
        for key, value in {"best_val_acc": best, "best_epoch": best_epoch, "test_acc": test,
                           "test_loss": 0.5, "train_seconds": train_seconds}.items():
            metrics.append(Metric(key, value, ts, 0))
        tags = [RunTag("bigbatch.status", status)]
        if status == "diverged":
            tags.append(RunTag("bigbatch.diverged_epoch", str(diverged_at)))
        client.log_batch(rid, metrics=metrics, tags=tags)
        client.set_terminated(rid, "FINISHED", end_time=tick())
        return rid

    for bs, acc in EXP1.items():
        for seed in (0, 1):
            d = 0.5 if seed else -0.5  # mean = acc, std = 0.7071
            trial("exp1", bs, seed, acc + d + 0.1, acc + d)
    trial("exp1", 32, 2, 0, 0, status="failed")
    for bs, acc in EXP2.items():
        rid = trial("exp2", bs, 0, acc + 0.2, acc)
        if bs == 32:  # a resumed trial re-logging its last epoch: the history keeps one value per step
            client.log_metric(rid, "val_acc", acc + 0.2, timestamp=tick(), step=EPOCHS)
    for bs, grid in EXP5.items():
        for f, (val, test) in grid.items():
            trial("exp5", bs, 0, val, test, factor_lr=f)
    for bs, acc in EXP6.items():
        trial("exp6", bs, 0, acc + 0.1, acc)
    trial("exp6", 1024, 1, 70.0, 69.0, status="diverged", diverged_at=DIVERGED_AT)
    for bs, grid in OPTUNA.items():
        for f, val in grid.items():
            trial("exp5", bs, 0, val, val - 0.2, mlflow_name="bigbatch-optuna-factor-lr", search="optuna", factor_lr=f)
    for lr, (val, test) in LR_GRID.items():
        diverged = lr == 0.1
        trial("lr-grid", 32, 0, val, test, status="diverged" if diverged else "completed",
              diverged_at=1 if diverged else None, lr=lr)
    return uri


def squeeze(text: str) -> str:
    """Runs of spaces as one (Markdown tables pad their columns)."""
    import re

    return re.sub(r" +", " ", text)


def frame_run(rid, experiment="exp5", bs=1024, status="completed", val=0.0, test=0.0, seed=0, **params):
    """One row of load_runs' DataFrame, as few columns as the table needs (no MLflow)."""
    return {"mlflow_experiment": f"bigbatch-{experiment}", "role": "trial", "experiment": experiment,
            "batch_size": bs, "dataset": "cifar10", "recipe": "text", "status": status, "best_val_acc": val,
            "test_acc": test, "run_id": rid, "seed": seed, **params}


# ============================================================================================ fixtures
@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    return build_store(tmp_path_factory.mktemp("analysis") / "mlflow.db")


@pytest.fixture(scope="module")
def runs(store):
    from analysis.runs import load_runs

    return load_runs(store)


@pytest.fixture(scope="module")
def table(runs):
    from analysis.table import build_table

    return build_table(runs)


# ============================================================================================ loading
def test_load_runs_is_tidy_and_typed(store, runs):
    from analysis.runs import COLUMNS, load_runs

    assert len(runs) == 6 * 2 + 1 + 5 + 6 * 3 + 7 + 9 + 5  # trials only, one row each
    assert runs["run_id"].is_unique
    assert set(COLUMNS) <= set(runs.columns)
    assert (runs["role"] == "trial").all()
    assert set(runs["status"]) == {"completed", "diverged", "failed"}
    assert pd.api.types.is_integer_dtype(runs["batch_size"]) and pd.api.types.is_integer_dtype(runs["seed"])
    assert pd.api.types.is_float_dtype(runs["factor_lr"]) and pd.api.types.is_float_dtype(runs["test_acc"])
    assert pd.api.types.is_bool_dtype(runs["drop_last"])
    assert runs["milestones"].iloc[0] == (30, 60, 90)
    assert set(runs["experiment"]) == {"exp1", "exp2", "exp5", "exp6", "lr-grid"}
    diverged = runs[runs["status"] == "diverged"].set_index("experiment")
    assert diverged.loc["exp6", "diverged_epoch"] == DIVERGED_AT and diverged.loc["lr-grid", "diverged_epoch"] == 1
    assert runs.loc[runs["status"] != "diverged", "diverged_epoch"].isna().all()
    assert pd.api.types.is_integer_dtype(runs["diverged_epoch"])
    assert runs.loc[runs["experiment"] == "exp5", "paper_row"].iloc[0] == "GhostBatchNorm + CyclicLR"
    exp6 = runs[runs["experiment"] == "exp6"].sort_values("batch_size")
    assert exp6["scaled_factor_lr"].iloc[-1] == pytest.approx(10 * math.sqrt(32 / 1024))
    assert len(load_runs(store, include_parents=True)) == len(runs) + 6  # one parent per sweep
    assert len(load_runs(store, experiments=["exp5"])) == 18
    assert len(load_runs(store, experiments=["bigbatch-optuna-factor-lr"])) == 9
    assert len(load_runs(store, recipe="authors-code")) == 0
    assert len(load_runs(store, dataset="cifar10")) == len(runs)


def test_load_history_long_and_deduplicated(store, runs):
    from analysis.runs import load_history

    rid = runs[(runs["experiment"] == "exp2") & (runs["batch_size"] == 32)]["run_id"].iloc[0]
    h = load_history(store, [rid], ("val_acc", "val_loss"))
    assert list(h.columns) == ["run_id", "metric", "step", "value"]
    assert len(h) == 2 * EPOCHS  # the re-logged epoch counts once
    assert sorted(h[h["metric"] == "val_acc"]["step"]) == list(range(1, EPOCHS + 1))


# ============================================================================================ Table I
def test_table_shape(table):
    from analysis.table import render

    assert table.rows == [f"exp{i}" for i in range(1, 7)]
    assert table.extra_rows == ["exp5-best"]  # exp5 searched factor_lr: its best-by-validation row
    assert table.batch_sizes == [32, 64, 128, 256, 512, 1024]
    assert table.labels["exp4"] == "GhostBatchNorm + Linear Scaling Rule + Gradual Warmup"
    assert table.labels["exp5"] == "GhostBatchNorm + CyclicLR [f=10]"
    assert table.labels["exp5-best"] == "GhostBatchNorm + CyclicLR, best f by validation"
    md = render(table, "markdown")
    rows = md_rows(md)
    assert rows[0] == ["experiment", "32", "64", "128", "256", "512", "1024", "spread", "gap"]
    assert [r[0] for r in rows[1:]] == [table.labels[e] for e in table.rows + ["exp5-best"]]  # the extra row last
    assert all(len(r) == 9 for r in rows)


def test_exp5_row_is_the_papers_f10_row(table):
    """Issue 9.2: the exp5 row of Table I holds only f = 10 runs (the paper's row used f = 10 everywhere)."""
    for bs, grid in EXP5.items():
        c = table.cell("exp5", bs)
        assert c.setting == {} and c.searched == {} and c.n_runs == 1 and not c.edge
        assert c.test_acc == pytest.approx(grid[10][1]) and c.paper == pytest.approx(PAPER_EXP5[bs])
    assert table.cell("exp5", 1024).diff == pytest.approx(82.5 - 82.79)


PAPER_EXP5 = {32: 90.98, 64: 91.32, 128: 90.78, 256: 90.78, 512: 90.23, 1024: 82.79}


def test_selection_is_by_validation_not_test(table):
    c = table.cell("exp5-best", 1024)
    assert c.setting == {"factor_lr": 2.0}  # best validation (89.5) ...
    assert c.test_acc == pytest.approx(88.8)  # ... although f=5 has the better test accuracy (89.9)
    assert c.searched == {"factor_lr": [2.0, 5.0, 10.0]} and c.n_settings == 3 and c.n_runs == 3
    assert table.cell("exp5-best", 32).setting == {"factor_lr": 5.0}
    assert table.cell("exp5-best", 32).test_acc == pytest.approx(90.9)
    assert table.cell("exp5-best", 32).experiment == "exp5"


def test_best_row_compared_only_where_the_paper_searched(table):
    """The extra row's paper number exists only at 1024 (the paper's best of f = 10, 5, 2: 89.87 with f = 2);
    elsewhere the paper did not search f, so no difference is shown (never a searched cell against an
    unsearched paper cell)."""
    from analysis.table import PAPER_OTHER_SETTINGS, paper_cell, render

    assert PAPER_OTHER_SETTINGS == {"exp5": {1024: {"factor_lr": {5.0: 88.61, 2.0: 89.87}}}}  # the paper's text
    assert paper_cell("exp5-best", 1024) == (89.87, {"factor_lr": 2.0})
    assert paper_cell("exp5", 1024) == (82.79, {}) and paper_cell("exp6-best", 1024) == (None, {})
    for bs in (32, 64, 128, 256, 512):
        c = table.cell("exp5-best", bs)
        assert c.paper is None and c.diff is None and paper_cell("exp5-best", bs) == (None, {})
    c = table.cell("exp5-best", 1024)
    assert c.paper == pytest.approx(89.87) and c.paper_setting == {"factor_lr": 2.0}
    assert c.diff == pytest.approx(88.8 - 89.87)
    md = render(table, "markdown", paper=True)
    best = next(r for r in md_rows(md) if r[0] == table.labels["exp5-best"])
    assert best[1] == "90.90 [f=5] (-, -)"
    assert best[6] == "88.80* [f=2] (89.87 [f=2], -1.07)"
    assert best[7] == "2.40" and best[8] == "2.10"  # no paper spread/gap for a row the paper does not have
    data = json.loads(render(table, "json", paper=True))["tables"][0]
    row = next(r for r in data["rows"] if r["row"] == "exp5-best")
    assert {b: c["diff"] is not None for b, c in row["cells"].items()} == {
        "32": False, "64": False, "128": False, "256": False, "512": False, "1024": True}
    import io

    df = pd.read_csv(io.StringIO(render(table, "csv", paper=True))).set_index("row")
    assert math.isnan(df.loc["exp5-best", "32_paper"]) and math.isnan(df.loc["exp5-best", "32_diff"])
    assert df.loc["exp5-best", "1024_paper"] == pytest.approx(89.87)
    assert df.loc["exp5-best", "1024_diff"] == pytest.approx(-1.07)
    assert df.loc["exp5", "1024_paper"] == pytest.approx(82.79)


def test_no_best_row_without_a_search():
    """Runs of exp5 at f = 10 only: the paper's row alone, no extra row, the paper's label."""
    from analysis.table import build_table, render

    t = build_table(pd.DataFrame([frame_run("a", val=80.0, test=81.0, factor_lr=10.0)]))
    assert t.extra_rows == [] and t.labels["exp5"] == "GhostBatchNorm + CyclicLR"
    assert t.cell("exp5", 1024).test_acc == pytest.approx(81.0)
    assert len(md_rows(render(t, "markdown"))) == 7


def test_selection_rule_over_seeds_on_a_frame():
    """Pure: the setting with the best MEAN validation accuracy wins, not the single best run."""
    from analysis.table import build_table

    rows = [frame_run(f"r{i}", bs=256, val=val, test=test, seed=seed, factor_lr=f)
            for i, (f, seed, val, test) in enumerate([(10.0, 0, 95.0, 95.0), (10.0, 1, 75.0, 70.0),  # mean val 85
                                                      (5.0, 0, 86.0, 80.0), (5.0, 1, 86.0, 82.0)])]  # mean val 86
    t = build_table(pd.DataFrame(rows))
    c = t.cell("exp5-best", 256)
    assert c.setting == {"factor_lr": 5.0} and c.n_seeds == 2
    assert c.test_acc == pytest.approx(81.0) and c.test_std == pytest.approx(math.sqrt(2))
    assert c.edge == ["factor_lr"]  # 5 is the smallest of {5, 10}
    assert sorted(c.run_ids) == ["r2", "r3"]
    paper_row = t.cell("exp5", 256)  # the f = 10 seeds only
    assert sorted(paper_row.run_ids) == ["r0", "r1"] and paper_row.test_acc == pytest.approx(82.5)


def test_a_diverged_run_ranks_by_its_best_validation_and_is_marked():
    """Issue 9.1: a diverged run carries the best model it saw before diverging; it is ranked by that
    validation accuracy like any other run (here it beats a completed setting) and its cell is marked."""
    from analysis.table import build_table, render

    rows = [frame_run("a", status="diverged", val=88.0, test=87.5, factor_lr=10.0, diverged_epoch=40),
            frame_run("b", status="completed", val=85.0, test=86.0, factor_lr=2.0, diverged_epoch=None)]
    t = build_table(pd.DataFrame(rows))
    c = t.cell("exp5-best", 1024)
    assert c.setting == {"factor_lr": 10.0} and c.test_acc == pytest.approx(87.5)
    assert c.chosen_diverged == 1 and c.diverged_epochs == [40] and c.n_diverged == 1
    assert t.notes() == ["† exp5-best bs=1024: 1 of the 1 runs of the chosen setting diverged at epoch 40; "
                         "best model before it", "† exp5 bs=1024: 1 of the 1 runs of the chosen setting diverged "
                         "at epoch 40; best model before it"][::-1]
    md = render(t, "markdown")
    assert "87.50*† [f=10]" in md
    assert "- † exp5-best bs=1024: 1 of the 1 runs of the chosen setting diverged at epoch 40; best model before it" in md
    assert "best model it saw before diverging" in md  # the legend
    # ... and a diverged setting with the lower validation accuracy loses like any other
    rows[0]["best_val_acc"] = 60.0
    c = build_table(pd.DataFrame(rows)).cell("exp5-best", 1024)
    assert c.setting == {"factor_lr": 2.0} and not c.chosen_diverged and c.n_diverged == 1


def test_other_varying_keys_are_settings_with_a_warning():
    """A key no experiment searches (here epochs: a quick run beside the full one) still splits the
    settings, gets no edge mark, but a warning naming it."""
    from analysis.table import build_table

    rows = [frame_run(rid, experiment="exp1", bs=64, val=val, test=test, epochs=ep)
            for rid, ep, val, test in (("a", 10, 70.0, 71.0), ("b", 100, 85.0, 84.0))]
    t = build_table(pd.DataFrame(rows))
    c = t.cell("exp1", 64)
    assert c.setting == {"epochs": 100} and c.test_acc == pytest.approx(84.0) and c.edge == []
    assert any("runs differ in epochs (10, 100)" in w for w in t.warnings())
    assert t.extra_rows == []


def test_seeds_mean_std_and_unfinished(table):
    c = table.cell("exp1", 32)
    assert c.n_seeds == 2 and c.test_acc == pytest.approx(86.0) and c.test_std == pytest.approx(math.sqrt(0.5))
    assert c.n_unfinished == 1  # the failed trial takes no part
    assert c.setting == {} and c.edge == []
    assert table.cell("exp2", 64).test_std is None  # one seed: no std


def test_missing_cells_are_dashes(table):
    from analysis.table import render

    assert table.cell("exp2", 1024) is None
    assert all(table.cell("exp3", b) is None for b in table.batch_sizes)
    rows = {r[0]: r for r in md_rows(render(table, "markdown"))}
    assert rows["Scaled Epochs"][6] == "-"  # batch size 1024
    assert rows["GhostBatchNorm + Linear Scaling Rule"][1:] == ["-"] * 8


def test_spread_gap_and_paper_values(table):
    from analysis.table import paper_gap, paper_spread

    assert table.spread("exp1") == pytest.approx(46.0) and table.gap("exp1") == pytest.approx(46.0)
    assert table.spread("exp2") == pytest.approx(3.5)
    assert table.spread("exp3") is None
    assert paper_spread("exp1") == pytest.approx(46.91) and paper_gap("exp1") == pytest.approx(46.91)
    assert paper_gap("exp6") == pytest.approx(1.26)  # the paper's "reduced to 1.26"
    assert paper_spread("exp6") == pytest.approx(1.63)


def test_paper_comparison(table):
    from analysis.table import render

    c = table.cell("exp1", 32)
    assert c.paper == pytest.approx(86.37) and c.diff == pytest.approx(86.0 - 86.37)
    md = render(table, "markdown", paper=True)
    assert "86.00 ± 0.71 (86.37, -0.37)" in md
    assert "46.00 (46.91, -0.91)" in md  # spread beside the paper's
    assert "82.50 (82.79, -0.29)" in md  # exp5 at 1024: the f = 10 row against the paper's f = 10
    assert "88.80* [f=2] (89.87 [f=2], -1.07)" in md  # the best-f row against the paper's best of its three
    assert "- (88.22)" in md  # exp3: no run of ours
    plain = render(table, "markdown")
    assert "86.37" not in plain.split("\n\n")[0]


def test_edge_and_divergence_warnings(table):
    from analysis.table import render

    w = table.warnings()
    assert any("exp5-best bs=1024" in x and "factor_lr=2" in x and "smallest" in x for x in w)
    assert not any("exp5-best bs=32:" in x for x in w)  # f=5 is inside the grid
    assert not any(x.startswith("exp5 bs=") for x in w)  # the f = 10 row searched nothing
    assert table.notes() == [f"† exp6 bs=1024: 1 of the 2 runs of the chosen setting diverged at epoch {DIVERGED_AT}; "
                             "best model before it"]
    c = table.cell("exp6", 1024)
    assert c.n_diverged == 1 and c.chosen_diverged == 1 and c.n_seeds == 2 and c.diverged_epochs == [DIVERGED_AT]
    assert c.test_acc == pytest.approx((89.6 + 69.0) / 2)  # the diverged run counts with its best model before
    md = render(table, "markdown")
    assert "†" in next(r for r in md_rows(md) if r[0].startswith("GhostBatchNorm + CyclicLR + Custom"))[6]
    assert f"- † exp6 bs=1024: 1 of the 2 runs of the chosen setting diverged at epoch {DIVERGED_AT}" in md


def test_every_format_parses(table):
    from analysis.table import render

    data = json.loads(render(table, "json", paper=True))
    t = data["tables"][0]
    assert t["dataset"] == "cifar10" and t["recipe"] == "text" and len(t["rows"]) == 7
    exp5 = next(r for r in t["rows"] if r["row"] == "exp5")
    assert exp5["cells"]["1024"]["setting"] == {} and exp5["cells"]["1024"]["paper"] == pytest.approx(82.79)
    best = next(r for r in t["rows"] if r["row"] == "exp5-best")
    assert best["experiment"] == "exp5" and best["cells"]["1024"]["setting"] == {"factor_lr": 2.0}
    assert best["cells"]["1024"]["paper"] == pytest.approx(89.87) and best["paper_spread"] is None
    assert next(r for r in t["rows"] if r["experiment"] == "exp2")["cells"]["1024"] is None
    assert t["notes"] and t["warnings"]
    import io

    df = pd.read_csv(io.StringIO(render(table, "csv", paper=True)))
    assert len(df) == 7 and list(df["row"]) == [f"exp{i}" for i in range(1, 7)] + ["exp5-best"]
    exp1 = df.set_index("experiment").loc["exp1"]
    assert exp1["32"] == pytest.approx(86.0) and exp1["32_paper"] == pytest.approx(86.37)
    assert exp1["spread_paper"] == pytest.approx(46.91)
    assert math.isnan(df.set_index("experiment").loc["exp2", "1024"])
    latex = render(table, "latex", paper=True)
    assert latex.count(r"\\") == 8 and r"\begin{tabular}" in latex and r"$\pm$" in latex  # header + 7 rows
    assert r"\toprule" in latex and r"$^\dagger$" in latex
    md = render(table, "markdown")
    import re

    assert re.match(r"^\|:-+\|(-+:\|){8}$", md.splitlines()[1])  # first column left, the others right


def test_several_recipes_give_several_tables(runs):
    from analysis.runs import AnalysisError
    from analysis.table import build_table, build_tables, render

    other = runs[runs["experiment"] == "exp1"].assign(recipe="authors-code", run_id=lambda d: d["run_id"] + "x")
    both = pd.concat([runs, other], ignore_index=True)
    tables = build_tables(both)
    assert [(t.dataset, t.recipe) for t in tables] == [("cifar10", "authors-code"), ("cifar10", "text")]
    with pytest.raises(AnalysisError, match="--recipe"):
        build_table(both)
    assert build_table(both, recipe="authors-code").cell("exp5", 32) is None
    md = render(tables, "markdown")
    assert "### Table I: dataset=cifar10, model=vgg13, recipe=authors-code" in md
    assert len(pd.read_csv(__import__("io").StringIO(render(tables, "csv")))) == 6 + 7  # text: + exp5-best


def test_several_models_give_several_tables_never_one_chosen_between(runs):
    """model is an identity key: runs of resnet18 beside the VGG13 runs make a second table (a model column
    in the CSV, the model in the title), and a cell never mixes or chooses between the two."""
    from analysis.runs import AnalysisError
    from analysis.table import build_table, build_tables, render

    assert set(runs["model"]) == {"vgg13"}  # runs logged without the key count as the default model
    other = runs[runs["experiment"] == "exp1"].assign(model="resnet18", run_id=lambda d: d["run_id"] + "r",
                                                       test_acc=lambda d: d["test_acc"] - 50, best_val_acc=lambda d: d["best_val_acc"] + 5)
    both = pd.concat([runs, other], ignore_index=True)
    tables = build_tables(both)
    assert [(t.dataset, t.model, t.recipe) for t in tables] == [("cifar10", "resnet18", "text"), ("cifar10", "vgg13", "text")]
    with pytest.raises(AnalysisError, match="--model"):
        build_table(both)
    resnet, vgg = tables
    assert vgg.cell("exp1", 32).test_acc == build_table(runs).cell("exp1", 32).test_acc  # untouched by the better-validating resnet
    assert resnet.cell("exp1", 32).test_acc == pytest.approx(vgg.cell("exp1", 32).test_acc - 50)
    assert resnet.cell("exp6", 32) is None and resnet.parts == ["cifar10", "resnet18", "text"]
    assert "### Table I: dataset=cifar10, model=resnet18, recipe=text" in render(tables, "markdown")
    csv = pd.read_csv(__import__("io").StringIO(render(tables, "csv")))
    assert list(csv.columns[:3]) == ["dataset", "model", "recipe"] and set(csv["model"]) == {"vgg13", "resnet18"}


# ============================================================================================ lr grid
def test_lr_grid_summary_chooses_by_validation():
    """Issue 9.8 on a frame: per lr the mean over seeds; the lr with the best mean validation accuracy is
    chosen (not the best test accuracy); a diverged run counts (with its best model before diverging)."""
    from analysis.lr_grid import render_markdown, summarize

    rows = []
    for i, (lr, seed, status, val, test) in enumerate([
            (0.001, 0, "completed", 70.0, 70.0), (0.01, 0, "completed", 84.0, 86.0),
            (0.01, 1, "completed", 86.0, 86.4), (0.03, 0, "completed", 85.5, 84.0),
            (0.03, 1, "diverged", 85.0, 84.2), (0.1, 0, "diverged", 10.0, 10.0), (0.1, 1, "failed", None, None)]):
        rows.append(frame_run(f"g{i}", experiment="lr-grid", bs=32, status=status, val=val, test=test, seed=seed,
                              lr=lr))
    rows.append(frame_run("other", experiment="exp1", bs=32, val=99.0, test=99.0, lr=0.01))  # not the grid
    s = summarize(pd.DataFrame(rows))
    assert list(s["lr"]) == [0.001, 0.01, 0.03, 0.1]
    assert list(s["n_runs"]) == [1, 2, 2, 1] and list(s["n_diverged"]) == [0, 0, 1, 1]  # the failed run: out
    assert s.set_index("lr").loc[0.03, "best_val_acc"] == pytest.approx(85.25)
    assert s.loc[s["chosen"], "lr"].tolist() == [0.03]  # 85.25 > 85.0, although 0.01 tests better
    md = render_markdown(s)
    assert "Chosen by validation accuracy: lr 0.03" in md and "paper chose lr 0.01 (a different choice)" in md
    rows = md_rows(md)
    assert rows[0] == ["lr", "runs", "best val. acc.", "test acc.", "chosen"]
    assert rows[2] == ["0.01", "2", "85.00 ± 1.41", "86.20 ± 0.28", ""]
    assert rows[3][1] == "2 (1 diverged)" and rows[3][4] == "by validation"
    assert len(summarize(pd.DataFrame(rows[:0], columns=["mlflow_experiment"]))) == 0


def test_lr_grid_is_not_a_table_row_and_the_cli_prints_it(store, runs, table, capsys):
    from analysis.table import main

    assert not any(c.experiment == "lr-grid" for c in table.cells.values())
    assert table.cell("exp1", 32).n_runs == 2  # the lr-grid runs (exp1's config at bs 32) stay out of exp1
    assert main(["--tracking-uri", store]) == 0
    out = capsys.readouterr().out
    assert "Learning-rate grid: exp1 at batch size 32" in out
    grid = md_rows(out[out.index("Learning-rate grid"):])
    assert [r[0] for r in grid[1:]] == ["0.001", "0.003", "0.01", "0.03", "0.1"]
    assert grid[4][4] == "by validation" and grid[5][1] == "1 (1 diverged)"
    assert "Chosen by validation accuracy: lr 0.03 (best val. acc. 85.40, test acc. 84.90); paper chose lr 0.01" in out
    assert main(["--tracking-uri", store, "--format", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert [r["lr"] for r in doc["lr_grid"] if r["chosen"]] == [0.03]
    assert main(["--tracking-uri", store, "--sweep", "lr-grid-sweep"]) == 0  # lr-grid runs only: no Table I
    out = capsys.readouterr().out
    assert out.startswith("### Learning-rate grid") and "| experiment" not in out


# ============================================================================================ figures
def _check_png(path: Path, min_kb: float = 15) -> None:
    import matplotlib.image as mpimg
    import numpy as np

    assert path.is_file(), path
    assert path.stat().st_size > min_kb * 1024, f"{path} is only {path.stat().st_size} bytes"
    img = mpimg.imread(path)
    assert img.ndim == 3 and img.shape[0] >= 400 and img.shape[1] >= 600, img.shape
    rgb = img[..., :3]
    assert float(np.std(rgb)) > 0.02, f"{path} is (almost) one colour"
    assert len(np.unique((rgb.reshape(-1, 3) * 255).astype(int), axis=0)) > 50


def test_figures_written_and_non_trivial(store, runs, table, tmp_path):
    from analysis.figures import CURVE_METRICS, chosen_run_ids, write_figures
    from analysis.runs import load_history

    history = load_history(store, chosen_run_ids([table]), CURVE_METRICS)
    paths = write_figures(runs, history, tmp_path / "figs", [table])
    assert sorted(p.name for p in paths) == sorted(
        ["curves_exp1.png", "curves_exp2.png", "curves_exp5.png", "curves_exp6.png", "test_acc_vs_batch_size.png",
         "factor_lr_vs_batch_size.png"])
    for p in paths:
        _check_png(p)


def test_best_factor_lr_of_optuna(runs):
    from analysis.figures import best_factor_lr, eq2_factor

    best = best_factor_lr(runs).set_index("batch_size")
    assert list(best.columns) == ["scaled_factor_lr", "best_val_acc", "test_acc", "n_trials", "n_stopped"]
    assert best.loc[256, "scaled_factor_lr"] == pytest.approx(4.5)
    assert best.loc[1024, "scaled_factor_lr"] == pytest.approx(2.2)
    assert best.loc[512, "n_trials"] == 3
    assert eq2_factor(1024) == pytest.approx(10 * math.sqrt(32 / 1024))


# ============================================================================================ report
def test_report_written_and_links_resolve(store, tmp_path):
    import re

    from analysis.report import write_report

    out = tmp_path / "report"
    md_path = write_report(store, out)
    assert md_path == out / "report.md"
    md = md_path.read_text()
    html = (out / "report.html").read_text()
    for section in ("## Table I", "## Spread over batch sizes", "## Figures", "## Run counts", "## Training time",
                    "## What is missing", "## Settings chosen by validation accuracy", "## Optuna search",
                    "## Learning-rate grid"):
        assert section in md, section
    assert "exp3 (GhostBatchNorm + Linear Scaling Rule)" in md  # absent experiment reported
    assert "exp2: no finished run at batch size" not in md  # exp2 has no 1024 in its row: not missing
    assert "run `exp1 bs=32 seed=2` (bigbatch-exp1) failed" in md
    assert "| bigbatch-exp6 | 7 | 6 | 1 | 0 | 0 |" in squeeze(md)
    assert "| bigbatch-lr-grid | 5 | 4 | 1 | 0 | 0 |" in squeeze(md)
    assert "paper chose lr 0.01" in md and "| exp5-best | 1024 | factor_lr=2 (edge) |" in squeeze(md)
    assert f"† exp6 bs=1024: 1 of the 2 runs of the chosen setting diverged at epoch {DIVERGED_AT}" in md
    assert "88.80* [f=2] (89.87 [f=2], -1.07)" in md  # Table I against the paper
    assert "`epochs` = 5 (the paper: 100)" in md
    assert "- recipe: text (the paper's words: no momentum" in md  # which recipe ran: the tables look alike
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    assert len(links) == 6
    for link in links:
        _check_png(out / link)
    srcs = re.findall(r'<img [^>]*src="([^"]+)"', html)
    assert sorted(srcs) == sorted(links)
    assert html.count("<table>") == len(re.findall(r"^\|[-:|]+\|$", md, re.M)) == 7 and "<h2>Run counts</h2>" in html
    assert "Traceback" not in md


def test_report_html_by_python_markdown():
    from analysis.report import to_html

    html = to_html("# T\n\ntext with `a|b` and **bold**\n\n| a | b |\n| :--- | ---: |\n| 1 \\| 2 | x |\n\n"
                   "- one\n- two\n\n![alt](figures/x.png)\n", title="a <title>")
    assert html.startswith("<!DOCTYPE html>") and "<title>a &lt;title&gt;</title>" in html and "<style>" in html
    assert "<h1>T</h1>" in html and "<code>a|b</code>" in html and "<strong>bold</strong>" in html
    assert '<td style="text-align: left;">1 | 2</td>' in html and "<li>two</li>" in html
    assert '<img alt="alt" src="figures/x.png" />' in html


# ============================================================================================ CLIs
def test_cli_table_formats(store, capsys):
    from analysis.table import main

    assert main(["--tracking-uri", store, "--format", "json", "--paper"]) == 0
    assert json.loads(capsys.readouterr().out)["tables"][0]["rows"][0]["label"] == "Baseline"
    assert main(["--tracking-uri", store, "--recipe", "text", "--dataset", "cifar10"]) == 0
    assert squeeze(capsys.readouterr().out).startswith("| experiment | 32 |")
    assert main(["--tracking-uri", store, "--sweep", "exp2-sweep", "--format", "csv"]) == 0
    df = pd.read_csv(__import__("io").StringIO(capsys.readouterr().out)).set_index("experiment")
    assert df.loc["exp2", "32"] == pytest.approx(86.5) and math.isnan(df.loc["exp1", "32"])
    assert main(["--tracking-uri", store, "--recipe", "authors-code"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: no bigbatch runs with recipe=authors-code") and "have: text" in err


def test_cli_bad_store_exit_2_writes_nothing(tmp_path, capsys):
    import importlib

    from mlflow.tracking import MlflowClient

    empty = tmp_path / "empty.db"
    MlflowClient(tracking_uri=f"sqlite:///{empty}").search_experiments()  # an MLflow DB without bigbatch runs
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"not a database at all" * 10)
    capsys.readouterr()  # MLflow's own log lines while creating the empty DB
    cases = [
        (f"sqlite:///{tmp_path / 'missing.db'}", "no MLflow database"),
        (f"sqlite:///{empty}", "no bigbatch runs"),
        (f"sqlite:///{junk}", "not"),
        (str(tmp_path / "no-such-dir"), "no MLflow store"),
        ("http://127.0.0.1:9", "unreachable"),  # the discard port: nothing listens
    ]
    for uri, message in cases:
        for mod, extra in (("analysis.table", []), ("analysis.figures", ["--out", str(tmp_path / "figs")]),
                           ("analysis.report", ["--out", str(tmp_path / "rep")])):
            if uri.startswith("http") and mod != "analysis.table":
                continue
            code = importlib.import_module(mod).main(["--tracking-uri", uri, *extra])
            out, err = capsys.readouterr()
            assert code == 2, (mod, uri, err)
            lines = [x for x in err.splitlines() if x.strip()]
            assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], (mod, err)
            assert out == ""
    # the same from a real process: one line, no traceback
    r = subprocess.run([sys.executable, "-m", "analysis.report", "--tracking-uri", f"sqlite:///{empty}", "--out",
                        str(tmp_path / "rep")], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stdout == "" and "Traceback" not in r.stderr
    assert [x for x in r.stderr.splitlines() if x.strip()] == [f"error: no bigbatch runs in sqlite:///{empty} "
                                                                "(MLflow experiments named bigbatch-*)"]
    assert not (tmp_path / "missing.db").exists()
    assert not (tmp_path / "figs").exists() and not (tmp_path / "rep").exists()
    assert junk.read_bytes() == b"not a database at all" * 10


# ============================================================================================ layout
def test_analysis_imports_only_the_core():
    """Issue 13.1/13.5: analysis never imports sweeps, takes no other module's private names, and spells
    no MLflow name itself (tags, experiment prefix: they come from bigbatch.schema)."""
    import ast

    root = Path(__file__).resolve().parent.parent / "analysis"
    for path in sorted(root.glob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                assert not any(a.name.split(".")[0] == "sweeps" for a in node.names), path
            elif isinstance(node, ast.ImportFrom):
                assert (node.module or "").split(".")[0] != "sweeps", path
                assert not any(a.name.startswith("_") for a in node.names), (path, [a.name for a in node.names])
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                assert not node.value.startswith(("bigbatch.", "bigbatch-")), (path, node.value)
    assert not (root / "markdown.py").exists()  # the HTML comes from Python-Markdown


def test_measurements_table_sentences_and_figures(tmp_path):
    """Issue 11: sharpness per Table I cell (the chosen runs only), the last noise scale per cell, the
    sentences that read them, and the two figures."""
    from analysis import measurements
    from analysis.table import build_table

    rows = [frame_run(f"a{bs}", experiment="exp3", bs=bs, val=80.0, test=80.0, sharpness=s)
            for bs, s in ((32, 5.0), (256, 20.0), (1024, 80.0))]
    rows += [frame_run("b32", experiment="exp1", bs=32, val=70.0, test=70.0, sharpness=30.0),
             frame_run("b1024", experiment="exp1", bs=1024, val=30.0, test=30.0, sharpness=10.0)]
    runs = pd.DataFrame(rows)
    t = build_table(runs)
    sharp = measurements.sharpness_table([t], runs)
    assert list(sharp.columns) == [32, 256, 1024] and sharp.loc["exp3", 1024] == 80.0
    assert math.isnan(sharp.loc["exp1", 256])
    # gns: a run's last logged value counts; exp3 at 1024 ends at 200 (bs / gns = 5.12: beyond its noise scale)
    hist = pd.DataFrame([(rid, "gns", step, v) for rid, vals in (("a32", (900.0, 1000.0)), ("a256", (400.0, 500.0)),
                                                                  ("a1024", (100.0, 200.0)))
                         for step, v in enumerate(vals, 1)], columns=["run_id", "metric", "step", "value"])
    final = measurements.final_noise_scale([t], hist)
    assert final.set_index("batch_size")["gns"].to_dict() == {32: 1000.0, 256: 500.0, 1024: 200.0}
    text = " ".join(measurements.read_measurements([t], runs, hist))
    assert "between 200 and 1e+03" in text and "1 of the 3 cells" in text and "exp3 at bs 1024, 5.12 times" in text
    assert "rises from the smallest to the largest batch size in 1 of the 2 rows" in text  # exp3 rises, exp1 falls
    assert measurements.plot_gns(t, hist, "exp3", tmp_path / "gns_exp3.png").stat().st_size > 10_000
    assert measurements.plot_gns(t, hist, "exp1", tmp_path / "gns_exp1.png") is None  # no gns logged
    assert measurements.plot_sharpness([t], runs, tmp_path / "sharp.png").stat().st_size > 10_000
    assert measurements.read_measurements([t], runs.drop(columns="sharpness"), hist.iloc[:0]) == []
