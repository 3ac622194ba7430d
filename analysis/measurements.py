"""Why large batches lose, from the measurements every run logs (bigbatch.measure, docs/analysis.md).

- ``gns``: the gradient noise scale B_simple (McCandlish et al. 2018), per epoch. A run whose batch
  size is well above its noise scale spends more examples per step than the step can use: beyond
  B_simple, doubling the batch no longer halves the steps needed.
- ``sharpness``: the top eigenvalue of the training-loss Hessian at the run's best model (Keskar et al.
  2017): large-batch runs are said to settle in sharper minima, which generalise worse.

For each Table I cell the chosen setting's runs are read (the same runs as the table). Functions:
``sharpness_table`` (a DataFrame, row x batch size), ``final_noise_scale`` (the last logged gns per
cell), ``plot_gns`` / ``plot_sharpness`` (PNGs) and ``read_measurements`` (a few sentences).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from .plotting import DPI, bs_colors, log2_axis, plt
from .table import Table

HISTORY_METRICS = ("gns",)  # per-epoch metrics these figures read (analysis.runs.load_history)


def _chosen(tables: Sequence[Table]):
    """(table, cell) for every cell of the paper's rows, in row and batch-size order."""
    for t in tables:
        for (row, _b), c in sorted(t.cells.items(), key=lambda kv: (t.all_rows.index(kv[0][0]), kv[0][1])):
            if row in t.rows:
                yield t, c


def sharpness_table(tables: Sequence[Table], runs: pd.DataFrame) -> pd.DataFrame:
    """Mean sharpness of each cell's chosen runs: index = row label (with dataset/recipe when several
    tables), columns = batch sizes; NaN where no run logged it."""
    if "sharpness" not in runs.columns:
        return pd.DataFrame()
    value = dict(zip(runs["run_id"], runs["sharpness"]))
    data: dict[str, dict[int, float]] = {}
    several = len(tables) > 1
    for t, c in _chosen(tables):
        vals = [value.get(r) for r in c.run_ids]
        vals = [float(v) for v in vals if v is not None and math.isfinite(float(v))]
        if vals:
            label = c.row + (f" [{t.dataset}, {t.recipe}]" if several else "")
            data.setdefault(label, {})[c.batch_size] = float(np.mean(vals))
    if not data:
        return pd.DataFrame()
    df = pd.DataFrame(data).T
    return df[sorted(df.columns)]


def final_noise_scale(tables: Sequence[Table], history: pd.DataFrame) -> pd.DataFrame:
    """Per cell of the paper's rows: the last logged gns (mean over the chosen seeds) and the ratio
    batch_size / gns. Columns: row, batch_size, gns, ratio."""
    rows = []
    h = history[history["metric"] == "gns"] if len(history) else history
    for _t, c in _chosen(tables):
        hh = h[h["run_id"].isin(c.run_ids)] if len(h) else h
        if not len(hh):
            continue
        last = hh.sort_values("step").groupby("run_id")["value"].last()
        g = float(last.mean())
        if math.isfinite(g) and g > 0:
            rows.append({"row": c.row, "batch_size": c.batch_size, "gns": g, "ratio": c.batch_size / g})
    return pd.DataFrame(rows, columns=["row", "batch_size", "gns", "ratio"])


def plot_gns(table: Table, history: pd.DataFrame, experiment: str, path: Path) -> Path | None:
    """The gradient noise scale per epoch, one line per batch size (mean over the chosen seeds), with
    each batch size drawn as a dashed horizontal line in its colour: a run above its line trains with a
    batch beyond its noise scale. None when the experiment logged no gns."""
    h = history[history["metric"] == "gns"] if len(history) else history
    cells = {b: table.cell(experiment, b) for b in table.batch_sizes}
    cells = {b: c for b, c in cells.items() if c is not None}
    curves = {}
    for b, c in cells.items():
        hh = h[h["run_id"].isin(c.run_ids)] if len(h) else h
        if len(hh):
            curves[b] = hh.pivot_table(index="step", columns="run_id", values="value", aggfunc="last").mean(axis=1)
    curves = {b: s[s > 0] for b, s in curves.items() if (s > 0).any()}
    if not curves:
        return None
    colors = bs_colors(list(curves))
    fig, ax = plt.subplots(figsize=(9.5, 5.2), dpi=DPI)
    for b, s in sorted(curves.items()):
        ax.plot(s.index, s.values, color=colors[b], lw=1.6, marker="o" if len(s) <= 12 else None, ms=3.5,
                label=f"bs {b}")
        ax.axhline(b, color=colors[b], ls="--", lw=1.0, alpha=0.8)
    ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel("gradient noise scale B_simple (log)")
    ax.grid(True, alpha=0.3, which="both")
    ax.legend(title="solid: B_simple; dashed: the batch size", fontsize=9, title_fontsize=9, frameon=False,
              loc="upper left", bbox_to_anchor=(1.02, 1.0))
    fig.suptitle(f"{table.labels.get(experiment, experiment)} ({experiment}): gradient noise scale per epoch"
                 + (f"  [{table.dataset}, recipe {table.recipe}]" if table.dataset else ""), fontsize=11)
    fig.tight_layout()
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)
    return path


def plot_sharpness(tables: Sequence[Table], runs: pd.DataFrame, path: Path) -> Path | None:
    """Sharpness of the chosen model against batch size, one line per experiment (log-log)."""
    df = sharpness_table(tables, runs)
    if not len(df):
        return None
    fig, ax = plt.subplots(figsize=(8.5, 5.2), dpi=DPI)
    cmap = plt.get_cmap("tab10")
    xs: set[int] = set()
    for i, (label, row) in enumerate(df.iterrows()):
        row = row.dropna()
        row = row[row > 0]
        if not len(row):
            continue
        xs |= {int(b) for b in row.index}
        ax.plot([int(b) for b in row.index], row.values, marker="o", color=cmap(i % 10), lw=1.6, label=label)
    if not xs:
        plt.close(fig)
        return None
    log2_axis(ax, xs)
    ax.set_yscale("log")
    ax.set_xlabel("batch size")
    ax.set_ylabel("top Hessian eigenvalue at the best model (log)")
    ax.set_title("Sharpness of the chosen model against batch size")
    ax.grid(True, alpha=0.3, which="both")
    ax.legend(fontsize=9, frameon=False)
    fig.tight_layout()
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)
    return path


def read_measurements(tables: Sequence[Table], runs: pd.DataFrame, history: pd.DataFrame) -> list[str]:
    """Two or three sentences that read the measurements (empty when none were logged)."""
    out = []
    final = final_noise_scale(tables, history)
    if len(final):
        above = final[final["ratio"] > 1]
        lo, hi = final["gns"].min(), final["gns"].max()
        text = (f"At the end of training the gradient noise scale of the chosen runs lies between {lo:.3g} and "
                f"{hi:.3g}; ")
        if len(above):
            worst = above.sort_values("ratio").iloc[-1]
            text += (f"{len(above)} of the {len(final)} cells train with a batch larger than their noise scale "
                     f"(the furthest: {worst['row']} at bs {int(worst['batch_size'])}, {worst['ratio']:.3g} times "
                     "B_simple), where a bigger batch no longer buys proportionally fewer steps.")
        else:
            text += "every cell trains with a batch below its noise scale, where bigger batches still pay."
        out.append(text)
    sharp = sharpness_table(tables, runs)
    ends = []  # (label, smallest bs, its sharpness, largest bs, its sharpness)
    for label, row in sharp.iterrows() if len(sharp) else ():
        row = row.dropna()
        row = row[row > 0]
        if len(row) >= 2:
            b0, b1 = int(row.index.min()), int(row.index.max())
            ends.append((label, b0, float(row[b0]), b1, float(row[b1])))
    if ends:
        rising = sum(v1 > v0 for _, _, v0, _, v1 in ends)
        listed = "; ".join(f"{label} {v0:.3g} at bs {b0} -> {v1:.3g} at bs {b1}" for label, b0, v0, b1, v1 in ends)
        verdict = (", as the sharp-minima argument predicts." if rising == len(ends) else
                   "; the sharp-minima argument is not borne out here." if rising == 0 else
                   "; the sharp-minima argument holds for some rows only.")
        out.append(f"Sharpness (top Hessian eigenvalue of the chosen model): {listed}. It rises from the smallest "
                   f"to the largest batch size in {rising} of the {len(ends)} rows{verdict}")
    return out
