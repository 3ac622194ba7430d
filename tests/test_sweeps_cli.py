"""sweeps: CLI parsing, search spaces of every experiment (exp1..exp6, lr-grid), the lr-grid smoke sweep, and every
check that fails before a trial runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bigbatch.config import ConfigError
from bigbatch.experiments import EXPERIMENTS, TABLE_EXPERIMENTS, load_experiment
from sweeps.cli import build_parser, main, options_from_args
from sweeps.space import build_space, trial_label, trial_run_config

REPO = Path(__file__).resolve().parent.parent


def opts(name: str, *argv: str):
    exp = load_experiment(name)
    return options_from_args(exp, build_parser(exp).parse_args(list(argv)))


def space_of(o):
    return build_space(o.experiment, o.batch_sizes, o.seeds, o.overrides, o.smoke_test, o.search)


def cli(*argv: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, *argv], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def one_error_line(stderr: str) -> str:
    lines = [l for l in stderr.strip().splitlines() if l.strip()]
    assert len(lines) == 1, stderr
    assert lines[0].startswith("error: "), stderr
    assert "Traceback" not in stderr
    return lines[0]


# ---------------------------------------------------------------------------------------------- search spaces
@pytest.mark.parametrize("exp,n_bs,n_search", [("exp1", 6, 1), ("exp2", 5, 1), ("exp3", 6, 1), ("exp4", 6, 1), ("exp5", 6, 3),
                                               ("exp6", 6, 1), ("lr-grid", 1, 5)])
def test_every_experiment_builds_its_space(exp, n_bs, n_search):
    space = build_space(load_experiment(exp))
    assert len(space.batch_sizes) == n_bs
    assert space.num_trials == n_bs * n_search
    for point in space.points():  # every trial's RunConfig is valid and carries the experiment's identity
        cfg = trial_run_config(space.base, point)
        assert cfg.experiment == exp and cfg.recipe == "text" and cfg.epochs == 100
    assert set(space.base).isdisjoint(("batch_size", "seed", *space.search))  # the trial's params alone vary them


def test_table_experiments_and_the_lr_grid():
    assert TABLE_EXPERIMENTS == ("exp1", "exp2", "exp3", "exp4", "exp5", "exp6")
    assert set(EXPERIMENTS) == {*TABLE_EXPERIMENTS, "lr-grid"}
    grid = load_experiment("lr-grid")
    assert grid.batch_sizes == (32,) and grid.search == {"lr": (0.001, 0.003, 0.01, 0.03, 0.1)}
    assert grid.label == "Learning-rate grid (baseline, bs 32)"
    assert grid.run_config(32).to_dict() == load_experiment("exp1").run_config(32, experiment="lr-grid").to_dict()  # the baseline
    space = build_space(grid)
    labels = [trial_label(trial_run_config(space.base, p), list(space.search)) for p in space.points()]
    assert labels == [f"lr-grid bs=32 lr={v} seed=0" for v in ("0.001", "0.003", "0.01", "0.03", "0.1")]


def test_search_flag_replaces_the_grid_and_refuses_a_non_list(capsys, tmp_path):
    o = opts("lr-grid", "--search", "lr=[0.005,0.02]")
    assert o.search == {"lr": [0.005, 0.02]} and space_of(o).num_trials == 2
    o = opts("exp5", "--search", "factor_lr=[8,4]", "lr=[0.01,0.02]")
    assert space_of(o).num_trials == 6 * 2 * 2
    assert main("lr-grid", ["--search", "lr=0.1", "--storage-path", str(tmp_path / "rr")]) == 2
    assert "--search lr=... needs a JSON list of values" in one_error_line(capsys.readouterr().err)


def test_exp2_has_no_1024_and_scales_epochs():
    space = build_space(load_experiment("exp2"))
    assert 1024 not in space.batch_sizes
    cfgs = {p["batch_size"]: trial_run_config(space.base, p) for p in space.points()}
    assert cfgs[512].total_epochs == 1600 and cfgs[32].total_epochs == 100


def test_exp5_grid_is_factor_lr_times_batch_sizes():
    space = build_space(load_experiment("exp5"))
    assert space.search == {"factor_lr": [10, 5, 2]}
    pairs = {(p["batch_size"], p["factor_lr"]) for p in space.points()}
    assert pairs == {(bs, f) for bs in (32, 64, 128, 256, 512, 1024) for f in (10, 5, 2)}
    ps = space.param_space()  # hyperparameters only: the base config and where to log travel in the trial context
    assert ps == {"batch_size": {"grid_search": [32, 64, 128, 256, 512, 1024]}, "seed": {"grid_search": [0]},
                  "factor_lr": {"grid_search": [10, 5, 2]}}


def test_exp6_uses_eq2_and_labels_trials():
    space = build_space(load_experiment("exp6"), batch_sizes=[1024])
    cfg = trial_run_config(space.base, space.points()[0])
    assert abs(cfg.scaled_factor_lr - 10 * (32 / 1024) ** 0.5) < 1e-9
    assert trial_label(cfg) == "exp6 bs=1024 f=1.77 seed=0"


def test_seeds_multiply_trials_and_recipe_passes_through():
    o = opts("exp5", "--seeds", "3", "--recipe", "authors-code", "--batch-sizes", "256", "1024")
    space = space_of(o)
    assert o.experiment.recipe == "authors-code" and space.num_trials == 2 * 3 * 3 and space.seeds == [0, 1, 2]
    cfg = trial_run_config(space.base, space.points()[0])
    assert cfg.recipe == "authors-code" and cfg.cycle_momentum and cfg.weight_decay == 1e-6


def test_set_fixes_a_searched_key_and_flags_override():
    o = opts("exp5", "--set", "factor_lr=3", "width_mult=0.5", "val_size=128", "synthetic_size=2048", "--epochs", "7", "--dataset", "synthetic", "--data-dir", "rel/data")
    space = space_of(o)
    assert space.search == {} and space.num_trials == 6
    assert space.base["factor_lr"] == 3 and space.base["width_mult"] == 0.5 and space.base["epochs"] == 7
    assert Path(space.base["data_dir"]).is_absolute()  # trials chdir


def test_smoke_test_is_small_and_valid_for_every_experiment():
    for exp in EXPERIMENTS:
        space = build_space(load_experiment(exp), smoke_test=True)
        for p in space.points():
            cfg = trial_run_config(space.base, p)
            assert cfg.dataset == "synthetic" and cfg.width_mult <= 0.25 and cfg.total_epochs <= 4
            assert cfg.synthetic_size - cfg.val_size >= cfg.batch_size


def test_config_file_sweep_options_and_run_config(tmp_path):
    f = tmp_path / "sweep.json"
    f.write_text(json.dumps({
        "_doc": "comments are ignored",
        "batch_sizes": [64, 128], "seeds": 2, "gpus_per_trial": 0.5, "max_failures": 4,
        "search": {"factor_lr": [3, 4]}, "config": {"width_mult": 0.25}, "dropout": 0.3,
    }))
    o = opts("exp5", "--config", str(f), "--max-failures", "1")
    assert o.batch_sizes == [64, 128] and o.seeds == 2 and o.gpus_per_trial == 0.5
    assert o.max_failures == 1  # the command line wins over the file
    assert o.overrides == {"width_mult": 0.25, "dropout": 0.3}
    assert space_of(o).num_trials == 2 * 2 * 2
    f.write_text(json.dumps({"bogus_key": 1}))
    with pytest.raises(ConfigError, match="bogus_key"):
        opts("exp5", "--config", str(f))


@pytest.mark.parametrize("argv,match", [
    (["--set", "lr=-1"], "lr must be a positive number"),
    (["--set", "learning_rate=0.1"], "unknown config key 'learning_rate'"),
    (["--seeds", "0"], "--seeds"),
    (["--config", "/nonexistent/sweep.json"], "config file not found"),
])
def test_bad_config_exits_2_with_one_line(argv, match, tmp_path, capsys):
    assert main("exp5", [*argv, "--storage-path", str(tmp_path / "rr")]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert match in line


def test_bad_config_subprocess_one_line_no_traceback(tmp_path):
    r = cli("-m", "sweeps.exp4", "--set", "warmup_epochs=200", cwd=tmp_path, timeout=60)
    assert r.returncode == 2
    assert "warmup_epochs" in one_error_line(r.stderr)


def test_unwritable_storage_and_nothing_to_resume_and_dead_tracking_server(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    assert main("exp1", ["--smoke-test", "--storage-path", str(blocker / "sub")]) == 2
    assert "not writable" in one_error_line(capsys.readouterr().err)
    assert main("exp1", ["--resume", "--storage-path", str(tmp_path / "empty")]) == 2
    assert "nothing to resume" in one_error_line(capsys.readouterr().err)
    assert main("exp1", ["--resume", "--name", "nope", "--storage-path", str(tmp_path)]) == 2
    assert "nothing to resume" in one_error_line(capsys.readouterr().err)
    t0 = time.time()
    assert main("exp1", ["--smoke-test", "--storage-path", str(tmp_path / "rr"), "--tracking-uri", "http://127.0.0.1:9"]) == 2
    assert "unreachable" in one_error_line(capsys.readouterr().err)
    assert time.time() - t0 < 30


def test_unreachable_address_exits_2_quickly(tmp_path):
    t0 = time.time()
    r = cli("-m", "sweeps.exp1", "--smoke-test", "--address", "127.0.0.1:9", "--storage-path", str(tmp_path / "rr"), cwd=tmp_path)
    assert r.returncode == 2, r.stderr[-2000:]
    assert "cannot reach the Ray cluster" in one_error_line(r.stderr)
    assert time.time() - t0 < 60


def test_more_gpus_than_exist_exits_2_quickly_subprocess(tmp_path):
    t0 = time.time()
    r = cli("-m", "sweeps.exp6", "--smoke-test", "--gpus-per-trial", "1", "--storage-path", str(tmp_path / "rr"), cwd=tmp_path)
    assert r.returncode == 2, r.stdout[-2000:] + r.stderr[-2000:]
    err = [l for l in r.stderr.splitlines() if l.startswith("error:")]
    assert err == ["error: --gpus-per-trial 1 but the Ray cluster has 0 GPUs (use --gpus-per-trial 0 to train on CPUs)"]
    assert "Traceback" not in r.stderr
    assert time.time() - t0 < 90  # never pending forever


@pytest.fixture(scope="module")
def ray_session():
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="WARNING")
    yield
    ray.shutdown()


@pytest.mark.parametrize("argv,match", [
    (["--cpus-per-trial", "64"], "--cpus-per-trial 64 but no Ray node has more than 2 CPUs"),
    (["--gpus-per-trial", "0.5"], "--gpus-per-trial 0.5 but the Ray cluster has 0 GPUs"),
    (["--gpus-per-trial", "1.5"], "fractional values must be below 1"),
])
def test_resource_checks_in_process(ray_session, argv, match, tmp_path, capsys):
    t0 = time.time()
    assert main("exp6", ["--smoke-test", *argv, "--storage-path", str(tmp_path / "rr"), "--tracking-uri", f"sqlite:///{tmp_path}/m.db"]) == 2
    assert match in one_error_line(capsys.readouterr().err)
    assert time.time() - t0 < 30


# ---------------------------------------------------------------------------------------------- the lr grid (issue 9.8)
@pytest.mark.slow
def test_lr_grid_smoke_sweep(tmp_path):
    """`python -m sweeps.lr_grid --smoke-test`: the paper's lr grid at bs 32, one trial per lr, in MLflow bigbatch-lr-grid."""
    from test_sweeps_e2e import trial_runs

    uri = f"sqlite:///{tmp_path / 'm.db'}"
    r = cli("-m", "sweeps.lr_grid", "--smoke-test", "--storage-path", str(tmp_path / "rr"), "--name", "grid",
            "--tracking-uri", uri, cwd=tmp_path, timeout=400)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "sweep grid: 5 finished, 0 errored, 0 unfinished" in r.stdout
    assert "experiment bigbatch-lr-grid" in r.stdout
    lines = r.stdout.splitlines()
    head = next(i for i, l in enumerate(lines) if l.split()[:3] == ["bs", "seed", "lr"])  # the final table names the lr
    assert sorted(float(l.split()[2]) for l in lines[head + 1: head + 6]) == [0.001, 0.003, 0.01, 0.03, 0.1]
    _, parents, children = trial_runs(uri, "bigbatch-lr-grid")
    assert len(parents) == 1 and parents[0].data.tags["bigbatch.experiment"] == "lr-grid"
    assert sorted(float(c.data.params["lr"]) for c in children) == [0.001, 0.003, 0.01, 0.03, 0.1]
    assert {c.data.params["batch_size"] for c in children} == {"32"}
    assert {c.data.tags["bigbatch.paper_row"] for c in children} == {"Learning-rate grid (baseline, bs 32)"}
    assert "lr-grid bs=32 lr=0.003 seed=0" in {c.info.run_name for c in children}
    assert all(c.data.tags["bigbatch.status"] in ("completed", "diverged") and "test_acc" in c.data.metrics for c in children)


def test_closing_hint_points_at_the_tracking_server():
    """With a tracking server the closing line names its URL, not `mlflow ui --backend-store-uri http://...` (issue 12.5)."""
    from sweeps.runner import ui_hint

    assert ui_hint("http://10.0.0.5:5000").startswith("open http://10.0.0.5:5000 in a browser")
    assert "mlflow ui" not in ui_hint("https://mlflow.example:443")
    assert ui_hint("sqlite:////abs/mlflow.db").startswith("mlflow ui --backend-store-uri sqlite:////abs/mlflow.db")
