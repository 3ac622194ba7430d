"""Steps to a target against the batch size, and the critical batch size (issue 21).

The field's way to ask the paper's question (Shallue et al. 2019, arXiv 1811.03600; McCandlish et al. 2018,
arXiv 1812.06162): for each batch size B, tune the learning rate independently and count the optimizer steps S
needed to reach a fixed validation target. McCandlish's model of the curve,

    S = S_min (1 + B_crit / B),   E = B S = E_min (1 + B / B_crit),

is linear in 1 / B: S = S_min + E_min / B with E_min = S_min B_crit, so a least-squares line through the points
(1 / B, S) gives S_min (the intercept: the steps at infinite batch), E_min (the slope: the examples at batch 1)
and B_crit = E_min / S_min. Perfect scaling (S halves as B doubles) holds for B << B_crit, maximal data
parallelism (S stops falling) for B >> B_crit.

Everything here is pure pandas/numpy on data frames, so it is tested on points made with known values:

- ``steps_to_target(history, target)``: per trial, the first evaluated step whose validation accuracy reaches
  the target (NaN: never reached; such a trial is kept, as Shallue et al. keep infeasible trials);
- ``best_steps(trials, history, targets)``: per target and batch size, the best (fewest) steps over the trials
  and the lr that gave them, with how many trials ran and reached it;
- ``fit(points)``: S_min, E_min, B_crit from (batch size, steps);
- ``bootstrap(trials, history, target)``: an interval for B_crit, resampling the trials within each batch size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

STEPS_COLUMNS = ["target", "batch_size", "best_lr", "steps", "examples", "n_trials", "n_reached"]


def steps_to_target(history: pd.DataFrame, target: float) -> pd.Series:
    """run_id -> the first ``step`` whose ``val_acc`` >= ``target`` (NaN when none does).

    ``history``: one row per evaluation, columns run_id, step, val_acc (any order). A run with no evaluation
    at all still appears (NaN)."""
    runs = pd.Index(history["run_id"].unique(), name="run_id")
    hit = history[history["val_acc"] >= target]
    first = hit.groupby("run_id")["step"].min()
    return first.reindex(runs).astype("float64")


def best_trials(trials: pd.DataFrame, history: pd.DataFrame, targets: list[float]) -> pd.DataFrame:
    """Per target and batch size: STEPS_COLUMNS plus ``run_id``, the trial that gave the best steps.

    ``trials``: one row per trial, columns run_id, batch_size, lr. Ties in steps go to the smaller lr. A batch
    size none of whose trials reached the target has steps, examples, best_lr NaN and run_id None (it is not
    dropped)."""
    rows = []
    for target in targets:
        steps = steps_to_target(history, target)
        t = trials.assign(steps=trials["run_id"].map(steps))
        for bs, g in t.groupby("batch_size", sort=True):
            reached = g.dropna(subset=["steps"])
            best = reached.sort_values(["steps", "lr"], kind="stable").iloc[0] if len(reached) else None
            s = float(best["steps"]) if best is not None else math.nan
            rows.append({"target": target, "batch_size": int(bs), "best_lr": float(best["lr"]) if best is not None else math.nan,
                         "steps": s, "examples": s * int(bs), "n_trials": len(g), "n_reached": len(reached),
                         "run_id": best["run_id"] if best is not None else None})
    return pd.DataFrame(rows, columns=[*STEPS_COLUMNS, "run_id"])


def best_steps(trials: pd.DataFrame, history: pd.DataFrame, targets: list[float]) -> pd.DataFrame:
    """Per target and batch size: the best steps over the trials, the lr of that trial, the examples
    (steps x batch size), the trials run and the trials that reached the target (STEPS_COLUMNS; see
    ``best_trials``)."""
    return best_trials(trials, history, targets)[STEPS_COLUMNS]


@dataclass(frozen=True)
class Fit:
    s_min: float  # steps at an infinite batch (the intercept)
    e_min: float  # examples at batch size 1 (the slope in 1/B)
    n_points: int
    scale: float = 1.0  # the largest steps fitted: an S_min below 1e-9 of it is zero (float noise, no saturation)

    @property
    def b_crit(self) -> float:
        """E_min / S_min; NaN when the fit cannot say (fewer than 2 points, S_min <= 0: no saturation seen, or
        E_min <= 0: steps that do not fall with the batch size)."""
        if self.n_points < 2 or not self.s_min > 1e-9 * self.scale or not (math.isfinite(self.e_min) and self.e_min > 0):
            return math.nan
        return self.e_min / self.s_min

    def steps(self, batch_size: float) -> float:
        return self.s_min + self.e_min / batch_size


def fit(batch_sizes, steps) -> Fit:
    """Least squares of S = S_min + E_min / B over the points whose steps are finite."""
    b = np.asarray(batch_sizes, dtype=float)
    s = np.asarray(steps, dtype=float)
    keep = np.isfinite(s) & np.isfinite(b) & (b > 0)
    b, s = b[keep], s[keep]
    if len(b) < 2 or len(np.unique(b)) < 2:
        return Fit(math.nan, math.nan, int(len(b)))
    a = np.stack([np.ones_like(b), 1.0 / b], axis=1)
    (s_min, e_min), *_ = np.linalg.lstsq(a, s, rcond=None)
    return Fit(float(s_min), float(e_min), int(len(b)), float(s.max()))


def bootstrap(trials: pd.DataFrame, history: pd.DataFrame, target: float, n: int = 1000, seed: int = 0,
              level: float = 0.95) -> tuple[float, float]:
    """A percentile interval for B_crit: resample the trials of each batch size with replacement, take the best
    steps per batch size again and refit, ``n`` times. A resample whose fit cannot give B_crit counts as +inf
    (the data do not pin it down), so an interval that reaches it says so: (lo, inf)."""
    steps = steps_to_target(history, target)
    t = trials.assign(steps=trials["run_id"].map(steps))
    groups = [(int(bs), g["steps"].to_numpy(dtype=float)) for bs, g in t.groupby("batch_size", sort=True)]
    rng = np.random.default_rng(seed)
    values = np.empty(n)
    for i in range(n):
        bss, best = [], []
        for bs, s in groups:
            draw = s[rng.integers(0, len(s), len(s))]
            if np.isfinite(draw).any():
                bss.append(bs)
                best.append(np.nanmin(draw))
        b_crit = fit(bss, best).b_crit
        values[i] = b_crit if math.isfinite(b_crit) else math.inf
    lo, hi = np.quantile(values, [(1 - level) / 2, 1 - (1 - level) / 2], method="inverted_cdf")  # no interpolation with inf
    return float(lo), float(hi)


# ---------------------------------------------------------------------------------------------- a study from MLflow
FIT_COLUMNS = ["target", "s_min", "e_min", "b_crit", "b_crit_lo", "b_crit_hi", "b_simple_start", "b_simple_at_target"]


@dataclass(frozen=True)
class Study:
    """One steps-to-target study (a sweeps.scaling sweep) as data frames."""

    name: str
    targets: list[float]
    trials: pd.DataFrame  # one row per trial: run_id, batch_size, lr, momentum, status, best_val_acc, ...
    history: pd.DataFrame  # run_id, step (optimizer step), val_acc: every evaluation
    epochs: pd.DataFrame  # run_id, epoch, steps (optimizer steps at its end), gns (NaN where not probed)


def load_study(tracking_uri: str | None, name: str | None = None) -> Study:
    """The study ``name`` (default: the latest) of MLflow experiment bigbatch-scaling: its trials, every
    evaluation (``val_acc_at_step``) and per epoch the steps and the gradient noise scale."""
    import json

    from bigbatch.schema import ROLE_SWEEP, STEP_EVAL_METRIC, default_tracking_uri

    from .runs import AnalysisError, load_history, load_runs

    uri = tracking_uri or default_tracking_uri()
    runs = load_runs(uri, experiments=["scaling"], include_parents=True)
    parents = runs[runs["role"] == ROLE_SWEEP].sort_values("start_time")
    if not len(parents):
        raise AnalysisError(f"no steps-to-target study in {uri} (MLflow experiment bigbatch-scaling; run python -m sweeps.scaling)")
    if name is None:
        parent = parents.iloc[-1]
    else:
        match = parents[parents["run_name"] == name]
        if not len(match):
            raise AnalysisError(f"no study named {name!r} in {uri} (have: {', '.join(parents['run_name'].astype(str))})")
        parent = match.iloc[-1]
    targets = [float(t) for t in json.loads(str(parent["targets"]))]
    trials = runs[(runs["role"] != ROLE_SWEEP) & (runs["parent_run_id"] == parent["run_id"])].copy()
    if not len(trials):
        raise AnalysisError(f"study {parent['run_name']!r} in {uri} has no trial runs yet")
    if "momentum" not in trials:
        trials["momentum"] = 0.0
    ids = trials["run_id"].tolist()
    evals = load_history(uri, ids, (STEP_EVAL_METRIC,)).rename(columns={"value": "val_acc"})[["run_id", "step", "val_acc"]]
    per_epoch = load_history(uri, ids, ("steps", "gns"))
    epochs = (per_epoch.pivot_table(index=["run_id", "step"], columns="metric", values="value").reset_index()
              .rename(columns={"step": "epoch"}))
    for col in ("steps", "gns"):
        if col not in epochs:
            epochs[col] = math.nan
    keep = ["run_id", "batch_size", "lr", "momentum", "status", "best_val_acc", "test_acc", "train_seconds", "total_epochs"]
    return Study(str(parent["run_name"]), targets, trials[keep].reset_index(drop=True), evals, epochs[["run_id", "epoch", "steps", "gns"]])


def noise_scale_at(epochs: pd.DataFrame, run_id: str, steps: float | None) -> float:
    """B_simple of a run: its first probe (``steps`` None), or its last probe at or before ``steps`` (the first
    if none is before). NaN when the run has no probe."""
    probes = epochs[(epochs["run_id"] == run_id) & epochs["gns"].notna()].sort_values("epoch")
    if not len(probes):
        return math.nan
    if steps is None or not math.isfinite(steps):
        return float(probes["gns"].iloc[0])
    before = probes[probes["steps"] <= steps]
    return float((before if len(before) else probes)["gns"].iloc[-1 if len(before) else 0])


def study_tables(study: Study, n_boot: int = 1000) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(steps_to_target.csv, fit.csv): the best steps per target and batch size; per target the fit, the
    bootstrap interval of B_crit and the median B_simple of the best trials (at their first probe, and at the
    last probe before they reached the target)."""
    best = best_trials(study.trials, study.history, study.targets)
    rows = []
    for target in study.targets:
        pts = best[best["target"] == target]
        f = fit(pts["batch_size"], pts["steps"])
        lo, hi = bootstrap(study.trials, study.history, target, n=n_boot) if f.n_points >= 2 else (math.nan, math.nan)
        reached = pts.dropna(subset=["steps"])
        start = [noise_scale_at(study.epochs, r, None) for r in reached["run_id"]]
        at = [noise_scale_at(study.epochs, r, s) for r, s in zip(reached["run_id"], reached["steps"])]
        med = lambda v: float(np.nanmedian(v)) if np.isfinite(v).any() else math.nan  # noqa: E731
        rows.append({"target": target, "s_min": f.s_min, "e_min": f.e_min, "b_crit": f.b_crit, "b_crit_lo": lo,
                     "b_crit_hi": hi, "b_simple_start": med(np.array(start, dtype=float)),
                     "b_simple_at_target": med(np.array(at, dtype=float))})
    steps = best[STEPS_COLUMNS]
    return steps, pd.DataFrame(rows, columns=FIT_COLUMNS)


# ---------------------------------------------------------------------------------------------- figures
def _target_figure(steps: pd.DataFrame):
    """(fig, ax, batch sizes, one colour per target) of a per-target figure against the batch size."""
    from .plotting import plt

    fig, ax = plt.subplots(figsize=(6.4, 4.6))
    colors = plt.get_cmap("plasma")(np.linspace(0.1, 0.8, max(1, steps["target"].nunique())))
    return fig, ax, sorted(steps["batch_size"].unique()), colors


def _has_positive_y(ax) -> bool:
    """Whether any line on ``ax`` has a finite y > 0 (else a log y axis has no range)."""
    for line in ax.get_lines():
        y = np.asarray(line.get_ydata(), dtype=float)
        if np.any(np.isfinite(y) & (y > 0)):
            return True
    return False


def _save(fig, ax, path, ylabel: str, bss=None) -> None:
    """Labels, legend and grid, then the PNG (a log2 batch-size x axis when ``bss`` is given)."""
    from .plotting import DPI, log2_axis, plt

    if bss is not None:
        log2_axis(ax, bss)
        ax.set_xlabel("batch size")
    ax.set_ylabel(ylabel)
    if ax.get_yscale() == "log" and not _has_positive_y(ax):  # nothing reached: an empty log axis cannot be laid out
        ax.set_ylim(1, 2)
        ax.text(0.5, 0.5, "nothing to plot (no target reached?)", transform=ax.transAxes, ha="center", va="center", color="grey")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)


def plot_steps(steps: pd.DataFrame, fits: pd.DataFrame, path) -> None:
    """Steps to target vs batch size, log2-log2, one line per target, its fit dashed, perfect scaling dotted."""
    fig, ax, bss, colors = _target_figure(steps)
    for color, (target, g) in zip(colors, steps.groupby("target", sort=True)):
        g = g.sort_values("batch_size")
        ax.plot(g["batch_size"], g["steps"], "o-", color=color, label=f"{target:g}% val.")
        f = fits[fits["target"] == target].iloc[0]
        if math.isfinite(f["s_min"]) and math.isfinite(f["e_min"]):
            b = np.geomspace(min(bss), max(bss), 50)
            s = f["s_min"] + f["e_min"] / b
            ok = s > 0
            label = f"fit: B_crit {f['b_crit']:.0f}" if math.isfinite(f["b_crit"]) else "fit (no saturation)"
            ax.plot(b[ok], s[ok], "--", color=color, alpha=0.7, label=label)
        reached = g.dropna(subset=["steps"])
        if len(reached):
            b0, s0 = reached["batch_size"].iloc[0], reached["steps"].iloc[0]
            ax.plot(bss, [s0 * b0 / b for b in bss], ":", color=color, alpha=0.5)
    ax.plot([], [], ":", color="grey", label="perfect scaling (steps halve)")
    ax.set_yscale("log", base=2)
    _save(fig, ax, path, "optimizer steps to the target (best lr)", bss)


def plot_best_lr(steps: pd.DataFrame, path, base_batch_size: int | None = None) -> None:
    """The best lr per batch size and target, with eq. 1's linear and the sqrt rule from the smallest batch."""
    fig, ax, bss, colors = _target_figure(steps)
    anchor = None
    for color, (target, g) in zip(colors, steps.groupby("target", sort=True)):
        g = g.sort_values("batch_size").dropna(subset=["best_lr"])
        ax.plot(g["batch_size"], g["best_lr"], "o-", color=color, label=f"{target:g}% val.")
        if anchor is None and len(g):
            anchor = (g["batch_size"].iloc[0], g["best_lr"].iloc[0])
    if anchor is not None:
        b0, lr0 = anchor
        b = np.array(bss, dtype=float)
        ax.plot(b, lr0 * b / b0, "k--", alpha=0.6, label="linear (eq. 1)")
        ax.plot(b, lr0 * np.sqrt(b / b0), "k:", alpha=0.6, label="sqrt")
    ax.set_yscale("log")
    _save(fig, ax, path, "lr of the fewest steps", bss)


def plot_bcrit(fits: pd.DataFrame, path) -> None:
    """B_crit (bootstrap interval) and B_simple (first probe, at the target) per target."""
    from .plotting import plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    x = np.arange(len(fits))
    b = fits["b_crit"].to_numpy(float)
    lo, hi = fits["b_crit_lo"].to_numpy(float), fits["b_crit_hi"].to_numpy(float)
    top = np.nanmax(np.concatenate([b, fits["b_simple_start"], fits["b_simple_at_target"], lo[np.isfinite(lo)], [1.0]]))
    cap = top * 4
    for i in range(len(fits)):
        if math.isfinite(b[i]):
            ax.plot(x[i], b[i], "o", color="C0")
        if math.isfinite(lo[i]):
            ax.plot([x[i], x[i]], [lo[i], min(hi[i], cap)], "-", color="C0", alpha=0.6)
            if not math.isfinite(hi[i]) or hi[i] > cap:
                ax.annotate("to inf", (x[i], cap), ha="center", va="bottom", fontsize=7, color="C0")
    ax.plot([], [], "o-", color="C0", label="B_crit (fit; 95% bootstrap)")
    ax.plot(x - 0.1, fits["b_simple_start"], "s", color="C1", label="B_simple, first probe")
    ax.plot(x + 0.1, fits["b_simple_at_target"], "^", color="C2", label="B_simple, at the target")
    ax.set_xticks(x)
    ax.set_xticklabels([f"{t:g}%" for t in fits["target"]])
    ax.set_yscale("log", base=2)
    ax.set_xlabel("validation target")
    _save(fig, ax, path, "batch size")


# ---------------------------------------------------------------------------------------------- report section
def _num(v, fmt: str = "{:.0f}") -> str:
    return fmt.format(v) if v is not None and isinstance(v, (int, float, np.floating)) and math.isfinite(v) else "-"


def section_markdown(study: Study, steps: pd.DataFrame, fits: pd.DataFrame, figures: dict[str, str]) -> str:
    """The report section: what was run, steps to target per batch size, the fit and B_crit, the figures."""
    t = study.trials
    md = ["## Steps to a target against the batch size (the critical batch size)\n",
          f"Study `{study.name}`: {len(t)} trials, {t['batch_size'].nunique()} batch sizes, the lr searched per batch "
          f"size (quasi-random, log scale); targets {', '.join(f'{x:g}%' for x in study.targets)} validation accuracy. "
          "A trial's steps to a target: its first evaluated step at or above it; the best of a batch size: the fewest "
          "over its trials (not reached: '-'). Fit: S = S_min + E_min / B, B_crit = E_min / S_min "
          "(McCandlish et al. 2018), the interval a 95% bootstrap over the trials of each batch size.\n"]
    bss = sorted(steps["batch_size"].unique())
    rows = ["| target | " + " | ".join(f"bs {b}" for b in bss) + " |", "| --- |" + " --- |" * len(bss)]
    for target, g in steps.groupby("target", sort=True):
        cells = []
        for b in bss:
            r = g[g["batch_size"] == b].iloc[0]
            cells.append(f"{_num(r['steps'])} (lr {r['best_lr']:.3g}; {int(r['n_reached'])}/{int(r['n_trials'])})"
                         if math.isfinite(r["steps"]) else f"- (0/{int(r['n_trials'])})")
        rows.append(f"| {target:g}% | " + " | ".join(cells) + " |")
    md += ["Steps to target (best lr; trials that reached it / trials):\n", "\n".join(rows), ""]
    rows = ["| target | S_min | E_min | B_crit | 95% interval | B_simple (first probe) | B_simple (at target) |",
            "| --- | --- | --- | --- | --- | --- | --- |"]
    for f in fits.itertuples():
        hi = "inf" if math.isinf(f.b_crit_hi) else _num(f.b_crit_hi)
        rows.append(f"| {f.target:g}% | {_num(f.s_min)} | {_num(f.e_min)} | {_num(f.b_crit)} | {_num(f.b_crit_lo)} .. {hi} "
                    f"| {_num(f.b_simple_start)} | {_num(f.b_simple_at_target)} |")
    md += ["The fit per target:\n", "\n".join(rows), ""]
    for title, rel in figures.items():
        md.append(f"![{title}]({rel})\n")
    return "\n".join(md)


def study_section(study: Study, out_dir, n_boot: int = 1000, prefix: str = "") -> tuple[pd.DataFrame, pd.DataFrame, str]:
    """(steps, fits, the report section's Markdown), the section's three figures written into
    ``out_dir/figures/`` (names ``<prefix>steps_to_target.png``, ...; the section links them relatively)."""
    from pathlib import Path

    steps, fits = study_tables(study, n_boot)
    figdir = Path(out_dir) / "figures"
    figdir.mkdir(parents=True, exist_ok=True)
    figures = {"steps to target vs batch size": f"figures/{prefix}steps_to_target.png",
               "best lr vs batch size": f"figures/{prefix}best_lr.png",
               "B_crit and B_simple per target": f"figures/{prefix}b_crit.png"}
    plot_steps(steps, fits, Path(out_dir) / figures["steps to target vs batch size"])
    plot_best_lr(steps, Path(out_dir) / figures["best lr vs batch size"])
    plot_bcrit(fits, Path(out_dir) / figures["B_crit and B_simple per target"])
    return steps, fits, section_markdown(study, steps, fits, figures)


def write_study(tracking_uri: str | None, out_dir, name: str | None = None, n_boot: int = 1000) -> Study:
    """steps_to_target.csv, fit.csv, the three figures and scaling.md (+ .html) into ``out_dir``."""
    from pathlib import Path

    from .report import to_html

    study = load_study(tracking_uri, name)
    out = Path(out_dir)
    steps, fits, section = study_section(study, out, n_boot)
    steps.to_csv(out / "steps_to_target.csv", index=False)
    fits.to_csv(out / "fit.csv", index=False)
    text = "# bigbatch: the steps-to-target study\n\n" + section
    (out / "scaling.md").write_text(text)
    (out / "scaling.html").write_text(to_html(text, title="bigbatch: steps to target"))
    return study


def main(argv=None) -> int:
    from bigbatch.config import OneLineArgumentParser

    from .cli import run_cli

    p = OneLineArgumentParser(prog="python -m analysis.scaling",
                              description="The steps-to-target study (sweeps.scaling) from MLflow: steps_to_target.csv, "
                                          "fit.csv, figures and scaling.md/.html. See docs/analysis.md.")
    p.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default sqlite:///<cwd>/mlflow.db)")
    p.add_argument("--name", default=None, help="the study (sweep) name (default: the latest)")
    p.add_argument("--out", default="scaling", help="output folder (default ./scaling)")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for B_crit's interval (default 1000)")
    args = p.parse_args(argv)

    def body() -> None:
        study = write_study(args.tracking_uri, args.out, args.name, args.bootstrap)
        print(f"wrote {args.out}/steps_to_target.csv, fit.csv, figures/, scaling.md ({study.name}: {len(study.trials)} trials)")

    return run_cli(body)


if __name__ == "__main__":
    import sys

    sys.exit(main())
