"""Table I rebuilt from the runs: ``python -m analysis.table [--tracking-uri URI] [--paper] ...``.

Rows: the paper's six rows (exp1..exp6), each from the runs of the setting the paper's row used for
every key its experiment searches (exp5: factor_lr = 10 at every batch size, as the paper's row),
then, for an experiment whose runs also tried other values, an extra row ``<exp>-best`` ("..., best f
by validation") that chooses among every value tried, the chosen value shown in the cell.

Cells: the test accuracy of the best-VALIDATION setting for that (row, batch size): a cell's runs are
grouped by their nuisance setting (the config keys that vary inside the cell, other than the seed);
the setting with the best mean ``best_val_acc`` (over its seeds) is chosen, and the cell shows the mean
(and, with several seeds, the standard deviation) of its ``test_acc``. The test accuracy never takes part
in the choice. A diverged run takes part like any other, with the best model it saw before diverging
(issue 9.1), and marks the cell with a dagger.

The table is a pandas DataFrame rendered by pandas (``to_markdown``, ``to_latex``, ``to_csv``,
``to_json``). With lr-grid runs in the store, the CLI also prints the learning-rate grid
(``analysis.lr_grid``) beside the paper's choice.

Python API::

    runs = analysis.runs.load_runs(uri)
    for table in build_tables(runs):          # one per (dataset, recipe) in the runs
        print(render([table], "markdown", paper=True))
"""

from __future__ import annotations

import dataclasses
import math
import sys
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import pandas as pd

from bigbatch.config import OneLineArgumentParser, RunConfig, keys_with_role
from bigbatch.experiments import EXPERIMENTS, PAPER_BATCH_SIZES, PAPER_TABLE, TABLE_EXPERIMENTS, load_experiment
from bigbatch.schema import DERIVED_PARAMS, FINISHED, ROLE_SWEEP, mlflow_experiment

from . import lr_grid
from .cli import add_common_args, load_selected_runs, run_cli
from .runs import PARAM_TYPES, AnalysisError

FORMATS = ("markdown", "csv", "latex", "json")
BEST_SUFFIX = "-best"  # the extra row of an experiment that searched: exp5-best

# The paper's test accuracies for settings its Table I row did not use, per experiment, batch size and
# searched key (its Table I value, at the row's own setting, is PAPER_TABLE's): its exp5 row used f = 10
# at every batch size; at bs 1024 alone it also tried f = 5 (88.61) and f = 2 (89.87). A companion of
# bigbatch.experiments.PAPER_TABLE, kept here because only the analysis reads it.
PAPER_OTHER_SETTINGS: dict[str, dict[int, dict[str, dict[float, float]]]] = {
    "exp5": {1024: {"factor_lr": {5.0: 88.61, 2.0: 89.87}}},
}
SHORT_NAMES = {"factor_lr": "f"}  # how a chosen setting is written in a cell: [f=2]

DECLARED = {e: load_experiment(e) for e in TABLE_EXPERIMENTS}
# Keys the experiments declare as searched (bigbatch/configs: "search"), e.g. factor_lr: only these get the
# edge-of-grid mark; any other key that varies inside a cell gets a "runs differ in ..." warning.
SEARCH_KEYS = frozenset(k for e in EXPERIMENTS for k in load_experiment(e).search)  # lr-grid's lr too
# The value the paper's row used for each searched key: the experiment's declared config (exp5: factor_lr 10).
PAPER_ROW_SETTING = {e: {k: exp.config.get(k) for k in exp.search} for e, exp in DECLARED.items()}
# Config keys that never define a nuisance setting: the table's own axes (seed, batch size), the keys that
# name runs or split tables, bookkeeping and measurements (their roles: bigbatch.config.ROLES), derived values.
NOT_NUISANCE = keys_with_role("identity", "bookkeeping", "measurement") | {"seed", "batch_size"} | set(DERIVED_PARAMS)


# ---------------------------------------------------------------------------------------- formatting
def fmt_value(v: Any) -> str:
    """A setting's value: 2.0 -> '2', 0.001 -> '0.001', text as is."""
    return f"{v:g}" if isinstance(v, float) else str(v)


def fmt_num(x: float | None, signed: bool = False) -> str:
    """An accuracy: '88.51' ('+0.12' signed); '-' for None or NaN."""
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "-"
    return f"{x:+.2f}" if signed else f"{x:.2f}"


def fmt_setting(setting: dict[str, Any]) -> str:
    """{'factor_lr': 2.0} -> '[f=2]'; '' for no setting."""
    return "[" + ", ".join(f"{SHORT_NAMES.get(k, k)}={fmt_value(v)}" for k, v in setting.items()) + "]" \
        if setting else ""


def markdown_table(frame: pd.DataFrame, align: Sequence[str] | None = None) -> str:
    """A GitHub pipe table of a DataFrame of text (pandas ``to_markdown``; the first column left-aligned)."""
    align = tuple(align) if align else ("left",) + ("right",) * (frame.shape[1] - 1)
    return frame.to_markdown(index=False, colalign=align, disable_numparse=True)


# ---------------------------------------------------------------------------------------- the paper
def paper_spread(experiment: str) -> float | None:
    """max - min over the paper's Table I row (46.91 for exp1, 1.63 for exp6)."""
    vals = [v for v in PAPER_TABLE.get(experiment, {}).values() if v is not None]
    return round(max(vals) - min(vals), 2) if vals else None


def paper_gap(experiment: str) -> float | None:
    """Accuracy at batch size 32 minus the largest batch size of the paper's row (46.91 exp1, 1.26 exp6)."""
    row = {b: v for b, v in PAPER_TABLE.get(experiment, {}).items() if v is not None}
    return round(row[min(row)] - row[max(row)], 2) if len(row) > 1 else None


def paper_cell(row: str, batch_size: int) -> tuple[float | None, dict[str, Any]]:
    """The paper's number a cell compares with, and the setting it used.

    A paper row: its Table I value ({} setting). A best-by-validation row: the paper's best over the
    values it tried, its Table I value included, only where it tried more than its row's (exp5 at 1024:
    89.87 with f = 2); (None, {}) elsewhere, so a searched cell is never compared with a cell the paper
    did not search.
    """
    experiment = row.removesuffix(BEST_SUFFIX)
    table_value = PAPER_TABLE.get(experiment, {}).get(batch_size)
    if row == experiment:
        return table_value, {}
    other = PAPER_OTHER_SETTINGS.get(experiment, {}).get(batch_size)
    if not other:
        return None, {}
    tried = [(acc, {key: value}) for key, values in other.items() for value, acc in values.items()]
    if table_value is not None:
        tried.append((table_value, dict(PAPER_ROW_SETTING.get(experiment, {}))))
    return max(tried, key=lambda t: t[0])


# ---------------------------------------------------------------------------------------- the model
@dataclass
class Cell:
    """One (row, batch size) of the table: the chosen setting and its test accuracy."""

    row: str  # exp1..exp6, or exp5-best (the best-by-validation row)
    experiment: str  # exp1..exp6
    batch_size: int
    test_acc: float  # mean over the chosen setting's seeds (NaN when none has a test accuracy)
    test_std: float | None  # sample standard deviation; None with one seed
    best_val_acc: float  # mean best validation accuracy of the chosen setting (what chose it)
    n_seeds: int  # finished runs of the chosen setting
    n_runs: int  # finished runs in the cell, every setting
    n_settings: int  # nuisance settings tried in the cell
    n_diverged: int  # diverged runs in the cell, every setting
    chosen_diverged: int  # diverged runs among the chosen setting's seeds (the cell's dagger)
    diverged_epochs: list[int]  # the epochs those runs diverged at (tag bigbatch.diverged_epoch)
    n_unfinished: int  # stopped early, failed or still running (not in the choice)
    setting: dict[str, Any]  # the chosen nuisance setting, e.g. {"factor_lr": 2.0}; {} if nothing varied
    searched: dict[str, list[Any]]  # nuisance key -> every value tried in the cell
    edge: list[str]  # searched keys whose chosen value is the smallest or largest tried
    run_ids: list[str]  # the chosen setting's runs
    paper: float | None  # the paper's number for this cell (see paper_cell)
    paper_setting: dict[str, Any] = field(default_factory=dict)  # the setting of that number (best rows)

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
    rows: list[str]  # the paper's rows: exp1..exp6, in its order (all six, even when absent)
    labels: dict[str, str]  # row -> label (the paper's row label; "..., best f by validation")
    cells: dict[tuple[str, int], Cell]
    extra_rows: list[str] = field(default_factory=list)  # best-by-validation rows, e.g. ["exp5-best"]
    unfinished_only: dict[tuple[str, int], int] = field(default_factory=dict)  # cells with runs, none finished
    model: str | None = RunConfig.model  # the model key: a table never mixes models (nor datasets, recipes)

    @property
    def all_rows(self) -> list[str]:
        """Every row, in print order: the paper's six, then the best-by-validation rows."""
        return self.rows + self.extra_rows

    def cell(self, row: str, batch_size: int) -> Cell | None:
        return self.cells.get((row, batch_size))

    def row_values(self, row: str) -> dict[int, float]:
        return {b: c.test_acc for (r, b), c in self.cells.items() if r == row and math.isfinite(c.test_acc)}

    def spread(self, row: str) -> float | None:
        """max - min of the row's cells (None with fewer than two cells)."""
        vals = list(self.row_values(row).values())
        return max(vals) - min(vals) if len(vals) > 1 else None

    def gap(self, row: str) -> float | None:
        """Smallest minus largest batch size of the row (the paper's '46.91 ... reduced to 1.26')."""
        vals = self.row_values(row)
        return vals[min(vals)] - vals[max(vals)] if len(vals) > 1 else None

    def _ordered(self, keyed: dict) -> list:
        return sorted(keyed.items(), key=lambda kv: (self.all_rows.index(kv[0][0]), kv[0][1]))

    def warnings(self) -> list[str]:
        """Edge-of-grid choices, keys no experiment searches, cells whose runs none finished."""
        out = []
        for (r, b), c in self._ordered(self.cells):
            for key in c.edge:
                vals = ", ".join(fmt_value(v) for v in c.searched[key])
                side = "smallest" if c.setting[key] == min(c.searched[key]) else "largest"
                out.append(f"{r} bs={b}: chosen {key}={fmt_value(c.setting[key])} is the {side} value searched "
                           f"({vals}); the optimum may lie outside the grid")
            for key in c.searched:
                if key not in SEARCH_KEYS:
                    vals = ", ".join(fmt_value(v) for v in c.searched[key])
                    out.append(f"{r} bs={b}: its runs differ in {key} ({vals}), which no experiment searches; "
                               f"chose {key}={fmt_value(c.setting[key])} by validation accuracy")
        for (r, b), n in self._ordered(self.unfinished_only):
            out.append(f"{r} bs={b}: {n} run(s), none finished (stopped early, failed or still running)")
        return out

    def notes(self) -> list[str]:
        """One line per cell marked with a dagger: where its chosen setting diverged."""
        out = []
        for (r, b), c in self._ordered(self.cells):
            if c.chosen_diverged:
                at = ", ".join(map(str, c.diverged_epochs)) or "?"
                out.append(f"† {r} bs={b}: {c.chosen_diverged} of the {c.n_seeds} runs of the chosen setting "
                           f"diverged at epoch {at}; best model before it")
        return out

    @property
    def parts(self) -> list[str]:
        """What tells this table from another of the same store: dataset, the model where it is not the
        default, recipe (figure labels and file-name suffixes)."""
        model = [] if self.model == RunConfig.model else [str(self.model)]
        return [str(self.dataset), *model, str(self.recipe)]

    @property
    def title(self) -> str:
        return f"dataset={self.dataset}, model={self.model}, recipe={self.recipe}"


# ---------------------------------------------------------------------------------------- building
def table_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """The runs that enter Table I: trials of the MLflow experiments bigbatch-exp1..exp6 (not Optuna, lr-grid)."""
    if not len(runs):
        return runs
    keep = runs["mlflow_experiment"].isin([mlflow_experiment(e) for e in TABLE_EXPERIMENTS]) & (runs["role"] != ROLE_SWEEP)
    return runs[keep]


def nuisance_keys(cell_runs: pd.DataFrame) -> list[str]:
    """Config keys that vary within a cell's runs, other than the seed and bookkeeping keys."""
    return sorted(col for col in cell_runs.columns if col in PARAM_TYPES and col not in NOT_NUISANCE
                  and cell_runs[col].dropna().map(_hashable).nunique() > 1)


def _hashable(v: Any) -> Any:
    return tuple(v) if isinstance(v, list) else v


def _sort_key(v: Any) -> tuple:
    return (0, v, "") if isinstance(v, (int, float)) and not isinstance(v, bool) else (1, 0, str(v))


def _plain(v: Any) -> Any:
    """numpy scalars -> Python."""
    return v.item() if hasattr(v, "item") else v


def choose(cell_runs: pd.DataFrame) -> tuple[dict[str, Any], pd.DataFrame, dict[str, list[Any]], int]:
    """The selection rule on one cell's finished runs -> (setting, its runs, values tried per key, settings).

    Settings are ranked by mean best_val_acc over their seeds (a missing value counts as 0); a diverged
    run counts like any other, with the best model it saw before diverging. Ties go to the setting with
    more seeds, then to the first one seen. Test accuracy is never looked at.
    """
    keys = nuisance_keys(cell_runs)
    searched = {k: sorted(cell_runs[k].dropna().map(_hashable).unique().tolist(), key=_sort_key) for k in keys}
    if not keys:
        return {}, cell_runs, searched, 1
    groups = list(cell_runs.groupby([cell_runs[k].map(_hashable) for k in keys], dropna=False, sort=False))
    setting, chosen = max(groups, key=lambda sg: (sg[1]["best_val_acc"].fillna(0.0).mean(), len(sg[1])))
    setting = setting if isinstance(setting, tuple) else (setting,)
    return dict(zip(keys, setting)), chosen, searched, len(groups)


def _cell(row: str, experiment: str, bs: int, finished: pd.DataFrame, n_unfinished: int) -> Cell:
    setting, chosen, searched, n_settings = choose(finished)
    accs = chosen["test_acc"].dropna()
    diverged = chosen[chosen["status"] == "diverged"]
    epochs = diverged["diverged_epoch"].dropna() if "diverged_epoch" in diverged else pd.Series([], dtype=int)
    edge = [k for k, v in setting.items()
            if k in SEARCH_KEYS and len(searched[k]) > 1 and isinstance(v, (int, float)) and not isinstance(v, bool)
            and v in (min(searched[k]), max(searched[k]))]
    paper, paper_setting = paper_cell(row, bs)
    return Cell(
        row=row, experiment=experiment, batch_size=bs,
        test_acc=float(accs.mean()) if len(accs) else math.nan,
        test_std=float(accs.std(ddof=1)) if len(accs) > 1 else None,
        best_val_acc=float(chosen["best_val_acc"].mean()),
        n_seeds=len(chosen), n_runs=len(finished), n_settings=n_settings,
        n_diverged=int((finished["status"] == "diverged").sum()), chosen_diverged=len(diverged),
        diverged_epochs=sorted(int(e) for e in epochs), n_unfinished=n_unfinished,
        setting={k: _plain(v) for k, v in setting.items()},
        searched={k: [_plain(v) for v in vs] for k, vs in searched.items()},
        edge=edge, run_ids=chosen["run_id"].tolist(), paper=paper, paper_setting=paper_setting,
    )


def in_paper_row(runs: pd.DataFrame, experiment: str) -> pd.Series:
    """Which runs have the paper's setting of every key the experiment searches (a missing value counts)."""
    mask = pd.Series(True, index=runs.index)
    for key, value in PAPER_ROW_SETTING.get(experiment, {}).items():
        if key in runs.columns:
            mask &= runs[key].isna() | (runs[key] == value)
    return mask


def build_table(
    runs: pd.DataFrame,
    dataset: str | None = None,
    recipe: str | None = None,
    batch_sizes: Sequence[int] | None = None,
    model: str | None = None,
) -> Table:
    """Table I for one (dataset, model, recipe). With several in ``runs``, name them (or use build_tables)."""
    runs = table_runs(runs)
    for key, value in (("dataset", dataset), ("model", model), ("recipe", recipe)):
        if value is not None:
            runs = runs[runs[key] == value]
    combos = table_keys(runs)
    if len(combos) > 1:
        raise AnalysisError("the runs mix " + "; ".join(f"dataset={d} model={m} recipe={r}" for d, m, r in combos)
                            + ": choose one with --dataset/--model/--recipe")
    if combos:
        dataset, model, recipe = combos[0]
    seen = sorted({int(b) for b in runs["batch_size"].dropna()}) if len(runs) else []
    cols = sorted(set(batch_sizes if batch_sizes is not None else PAPER_BATCH_SIZES) | set(seen))
    labels = {e: DECLARED[e].label for e in TABLE_EXPERIMENTS}
    cells: dict[tuple[str, int], Cell] = {}
    unfinished_only: dict[tuple[str, int], int] = {}
    extra_rows: list[str] = []
    for exp in TABLE_EXPERIMENTS:
        exp_runs = runs[runs["experiment"] == exp] if len(runs) else runs
        paper_row = in_paper_row(exp_runs, exp)
        row_runs = [(exp, exp_runs[paper_row])]
        if not paper_row.all():  # other values were tried: the best-by-validation row
            row_runs.append((exp + BEST_SUFFIX, exp_runs))
            extra_rows.append(exp + BEST_SUFFIX)
            keys = ", ".join(SHORT_NAMES.get(k, k) for k in PAPER_ROW_SETTING[exp])
            labels[exp + BEST_SUFFIX] = f"{labels[exp]}, best {keys} by validation"
            labels[exp] += " " + fmt_setting(PAPER_ROW_SETTING[exp])
        for row, rr in row_runs:
            for bs, cell_runs in rr.groupby("batch_size", sort=True):
                bs = int(bs)
                if bs not in cols:
                    continue
                finished = cell_runs[cell_runs["status"].isin(FINISHED)]
                if not len(finished):
                    unfinished_only[(row, bs)] = len(cell_runs)
                    continue
                cells[(row, bs)] = _cell(row, exp, bs, finished, len(cell_runs) - len(finished))
    return Table(dataset, recipe, cols, list(TABLE_EXPERIMENTS), labels, cells, extra_rows, unfinished_only,
                 model or RunConfig.model)


def table_keys(runs: pd.DataFrame) -> list[tuple[str, str, str]]:
    """The (dataset, model, recipe) combinations among ``runs``: one table each (identity keys, never chosen between)."""
    if not len(runs):
        return []
    models = runs["model"] if "model" in runs else pd.Series(RunConfig.model, index=runs.index)
    return sorted({(d, m, r) for d, m, r in zip(runs["dataset"], models, runs["recipe"])}, key=str)


def build_tables(runs: pd.DataFrame, batch_sizes: Sequence[int] | None = None) -> list[Table]:
    """One Table per (dataset, model, recipe) present among the Table I runs."""
    runs = table_runs(runs)
    return [build_table(runs, d, r, batch_sizes, model=m) for d, m, r in table_keys(runs)]


# ---------------------------------------------------------------------------------------- frames
def cell_text(c: Cell | None, paper: bool = False, row: str = "", batch_size: int = 0) -> str:
    """'88.51 ± 0.12' ('*' on the edge of the grid, '†' when the chosen setting diverged, '[f=2]' in a
    best-by-validation row); with ``paper``, '(paper, ours - paper)' after it."""
    best_row = (c.row if c is not None else row).endswith(BEST_SUFFIX)
    if c is None:
        text = "-"
    else:
        text = fmt_num(c.test_acc) + (f" ± {c.test_std:.2f}" if c.test_std is not None else "")
        text += ("*" if c.edge else "") + ("†" if c.chosen_diverged else "")
        text += (" " + fmt_setting(c.setting)) if best_row and c.setting else ""
    if paper:
        ref, ref_setting = (c.paper, c.paper_setting) if c is not None else paper_cell(row, batch_size)
        shown = fmt_num(ref) + (" " + fmt_setting(ref_setting) if ref_setting else "")
        if c is not None and (ref is not None or best_row):
            text += f" ({shown}, {fmt_num(c.diff, signed=True)})"
        elif ref is not None:
            text += f" ({shown})"
    return text


def _with_paper(ours: float | None, paper: float | None) -> str:
    if paper is None:
        return fmt_num(ours)
    if ours is None:
        return f"- ({fmt_num(paper)})"
    return f"{fmt_num(ours)} ({fmt_num(paper)}, {fmt_num(ours - paper, True)})"


def text_frame(table: Table, paper: bool = False) -> pd.DataFrame:
    """The table as text, one row per row of Table I: label, a column per batch size, spread, gap."""
    records = []
    for r in table.all_rows:
        rec = {"experiment": table.labels[r]}
        for b in table.batch_sizes:
            rec[str(b)] = cell_text(table.cell(r, b), paper, row=r, batch_size=b)
        sp, gp = table.spread(r), table.gap(r)
        if paper and r in table.rows:
            rec["spread"], rec["gap"] = _with_paper(sp, paper_spread(r)), _with_paper(gp, paper_gap(r))
        else:
            rec["spread"], rec["gap"] = fmt_num(sp), fmt_num(gp)
        records.append(rec)
    return pd.DataFrame(records)


def number_frame(tables: Sequence[Table], paper: bool = False) -> pd.DataFrame:
    """Every table as numbers, one row per (dataset, recipe, row): the CSV layout (NaN where no run)."""
    bss = sorted({b for t in tables for b in t.batch_sizes})
    has_std = any(c.test_std is not None for t in tables for c in t.cells.values())
    records = []
    for t in tables:
        for r in t.all_rows:
            rec: dict[str, Any] = {"dataset": t.dataset, "model": t.model, "recipe": t.recipe, "experiment": r.removesuffix(BEST_SUFFIX),
                                   "row": r, "label": t.labels[r]}
            for b in bss:
                c = t.cell(r, b)
                rec[str(b)] = c.test_acc if c else None
                if has_std:
                    rec[f"{b}_std"] = c.test_std if c else None
                if paper:
                    rec[f"{b}_paper"] = c.paper if c else paper_cell(r, b)[0]
                    rec[f"{b}_diff"] = c.diff if c else None
            rec["spread"], rec["gap"] = t.spread(r), t.gap(r)
            if paper:
                psp, pgp = (paper_spread(r), paper_gap(r)) if r in t.rows else (None, None)
                rec["spread_paper"] = psp
                rec["spread_diff"] = None if psp is None or rec["spread"] is None else rec["spread"] - psp
                rec["gap_paper"] = pgp
                rec["gap_diff"] = None if pgp is None or rec["gap"] is None else rec["gap"] - pgp
            records.append(rec)
    return pd.DataFrame(records)


def table_record(t: Table) -> dict[str, Any]:
    """The table as JSON-able data: every detail of every cell."""
    rows = []
    for r in t.all_rows:
        cells = {str(b): (None if (c := t.cell(r, b)) is None else {**dataclasses.asdict(c), "diff": c.diff})
                 for b in t.batch_sizes}
        paper_row = r in t.rows
        rows.append({
            "experiment": r.removesuffix(BEST_SUFFIX), "row": r, "label": t.labels[r], "cells": cells,
            "spread": t.spread(r), "gap": t.gap(r),
            "paper": {str(b): paper_cell(r, b)[0] for b in t.batch_sizes},
            "paper_spread": paper_spread(r) if paper_row else None, "paper_gap": paper_gap(r) if paper_row else None,
        })
    return {"dataset": t.dataset, "model": t.model, "recipe": t.recipe, "batch_sizes": t.batch_sizes, "rows": rows,
            "warnings": t.warnings(), "notes": t.notes()}


# ---------------------------------------------------------------------------------------- rendering
def legend(paper: bool, extra_rows: bool = False) -> str:
    text = ("Test accuracy (%) of the best-validation setting per cell (mean ± std over seeds when there are "
            "several); '-': no finished run. spread: max - min over batch sizes; gap: smallest minus largest "
            "batch size (the paper's '46.91 reduced to 1.26'). *: the chosen setting is on the edge of the "
            "values searched. †: a run of the chosen setting diverged; it counts with the best model it saw "
            "before diverging (the epoch: in the notes).")
    if extra_rows:
        text += (" A paper row uses the paper's own value of every searched key (exp5: f = 10, as its Table I); "
                 "a 'best ... by validation' row chooses among every value tried, shown in brackets.")
    if paper:
        text += " In parentheses: the paper's value and our difference (ours - paper); '- (x)': no run of ours."
        if extra_rows:
            text += (" A best-by-validation cell is compared only where the paper tried several values too "
                     "(exp5 at 1024: its best of f = 10, 5, 2); elsewhere '(-, -)'.")
    return text


def render_markdown(tables: Sequence[Table], paper: bool = False, heading_level: int = 3) -> str:
    parts = []
    for t in tables:
        if len(tables) > 1:
            parts.append("#" * heading_level + f" Table I: {t.title}\n")
        parts.append(markdown_table(text_frame(t, paper)))
        notes = [f"- warning: {w}" for w in t.warnings()] + [f"- {n}" for n in t.notes()]
        if notes:
            parts.append("\n" + "\n".join(notes))
        parts.append("")
    parts.append(legend(paper, any(t.extra_rows for t in tables)))
    return "\n".join(parts).rstrip() + "\n"


def render_latex(tables: Sequence[Table], paper: bool = False) -> str:
    out = []
    for t in tables:
        frame = text_frame(t, paper)
        body = frame.to_latex(index=False, escape=True, column_format="l" + "r" * (frame.shape[1] - 1))
        out.append(f"% Table I rebuilt: {t.title}")
        out.append(body.replace("±", r"$\pm$").replace("†", r"$^\dagger$").rstrip("\n"))
        out += [f"% warning: {w}" for w in t.warnings()] + [f"% {n}" for n in t.notes()]
    return "\n".join(out) + "\n"


def render(tables: Table | Sequence[Table], fmt: str = "markdown", paper: bool = False,
           lr_grid_frame: pd.DataFrame | None = None) -> str:
    """Render one or several tables as markdown | csv | latex | json.

    ``lr_grid_frame`` (analysis.lr_grid.summarize): the learning-rate grid, added to markdown and json.
    """
    if isinstance(tables, Table):
        tables = [tables]
    if fmt not in FORMATS:
        raise AnalysisError(f"unknown format {fmt!r}; valid: {', '.join(FORMATS)}")
    grid = lr_grid_frame if lr_grid_frame is not None and len(lr_grid_frame) else None
    if fmt == "markdown":
        parts = ([render_markdown(tables, paper)] if tables else []) + ([lr_grid.render_markdown(grid)] if grid is not None
                                                                        else [])
        return "\n".join(parts)
    if fmt == "latex":
        return render_latex(tables, paper)
    if fmt == "csv":
        return number_frame(tables, paper).round(4).to_csv(index=False)
    doc = {"tables": [table_record(t) for t in tables]}
    if grid is not None:
        doc["lr_grid"] = grid.to_dict(orient="records")
    return pd.Series(doc, dtype=object).to_json(indent=2) + "\n"


# ---------------------------------------------------------------------------------------- CLI
DESCRIPTION = ("Rebuild the paper's Table I from the MLflow runs: per (experiment, batch size), the test accuracy "
               "of the best-validation setting (mean ± std over seeds); with lr-grid runs, the learning-rate grid "
               "beside the paper's choice. See docs/analysis.md.")


def main(argv: Iterable[str] | None = None) -> int:
    p = OneLineArgumentParser(prog="python -m analysis.table", description=DESCRIPTION)  # errors: one line, exit 2
    add_common_args(p)
    p.add_argument("--format", choices=FORMATS, default="markdown", help="output format (default markdown)")
    p.add_argument("--paper", action="store_true", help="add the paper's value and our difference to each cell")
    p.add_argument("--register", action="store_true",
                   help="also register each cell's chosen model in the MLflow Model Registry (bigbatch-<row>-bs<N>, "
                        "alias table1; load with analysis.models.load_model)")
    args = p.parse_args(list(argv) if argv is not None else None)

    def body():
        runs = load_selected_runs(args.tracking_uri, args.dataset, args.recipe, args.sweep, args.model)
        tables = build_tables(runs)
        grid = lr_grid.summarize(runs)
        if not tables and not len(grid):
            raise AnalysisError("no runs of the Table I experiments (bigbatch-exp1..exp6) nor of the lr grid "
                                "(bigbatch-lr-grid) in the store")
        sys.stdout.write(render(tables, args.format, paper=args.paper, lr_grid_frame=grid))
        if args.register:
            from .models import register_tables

            for reg in register_tables(tables, runs, args.tracking_uri):
                print(f"{'registered' if reg.new else 'unchanged '} {reg.name} version {reg.version} (alias table1): run {reg.run_id}, "
                      f"best_val_acc {reg.best_val_acc:.2f}, test_acc {reg.test_acc:.2f}", file=sys.stderr)

    return run_cli(body)


if __name__ == "__main__":
    sys.exit(main())
