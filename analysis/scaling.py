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


def best_steps(trials: pd.DataFrame, history: pd.DataFrame, targets: list[float]) -> pd.DataFrame:
    """Per target and batch size: the best steps over the trials, the lr of that trial, the examples
    (steps x batch size), the trials run and the trials that reached the target (STEPS_COLUMNS).

    ``trials``: one row per trial, columns run_id, batch_size, lr. Ties in steps go to the smaller lr. A batch
    size none of whose trials reached the target has steps, examples and best_lr NaN (it is not dropped)."""
    rows = []
    for target in targets:
        steps = steps_to_target(history, target)
        t = trials.assign(steps=trials["run_id"].map(steps))
        for bs, g in t.groupby("batch_size", sort=True):
            reached = g.dropna(subset=["steps"])
            best = reached.sort_values(["steps", "lr"], kind="stable").iloc[0] if len(reached) else None
            s = float(best["steps"]) if best is not None else math.nan
            rows.append({"target": target, "batch_size": int(bs), "best_lr": float(best["lr"]) if best is not None else math.nan,
                         "steps": s, "examples": s * int(bs), "n_trials": len(g), "n_reached": len(reached)})
    return pd.DataFrame(rows, columns=STEPS_COLUMNS)


@dataclass(frozen=True)
class Fit:
    s_min: float  # steps at an infinite batch (the intercept)
    e_min: float  # examples at batch size 1 (the slope in 1/B)
    n_points: int
    scale: float = 1.0  # the largest steps fitted: an S_min below 1e-9 of it is zero (float noise, no saturation)

    @property
    def b_crit(self) -> float:
        """E_min / S_min; NaN when the fit cannot say (fewer than 2 points, or S_min <= 0: no saturation seen)."""
        if self.n_points < 2 or not self.s_min > 1e-9 * self.scale or not math.isfinite(self.e_min):
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
