"""Bad input is refused clearly (issue 6; the table in docs/reliability.md).

Every case runs a real CLI (``python -m bigbatch.train``, ``python -m sweeps.expN``,
``python -m analysis.table|report``) in an empty working directory and checks what the user sees:
exit status 2, exactly one line on stderr starting with ``error:`` that names the problem, no
traceback anywhere, and nothing written (the working directory stays empty; the input files are
untouched; a sweep leaves no ``ray_results`` and no ``mlflow.db``).

Where: a case marked ``process=True`` runs as a subprocess (``python -m ...``, a few at a time in one
module-scoped fixture): those that start Ray or wait on a closed port, those with their own environment,
and one case of each command line, so the whole path from the interpreter's start is covered. The rest
call the same ``main`` that ``python -m`` calls, in this process, with its stdout and stderr captured at
the file descriptors (capfd: whatever a logging handler or a C library writes counts too); an exception
escaping ``main`` fails the case as a traceback would. In-process they cost milliseconds instead of an
interpreter, torch, Ray and MLflow start-up each (the module took 88 s as 49 subprocesses).
"""

from __future__ import annotations

import concurrent.futures
import importlib
import os
import time
import sys
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

from reliability_helpers import free_port, run


@dataclass(frozen=True)
class Case:
    id: str
    args: tuple[str, ...]  # formatted with {in} (the inputs directory) and {port} (a closed port)
    expect: str | tuple[str, ...]  # the fragment(s) the error line must hold (formatted the same way)
    env: dict[str, str] = field(default_factory=dict, hash=False)
    ray_logs: bool = False  # Ray started before the refusal: its own log lines may precede the error line
    max_seconds: float | None = None  # refused within this wall time (the data checks: before Ray, no trial)
    process: bool = False  # run as a subprocess (see the module's docstring); forced by ray_logs, env, max_seconds

    @property
    def in_subprocess(self) -> bool:
        return self.process or self.ray_logs or bool(self.env) or self.max_seconds is not None


TRAIN = ("-m", "bigbatch.train")
SYN = ("dataset=synthetic", "synthetic_size=384", "val_size=128", "width_mult=0.125")
OFFLINE = {"https_proxy": "http://127.0.0.1:{port}", "HTTPS_PROXY": "http://127.0.0.1:{port}"}  # offline, even on CI
GPU_CASE = ("device=cuda:99", "only") if torch.cuda.is_available() else ("device=cuda", "device='cuda' but no CUDA GPU is visible")

CASES = [
    # ---- bigbatch.train
    Case("train-malformed-json", (*TRAIN, "--config", "{in}/bad.json"), "malformed JSON in {in}/bad.json: Expecting value at line 1 column 16", process=True),
    Case("train-config-not-an-object", (*TRAIN, "--config", "{in}/list.json"), "must hold a JSON object of config keys"),
    Case("train-misspelt-key", (*TRAIN, "--set", "batch_sise=64"), "unknown config key 'batch_sise' (did you mean 'batch_size'?)"),
    Case("train-wrong-type", (*TRAIN, "--set", 'batch_size="64"'), "batch_size must be int, got str '64'"),
    Case("train-batch-size-0", (*TRAIN, "--set", "batch_size=0"), "batch_size must be a positive integer, got 0"),
    Case("train-batch-larger-than-training-set", (*TRAIN, "--set", *SYN, "batch_size=512"),
         "batch_size=512 is larger than the training set (256 images)"),
    Case("train-virtual-batch-larger-than-batch", (*TRAIN, "--config", "exp3", "--set", "batch_size=16"),
         "virtual_batch_size=32 is larger than batch_size=16"),
    Case("train-factor-lr-0", (*TRAIN, "--config", "exp5", "--set", "factor_lr=0"), "factor_lr must be a positive number, got 0.0"),
    Case("train-warmup-longer-than-training", (*TRAIN, "--config", "exp4", "--set", "epochs=5"),
         "warmup_epochs=5 is not shorter than training (5 epochs)"),
    Case("train-unknown-dataset", (*TRAIN, "--set", "dataset=imagenet"), "dataset='imagenet' is not one of: cifar10, cifar100, fashion-mnist, synthetic"),
    Case("train-unknown-experiment", (*TRAIN, "--config", "exp9"), "config file not found: exp9 (nor an experiment: exp1, exp2, exp3, exp4, exp5, exp6, lr-grid)"),
    Case("train-unknown-recipe", (*TRAIN, "--config", "exp5", "--recipe", "papers"), "unknown recipe 'papers'; valid: text, authors-code"),
    Case("train-data-missing-download-refused", (*TRAIN, "--set", "download=false", "data_dir={in}/nodata"),
         "CIFAR-10 not found in {in}/nodata/cifar-10-batches-py and download=false"),
    Case("train-fashion-mnist-missing", (*TRAIN, "--set", "dataset=fashion-mnist", "download=false", "data_dir={in}/nodata"),
         "Fashion-MNIST files not found in {in}/nodata"),
    Case("train-corrupt-data", (*TRAIN, "--set", "data_dir={in}/corrupt", "download=false"),
         "corrupt CIFAR-10 file {in}/corrupt/cifar-10-batches-py/data_batch_1"),
    Case("train-download-impossible-offline", (*TRAIN, "--set", "data_dir={in}/offline"), "cannot download CIFAR-10 (offline?)",
         env=OFFLINE),
    Case("train-no-such-gpu", (*TRAIN, "--set", *SYN, GPU_CASE[0]), GPU_CASE[1], process=True),
    Case("train-unknown-flag", (*TRAIN, "--epochs", "3"), "error: unrecognized arguments: --epochs 3 (see python -m bigbatch.train --help)"),
    Case("train-val-size-too-large", (*TRAIN, "--set", "dataset=synthetic", "val_size=5000"),
         "val_size=5000 leaves no training images (the training pool has 1024)"),
    # ---- sweeps (default ./ray_results and ./mlflow.db: neither may appear)
    Case("sweep-malformed-json", ("-m", "sweeps.exp5", "--config", "{in}/bad.json"), "malformed JSON in {in}/bad.json", process=True),
    Case("sweep-unknown-option", ("-m", "sweeps.exp5", "--config", "{in}/sweep-bogus.json"),
         "unknown key 'max_failure' (neither a sweep option nor a RunConfig key)"),
    Case("sweep-unknown-recipe", ("-m", "sweeps.exp5", "--recipe", "papers"),
         "argument --recipe: invalid choice: 'papers' (choose from 'text', 'authors-code')"),
    Case("sweep-batch-sizes-not-integers", ("-m", "sweeps.exp5", "--batch-sizes", "32", "big"), "argument --batch-sizes: invalid int value: 'big'"),
    Case("sweep-misspelt-key", ("-m", "sweeps.exp5", "--set", "factr_lr=2"), "unknown config key 'factr_lr' (did you mean 'factor_lr'?)"),
    Case("sweep-wrong-type", ("-m", "sweeps.exp1", "--set", 'lr="fast"'), "lr must be float, got str 'fast'"),
    Case("sweep-batch-size-0", ("-m", "sweeps.exp1", "--batch-sizes", "0"), "batch sizes must be positive integers, got 0"),
    Case("sweep-batch-larger-than-training-set", ("-m", "sweeps.exp1", "--smoke-test", "--set", "synthetic_size=384", "--batch-sizes", "512"),
         "batch_size=512 is larger than the training set (256 images)"),
    Case("sweep-search-not-a-list", ("-m", "sweeps.lr_grid", "--search", "lr=0.1"),
         "--search lr=... needs a JSON list of values, e.g. lr=[1,2]"),
    Case("sweep-factor-lr-negative", ("-m", "sweeps.exp5", "--set", "factor_lr=-2"), "factor_lr must be a positive number, got -2.0"),
    Case("sweep-warmup-longer-than-training", ("-m", "sweeps.exp4", "--epochs", "4"), "warmup_epochs=5 is not shorter than training (4 epochs)"),
    Case("sweep-unknown-dataset", ("-m", "sweeps.exp1", "--dataset", "mnist"), "dataset='mnist' is not one of"),
    Case("sweep-more-gpus-than-the-machine", ("-m", "sweeps.exp6", "--smoke-test", "--gpus-per-trial", "64"),
         "--gpus-per-trial 64 but", ray_logs=True),
    Case("sweep-unreachable-ray-address", ("-m", "sweeps.exp1", "--smoke-test", "--address", "127.0.0.1:{port}"),
         "cannot reach the Ray cluster at --address 127.0.0.1:{port}", process=True),
    Case("sweep-unreachable-tracking-uri", ("-m", "sweeps.exp1", "--smoke-test", "--tracking-uri", "http://127.0.0.1:{port}"),
         "MLflow tracking server http://127.0.0.1:{port} is unreachable", process=True),
    Case("sweep-tracking-uri-without-scheme", ("-m", "sweeps.exp1", "--smoke-test", "--tracking-uri", "mlflow.db"),
         "tracking URI 'mlflow.db' needs a scheme"),
    Case("sweep-storage-not-writable", ("-m", "sweeps.exp1", "--smoke-test", "--storage-path", "{in}/a-file/results"),
         ("storage path {in}/a-file/results/", "is not writable (Not a directory)")),
    # the data first, once, on the driver (issue 12.1): no Ray, no trial, no MLflow run, nothing written
    Case("sweep-cifar10-missing-offline", ("-m", "sweeps.exp5", "--data-dir", "{in}/nodata-exp5"),
         "cannot download CIFAR-10 (offline?) into {in}/nodata-exp5", env=OFFLINE, max_seconds=60),
    Case("sweep-fashion-mnist-missing-offline", ("-m", "sweeps.exp1", "--dataset", "fashion-mnist", "--data-dir", "{in}/nodata-exp1"),
         "cannot download Fashion-MNIST (offline?) into {in}/nodata-exp1", env=OFFLINE, max_seconds=60),
    Case("optuna-cifar10-missing-offline", ("-m", "sweeps.optuna_factor_lr", "--data-dir", "{in}/nodata-optuna"),
         "cannot download CIFAR-10 (offline?) into {in}/nodata-optuna", env=OFFLINE, max_seconds=60),
    Case("optuna-fashion-mnist-missing", ("-m", "sweeps.optuna_factor_lr", "--dataset", "fashion-mnist", "--data-dir", "{in}/nodata",
                                          "--set", "download=false"),
         "Fashion-MNIST files not found in {in}/nodata", max_seconds=60),
    Case("sweep-resume-nothing", ("-m", "sweeps.exp5", "--resume"), "nothing to resume: no exp5 sweep in", process=True),
    Case("sweep-resume-unknown-name", ("-m", "sweeps.exp5", "--resume", "--name", "yesterday", "--storage-path", "{in}"),
         "nothing to resume: no exp5 sweep named 'yesterday' in {in}"),
    # ---- analysis
    Case("analysis-no-runs", ("-m", "analysis.table", "--tracking-uri", "sqlite:///{in}/empty.db"),
         "no bigbatch runs in sqlite:///{in}/empty.db", process=True),
    Case("analysis-report-no-runs", ("-m", "analysis.report", "--out", "report", "--tracking-uri", "sqlite:///{in}/empty.db"),
         "no bigbatch runs in sqlite:///{in}/empty.db"),
    Case("analysis-unknown-format", ("-m", "analysis.table", "--format", "xlsx"), "argument --format: invalid choice: 'xlsx'"),
    Case("analysis-report-without-out", ("-m", "analysis.report"), "the following arguments are required: --out"),
    Case("analysis-no-store-here", ("-m", "analysis.table"), "no MLflow database at"),
    Case("analysis-unreachable-tracking-uri", ("-m", "analysis.table", "--tracking-uri", "http://127.0.0.1:{port}"),
         "http://127.0.0.1:{port} is unreachable", process=True),
    Case("analysis-not-an-mlflow-db", ("-m", "analysis.table", "--tracking-uri", "sqlite:///{in}/bad.json"), "{in}/bad.json is not"),
]


def _snapshot(d: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(d)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(d.rglob("*"))}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    from fixtures import write_cifar  # tests/fixtures.py: the official CIFAR format

    d = tmp_path_factory.mktemp("inputs")
    (d / "bad.json").write_text('{"batch_size": ')
    (d / "list.json").write_text("[32, 64]")
    (d / "sweep-bogus.json").write_text('{"batch_sizes": [32], "max_failure": 3}')
    (d / "a-file").write_text("")
    folder = write_cifar(d / "corrupt", n_train=50, n_test=10)
    batch = folder / "data_batch_1"
    batch.write_bytes(batch.read_bytes()[: batch.stat().st_size // 2])  # truncated mid-pickle
    # an MLflow database that holds no bigbatch runs (migrated, one unrelated experiment)
    r = subprocess.run([sys.executable, "-c",
                        "import sys; from mlflow.tracking import MlflowClient; "
                        "MlflowClient(tracking_uri=sys.argv[1]).create_experiment('someone-else')", f"sqlite:///{d / 'empty.db'}"],
                       capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stderr[-2000:]
    return d


@pytest.fixture(scope="module")
def inputs_snapshot(inputs):
    return _snapshot(inputs)


@pytest.fixture(scope="module")
def port() -> str:
    return str(free_port())  # nothing listens there


def _fmt(s: str, inputs: Path, port: str) -> str:
    return s.format(**{"in": inputs, "port": port})


@pytest.fixture(scope="module")
def results(inputs, inputs_snapshot, port, tmp_path_factory) -> dict[str, tuple[subprocess.CompletedProcess, Path, float]]:
    """The subprocess cases, three at a time (after the inputs' snapshot)."""
    def one(case: Case):
        cwd = tmp_path_factory.mktemp(case.id)
        t0 = time.monotonic()
        r = run([_fmt(a, inputs, port) for a in case.args], cwd=cwd, timeout=240,
                **{k: _fmt(v, inputs, port) for k, v in case.env.items()})
        return case.id, (r, cwd, time.monotonic() - t0)

    with concurrent.futures.ThreadPoolExecutor(max_workers=3) as pool:
        return dict(pool.map(one, [c for c in CASES if c.in_subprocess]))


def _main_of(module: str):
    """The function ``python -m module`` calls, taking argv."""
    if module == "bigbatch.train":
        from bigbatch.train import main
        return main
    if module.startswith("sweeps.exp") or module == "sweeps.lr_grid":
        from sweeps.cli import main as sweep_main
        experiment = "lr-grid" if module == "sweeps.lr_grid" else module.split(".")[1]
        return lambda argv: sweep_main(experiment, argv)
    return importlib.import_module(module).main  # sweeps.optuna_factor_lr, analysis.table, analysis.report


def _in_process(case: Case, argv: list[str], cwd: Path, capfd) -> subprocess.CompletedProcess:
    env_before, cwd_before = dict(os.environ), os.getcwd()
    os.chdir(cwd)
    try:
        try:
            code = _main_of(argv[1])(argv[2:])
        except SystemExit as e:  # argparse's errors
            code = e.code
    finally:
        os.chdir(cwd_before)
        os.environ.clear()
        os.environ.update(env_before)
    out, err = capfd.readouterr()
    ray = sys.modules.get("ray")
    assert ray is None or not ray.is_initialized(), "the refusal started Ray in this process"
    return subprocess.CompletedProcess(argv, code, out, err)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_refused_with_one_clear_line(case, inputs, port, results, tmp_path, capfd):
    if case.in_subprocess:
        r, cwd, seconds = results[case.id]
    else:
        cwd = tmp_path / "cwd"
        cwd.mkdir()
        t0 = time.monotonic()
        r = _in_process(case, [_fmt(a, inputs, port) for a in case.args], cwd, capfd)
        seconds = time.monotonic() - t0
    expect = [_fmt(e, inputs, port) for e in ((case.expect,) if isinstance(case.expect, str) else case.expect)]
    assert r.returncode == 2, f"exit {r.returncode}\nstdout: {r.stdout[-2000:]}\nstderr: {r.stderr[-2000:]}"
    assert "Traceback" not in r.stderr and "Traceback" not in r.stdout, r.stderr[-3000:]
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], r.stderr[-3000:]
    if not case.ray_logs:
        assert lines == errors, r.stderr[-3000:]
    print(errors[0])
    assert all(e in errors[0] for e in expect), (expect, errors[0])
    assert sorted(p.name for p in cwd.iterdir()) == [], "something was written in the working directory"
    if case.max_seconds is not None:
        assert seconds < case.max_seconds, f"refused after {seconds:.0f} s"
        out = r.stdout + r.stderr
        assert "Ray" not in out and "resume" not in out, out[-3000:]  # refused before Ray started; no --resume hint


def test_bad_input_leaves_the_inputs_untouched(inputs, inputs_snapshot, results):
    """Runs after every case (pytest keeps the module's order): the inputs' sizes and times as before."""
    assert _snapshot(inputs) == inputs_snapshot


def test_cases_cover_the_three_command_lines_and_at_least_twenty_cases():
    kinds = {c.args[1].split(".")[0] for c in CASES}
    assert kinds == {"bigbatch", "sweeps", "analysis"} and len(CASES) >= 20
    assert {c.args[1].split(".")[0] for c in CASES if c.in_subprocess} == kinds  # each also from a fresh interpreter
    assert len({c.id for c in CASES}) == len(CASES)


def test_every_case_is_in_the_reliability_table():
    doc = (Path(__file__).resolve().parent.parent / "docs" / "reliability.md").read_text()
    missing = [c.id for c in CASES if f"`{c.id}`" not in doc]
    assert not missing, f"docs/reliability.md lacks rows for {missing}"
