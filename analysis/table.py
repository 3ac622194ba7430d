"""Table I rebuilt from the runs: ``python -m analysis.table [--tracking-uri URI] [--paper] ...``.

Each cell is the test accuracy of the best-VALIDATION run for that (experiment, batch size):
runs of a cell are grouped by their nuisance setting (the config keys that vary inside the cell,
other than the seed, e.g. factor_lr in exp5); the setting with the best mean ``best_val_acc``
(over its seeds) is chosen, and the cell shows the mean (and, with several seeds, the standard
deviation) of its ``test_acc``. The test accuracy never takes part in the choice.

Python API::

    runs = analysis.runs.load_runs(uri)
    for table in build_tables(runs):          # one per (dataset, recipe) in the runs
        print(render([table], "markdown", paper=True))
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import sys
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import pandas as pd

from bigbatch.config import OneLineArgumentParser
from bigbatch.experiments import EXPERIMENTS, PAPER_BATCH_SIZES, PAPER_TABLE, load_experiment

from .runs import EXPERIMENT_PREFIX, FINISHED, PARAM_TYPES, AnalysisError

FORMATS = ("markdown", "csv", "latex", "json")

# Config keys that never define a nuisance setting: identity, bookkeeping, values derived from others.
# Keys the experiments declare as searched (bigbatch/configs: "search"), e.g. factor_lr: only these get the
# edge-of-grid warning; any other key that varies inside a cell gets a "runs differ in ..." warning.
SEARCH_KEYS = frozenset(k for e in EXPERIMENTS for k in load_experiment(e).search)

NOT_NUISANCE = frozenset({
    "seed", "experiment", "recipe", "dataset", "batch_size", "data_dir", "download", "device", "precision",
    "compile", "deterministic", "eval_batch_size", "scaled_lr", "scaled_factor_lr", "total_epochs",
})


def paper_spread(experiment: str) -> float | None:
    """max - min over the paper's Table I row (46.91 for exp1, 1.63 for exp6)."""
    vals = [v for v in PAPER_TABLE.get(experiment, {}).values() if v is not None]
    return round(max(vals) - min(vals), 2) if vals else None


def paper_gap(experiment: str) -> float | None:
    """Accuracy at batch size 32 minus the largest batch size of the paper's row (46.91 exp1, 1.26 exp6)."""
    row = {b: v for b, v in PAPER_TABLE.get(experiment, {}).items() if v is not None}
    return round(row[min(row)] - row[max(row)], 2) if len(row) > 1 else None


@dataclass
class Cell:
    """One (experiment, batch size) of the table: the chosen setting and its test accuracy."""

    experiment: str
    batch_size: int
    test_acc: float  # mean over the chosen setting's seeds (NaN when none has a test accuracy)
    test_std: float | None  # sample standard deviation; None with one seed
    best_val_acc: float  # mean best validation accuracy of the chosen setting (what chose it)
    n_seeds: int  # finished runs of the chosen setting
    n_runs: int  # finished runs in the cell, every setting
    n_settings: int  # nuisance settings tried in the cell
    n_diverged: int  # diverged runs in the cell, every setting
    chosen_diverged: int  # diverged runs among the chosen setting's seeds
    n_unfinished: int  # stopped early, failed or still running (not in the choice)
    setting: dict[str, Any]  # the chosen nuisance setting, e.g. {"factor_lr": 2.0}; {} if nothing varied
    searched: dict[str, list[Any]]  # nuisance key -> every value tried in the cell
    edge: list[str]  # keys whose chosen value is the smallest or largest tried
    run_ids: list[str]  # the chosen setting's runs
    paper: float | None  # the paper's Table I value

    @property
    def diff(self) -> float | None:
        if self.paper is None or not math.isfinite(self.test_acc):
            return None
        return self.test_acc - self.paper


@dataclass
class Table:
    dataset: str | None
    recipe: str | None
    batch_sizes: list[int]
    rows: list[str]  # experiment names, the paper's order (all six, even when absent)
    labels: dict[str, str]  # experiment -> the paper's row label
    cells: dict[tuple[str, int], Cell]
    unfinished_only: dict[tuple[str, int], int] = field(default_factory=dict)  # cells with runs, none finished

    def cell(self, experiment: str, batch_size: int) -> Cell | None:
        return self.cells.get((experiment, batch_size))

    def row_values(self, experiment: str) -> dict[int, float]:
        return {b: c.test_acc for (e, b), c in self.cells.items() if e == experiment and math.isfinite(c.test_acc)}

    def spread(self, experiment: str) -> float | None:
        """max - min of the row's cells (None with fewer than two cells)."""
        vals = list(self.row_values(experiment).values())
        return max(vals) - min(vals) if len(vals) > 1 else None

    def gap(self, experiment: str) -> float | None:
        """Smallest minus largest batch size of the row (the paper's '46.91 ... reduced to 1.26')."""
        row = self.row_values(experiment)
        return row[min(row)] - row[max(row)] if len(row) > 1 else None

    def warnings(self) -> list[str]:
        out = []
        for (e, b), c in sorted(self.cells.items(), key=lambda kv: (self.rows.index(kv[0][0]), kv[0][1])):
            for key in c.edge:
                vals = ", ".join(_fmt_value(v) for v in c.searched[key])
                side = "smallest" if c.setting[key] == min(c.searched[key]) else "largest"
                out.append(f"{e} bs={b}: chosen {key}={_fmt_value(c.setting[key])} is the {side} value searched "
                           f"({vals}); the optimum may lie outside the grid")
            for key in c.searched:
                if key not in SEARCH_KEYS:
                    vals = ", ".join(_fmt_value(v) for v in c.searched[key])
                    out.append(f"{e} bs={b}: its runs differ in {key} ({vals}), which no experiment searches; "
                               f"chose {key}={_fmt_value(c.setting[key])} by validation accuracy")
            if c.chosen_diverged:
                out.append(f"{e} bs={b}: {c.chosen_diverged} of the {c.n_seeds} runs of the chosen setting diverged "
                           "(counted with their chance-level accuracy)")
        for (e, b), n in sorted(self.unfinished_only.items(), key=lambda kv: (self.rows.index(kv[0][0]), kv[0][1])):
            out.append(f"{e} bs={b}: {n} run(s), none finished (stopped early, failed or still running)")
        return out

    @property
    def title(self) -> str:
        return f"dataset={self.dataset}, recipe={self.recipe}"


# ---------------------------------------------------------------------------------------- building
def table_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """The runs that enter Table I: trials of the MLflow experiments bigbatch-exp1..exp6 (not Optuna)."""
    if not len(runs):
        return runs
    keep = runs["mlflow_experiment"].isin([EXPERIMENT_PREFIX + e for e in EXPERIMENTS]) & (runs["role"] != "sweep")
    return runs[keep]


def nuisance_keys(cell_runs: pd.DataFrame) -> list[str]:
    """Config keys that vary within a cell's runs, other than the seed and bookkeeping keys."""
    keys = []
    for col in cell_runs.columns:
        if col not in PARAM_TYPES or col in NOT_NUISANCE:
            continue
        vals = cell_runs[col].dropna()
        if vals.map(_hashable).nunique() > 1:
            keys.append(col)
    return sorted(keys)


def _hashable(v: Any) -> Any:
    return tuple(v) if isinstance(v, list) else v


def choose(cell_runs: pd.DataFrame) -> tuple[dict[str, Any], pd.DataFrame, dict[str, list[Any]]]:
    """The selection rule on one cell's finished runs -> (setting, its runs, values searched per key).

    A setting with fewer diverged runs always ranks above one with more (a diverged run's chance-level
    accuracy must not beat a real run that scored below chance on a tiny validation set); then settings
    are ranked by mean best_val_acc over their seeds (a missing value counts as 0); ties go to the
    setting with more seeds, then to the first one seen. Test accuracy is never looked at.
    """
    keys = nuisance_keys(cell_runs)
    searched = {k: sorted(cell_runs[k].dropna().map(_hashable).unique().tolist(), key=_sort_key) for k in keys}
    if not keys:
        return {}, cell_runs, searched
    groups = cell_runs.groupby([cell_runs[k].map(_hashable) for k in keys], dropna=False, sort=False)
    best, best_rank = None, None
    for setting, g in groups:
        setting = setting if isinstance(setting, tuple) else (setting,)
        diverged = float((g["status"] == "diverged").mean()) if "status" in g else 0.0
        rank = (-diverged, g["best_val_acc"].fillna(0.0).mean(), len(g))
        if best_rank is None or rank > best_rank:
            best, best_rank = (dict(zip(keys, setting)), g), rank
    return best[0], best[1], searched


def _sort_key(v: Any) -> tuple:
    return (0, v, "") if isinstance(v, (int, float)) and not isinstance(v, bool) else (1, 0, str(v))


def build_table(
    runs: pd.DataFrame,
    dataset: str | None = None,
    recipe: str | None = None,
    batch_sizes: Sequence[int] | None = None,
) -> Table:
    """Table I for one (dataset, recipe). With several in ``runs``, name them (or use build_tables)."""
    runs = table_runs(runs)
    if dataset is not None:
        runs = runs[runs["dataset"] == dataset]
    if recipe is not None:
        runs = runs[runs["recipe"] == recipe]
    combos = sorted({(d, r) for d, r in zip(runs["dataset"], runs["recipe"])}, key=str) if len(runs) else []
    if len(combos) > 1:
        raise AnalysisError("the runs mix " + "; ".join(f"dataset={d} recipe={r}" for d, r in combos)
                            + ": choose one with --dataset/--recipe")
    if combos:
        dataset, recipe = combos[0]
    seen = sorted({int(b) for b in runs["batch_size"].dropna()}) if len(runs) else []
    cols = sorted(set(batch_sizes if batch_sizes is not None else PAPER_BATCH_SIZES) | set(seen))
    cells: dict[tuple[str, int], Cell] = {}
    unfinished_only: dict[tuple[str, int], int] = {}
    for (exp, bs), cell_runs in runs.groupby(["experiment", "batch_size"], sort=True):
        bs = int(bs)
        if exp not in EXPERIMENTS or bs not in cols:
            continue
        finished = cell_runs[cell_runs["status"].isin(FINISHED)]
        n_unfinished = len(cell_runs) - len(finished)
        if not len(finished):
            unfinished_only[(exp, bs)] = n_unfinished
            continue
        setting, chosen, searched = choose(finished)
        accs = chosen["test_acc"].dropna()
        edge = [k for k, v in setting.items()
                if k in SEARCH_KEYS and len(searched[k]) > 1 and isinstance(v, (int, float)) and not isinstance(v, bool)
                and v in (min(searched[k]), max(searched[k]))]
        cells[(exp, bs)] = Cell(
            experiment=exp, batch_size=bs,
            test_acc=float(accs.mean()) if len(accs) else math.nan,
            test_std=float(accs.std(ddof=1)) if len(accs) > 1 else None,
            best_val_acc=float(chosen["best_val_acc"].mean()),
            n_seeds=len(chosen), n_runs=len(finished),
            n_settings=len(finished.groupby([finished[k].map(_hashable) for k in setting])) if setting else 1,
            n_diverged=int((finished["status"] == "diverged").sum()),
            chosen_diverged=int((chosen["status"] == "diverged").sum()),
            n_unfinished=n_unfinished,
            setting={k: _plain(v) for k, v in setting.items()},
            searched={k: [_plain(v) for v in vs] for k, vs in searched.items()},
            edge=edge,
            run_ids=chosen["run_id"].tolist(),
            paper=PAPER_TABLE.get(exp, {}).get(bs),
        )
    labels = {e: load_experiment(e).label for e in EXPERIMENTS}
    return Table(dataset, recipe, cols, list(EXPERIMENTS), labels, cells, unfinished_only)


def build_tables(runs: pd.DataFrame, batch_sizes: Sequence[int] | None = None) -> list[Table]:
    """One Table per (dataset, recipe) present among the Table I runs."""
    runs = table_runs(runs)
    combos = sorted({(d, r) for d, r in zip(runs["dataset"], runs["recipe"])}, key=str) if len(runs) else []
    return [build_table(runs, d, r, batch_sizes) for d, r in combos]


def _plain(v: Any) -> Any:
    """numpy scalars -> Python (for JSON); whole floats stay floats."""
    return v.item() if hasattr(v, "item") else v


def _fmt_value(v: Any) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


# ---------------------------------------------------------------------------------------- rendering
def _num(x: float | None, signed: bool = False) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "-"
    return f"{x:+.2f}" if signed else f"{x:.2f}"


def cell_text(c: Cell | None, paper: bool = False, pm: str = "±", expected_paper: float | None = None) -> str:
    """'88.51 ± 0.12' (+ '*' on the edge of the grid, '†' when the chosen setting diverged)."""
    if c is None:
        text = "-"
    else:
        text = _num(c.test_acc) + (f" {pm} {c.test_std:.2f}" if c.test_std is not None else "")
        text += ("*" if c.edge else "") + ("†" if c.chosen_diverged else "")
    if paper:
        ref = c.paper if c is not None else expected_paper
        if ref is not None:
            text += f" ({_num(ref)}, {_num(c.diff, signed=True)})" if c is not None and c.diff is not None \
                else f" ({_num(ref)})"
    return text


def _diff(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def _with_paper(ours: float | None, paper: float | None) -> str:
    if paper is None:
        return _num(ours)
    if ours is None:
        return f"- ({_num(paper)})"
    return f"{_num(ours)} ({_num(paper)}, {_num(ours - paper, True)})"


def rows(table: Table, paper: bool = False) -> list[list[str]]:
    """Header + one text row per experiment (the markdown/LaTeX layout)."""
    head = ["experiment", *map(str, table.batch_sizes), "spread", "gap"]
    out = [head]
    for e in table.rows:
        cells = []
        for b in table.batch_sizes:
            expected = PAPER_TABLE.get(e, {}).get(b)
            cells.append(cell_text(table.cell(e, b), paper, expected_paper=expected))
        sp, gp = table.spread(e), table.gap(e)
        if paper:
            psp, pgp = paper_spread(e), paper_gap(e)
            cells += [_with_paper(sp, psp), _with_paper(gp, pgp)]
        else:
            cells += [_num(sp), _num(gp)]
        out.append([table.labels[e], *cells])
    return out


def markdown_table(rows_: list[list[str]], align: Sequence[str] | None = None) -> str:
    """A GitHub pipe table (no dependency on tabulate)."""
    def esc(s: str) -> str:
        return str(s).replace("|", "\\|").replace("\n", " ")

    align = align or ["l"] + ["r"] * (len(rows_[0]) - 1)
    sep = [":---" if a == "l" else "---:" if a == "r" else ":---:" for a in align]
    lines = ["| " + " | ".join(esc(c) for c in r) + " |" for r in [rows_[0]]]
    lines.append("| " + " | ".join(sep) + " |")
    lines += ["| " + " | ".join(esc(c) for c in r) + " |" for r in rows_[1:]]
    return "\n".join(lines)


def legend(paper: bool) -> str:
    text = ("Test accuracy (%) of the best-validation setting per cell (mean ± std over seeds when there are "
            "several); '-': no finished run. spread: max - min over batch sizes; gap: smallest minus largest "
            "batch size (the paper's '46.91 reduced to 1.26'). *: the chosen setting is on the edge of the "
            "values searched. †: some runs of the chosen setting diverged.")
    if paper:
        text += " In parentheses: the paper's value and our difference (ours - paper); '- (x)': no run of ours."
    return text


def render_markdown(tables: Sequence[Table], paper: bool = False, heading_level: int = 3) -> str:
    parts = []
    for t in tables:
        if len(tables) > 1:
            parts.append("#" * heading_level + f" Table I: {t.title}\n")
        parts.append(markdown_table(rows(t, paper)))
        notes = t.warnings()
        if notes:
            parts.append("\n" + "\n".join(f"- warning: {n}" for n in notes))
        parts.append("")
    parts.append(legend(paper))
    return "\n".join(parts).rstrip() + "\n"


def _latex_escape(s: str) -> str:
    for a, b in (("\\", r"\textbackslash{}"), ("&", r"\&"), ("%", r"\%"), ("_", r"\_"), ("#", r"\#"),
                 ("$", r"\$"), ("{", r"\{"), ("}", r"\}")):
        s = s.replace(a, b) if a != "\\" else s.replace(a, "\x00")
    return s.replace("\x00", r"\textbackslash{}").replace("±", r"$\pm$").replace("†", r"$^\dagger$") \
        .replace("*", r"$^*$").replace("→", r"$\to$")


def render_latex(tables: Sequence[Table], paper: bool = False) -> str:
    out = []
    for t in tables:
        r = rows(t, paper)
        out.append(f"% Table I rebuilt: {t.title}")
        out.append(r"\begin{tabular}{l" + "r" * (len(r[0]) - 1) + "}")
        out.append(r"\toprule")
        out.append(" & ".join(_latex_escape(c) for c in r[0]) + r" \\")
        out.append(r"\midrule")
        out += [" & ".join(_latex_escape(c) for c in row) + r" \\" for row in r[1:]]
        out.append(r"\bottomrule")
        out.append(r"\end{tabular}")
        out += [f"% warning: {w}" for w in t.warnings()]
    return "\n".join(out) + "\n"


def render_csv(tables: Sequence[Table], paper: bool = False) -> str:
    """One row per (dataset, recipe, experiment); numbers only; an empty field where there is no run."""
    bss = sorted({b for t in tables for b in t.batch_sizes})
    has_std = any(c.test_std is not None for t in tables for c in t.cells.values())
    head = ["dataset", "recipe", "experiment", "label"]
    for b in bss:
        head.append(str(b))
        if has_std:
            head += [f"{b}_std"]
        if paper:
            head += [f"{b}_paper", f"{b}_diff"]
    head += ["spread", "gap"] + (["spread_paper", "spread_diff", "gap_paper", "gap_diff"] if paper else [])

    def num(x):
        return "" if x is None or (isinstance(x, float) and not math.isfinite(x)) else round(x, 4)

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(head)
    for t in tables:
        for e in t.rows:
            rec = [t.dataset, t.recipe, e, t.labels[e]]
            for b in bss:
                c = t.cell(e, b)
                rec.append(num(c.test_acc) if c else "")
                if has_std:
                    rec.append(num(c.test_std) if c else "")
                if paper:
                    ref = PAPER_TABLE.get(e, {}).get(b)
                    rec += [num(ref), num(c.diff) if c else ""]
            sp, gp = t.spread(e), t.gap(e)
            rec += [num(sp), num(gp)]
            if paper:
                psp, pgp = paper_spread(e), paper_gap(e)
                rec += [num(psp), num(_diff(sp, psp)), num(pgp), num(_diff(gp, pgp))]
            w.writerow(rec)
    return buf.getvalue()


def _finite(x: Any) -> Any:
    return None if isinstance(x, float) and not math.isfinite(x) else x


def to_dict(t: Table) -> dict[str, Any]:
    """The table as JSON-able data (every detail of every cell)."""
    rows_ = []
    for e in t.rows:
        cells = {}
        for b in t.batch_sizes:
            c = t.cell(e, b)
            cells[str(b)] = None if c is None else {
                "test_acc": _finite(c.test_acc), "test_std": c.test_std, "best_val_acc": _finite(c.best_val_acc),
                "n_seeds": c.n_seeds, "n_runs": c.n_runs, "n_settings": c.n_settings, "n_diverged": c.n_diverged,
                "chosen_diverged": c.chosen_diverged, "n_unfinished": c.n_unfinished, "setting": c.setting,
                "searched": c.searched, "edge": c.edge, "run_ids": c.run_ids, "paper": c.paper, "diff": c.diff,
            }
        rows_.append({
            "experiment": e, "label": t.labels[e], "cells": cells, "spread": t.spread(e), "gap": t.gap(e),
            "paper": {str(b): v for b, v in PAPER_TABLE.get(e, {}).items()},
            "paper_spread": paper_spread(e), "paper_gap": paper_gap(e),
        })
    return {"dataset": t.dataset, "recipe": t.recipe, "batch_sizes": t.batch_sizes, "rows": rows_,
            "warnings": t.warnings()}


def render_json(tables: Sequence[Table], paper: bool = False) -> str:
    return json.dumps({"tables": [to_dict(t) for t in tables]}, indent=2) + "\n"


def render(tables: Table | Sequence[Table], fmt: str = "markdown", paper: bool = False) -> str:
    """Render one or several tables as markdown | csv | latex | json."""
    if isinstance(tables, Table):
        tables = [tables]
    if fmt not in FORMATS:
        raise AnalysisError(f"unknown format {fmt!r}; valid: {', '.join(FORMATS)}")
    return {"markdown": render_markdown, "csv": render_csv, "latex": render_latex, "json": render_json}[fmt](
        tables, paper=paper)


# ---------------------------------------------------------------------------------------- CLI
def add_common_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tracking-uri", default=None,
                   help="MLflow tracking URI (default: sqlite:///<cwd>/mlflow.db, as the sweeps)")
    p.add_argument("--dataset", default=None, help="only runs on this dataset (default: every dataset, one table each)")
    p.add_argument("--recipe", default=None, help="only runs of this recipe: text | authors-code (default: each)")
    p.add_argument("--sweep", action="append", default=None, metavar="NAME",
                   help="only runs of this sweep (the MLflow parent run name; repeatable; default: every sweep)")


def load_table_runs(tracking_uri: str | None, dataset: str | None = None, recipe: str | None = None,
                    sweeps: Sequence[str] | None = None) -> pd.DataFrame:
    """load_runs + a one-line error when nothing matches (the CLIs' shared entry)."""
    from .runs import default_tracking_uri, load_runs

    uri = tracking_uri or default_tracking_uri()
    everything = load_runs(uri)
    if not len(everything):
        raise AnalysisError(f"no bigbatch runs in {uri} (MLflow experiments named {EXPERIMENT_PREFIX}*)")
    runs = everything
    for key, value in (("dataset", dataset), ("recipe", recipe), ("sweep", sweeps)):
        if value is not None:
            runs = runs[runs[key].isin(value if isinstance(value, (list, tuple)) else [value])]
            if not len(runs):
                have = ", ".join(sorted(map(str, everything[key].dropna().unique())))
                shown = ",".join(value) if isinstance(value, (list, tuple)) else value
                raise AnalysisError(f"no bigbatch runs with {key}={shown} in {uri} (have: {have})")
    return runs.reset_index(drop=True)


def cli(main_fn) -> int:
    """Run a CLI body; AnalysisError -> 'error: ...' on stderr and exit status 2."""
    try:
        main_fn()
    except AnalysisError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    return 0


DESCRIPTION = "Rebuild the paper's Table I from the MLflow runs: per (experiment, batch size), the test accuracy of the best-validation setting (mean ± std over seeds). See docs/analysis.md."


def main(argv: Iterable[str] | None = None) -> int:
    p = OneLineArgumentParser(prog="python -m analysis.table", description=DESCRIPTION)  # errors: one line, exit 2
    add_common_args(p)
    p.add_argument("--format", choices=FORMATS, default="markdown", help="output format (default markdown)")
    p.add_argument("--paper", action="store_true", help="add the paper's value and our difference to each cell")
    args = p.parse_args(list(argv) if argv is not None else None)

    def body():
        runs = load_table_runs(args.tracking_uri, args.dataset, args.recipe, args.sweep)
        tables = build_tables(runs)
        if not tables:
            raise AnalysisError("no runs of the Table I experiments (bigbatch-exp1..exp6) in the store")
        sys.stdout.write(render(tables, args.format, paper=args.paper))

    return cli(body)


if __name__ == "__main__":
    sys.exit(main())
