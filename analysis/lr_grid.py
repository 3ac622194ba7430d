"""The paper's learning-rate grid search (issue 9.8), summarised from the runs of ``bigbatch-lr-grid``.

The paper chose lr 0.01 by a grid search on the baseline (exp1) at batch size 32. The declared
experiment ``lr-grid`` runs that grid (``python -m sweeps.lr_grid``); it is not a Table I row. Here,
per (dataset, model, recipe, batch size): per lr, the mean best validation accuracy and test accuracy over
its finished runs, the lr chosen by validation accuracy (test accuracy takes no part), beside the
paper's choice. ``python -m analysis.table`` prints it when such runs exist; the report includes it.
"""

from __future__ import annotations

import pandas as pd

from bigbatch.config import RunConfig
from bigbatch.schema import FINISHED, ROLE_SWEEP, mlflow_experiment

LR_GRID = "lr-grid"  # the declared experiment (bigbatch/configs/lr-grid.json); MLflow: bigbatch-lr-grid
PAPER_LR = 0.01  # the paper's choice (the base lr of every experiment, at batch size 32)
GROUP = ["dataset", "model", "recipe", "batch_size"]
COLUMNS = [*GROUP, "lr", "n_runs", "n_diverged", "best_val_acc", "best_val_std", "test_acc", "test_std", "chosen"]


def grid_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """The finished trial runs of the lr grid."""
    if not len(runs):
        return runs
    keep = (runs["mlflow_experiment"] == mlflow_experiment(LR_GRID)) | (runs["experiment"] == LR_GRID)
    return runs[keep & (runs["role"] != ROLE_SWEEP) & runs["status"].isin(FINISHED)]


def summarize(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per (dataset, model, recipe, batch size, lr) of the grid (see COLUMNS); ``chosen``: the lr with the
    best mean best_val_acc of its group (a missing value counts as 0; ties: more runs, then the smaller lr)."""
    grid = grid_runs(runs)
    if not len(grid):
        return pd.DataFrame(columns=COLUMNS)
    if "model" not in grid:  # a frame of runs logged before the model key: the default model
        grid = grid.assign(model=RunConfig.model)
    grid = grid.assign(diverged=grid["status"] == "diverged", val=grid["best_val_acc"].fillna(0.0))
    out = (grid.groupby([*GROUP, "lr"], dropna=False)
           .agg(n_runs=("run_id", "size"), n_diverged=("diverged", "sum"), best_val_acc=("best_val_acc", "mean"),
                best_val_std=("best_val_acc", "std"), test_acc=("test_acc", "mean"), test_std=("test_acc", "std"),
                rank=("val", "mean"))
           .reset_index().sort_values([*GROUP, "lr"], kind="stable"))
    best = out.sort_values(["rank", "n_runs"], ascending=False, kind="stable").groupby(GROUP, dropna=False).head(1)
    out["chosen"] = out.index.isin(best.index)
    return out[COLUMNS].reset_index(drop=True)


def _mean_std(mean: float, std: float | None) -> str:
    if pd.isna(mean):
        return "-"
    return f"{mean:.2f}" + (f" ± {std:.2f}" if std is not None and pd.notna(std) else "")


def render_markdown(summary: pd.DataFrame, heading_level: int = 3) -> str:
    """One small table per (dataset, model, recipe, batch size), then the chosen lr beside the paper's."""
    parts = []
    for (dataset, model, recipe, bs), g in summary.groupby(GROUP, dropna=False, sort=True):
        parts.append("#" * heading_level + f" Learning-rate grid: exp1 at batch size {bs} "
                     f"(dataset={dataset}, model={model}, recipe={recipe})\n")
        text = pd.DataFrame({
            "lr": [f"{v:g}" for v in g["lr"]],
            "runs": [f"{n}" + (f" ({d} diverged)" if d else "") for n, d in zip(g["n_runs"], g["n_diverged"])],
            "best val. acc.": [_mean_std(m, s) for m, s in zip(g["best_val_acc"], g["best_val_std"])],
            "test acc.": [_mean_std(m, s) for m, s in zip(g["test_acc"], g["test_std"])],
            "chosen": ["by validation" if c else "" for c in g["chosen"]],
        })
        parts.append(text.to_markdown(index=False, colalign=("right", "right", "right", "right", "left"),
                                      disable_numparse=True) + "\n")
        chosen = g[g["chosen"]].iloc[0]
        same = "the same" if abs(chosen["lr"] - PAPER_LR) < 1e-12 else "a different choice"
        parts.append(f"Chosen by validation accuracy: lr {chosen['lr']:g} (best val. acc. "
                     f"{_mean_std(chosen['best_val_acc'], None)}, test acc. {_mean_std(chosen['test_acc'], None)}); paper chose lr {PAPER_LR:g} ({same}).\n")
    return "\n".join(parts)
