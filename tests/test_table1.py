"""sweeps.table1: the presets, their options, the data-finding order, and a smoke run of two experiments
into one MLflow store ending with the report files."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bigbatch.config import ConfigError, RunConfig
from bigbatch.experiments import load_experiment
from sweeps.table1 import (FASHION_MNIST_FILES, MINI, PRESETS, DataChoice, build_parser, find_fashion_mnist,
                           has_fashion_mnist, plan_table)

REPO = Path(__file__).resolve().parent.parent


def fake_files(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name in FASHION_MNIST_FILES:
        (folder / name).write_bytes(b"x")
    return folder


def no_download(root: Path) -> str:
    return "offline (test)"


# ------------------------------------------------------------------------------------------ data order
# name, files in (env dir | shared dir | neither), env var set, download works -> source
DATA_CASES = [
    ("env-first", {"env", "shared"}, True, True, "env"),
    ("env-set-but-empty-then-shared", {"shared"}, True, True, "shared"),
    ("shared-when-no-env", {"shared"}, False, True, "shared"),
    ("env-fashion-mnist-subfolder", {"env/fashion-mnist"}, True, False, "env"),
    ("env-torchvision-layout", {"env/FashionMNIST/raw"}, True, False, "env"),
    ("download-when-none", set(), False, True, "download"),
    ("download-into-env-dir", set(), True, True, "download"),
    ("none-when-offline", set(), False, False, "none"),
    ("none-when-offline-with-env", set(), True, False, "none"),
]


@pytest.mark.parametrize("name,files,env_set,download_ok,source", DATA_CASES, ids=[c[0] for c in DATA_CASES])
def test_data_finding_order(tmp_path, name, files, env_set, download_ok, source):
    env_dir, shared = tmp_path / "env", tmp_path / "shared"
    env_dir.mkdir()
    for where in files:
        fake_files(tmp_path / where)
    tried = []

    def download(root: Path):
        tried.append(root)
        return None if download_ok else "offline (test)"

    env = {"BIGBATCH_DATA_DIR": str(env_dir)} if env_set else {}
    choice = find_fashion_mnist(env=env, shared=shared, download_to=tmp_path / "dl", download=download)
    assert choice.source == source, choice
    expected_dir = {"env": env_dir, "shared": shared, "download": env_dir if env_set else tmp_path / "dl"}.get(source)
    assert choice.data_dir == (str(expected_dir.resolve()) if expected_dir else None)
    assert bool(tried) == (source in ("download", "none"))  # no download attempt when the files are there
    if source == "none":
        assert "offline (test)" in choice.note and "\n" not in choice.note


def test_has_fashion_mnist_needs_all_four_files(tmp_path):
    fake_files(tmp_path)
    assert has_fashion_mnist(tmp_path)
    (tmp_path / FASHION_MNIST_FILES[2]).unlink()
    assert not has_fashion_mnist(tmp_path)


# ------------------------------------------------------------------------------------------ options
def plan(argv: list[str], choice: DataChoice = DataChoice("/data/fm", "shared", "Fashion-MNIST from /data/fm")):
    args = build_parser().parse_args(argv)
    return plan_table(args, env={}, find=lambda **kw: choice)


OFFLINE = DataChoice(None, "none", "no Fashion-MNIST files and the download failed: offline")

# argv -> what the plan holds
OPTION_CASES = [
    ("defaults-mini-all-six", [], dict(experiments=["exp1", "exp2", "exp3", "exp4", "exp5", "exp6", "optuna"], seeds=2,
                                        trials_at_once=2, threads_per_trial=1, num_cpus=2, smoke_test=False)),
    ("headline-rows", ["--experiments", "exp1", "exp3", "exp6"], dict(experiments=["exp1", "exp3", "exp6"])),
    ("the-rest-in-a-second-part", ["--experiments", "exp2", "exp4", "exp5", "optuna"],
     dict(experiments=["exp2", "exp4", "exp5", "optuna"])),
    ("duplicates-once", ["--experiments", "exp3", "exp1", "exp3"], dict(experiments=["exp3", "exp1"])),
    ("seeds", ["--seeds", "3"], dict(seeds=3)),
    ("one-trial-two-threads", ["--trials-at-once", "1", "--threads-per-trial", "2"],
     dict(trials_at_once=1, threads_per_trial=2, num_cpus=2)),
    ("gpu-as-gpus-allow", ["--gpus-per-trial", "0.25"], dict(trials_at_once=None, num_cpus=None, gpus_per_trial=0.25)),
    ("paper-preset", ["--preset", "paper"], dict(seeds=1, overrides={})),
    ("smoke-test", ["--smoke-test"], dict(smoke_test=True, overrides={}, seeds=1)),
    ("smoke-test-seeds", ["--smoke-test", "--seeds", "2"], dict(smoke_test=True, seeds=2)),
    ("set-on-top", ["--set", "width_mult=1"], dict()),
]


@pytest.mark.parametrize("name,argv,expected", OPTION_CASES, ids=[c[0] for c in OPTION_CASES])
def test_options(name, argv, expected):
    p = plan(argv)
    for key, value in expected.items():
        assert getattr(p, key) == value, (key, getattr(p, key))
    if name == "defaults-mini-all-six":
        assert p.overrides["data_dir"] == "/data/fm" and p.overrides["download"] is False
        assert p.overrides["dataset"] == "fashion-mnist" and p.overrides["epoch_scale"] == 0.1
    if name == "set-on-top":
        assert p.overrides["width_mult"] == 1 and p.overrides["train_subset"] == MINI.overrides["train_subset"]


BAD_OPTIONS = [
    (["--experiments", "exp9"], "unknown experiment 'exp9'"),
    (["--experiments", "lr-grid"], "unknown experiment 'lr-grid'"),
    (["--seeds", "0"], "--seeds must be >= 1"),
    (["--trials-at-once", "0"], "--trials-at-once must be >= 1"),
    (["--threads-per-trial", "0"], "--threads-per-trial must be >= 1"),
    (["--set", "epoch_scale=0"], "epoch_scale must be a positive number"),
    (["--set", "widht_mult=1"], "did you mean 'width_mult'"),
]


# argv -> the optuna step's sweep options (the one sweep path; kind: sweeps.search.OptunaFactorLR)
OPTUNA_CASES = [
    ("mini", [], dict(batch_sizes=[32, 256, 1024], num_samples=6, smoke_test=False, max_concurrent=2, cpus_per_trial=1.0)),
    ("paper", ["--preset", "paper"], dict(batch_sizes=[256, 512, 1024], num_samples=20)),
    ("batch-sizes-given", ["--batch-sizes", "64", "512"], dict(batch_sizes=[64, 512])),
    ("smoke", ["--smoke-test"], dict(smoke_test=True, num_samples=3, overrides={"seed": 0})),
    ("gpu", ["--gpus-per-trial", "0.5"], dict(gpus_per_trial=0.5, max_concurrent=None)),
    ("quiet-recipe", ["--quiet", "--recipe", "authors-code"], dict(verbose=0, recipe="authors-code")),
]


@pytest.mark.parametrize("name,argv,expected", OPTUNA_CASES, ids=[c[0] for c in OPTUNA_CASES])
def test_optuna_step_searches_with_the_presets_settings_into_the_same_store(name, argv, expected, tmp_path):
    from sweeps.search import OptunaFactorLR

    args = build_parser().parse_args([*argv, "--out", str(tmp_path)])
    p = plan_table(args, env={}, find=lambda **kw: DataChoice("/data/fm", "shared", "from /data/fm"))
    opts = p.optuna_options(args, "table1-x-optuna")
    assert isinstance(opts.search_kind, OptunaFactorLR)
    seen = {**vars(opts), "num_samples": opts.search_kind.num_samples, "recipe": opts.experiment.recipe}
    for key, value in expected.items():
        assert seen[key] == value, (key, seen[key])
    assert opts.experiment.name == "exp5" and opts.name == "table1-x-optuna"
    assert opts.tracking_uri == f"sqlite:///{tmp_path / 'mlflow.db'}" and opts.storage_path == str(tmp_path / "ray_results")
    if name == "mini":  # every key of the preset (and the data found), as the rows get them
        assert opts.overrides == {**p.overrides, "seed": 0} and opts.overrides["lr"] == MINI.overrides["lr"]
    assert opts.search_kind.factor_lr_min == 1.0 and opts.search_kind.factor_lr_max == 20.0


@pytest.mark.parametrize("argv,fragment", BAD_OPTIONS)
def test_bad_options_are_refused_before_ray(argv, fragment):
    with pytest.raises(ConfigError, match=fragment):
        plan(argv)


def test_offline_mini_is_an_error_and_the_demo_falls_back_to_synthetic():
    with pytest.raises(ConfigError, match="the mini preset needs Fashion-MNIST: no Fashion-MNIST files"):
        plan([], OFFLINE)
    demo = plan(["--preset", "demo"], OFFLINE)
    assert demo.smoke_test and demo.overrides["dataset"] == "synthetic" and demo.seeds == 1
    real = plan(["--preset", "demo"])
    assert not real.smoke_test and real.overrides["dataset"] == "fashion-mnist"


@pytest.mark.parametrize("preset", sorted(PRESETS))
@pytest.mark.parametrize("exp", ["exp1", "exp2", "exp3", "exp4", "exp5", "exp6"])
def test_every_preset_builds_every_experiment_at_every_batch_size(preset, exp):
    """Valid configs (warmup shorter than training under epoch_scale, etc.), no CPU-only key, and a
    batch of 1024 fits the preset's training images."""
    overrides = dict(PRESETS[preset].overrides)
    e = load_experiment(exp)
    for bs in e.batch_sizes:
        cfg = e.run_config(batch_size=bs, **overrides)
        assert cfg.device == "auto"  # runs on a GPU where there is one
        if cfg.train_subset:
            assert cfg.train_subset >= bs


def test_mini_preset_arithmetic():
    """The numbers the preset's comment and bench/RESULTS.md state: bs 1024 takes 80 optimizer steps."""
    import math

    cfg = load_experiment("exp1").run_config(batch_size=1024, **MINI.overrides)
    steps = cfg.total_epochs * math.ceil(cfg.train_subset / 1024)
    assert (cfg.total_epochs, steps) == (10, 80)
    exp4 = load_experiment("exp4").run_config(batch_size=1024, **MINI.overrides)
    assert exp4.scaled_warmup_epochs == pytest.approx(0.5) and exp4.scaled_milestones == pytest.approx((3, 6, 9))
    exp2 = load_experiment("exp2").run_config(batch_size=512, **MINI.overrides)
    assert exp2.total_epochs == 160  # 100 * 512 / 32 * 0.1
    assert MINI.seeds == 2
    assert RunConfig.from_dict(MINI.overrides).gns_every > 1  # the measurements stay cheap


# ------------------------------------------------------------------------------------------ smoke run
@pytest.mark.slow
def test_smoke_run_of_two_experiments_ends_with_the_report(tmp_path):
    out = tmp_path / "t1"
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "PYTHONPATH": str(REPO)}
    t0 = time.time()
    # in two parts into one --out, as a table too long for one sitting is run; the second ends with the
    # Optuna step at one batch size
    for part in (["exp1", "--batch-sizes", "32", "1024"], ["exp6", "optuna", "--batch-sizes", "1024"]):
        r = subprocess.run([sys.executable, "-m", "sweeps.table1", "--smoke-test", "--experiments", *part,
                            "--out", str(out), "--quiet"],
                           cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
        assert "whole wall time:" in r.stdout
        # progress as a long run shows it: step k of n, trials done of the total, elapsed, an estimate left
        steps = part.index("--batch-sizes")
        assert f"== step 1/{steps}: {part[0]}" in r.stdout
        trials = 2 if part[0] == "exp1" else 1 + 3  # exp6 at one batch size, then 3 Optuna samples
        last = [line for line in r.stdout.splitlines() if line.startswith("progress: ")][-1]
        assert f"{trials}/{trials} trials done" in last and "about 0.0 min left" in last, last
    assert (out / "mlflow.db").is_file() and (out / "ray_results").is_dir()
    for name in ("report.md", "report.html", "table.md", "table.csv", "RUN.md"):
        assert (out / "report" / name).is_file() and (out / "report" / name).stat().st_size > 0, name
    table = (out / "report" / "table.md").read_text()
    assert table.startswith("Table I on synthetic, recipe text (smoke preset") and "Baseline" in table
    run_md = (out / "report" / "RUN.md").read_text()
    assert run_md.count("- command: `python -m sweeps.table1 --smoke-test") == 2  # one section per part
    assert run_md.count("# Table I run") == 2 and run_md.count("whole wall time") == 2
    assert "- exp1:" in run_md and "- exp6:" in run_md and "- optuna:" in run_md
    report = (out / "report" / "report.md").read_text()
    assert "## Optuna search over the CyclicLR factor" in report  # the search's trials reached the report
    print(f"table1 smoke wall time: {time.time() - t0:.1f} s")


# ------------------------------------------------------------------------------------------ progress
PROGRESS_CASES = [  # (planned epochs per step, epochs done so far, seconds elapsed) -> the minutes left
    ([("exp1", [10, 10]), ("exp2", [20, 40])], [10], 60.0, 7.0),  # 10 of 80 epochs in 1 min: 7 min for 70
    ([("exp1", [10, 10]), ("exp2", [20, 40])], [10, 10, 20, 40], 600.0, 0.0),
    ([("optuna", [5] * 6)], [5, 5, 5], 90.0, 1.5),
]


@pytest.mark.parametrize("steps,done,elapsed,left", PROGRESS_CASES)
def test_progress_estimates_time_left_from_planned_epochs(steps, done, elapsed, left):
    from sweeps.runner import Progress

    lines, now = [], [0.0]
    p = Progress(steps, out=lines.append, clock=lambda: now[0])
    p.start(0)
    assert lines[-1].startswith(f"== step 1/{len(steps)}: {steps[0][0]} ({len(steps[0][1])} trials)")
    assert "an estimate after the first trial" in lines[-1] and p.left() is None
    now[0] = elapsed
    for work in done:
        p.trial_done(work)
    assert p.left() == pytest.approx(left * 60)
    total = sum(len(w) for _, w in steps)
    assert lines[-1] == (f"progress: step 1/{len(steps)} ({steps[0][0]}), {len(done)}/{total} trials done, "
                         f"{elapsed / 60:.1f} min elapsed, about {left:.1f} min left")
