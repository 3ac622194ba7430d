"""One report that reads on its own: ``python -m analysis.report [--tracking-uri URI] --out DIR``.

Writes ``DIR/report.md``, ``DIR/report.html`` (the same content; figures linked by relative path)
and ``DIR/figures/*.png``: Table I against the paper, the figures, the spread per row, which
nuisance setting each cell chose, the Optuna search, the lr grid, run counts, training time, and what
is missing.

The HTML is the Markdown rendered by Python-Markdown (its ``tables`` extension) in a small page.

Python API: ``write_report(tracking_uri, out_dir) -> Path`` (the Markdown file).
"""

from __future__ import annotations

import datetime as dt
import html
import math
import sys
from pathlib import Path
from typing import Iterable, Sequence

import markdown
import pandas as pd

from bigbatch.config import DEFAULTS, OneLineArgumentParser, keys_with_role
from bigbatch.experiments import PAPER_TABLE, TABLE_EXPERIMENTS, eq2_factor, load_experiment
from bigbatch.schema import EXPERIMENT_PREFIX, ROLE_SWEEP, SCALING_EXPERIMENT, STATUSES, default_tracking_uri

from . import figures as figs
from . import lr_grid
from . import measurements as measures
from . import scaling
from .cli import add_common_args, load_selected_runs, run_cli
from .runs import load_history
from .table import (Table, build_tables, fmt_num, fmt_value, markdown_table, paper_gap, paper_spread,
                    render_markdown, table_runs)

PAPER_SECONDS_PER_EPOCH_BS32 = 72 * 60 / 100  # the paper: 100 epochs at batch size 32 took 72 minutes
# the keys that scale the paper's setting down (role "scale"), at their defaults: the paper's values
PAPER_SCALE = {k: getattr(DEFAULTS, k) for k in sorted(keys_with_role("scale"))}
CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; max-width: 1180px;
       margin: 2em auto; padding: 0 1em; color: #1f2328; line-height: 1.5; }
h1, h2, h3 { border-bottom: 1px solid #d0d7de; padding-bottom: .2em; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }
th, td { border: 1px solid #d0d7de; padding: 4px 8px; }
th { background: #f6f8fa; }
tr:nth-child(even) td { background: #fbfbfc; }
code { background: #f3f4f6; padding: 0 3px; border-radius: 3px; font-size: 0.92em; }
img { max-width: 100%; border: 1px solid #eee; }
"""


# what each recipe is (bigbatch.config: RunConfig.recipe; shared/design/paper-recipes.md)
RECIPES = {"text": "the paper's words: no momentum, augmentation with p = 0.5",
           "authors-code": "what the authors' code did: momentum cycled 0.8-0.9 under CyclicLR, rotation and "
                           "translation on every image, validation images augmented too"}


def to_html(text: str, title: str) -> str:
    """The report's Markdown as one HTML page (Python-Markdown with its tables extension)."""
    body = markdown.markdown(text, extensions=["tables", "fenced_code"])
    return (f"<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>{html.escape(title)}</title>\n"
            f"<style>{CSS}</style>\n</head>\n<body>\n{body}\n</body>\n</html>\n")


def md_table(rows: list[list[str]], align: str | None = None) -> str:
    """A Markdown table from a header and rows of text; ``align``: one letter per column, l or r."""
    frame = pd.DataFrame(rows[1:], columns=rows[0])
    return markdown_table(frame, [{"l": "left", "r": "right"}[a] for a in align] if align else None)


def _hours(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "-"
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.2f} h"


def epoch_times(runs: pd.DataFrame, history: pd.DataFrame) -> pd.DataFrame:
    """Per run: epochs logged and seconds per epoch (mean of the logged epoch_seconds)."""
    es = history[history["metric"] == "epoch_seconds"]
    per = es.groupby("run_id")["value"].agg(["count", "mean"])
    out = runs[["run_id", "experiment", "batch_size", "mlflow_experiment", "train_seconds", "status"]].copy()
    out["epochs_logged"] = out["run_id"].map(per["count"]).fillna(0).astype(int)
    fallback = out["train_seconds"] / out["epochs_logged"].where(out["epochs_logged"] > 0)
    out["seconds_per_epoch"] = out["run_id"].map(per["mean"]).fillna(fallback)
    return out


def _setting_text(setting: dict) -> str:
    return ", ".join(f"{k}={fmt_value(v)}" for k, v in setting.items()) or "-"


def deviations(runs: pd.DataFrame) -> list[str]:
    """How the runs differ from the paper's setting (epochs, subset, width, dataset), one line each."""
    out = []
    for key, paper in PAPER_SCALE.items():
        if key in runs.columns:
            vals = sorted({fmt_value(v) for v in runs[key].dropna()})
            if vals and vals != [fmt_value(paper)]:
                out.append(f"`{key}` = {', '.join(vals)} (the paper: {fmt_value(paper)})")
    ds = sorted(set(runs["dataset"].dropna()))
    if ds and ds != ["cifar10"]:
        out.append(f"dataset = {', '.join(ds)} (the paper: cifar10)")
    if "smoke_test" in runs.columns and runs["smoke_test"].fillna(False).astype(bool).any():
        n = int(runs["smoke_test"].fillna(False).astype(bool).sum())
        out.insert(0, f"{n} of the {len(runs)} runs come from smoke-test sweeps (tiny model and data)")
    return out


def build_report(runs: pd.DataFrame, tables: Sequence[Table], history: pd.DataFrame, fig_paths: Sequence[Path],
                 out_dir: Path, tracking_uri: str, per_epoch: pd.DataFrame | None = None) -> str:
    """The report as Markdown (pure: every input is given). ``history``: epoch_seconds of every trial;
    ``per_epoch``: the chosen runs' per-epoch metrics (validation curves, gns)."""
    md: list[str] = []
    add = md.append
    trials = runs[runs["role"] != ROLE_SWEEP]
    now = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    add("# bigbatch: Table I rebuilt from the runs\n")
    add("Reproduction of _Experimental Analysis of Training Deep Networks with Very Large SGD Mini-Batches_ "
        "(VGG13 on CIFAR-10, plain SGD, batch sizes 32..1024). Everything below is computed from the MLflow "
        "runs; nothing is typed in by hand except the paper's own numbers.\n")
    commits = sorted(set(trials["git_commit"].dropna())) if "git_commit" in trials else []
    devices = sorted(set(trials["run_device"].dropna())) if "run_device" in trials else []
    add(f"- source: `{tracking_uri}`")
    add(f"- generated: {now}")
    add(f"- runs: {len(trials)} trial runs in {trials['mlflow_experiment'].nunique()} MLflow experiments "
        f"({', '.join(sorted(trials['mlflow_experiment'].unique()))})")
    if commits:
        add(f"- code: git {', '.join(c[:10] for c in commits)}")
    if devices:
        add(f"- devices: {', '.join(devices)}")
    recipes = sorted(set(trials["recipe"].dropna())) if "recipe" in trials else []
    if recipes:
        add(f"- recipe: {', '.join(f'{r} ({RECIPES.get(r, r)})' for r in recipes)}")
    dev = deviations(trials)
    if dev:
        add("- **not the paper's setting**: " + "; ".join(dev) + ". Differences from the paper measure "
            "this setting, not a failure to reproduce.")
    add("")

    # ---- Table I
    add("## Table I: test accuracy (%)\n")
    add("Each cell: the test accuracy of the run with the best **validation** accuracy for that experiment and "
        "batch size, chosen over the nuisance settings tried; with several seeds, the setting with the best mean "
        "validation accuracy, its mean ± std test accuracy. The paper's rows use the paper's own setting (exp5: "
        "f = 10 at every batch size, as its Table I); a row '..., best f by validation' chooses among every "
        "factor_lr tried and is compared with the paper only where the paper tried several (bs 1024). A diverged "
        "run counts with the best model it saw before diverging (marked †).\n")
    for t in tables:
        if len(tables) > 1:
            add(f"### {t.title}\n")
        body = render_markdown([t], paper=True)
        add(body)

    # ---- spread
    add("## Spread over batch sizes\n")
    add("spread = max - min of a row; gap = smallest minus largest batch size of the row. The paper quotes "
        "46.91 (exp1) and 1.26 (exp6): 1.26 is the exp6 _gap_ (90.88 - 89.62); the exp6 max - min is 1.63.\n")
    for t in tables:
        if len(tables) > 1:
            add(f"### {t.title}\n")
        rows = [["experiment", "batch sizes with runs", "spread", "paper spread", "gap", "paper gap"]]
        for e in t.all_rows:
            have = sorted(t.row_values(e))
            paper_row = e in t.rows
            rows.append([f"{t.labels[e]} ({e})", ", ".join(map(str, have)) or "-", fmt_num(t.spread(e)),
                         fmt_num(paper_spread(e) if paper_row else None), fmt_num(t.gap(e)),
                         fmt_num(paper_gap(e) if paper_row else None)])
        add(md_table(rows, "llrrrr") + "\n")

    # ---- figures
    if fig_paths:
        add("## Figures\n")
        rel = {p.name: p.relative_to(out_dir).as_posix() for p in fig_paths}
        if "test_acc_vs_batch_size.png" in rel:
            add("### Test accuracy against batch size\n")
            add("Solid: this reproduction (error bars: std over seeds); dashed: the paper's Table I.\n")
            add(f"![test accuracy vs batch size]({rel['test_acc_vs_batch_size.png']})\n")
        curves = [p for p in fig_paths if p.name.startswith("curves_")]
        if curves:
            add("### Validation curves (the paper's Figures 1-5)\n")
            add("Per batch size, the chosen setting's validation accuracy and loss per epoch (mean over seeds, "
                "band: min..max; diverged runs dotted).\n")
            for p in curves:
                exp = p.stem.split("_")[1]
                label = load_experiment(exp).label if exp in TABLE_EXPERIMENTS else exp
                add(f"![{label}]({rel[p.name]})\n")
        if "factor_lr_vs_batch_size.png" in rel:
            add("### CyclicLR factor against eq. 2\n")
            add("scaled_factor_lr: the factor f at the run's batch size (after eq. 2 where the config scales it; "
                "bounds lr/f .. lr·f), for the Optuna trials and exp5's grid choice.\n")
            add(f"![factor_lr vs batch size]({rel['factor_lr_vs_batch_size.png']})\n")

    # ---- measurements
    if per_epoch is None:
        per_epoch = pd.DataFrame(columns=["run_id", "metric", "step", "value"])
    sentences = measures.read_measurements(tables, runs, per_epoch)
    sharp = measures.sharpness_table(tables, runs)
    if sentences or len(sharp):
        add("## Why large batches lose: gradient noise scale and sharpness\n")
        add("Measured in every run without changing its training (bigbatch.measure; docs/analysis.md): the gradient "
            "noise scale B_simple = tr(Sigma) / |G|^2 per epoch (McCandlish et al. 2018), the batch size beyond "
            "which a bigger batch stops buying proportionally fewer steps; and the sharpness of the chosen model, "
            "the top eigenvalue of the training-loss Hessian (Keskar et al. 2017).\n")
        add(" ".join(sentences) + "\n" if sentences else "")
        if len(sharp):
            add("Sharpness per Table I cell (mean over the chosen setting's seeds):\n")
            rows = [["row", *[str(int(b)) for b in sharp.columns]]]
            for label, row in sharp.iterrows():
                rows.append([str(label), *[(f"{v:.3g}" if pd.notna(v) else "-") for v in row.values]])
            add(md_table(rows, "l" + "r" * len(sharp.columns)) + "\n")
        rel = {p.name: p.relative_to(out_dir).as_posix() for p in fig_paths}
        for name in sorted(n for n in rel if n.startswith("gns_")):
            add(f"![gradient noise scale]({rel[name]})\n")
        if "sharpness_vs_batch_size.png" in rel:
            add(f"![sharpness vs batch size]({rel['sharpness_vs_batch_size.png']})\n")

    # ---- chosen settings
    chosen = [(t, c) for t in tables for c in sorted(t.cells.values(), key=lambda c: (t.all_rows.index(c.row),
                                                                                        c.batch_size))
              if c.searched]
    if chosen:
        add("## Settings chosen by validation accuracy\n")
        rows = [["experiment", "batch size", "chosen", "searched", "seeds", "best val. acc.", "test acc."]]
        for t, c in chosen:
            searched = "; ".join(f"{k}: {', '.join(fmt_value(v) for v in vs)}" for k, vs in c.searched.items())
            rows.append([c.row + (f" [{', '.join(t.parts)}]" if len(tables) > 1 else ""),
                         str(c.batch_size), _setting_text(c.setting) + (" (edge)" if c.edge else ""), searched,
                         str(c.n_seeds), fmt_num(c.best_val_acc), fmt_num(c.test_acc)])
        add(md_table(rows, "lrllrrr") + "\n")

    best = figs.best_factor_lr(runs)
    if len(best):
        add("## Optuna search over the CyclicLR factor\n")
        add("Per batch size, the finished trial with the best validation accuracy (trials stopped early by ASHA "
            "are counted, not chosen), beside eq. 2's f = 10 * sqrt(32 / bs).\n")
        rows = [["batch size", "trials (stopped)", "best scaled_factor_lr", "eq. 2", "best val. acc.", "its test acc."]]
        for r in best.itertuples():
            rows.append([str(r.batch_size), f"{r.n_trials} ({r.n_stopped})", f"{r.scaled_factor_lr:.3g}",
                         f"{eq2_factor(r.batch_size):.3g}", fmt_num(r.best_val_acc), fmt_num(r.test_acc)])
        add(md_table(rows, "rrrrrr") + "\n")

    grid = lr_grid.summarize(runs)
    if len(grid):
        add("## Learning-rate grid (the paper's choice of lr)\n")
        add(f"The paper chose lr {lr_grid.PAPER_LR:g} by a grid search on the baseline at batch size 32 "
            "(`python -m sweeps.lr_grid`); per lr, the mean over its finished runs. Not a Table I row.\n")
        add(lr_grid.render_markdown(grid))

    # ---- run counts
    add("## Run counts\n")
    statuses = [s for s in STATUSES if s != "stopped" or (trials["status"] == "stopped").any()]
    statuses += sorted(set(trials["status"].dropna()) - set(STATUSES))
    rows = [["MLflow experiment", "trials", *statuses]]
    for name, g in trials.groupby("mlflow_experiment", sort=True):
        counts = g["status"].value_counts()
        rows.append([name, str(len(g))] + [str(int(counts.get(s, 0))) for s in statuses])
    counts = trials["status"].value_counts()
    rows.append(["**all**", f"**{len(trials)}**"] + [f"**{int(counts.get(s, 0))}**" for s in statuses])
    add(md_table(rows) + "\n")

    # ---- time
    times = epoch_times(trials, history)
    total = float(trials["train_seconds"].fillna(0).sum())
    add("## Training time\n")
    add(f"Total training time of all trials (sum of `train_seconds`): **{_hours(total)}** "
        f"over {int(times['epochs_logged'].sum())} logged epochs. The paper: 100 epochs at batch size 32 in "
        f"72 minutes ({PAPER_SECONDS_PER_EPOCH_BS32:.1f} s per epoch) and about 20 hours for 1600 epochs at "
        "512, on its own hardware.\n")
    tt = times[times["mlflow_experiment"].str.startswith(EXPERIMENT_PREFIX)]
    bss = sorted({int(b) for b in tt["batch_size"].dropna()})
    rows = [["experiment", "total", *[f"s/epoch @{b}" for b in bss]]]
    for name, g in tt.groupby("mlflow_experiment", sort=True):
        per = g.groupby("batch_size")["seconds_per_epoch"].mean()
        rows.append([name, _hours(float(g["train_seconds"].fillna(0).sum())),
                     *[(f"{per[b]:.2f}" if b in per.index and math.isfinite(per[b]) else "-") for b in bss]])
    add(md_table(rows) + "\n")

    # ---- missing
    add("## What is missing\n")
    missing = []
    present = set(table_runs(runs)["experiment"])
    absent = [e for e in TABLE_EXPERIMENTS if e not in present]
    if absent:
        missing.append("experiments with no runs: " + ", ".join(f"{e} ({load_experiment(e).label})" for e in absent))
    for t in tables:
        tag = f" [{t.title}]" if len(tables) > 1 else ""
        for e in t.rows:
            if e in absent:
                continue
            want = list(load_experiment(e).batch_sizes)
            lack = [b for b in want if t.cell(e, b) is None]
            if lack:
                missing.append(f"{e}{tag}: no finished run at batch size {', '.join(map(str, lack))}")
        for w in t.warnings():
            if "none finished" in w:
                missing.append(w + tag)
    notp = [e for e in TABLE_EXPERIMENTS if PAPER_TABLE[e].get(1024) is None]
    bad = trials[trials["status"].isin(("failed", "running"))]
    for r in bad.itertuples():
        state = "failed" if r.status == "failed" else "is still running (or its process died)"
        missing.append(f"run `{r.run_name}` ({r.mlflow_experiment}) {state}")
    if not missing:
        missing.append("nothing: every cell of the six experiments has a finished run")
    add("\n".join(f"- {m}" for m in missing))
    add("")
    add(f"('-' cells that the paper has no run for either: {', '.join(f'{e} at 1024' for e in notp)}.)\n")
    return "\n".join(md).rstrip() + "\n"


def write_report(tracking_uri: str | None = None, out_dir: str | Path = "report", dataset: str | None = None,
                 recipe: str | None = None, sweeps: Sequence[str] | None = None) -> Path:
    """Load the runs, write figures, report.md and report.html into ``out_dir``; returns report.md's path.

    Raises AnalysisError (nothing written) when the store is unreachable or holds no bigbatch runs.
    """
    uri = tracking_uri or default_tracking_uri()
    runs = load_selected_runs(uri, dataset, recipe, sweeps)
    tables = build_tables(runs)
    trial_ids = runs.loc[runs["role"] != ROLE_SWEEP, "run_id"].tolist()
    curve_ids = set(figs.chosen_run_ids(tables))
    history = load_history(uri, trial_ids, ("epoch_seconds",))
    curves = load_history(uri, [r for r in trial_ids if r in curve_ids], (*figs.CURVE_METRICS, *measures.HISTORY_METRICS))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    fig_paths = figs.write_figures(runs, curves, out / "figures", tables)
    text = build_report(runs, tables, history, fig_paths, out, uri, per_epoch=curves)
    if (runs["mlflow_experiment"] == SCALING_EXPERIMENT).any():  # the steps-to-target study: its own section
        text += "\n" + scaling.study_section(scaling.load_study(uri), out, prefix="scaling_")[2]
    md_path = out / "report.md"
    md_path.write_text(text)
    (out / "report.html").write_text(to_html(text, title="bigbatch: Table I rebuilt"))
    return md_path


DESCRIPTION = ("Write a Markdown and an HTML report from the MLflow runs: Table I against the paper, figures, spread, "
               "chosen settings, the Optuna search and the lr grid, run counts, training time, what is missing. "
               "See docs/analysis.md.")


def main(argv: Iterable[str] | None = None) -> int:
    p = OneLineArgumentParser(prog="python -m analysis.report", description=DESCRIPTION)  # errors: one line, exit 2
    add_common_args(p)
    p.add_argument("--out", required=True, help="directory receiving report.md, report.html and figures/")
    args = p.parse_args(list(argv) if argv is not None else None)

    def body():
        path = write_report(args.tracking_uri, args.out, args.dataset, args.recipe, args.sweep)
        print(path)
        print(path.with_suffix(".html"))

    return run_cli(body)


if __name__ == "__main__":
    sys.exit(main())
