"""analysis.scaling: steps to target and the S = S_min + E_min / B fit, on points made with known values."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from analysis.scaling import best_steps, bootstrap, fit, steps_to_target

BATCH_SIZES = [32, 64, 128, 256, 512, 1024]

# (S_min, B_crit, relative noise) -> the fit recovers both within the tolerance
FIT_CASES = [
    (100.0, 256.0, 0.0, 1e-9),
    (40.0, 64.0, 0.0, 1e-9),
    (500.0, 2048.0, 0.0, 1e-9),  # B_crit beyond the largest batch size: still linear in 1/B
    (100.0, 256.0, 0.05, 0.25),  # 5 % noise on every point: within 25 %
    (80.0, 128.0, 0.10, 0.40),
]


def curve(s_min: float, b_crit: float, bss=BATCH_SIZES) -> np.ndarray:
    return s_min * (1 + b_crit / np.asarray(bss, dtype=float))


@pytest.mark.parametrize("s_min,b_crit,noise,tol", FIT_CASES)
def test_the_fit_recovers_s_min_and_b_crit(s_min, b_crit, noise, tol):
    rng = np.random.default_rng(7)
    s = curve(s_min, b_crit) * (1 + noise * rng.standard_normal(len(BATCH_SIZES)))
    f = fit(BATCH_SIZES, s)
    assert f.s_min == pytest.approx(s_min, rel=tol)
    assert f.b_crit == pytest.approx(b_crit, rel=tol)
    assert f.e_min == pytest.approx(s_min * b_crit, rel=tol)
    assert f.n_points == len(BATCH_SIZES)


@pytest.mark.parametrize("bss,steps,why", [
    ([32], [100.0], "one point"),
    ([32, 32], [100.0, 90.0], "one batch size"),
    ([32, 64, 128], [math.nan, math.nan, 10.0], "one finite point"),
    ([32, 64, 128], [400.0, 200.0, 100.0], "perfect scaling all the way: S_min = 0, no saturation seen"),
    ([32, 64], [1.0, 3.0], "steps that grow with the batch size: E_min < 0, no B_crit (not a negative one)"),
])
def test_a_b_crit_the_points_cannot_give_is_nan(bss, steps, why):
    assert math.isnan(fit(bss, steps).b_crit), why


def _history(runs: dict[str, list[tuple[int, float]]]) -> pd.DataFrame:
    return pd.DataFrame([(r, s, a) for r, evals in runs.items() for s, a in evals], columns=["run_id", "step", "val_acc"])


@pytest.mark.parametrize("target,expected", [
    (50.0, {"a": 20, "b": 10, "c": math.nan}),
    (70.0, {"a": 30, "b": math.nan, "c": math.nan}),  # b goes up to 60 and back: not reached
    (10.0, {"a": 10, "b": 10, "c": math.nan}),
    (60.0, {"a": 20, "b": 20, "c": math.nan}),  # == target counts: the first evaluation at or above it
])
def test_steps_to_target_is_the_first_evaluation_that_reaches_it(target, expected):
    h = _history({"a": [(10, 40.0), (20, 60.0), (30, 80.0)], "b": [(10, 55.0), (20, 60.0), (30, 50.0)],
                  "c": [(10, 5.0), (20, 6.0)]})
    got = steps_to_target(h.sample(frac=1.0, random_state=1), target).to_dict()  # evaluation order does not matter
    assert got.keys() == expected.keys()
    for run, value in expected.items():
        assert (math.isnan(got[run]) and math.isnan(value)) or got[run] == value, (run, got[run])


def test_best_steps_keeps_trials_that_never_reach_the_target():
    trials = pd.DataFrame({"run_id": ["a", "b", "c", "d"], "batch_size": [32, 32, 64, 64], "lr": [0.1, 0.03, 0.1, 0.3]})
    h = _history({"a": [(100, 50.0), (200, 75.0)], "b": [(100, 71.0)], "c": [(50, 60.0)], "d": [(50, 65.0)]})
    out = best_steps(trials, h, [70.0]).set_index("batch_size")
    assert list(out.columns) == ["target", "best_lr", "steps", "examples", "n_trials", "n_reached"]
    assert out.loc[32, "steps"] == 100 and out.loc[32, "best_lr"] == 0.03 and out.loc[32, "examples"] == 3200
    assert (out.loc[32, "n_trials"], out.loc[32, "n_reached"]) == (2, 2)
    assert math.isnan(out.loc[64, "steps"]) and (out.loc[64, "n_trials"], out.loc[64, "n_reached"]) == (2, 0)


def test_the_bootstrap_interval_covers_the_true_b_crit_and_widens_with_noise():
    rng = np.random.default_rng(3)
    s_min, b_crit = 100.0, 256.0

    def trials_of(noise: float):
        rows, evals = [], {}
        for bs, s in zip(BATCH_SIZES, curve(s_min, b_crit)):
            for k in range(6):
                run = f"{bs}-{k}"
                rows.append((run, bs, 0.1 * (k + 1)))
                evals[run] = [(int(round(s * (1 + abs(noise * rng.standard_normal())))), 80.0)]  # best is closest to the curve
        return pd.DataFrame(rows, columns=["run_id", "batch_size", "lr"]), _history(evals)

    narrow = bootstrap(*trials_of(0.02), target=75.0, n=300)
    wide = bootstrap(*trials_of(0.30), target=75.0, n=300)
    assert narrow[0] <= b_crit * 1.05 and narrow[1] >= b_crit * 0.95
    assert narrow[1] - narrow[0] < wide[1] - wide[0]


def test_the_bootstrap_says_inf_when_the_data_cannot_pin_b_crit():
    trials = pd.DataFrame({"run_id": ["a", "b"], "batch_size": [32, 64], "lr": [0.1, 0.1]})
    h = _history({"a": [(400, 80.0)], "b": [(200, 80.0)]})  # perfect scaling: S_min = 0
    lo, hi = bootstrap(trials, h, target=75.0, n=50)
    assert math.isinf(hi)
