"""The paper's figures, from the runs: ``python -m analysis.figures [--tracking-uri URI] --out DIR``.

Writes PNGs (matplotlib, Agg):
- ``curves_<exp>.png``: validation accuracy and loss per epoch, one line per batch size, for the
  chosen (best-validation) setting of each cell; the mean over seeds, the band min..max (the paper's
  Figures 1-5);
- ``test_acc_vs_batch_size.png``: test accuracy against batch size, one line per experiment, the
  paper's Table I values dashed beside;
- ``gns_<exp>.png`` and ``sharpness_vs_batch_size.png``: the gradient noise scale per epoch and the
  sharpness of the chosen model (analysis.measurements), when the runs logged them;
- ``factor_lr_vs_batch_size.png``: the best CyclicLR factor at each batch size (``scaled_factor_lr``, the
  factor after eq. 2, a param of every run) found by the Optuna search (and by exp5's grid) against
  eq. 2, f = 10 * sqrt(32 / bs); only when such runs exist.
With several (dataset, model, recipe) in the store, every name gets a ``_<dataset>_<recipe>`` suffix
(``_<dataset>_<model>_<recipe>`` for a model other than vgg13).
"""

from __future__ import annotations

import re

import math
import sys
from pathlib import Path
from typing import Iterable, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.colors import Normalize  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator  # noqa: E402

from bigbatch.config import OneLineArgumentParser  # noqa: E402
from bigbatch.experiments import PAPER_TABLE, TABLE_EXPERIMENTS, eq2_factor  # noqa: E402
from bigbatch.schema import FINISHED, OPTUNA_EXPERIMENT, ROLE_SWEEP, default_tracking_uri  # noqa: E402

from . import measurements  # noqa: E402
from .plotting import DPI, bs_colors, log2_axis  # noqa: E402
from .cli import add_common_args, load_selected_runs, run_cli  # noqa: E402
from .runs import AnalysisError, load_history  # noqa: E402
from .table import BEST_SUFFIX, Table, build_tables, fmt_setting  # noqa: E402

CURVE_METRICS = ("val_acc", "val_loss")
EXP_COLORS = dict(zip(TABLE_EXPERIMENTS, plt.get_cmap("tab10").colors))


def _suffix(table: Table, several: bool) -> str:
    return "".join("_" + re.sub(r"[^\w.-]", "-", part) for part in table.parts) if several else ""


def chosen_run_ids(tables: Sequence[Table]) -> list[str]:
    """The runs the curves are drawn from: the chosen setting's runs of every cell of the paper's rows."""
    return [r for t in tables for c in t.cells.values() if c.row in t.rows for r in c.run_ids]


def plot_curves(table: Table, history: pd.DataFrame, experiment: str, path: Path,
                runs: pd.DataFrame | None = None) -> Path | None:
    """Validation accuracy and loss per epoch for one experiment; None when it has no curves.

    Per batch size: the mean over the chosen setting's seeds (band: min..max); a diverged run (its
    status from ``runs``) is drawn on its own, dotted.
    """
    status = dict(zip(runs["run_id"], runs["status"])) if runs is not None and len(runs) else {}
    seeds = ({r: (None if pd.isna(s) else int(s)) for r, s in zip(runs["run_id"], runs["seed"])}
             if runs is not None and len(runs) else {})
    cells = {b: table.cell(experiment, b) for b in table.batch_sizes}
    cells = {b: c for b, c in cells.items() if c is not None}
    hist = history[history["run_id"].isin([r for c in cells.values() for r in c.run_ids])]
    if not len(hist):
        return None
    colors = bs_colors(list(cells))
    fig, axes = plt.subplots(1, 2, figsize=(12.5, 4.8), dpi=DPI)
    for ax, metric, ylabel in ((axes[0], "val_acc", "validation accuracy (%)"),
                               (axes[1], "val_loss", "validation loss")):
        finite_tops = []
        for b, c in cells.items():
            diverged = [r for r in c.run_ids if status.get(r) == "diverged"]
            ok = [r for r in c.run_ids if r not in diverged]
            label = f"bs {b}" + (" " + fmt_setting(c.setting) if c.setting else "")
            h = hist[(hist["metric"] == metric) & hist["run_id"].isin(ok)]
            if len(h):
                wide = h.pivot_table(index="step", columns="run_id", values="value", aggfunc="last").sort_index()
                mean = wide.mean(axis=1, skipna=True)
                ax.plot(mean.index, mean.values, color=colors[b], lw=1.6 if len(mean) <= 200 else 1.1,
                        zorder=3 + len(cells) - sorted(cells).index(b),  # small batch sizes on top
                        label=label + (f", mean of {wide.shape[1]} seeds" if wide.shape[1] > 1 else ""),
                        marker="o" if len(mean) <= 12 else None, ms=3.5)
                if wide.shape[1] > 1:
                    ax.fill_between(wide.index, wide.min(axis=1), wide.max(axis=1), color=colors[b], alpha=0.18,
                                    lw=0)
                vals = wide.to_numpy(dtype=float)
                vals = vals[np.isfinite(vals)]
                if len(vals):
                    finite_tops.append(np.percentile(vals, 99))
            for r in diverged:
                hd = hist[(hist["metric"] == metric) & (hist["run_id"] == r)].sort_values("step")
                seed = seeds.get(r)
                ax.plot(hd["step"], hd["value"], color=colors[b], lw=1.2, ls=":", marker="x", ms=5,
                        label=label + (f", seed {seed}" if seed is not None else "") + " (diverged)")
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
        if metric == "val_loss":
            top = max(finite_tops) if finite_tops else None
            if top is not None and math.isfinite(top) and top > 0:
                ax.set_ylim(0, top * 1.1)
            ax.set_title("Validation loss")
        else:
            lo, hi = ax.get_ylim()
            if hi - lo < 4.0:  # flat curves (e.g. a smoke test at chance): do not magnify noise
                mid = (lo + hi) / 2
                ax.set_ylim(max(0.0, mid - 2.0), mid + 2.0)
            ax.set_title("Validation accuracy")
        if max(hist["step"]) <= 20:
            ax.xaxis.get_major_locator().set_params(integer=True)
    handles, labels = axes[0].get_legend_handles_labels()
    if not handles:
        handles, labels = axes[1].get_legend_handles_labels()
    axes[1].legend(handles, labels, title="batch size", fontsize=9, title_fontsize=9.5, loc="upper left",
                   bbox_to_anchor=(1.02, 1.0), frameon=False)
    label = table.labels.get(experiment, experiment)
    fig.suptitle(f"{label} ({experiment}): validation curves per batch size"
                 + (f"  [{table.dataset}, recipe {table.recipe}]" if table.dataset else ""), fontsize=12)
    fig.tight_layout()
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)
    return path


def plot_test_vs_batch(tables: Sequence[Table], path: Path) -> Path | None:
    """Test accuracy against batch size, one line per row of Table I (and the paper's row, dashed); a
    best-by-validation row (exp5-best) in its experiment's colour with diamonds."""
    table_exps = [(t, e) for t in tables for e in t.all_rows if t.row_values(e)]
    if not table_exps:
        return None
    fig, ax = plt.subplots(figsize=(10, 7.0), dpi=DPI)
    xs_all: set[int] = set()
    ys: list[float] = []
    several = len(tables) > 1
    styles = ["-", "-.", ":"]
    for ti, t in enumerate(tables):
        for e in t.all_rows:
            row = t.row_values(e)
            if not row:
                continue
            bss = sorted(row)
            xs_all |= set(bss)
            ys += [row[b] for b in bss]
            best_row = e.endswith(BEST_SUFFIX)
            color = EXP_COLORS.get(e.removesuffix(BEST_SUFFIX), "0.4")
            label = t.labels[e] + (f" [{', '.join(t.parts)}]" if several else "")
            stds = [t.cell(e, b).test_std or 0.0 for b in bss]
            ax.errorbar(bss, [row[b] for b in bss], yerr=stds if any(stds) else None, color=color,
                        ls=styles[ti % len(styles)], marker="D" if best_row else "o", ms=5,
                        mfc="white" if best_row else color, lw=1.1 if best_row else 1.8, capsize=3, label=label)
            if ti == 0:
                paper = {b: v for b, v in PAPER_TABLE.get(e, {}).items() if v is not None}
                if paper:
                    pb = sorted(paper)
                    xs_all |= set(pb)
                    ys += [paper[b] for b in pb]
                    ax.plot(pb, [paper[b] for b in pb], color=color, ls="--", lw=1.2, marker="s", ms=5,
                            mfc="white", alpha=0.75)
    log2_axis(ax, xs_all)
    ax.set_ylim(max(0.0, min(ys) - 4.0), min(100.0, max(ys) + 3.0))
    ax.set_xlabel("batch size")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("Test accuracy vs batch size (best-validation setting per cell)")
    ax.grid(True, alpha=0.3)
    handles, _ = ax.get_legend_handles_labels()
    handles += [Line2D([], [], color="0.3", ls="-", marker="o", label="this reproduction (solid)"),
                Line2D([], [], color="0.3", ls="--", marker="s", mfc="white", label="paper, Table I (dashed)")]
    fig.legend(handles=handles, loc="lower center", ncol=2, fontsize=9, frameon=False)
    fig.tight_layout(rect=(0, 0.015 + 0.032 * math.ceil(len(handles) / 2), 1, 1))
    fig.savefig(path)
    plt.close(fig)
    return path


def factor_lr_runs(runs: pd.DataFrame, stopped: bool = False) -> pd.DataFrame:
    """Finished runs of the Optuna search over factor_lr (``stopped``: also those ASHA stopped early)."""
    if not len(runs):
        return runs
    statuses = FINISHED + (("stopped",) if stopped else ())
    keep = ((runs["mlflow_experiment"] == OPTUNA_EXPERIMENT) | (runs["search"] == "optuna")) \
        & runs["status"].isin(statuses) & (runs["role"] != ROLE_SWEEP)
    return runs[keep]


def best_factor_lr(runs: pd.DataFrame) -> pd.DataFrame:
    """Per batch size, the finished Optuna trial with the best validation accuracy.

    Columns: batch_size, scaled_factor_lr (its CyclicLR factor at that batch size, after eq. 2 when the
    config scales it), best_val_acc, test_acc, n_trials (incl. stopped), n_stopped.
    """
    cols = ["batch_size", "scaled_factor_lr", "best_val_acc", "test_acc", "n_trials", "n_stopped"]
    opt = factor_lr_runs(runs)
    if not len(opt):
        return pd.DataFrame(columns=cols)
    best = opt.loc[opt.assign(v=opt["best_val_acc"].fillna(0.0)).groupby("batch_size")["v"].idxmax()]
    every = factor_lr_runs(runs, stopped=True)
    stopped = every[every["status"] == "stopped"].groupby("batch_size").size()
    out = best.assign(batch_size=best["batch_size"].astype(int),
                      n_stopped=best["batch_size"].map(stopped).fillna(0).astype(int),
                      n_trials=best["batch_size"].map(opt.groupby("batch_size").size()).astype(int))
    out["n_trials"] += out["n_stopped"]
    return out[cols].reset_index(drop=True)


def grid_choices(runs: pd.DataFrame, tables: Sequence[Table]) -> list[tuple[int, float]]:
    """exp5's grid: per batch size, the scaled_factor_lr of the setting its best-by-validation row chose."""
    scaled = dict(zip(runs["run_id"], runs["scaled_factor_lr"])) if len(runs) else {}
    out = []
    for c in (c for t in tables[:1] for c in t.cells.values() if c.row == "exp5" + BEST_SUFFIX):
        vals = [scaled[r] for r in c.run_ids if r in scaled and pd.notna(scaled[r])]
        if vals or "factor_lr" in c.setting:
            out.append((c.batch_size, float(np.mean(vals)) if vals else float(c.setting["factor_lr"])))
    return sorted(out)


def plot_factor_lr(runs: pd.DataFrame, tables: Sequence[Table], path: Path) -> Path | None:
    """The best CyclicLR factor (scaled_factor_lr) per batch size against eq. 2; None when nothing searched it."""
    opt = factor_lr_runs(runs, stopped=True)
    grid = grid_choices(runs, tables)
    if not len(opt) and not grid:
        return None
    fig, ax = plt.subplots(figsize=(9, 5.6), dpi=DPI)
    xs = set()
    if len(opt):
        f = opt["scaled_factor_lr"]
        acc = opt["best_val_acc"].where(opt["best_val_acc"].notna(), opt["val_acc"]).astype(float)
        done = (opt["status"] != "stopped").to_numpy()
        norm = Normalize(vmin=float(np.nanmin(acc)), vmax=float(np.nanmax(acc)) + 1e-9)
        sc = ax.scatter(opt["batch_size"].astype(float)[done], f[done], c=acc[done], cmap="viridis", norm=norm,
                        s=30, alpha=0.85, edgecolors="none", label="Optuna trial (colour: best val. acc.)", zorder=2)
        if (~done).any():
            ax.scatter(opt["batch_size"].astype(float)[~done], f[~done], c=acc[~done], cmap="viridis", norm=norm,
                       s=36, marker="x", alpha=0.85, label="Optuna trial stopped early by ASHA", zorder=2)
        cb = fig.colorbar(sc, ax=ax, pad=0.02)
        cb.set_label("best validation accuracy (%)")
        best = best_factor_lr(runs)
        ax.plot(best["batch_size"], best["scaled_factor_lr"], color="crimson", marker="*", ms=15, ls="-", lw=1.2,
                label="Optuna: best scaled_factor_lr per batch size", zorder=4)
        xs |= set(int(b) for b in opt["batch_size"].dropna())
    if grid:
        tried = sorted({v for t in tables[:1] for c in t.cells.values() if c.row == "exp5" + BEST_SUFFIX
                        for v in c.searched.get("factor_lr", [])}, reverse=True)
        ax.plot([g[0] for g in grid], [g[1] for g in grid], color="darkorange", marker="D", ms=8, ls="none",
                mfc="none", mew=2, zorder=3, label="exp5 grid {" + ", ".join(f"{v:g}" for v in tried)
                + "}: best-validation scaled_factor_lr")
        xs |= set(g[0] for g in grid)
    xs |= {32, 1024}
    bx = np.geomspace(min(xs), max(xs), 200)
    ax.plot(bx, [eq2_factor(b) for b in bx], color="black", ls="--", lw=1.4,
            label=r"eq. 2: $10\,\sqrt{32/\mathrm{bs}}$", zorder=1)
    log2_axis(ax, xs)
    ax.set_yscale("log")
    ax.yaxis.set_major_locator(FixedLocator([0.5, 1, 1.5, 2, 3, 4, 5, 7, 10, 15, 20, 30, 50]))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.yaxis.set_minor_locator(NullLocator())
    ax.set_ylabel("scaled_factor_lr: CyclicLR factor f at the batch size\n(after eq. 2; bounds lr/f .. lr·f)")
    ax.set_xlabel("batch size")
    ax.set_title("Best CyclicLR factor per batch size vs eq. 2")
    ax.grid(True, which="both", alpha=0.25)
    handles, labels = ax.get_legend_handles_labels()
    proxies = {  # scatter handles take an arbitrary colour of the colormap: show them neutral
        "Optuna trial (colour: best val. acc.)": Line2D([], [], ls="none", marker="o", color="0.45", ms=6),
        "Optuna trial stopped early by ASHA": Line2D([], [], ls="none", marker="x", color="0.45", ms=7),
    }
    handles = [proxies.get(lab, h) for h, lab in zip(handles, labels)]
    ax.legend(handles, labels, fontsize=9, loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=2, frameon=False)
    fig.tight_layout()
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)
    return path


def write_figures(runs: pd.DataFrame, history: pd.DataFrame, out_dir: str | Path,
                  tables: Sequence[Table] | None = None) -> list[Path]:
    """Write every figure the runs allow into ``out_dir``; returns the paths written."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tables = list(tables) if tables is not None else build_tables(runs)
    several = len(tables) > 1
    written: list[Path] = []
    for t in tables:
        for e in t.rows:
            p = plot_curves(t, history, e, out / f"curves_{e}{_suffix(t, several)}.png", runs)
            if p:
                written.append(p)
    p = plot_test_vs_batch(tables, out / "test_acc_vs_batch_size.png")
    if p:
        written.append(p)
    p = plot_factor_lr(runs, tables, out / "factor_lr_vs_batch_size.png")
    if p:
        written.append(p)
    for t in tables:  # why large batches lose: the measurements (analysis.measurements)
        for e in t.rows:
            p = measurements.plot_gns(t, history, e, out / f"gns_{e}{_suffix(t, several)}.png")
            if p:
                written.append(p)
    p = measurements.plot_sharpness(tables, runs, out / "sharpness_vs_batch_size.png")
    if p:
        written.append(p)
    return written


DESCRIPTION = ("Write the paper's figures as PNGs from the MLflow runs: validation curves per experiment, test accuracy "
               "against batch size, the CyclicLR factor at each batch size (scaled_factor_lr) against eq. 2. "
               "See docs/analysis.md.")


def main(argv: Iterable[str] | None = None) -> int:
    p = OneLineArgumentParser(prog="python -m analysis.figures", description=DESCRIPTION)  # errors: one line, exit 2
    add_common_args(p)
    p.add_argument("--out", required=True, help="directory receiving the PNG files")
    args = p.parse_args(list(argv) if argv is not None else None)

    def body():
        uri = args.tracking_uri or default_tracking_uri()
        runs = load_selected_runs(uri, args.dataset, args.recipe, args.sweep)
        tables = build_tables(runs)
        if not tables and not len(factor_lr_runs(runs)):
            raise AnalysisError(f"no finished bigbatch trial runs in {uri} to draw")
        history = load_history(uri, chosen_run_ids(tables), (*CURVE_METRICS, *measurements.HISTORY_METRICS))
        for path in write_figures(runs, history, args.out, tables):
            print(path)

    return run_cli(body)


if __name__ == "__main__":
    sys.exit(main())
