"""The steps-to-target study (issue 21): the step cadence, the stopper, resume, the QMC points, the analysis
of a study from frames with known values, and the command end to end on synthetic data."""
import json
import math

import numpy as np
import pandas as pd
import pytest
import torch

from analysis import scaling as an
from bigbatch.config import ConfigError, RunConfig
from bigbatch.schedules import eval_steps
from bigbatch.train import CHECKPOINT, train
import bigbatch.train as train_module
from sweeps.search import StepsToTarget, log_between, qmc_unit_points

# learns a little in 3 epochs (validation 10% -> ~35%), new best accuracies inside epochs: seconds per run
TINY = dict(dataset="synthetic", synthetic_size=768, val_size=128, width_mult=0.125, batch_size=32, epochs=3,
            eval_batch_size=256, seed=0, device="cpu", lr=0.2, norm="ghost", virtual_batch_size=16,
            gns_images=0, sharpness_images=0)
SPE = (768 - 128) // 32  # 20 optimizer steps per epoch


# ---------------------------------------------------------------------------------------------- the cadence
@pytest.mark.parametrize("ratio,total,expected", [
    (0, 100, []),                                  # off
    (1.1, 0, []),                                  # nothing to evaluate
    (1.1, 1, [1]),
    (1.1, 12, [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]),  # +1 while ceil(s x 1.1) <= s + 1 (s <= 10) ...
    (1.1, 13, [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13]),  # ... then ceil(11 x 1.1) = 13
    (2.0, 16, [1, 2, 4, 8, 16]),                   # exact products stay exact (no float overshoot)
    (2.0, 15, [1, 2, 4, 8]),                       # the cap itself need not be a step of the cadence
    (1.5, 10, [1, 2, 3, 5, 8]),
])
def test_eval_steps(ratio, total, expected):
    assert eval_steps(ratio, total) == expected


def test_eval_steps_resolve_within_the_ratio():
    steps = eval_steps(1.1, 10_000)
    assert steps[0] == 1 and steps[-1] <= 10_000 and len(steps) == 78  # 78 evaluations over 10,000 steps
    for a, b in zip(steps, steps[1:]):
        assert b - a >= 1 and b <= max(a + 1, math.ceil(a * 1.1))  # the next one within 10 % (or the next step)


@pytest.mark.parametrize("bad", [1.0, 0.5, -2.0, float("nan"), float("inf")])
def test_step_eval_ratio_must_be_off_or_above_one(bad):
    with pytest.raises(ConfigError, match="step_eval_ratio"):
        RunConfig(step_eval_ratio=bad)


@pytest.mark.parametrize("bad", [-1.0, 100.5])
def test_stop_at_val_acc_is_an_accuracy(bad):
    with pytest.raises(ConfigError, match="stop_at_val_acc"):
        RunConfig(stop_at_val_acc=bad)


# ---------------------------------------------------------------------------------------------- the trainer
def _evals(summary):
    return [tuple(e) for m in summary["history"] for e in m.get("step_evals", [])]


@pytest.fixture(scope="module")
def plain_and_evaluated():
    plain = train(RunConfig(**TINY))
    evaluated = train(RunConfig(**TINY, step_eval_ratio=1.1))
    return plain, evaluated


def test_step_evaluations_do_not_change_training(plain_and_evaluated):
    plain, evaluated = plain_and_evaluated
    for key in ("train_loss", "train_acc", "val_acc", "val_loss"):
        assert [m[key] for m in plain["history"]] == [m[key] for m in evaluated["history"]], key
    assert plain["test_acc"] == evaluated["test_acc"] and plain["test_loss"] == evaluated["test_loss"]


def test_step_evaluations_follow_the_cadence_and_include_each_epoch_end(plain_and_evaluated):
    _, evaluated = plain_and_evaluated
    steps = [s for s, _ in _evals(evaluated)]
    assert steps == sorted(set(eval_steps(1.1, 3 * SPE)) | {SPE, 2 * SPE, 3 * SPE})
    ends = {s: a for s, a in _evals(evaluated) if s % SPE == 0}
    assert [ends[SPE * (i + 1)] for i in range(3)] == [m["val_acc"] for m in evaluated["history"]]  # the epoch's own
    assert [m["steps"] for m in evaluated["history"]] == [SPE, 2 * SPE, 3 * SPE]


def _first_reach(evals, target):
    return next(s for s, a in evals if a >= target)


def test_stops_at_the_first_evaluation_that_reaches_the_target(plain_and_evaluated, monkeypatch):
    _, evaluated = plain_and_evaluated
    evals = _evals(evaluated)
    # a target first reached strictly inside an epoch (not at its end), after the first evaluation
    target, step = next((a, s) for s, a in evals[1:] if s % SPE and all(b < a for t, b in evals if t < s))
    passes = []  # every pass over the validation set
    real = train_module.evaluate
    monkeypatch.setattr(train_module, "evaluate", lambda run, ds, **kw: (passes.append(ds is run.data.val), real(run, ds, **kw))[1])
    stopped = train(RunConfig(**TINY, step_eval_ratio=1.1, stop_at_val_acc=target))
    assert stopped["status"] == "reached"
    assert _evals(stopped) == [e for e in evals if e[0] <= step]  # the same evaluations up to it, none after
    assert stopped["history"][-1]["steps"] == step and stopped["epochs_run"] == math.ceil(step / SPE)
    assert stopped["best_val_acc"] >= target
    assert stopped["history"][-1]["val_acc"] == target  # the epoch's record is the evaluation that reached it ...
    assert sum(passes) == len(_evals(stopped))  # ... not a second pass over the same model


def test_a_target_never_reached_trains_to_the_cap(plain_and_evaluated):
    _, evaluated = plain_and_evaluated
    capped = train(RunConfig(**TINY, step_eval_ratio=1.1, stop_at_val_acc=100.0))
    assert capped["status"] == "completed" and capped["epochs_run"] == 3 and _evals(capped) == _evals(evaluated)


class Die(Exception):
    pass


def test_resume_counts_the_same_steps(tmp_path, plain_and_evaluated):
    _, evaluated = plain_and_evaluated
    evals = _evals(evaluated)
    late = [(s, a) for s, a in evals if s > SPE and all(b < a for t, b in evals if t < s)]
    if not late:
        pytest.skip("no new best accuracy after epoch 1 in this tiny run")  # the data decide; never faked
    target, step = late[0][1], late[0][0]
    cfg = RunConfig(**TINY, step_eval_ratio=1.1, stop_at_val_acc=target)
    whole = train(cfg)

    def die_after_1(m):
        if m["epoch"] == 1:
            raise Die  # epoch 1's checkpoint is on disk

    with pytest.raises(Die):
        train(cfg, report=die_after_1, checkpoint_dir=tmp_path)
    assert (tmp_path / CHECKPOINT).exists()
    resumed = train(cfg, checkpoint_dir=tmp_path)
    assert resumed["status"] == whole["status"] == "reached"
    assert resumed["history"][-1]["steps"] == whole["history"][-1]["steps"] == step
    assert _evals(resumed) == _evals(whole)
    saved = torch.load(tmp_path / CHECKPOINT, weights_only=True)
    assert saved["epoch"] == math.ceil(step / SPE) - 1  # the partial epoch of the stop is never checkpointed


# ---------------------------------------------------------------------------------------------- the search kind
def test_qmc_points_are_seeded_spread_and_shared_by_every_batch_size():
    u = qmc_unit_points(8, 1, seed=0)
    assert u == qmc_unit_points(8, 1, seed=0) and u != qmc_unit_points(8, 1, seed=1)
    xs = sorted(p[0] for p in u[1:])  # the Sobol part (the first is Optuna's independent draw)
    assert all(0 <= x < 1 for x in xs) and max(np.diff([0, *xs, 1])) <= 0.3  # no gap above 0.3 of the range
    kind = StepsToTarget(num_samples=8, lr_min=0.01, lr_max=0.5)
    small, large = kind.points(32), kind.points(1024)
    lo, hi = kind.lr_range(1024)
    assert (lo, hi) == pytest.approx((0.01 * math.sqrt(32), 0.5 * 32))
    for p, q, (x,) in zip(small, large, u):
        assert p["lr"] == pytest.approx(log_between(x, 0.01, 0.5), rel=1e-5)
        assert q["lr"] == pytest.approx(log_between(x, lo, hi), rel=1e-5)


def test_momentum_is_searched_on_a_log_scale_of_one_minus_it():
    pts = StepsToTarget(num_samples=6, search_momentum=True).points(64)
    assert all(0.0 <= p["momentum"] <= 0.99 for p in pts) and len({p["momentum"] for p in pts}) == 6


@pytest.mark.parametrize("kw,match", [
    ({"targets": ()}, "--targets"), ({"targets": (0.0,)}, "--targets"), ({"targets": (101.0,)}, "--targets"),
    ({"lr_min": 0.5, "lr_max": 0.1}, "--lr-min"), ({"num_samples": 0}, "--trials-per-batch-size"),
    ({"step_eval_ratio": 1.0}, "--step-eval-ratio"), ({"lr_bounds": "linear"}, "--lr-bounds"),
])
def test_bad_study_options_are_one_line_errors(kw, match):
    with pytest.raises(ConfigError, match=match):
        StepsToTarget(**kw).check()


def test_kind_survives_json():
    from sweeps.search import kind_from_json

    kind = StepsToTarget(targets=(60.0, 70.0), num_samples=3, search_momentum=True)
    assert kind_from_json(json.loads(json.dumps(kind.to_json()))) == kind


# ---------------------------------------------------------------------------------------------- the analysis
def _study(targets=(50.0,)):
    """Two batch sizes x two trials with known evaluations; gns probed at epochs 1 and 2."""
    trials = pd.DataFrame({"run_id": ["a", "b", "c", "d"], "batch_size": [32, 32, 64, 64], "lr": [0.1, 0.2, 0.2, 0.4],
                           "momentum": 0.0, "status": ["reached", "completed", "reached", "reached"]})
    history = pd.DataFrame({"run_id": ["a", "a", "b", "c", "c", "d"], "step": [10, 40, 40, 5, 20, 30],
                            "val_acc": [20.0, 55.0, 30.0, 40.0, 60.0, 51.0]})
    epochs = pd.DataFrame({"run_id": ["a", "a", "c", "c", "d"], "epoch": [1, 2, 1, 2, 1], "steps": [16, 32, 8, 16, 8],
                           "gns": [100.0, 200.0, 300.0, 400.0, 50.0]})
    return an.Study("s", list(targets), trials, history, epochs)


def test_study_tables_pick_the_fewest_steps_and_keep_the_unreached():
    steps, fits = an.study_tables(_study((50.0, 99.0)), n_boot=50)
    assert list(steps.columns) == an.STEPS_COLUMNS and list(fits.columns) == an.FIT_COLUMNS
    row = steps[(steps.target == 50.0)].set_index("batch_size")
    assert row.loc[32, "steps"] == 40 and row.loc[32, "best_lr"] == 0.1 and row.loc[32, "n_reached"] == 1
    assert row.loc[64, "steps"] == 20 and row.loc[64, "best_lr"] == 0.2 and row.loc[64, "examples"] == 20 * 64
    never = steps[steps.target == 99.0]
    assert never["steps"].isna().all() and list(never["n_trials"]) == [2, 2] and list(never["n_reached"]) == [0, 0]
    # perfect scaling between the two points: S = 0 + 1280 / B -> S_min 0, no B_crit
    f = fits.set_index("target").loc[50.0]
    assert f["s_min"] == pytest.approx(0.0, abs=1e-9) and f["e_min"] == pytest.approx(1280.0) and math.isnan(f["b_crit"])
    # B_simple of the best trials (a at bs 32, c at bs 64): first probes 100, 300; at the target (a: step 40 -> its
    # last probe, epoch 2's 200; c: step 20 -> epoch 2 at 16 steps, 400): medians 200 and 300
    assert f["b_simple_start"] == pytest.approx(200.0) and f["b_simple_at_target"] == pytest.approx(300.0)
    assert math.isnan(fits.set_index("target").loc[99.0, "b_crit"])


def test_figures_of_a_study_that_reached_nothing(tmp_path):
    """A target no trial reached leaves every value NaN: the three figures are still written (an empty log axis
    once failed the whole study's analysis in CI)."""
    steps, fits, section = an.study_section(_study((99.0,)), tmp_path, n_boot=20)
    assert steps["steps"].isna().all() and fits["b_crit"].isna().all() and fits["b_simple_start"].isna().all()
    for f in ("steps_to_target.png", "best_lr.png", "b_crit.png"):
        assert (tmp_path / "figures" / f).stat().st_size > 1000
    assert "Steps to a target" in section


@pytest.mark.parametrize("steps,expected", [(None, 100.0), (15, 100.0), (16, 100.0), (31, 100.0), (32, 200.0), (1000, 200.0),
                                            (3, 100.0)])
def test_noise_scale_at(steps, expected):
    assert an.noise_scale_at(_study().epochs, "a", steps) == expected


def test_noise_scale_of_a_run_without_probes_is_nan():
    assert math.isnan(an.noise_scale_at(_study().epochs, "b", 10))


# ---------------------------------------------------------------------------------------------- end to end
@pytest.mark.slow
def test_smoke_study_end_to_end(tmp_path):
    """python -m sweeps.scaling --smoke-test --out: Ray trials on synthetic data, MLflow evaluations per step,
    the analysis into both CSVs, the figures and the section; then --resume of the finished study runs nothing."""
    from mlflow.tracking import MlflowClient

    from bigbatch.schema import SCALING_EXPERIMENT, STEP_EVAL_METRIC
    from sweeps import scaling

    out = tmp_path / "study"
    argv = ["--smoke-test", "--out", str(out), "--num-cpus", "2", "--quiet", "--targets", "12", "99",
            "--name", "smoke-study"]
    assert scaling.main(argv) == 0
    steps = pd.read_csv(out / "scaling" / "steps_to_target.csv")
    fits = pd.read_csv(out / "scaling" / "fit.csv")
    assert list(steps.columns) == ["target", "batch_size", "best_lr", "steps", "examples", "n_trials", "n_reached"]
    assert list(fits.columns) == ["target", "s_min", "e_min", "b_crit", "b_crit_lo", "b_crit_hi", "b_simple_start",
                                  "b_simple_at_target"]
    assert sorted(steps["batch_size"].unique()) == [32, 64] and set(steps["target"]) == {12.0, 99.0}
    assert (steps["n_trials"] == 2).all()
    assert (steps.loc[steps.target == 99.0, "n_reached"] == 0).all()  # not reached: kept, with no steps
    assert steps.loc[steps.target == 99.0, "steps"].isna().all()
    for f in ("steps_to_target.png", "best_lr.png", "b_crit.png"):
        assert (out / "scaling" / "figures" / f).stat().st_size > 1000
    assert "Steps to a target" in (out / "scaling" / "scaling.md").read_text()
    client = MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    exp = client.get_experiment_by_name(SCALING_EXPERIMENT)
    runs = [r for r in client.search_runs([exp.experiment_id]) if "batch_size" in r.data.params]
    assert len(runs) == 4 and all(r.data.params["lr_scaling"] == "none" for r in runs)
    assert {r.data.params["stop_at_val_acc"] for r in runs} == {"99.0"}
    hist = client.get_metric_history(runs[0].info.run_id, STEP_EVAL_METRIC)
    assert [m.step for m in hist][:3] == [1, 2, 3]
    kind = StepsToTarget(targets=(12.0, 99.0), num_samples=2)
    for bs in (32, 64):  # the trials ran the kind's quasi-random lrs at each batch size
        ran = sorted(float(r.data.params["lr"]) for r in runs if r.data.params["batch_size"] == str(bs))
        assert ran == sorted(p["lr"] for p in kind.points(bs))
    # the same command with --resume (as the docs say; without --smoke-test it would look for the mini preset's data)
    assert scaling.main([*argv, "--resume", "--no-analysis"]) == 0
    assert len([r for r in client.search_runs([exp.experiment_id]) if "batch_size" in r.data.params]) == 4


@pytest.mark.parametrize("argv,match", [
    (["--targets", "0"], "--targets"),
    (["--set", "lr=0.1"], "lr is set by the steps-to-target study"),
    (["--max-epochs", "0"], "--max-epochs"),
    (["--experiment", "exp5"], "invalid choice"),
    (["--resume"], "nothing to resume"),
])
def test_bad_command_lines_exit_2_with_one_line(tmp_path, capsys, argv, match):
    from sweeps import scaling

    try:
        code = scaling.main(["--smoke-test", "--out", str(tmp_path / "s"), "--num-cpus", "1", *argv])
    except SystemExit as e:  # argparse's own errors
        code = e.code
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and match in err[0]
