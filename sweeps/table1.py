"""The whole Table I in one command: every experiment's sweep into ONE MLflow store, then the report.

    python -m sweeps.table1 --preset mini                              # Fashion-MNIST at laptop scale
    python -m sweeps.table1 --preset mini --experiments exp1 exp3 exp6 # the headline rows
    python -m sweeps.table1 --preset mini --gpus-per-trial 0.25 --set width_mult=1   # the same on a GPU
    python -m sweeps.table1 --preset paper --out runs/paper            # the paper's full setting (CIFAR-10)
    python -m sweeps.table1 --preset demo --experiments exp1 exp6      # `make demo`: a few minutes on 2 CPUs
    python -m sweeps.table1 --preset mini --experiments exp2 exp4 exp5 optuna   # the rest, same --out
    python -m sweeps.table1 --smoke-test --experiments exp1 exp6       # the machinery only (synthetic)

Each experiment runs through the ordinary sweep runner (``sweeps.runner.run_sweep`` with
``SweepOptions``) inside one Ray session, then (step ``optuna``, last by default) the Optuna search for
factor_lr at the preset's batch sizes (``sweeps.search.OptunaFactorLR`` through ``run_sweep``, the paper's eq. 2 against
what TPE finds), all into ``OUT/mlflow.db`` and ``OUT/ray_results``; then the
report is written by ``python -m analysis.table --paper`` (also as CSV) and ``python -m analysis.report``,
run as subprocesses (sweeps never import analysis) into ``OUT/report/``. The whole wall time is printed
and written to ``OUT/report/RUN.md`` with the command, date, commit and machine (appended: a table run in
parts into one ``--out`` keeps one section per part).

Presets (``PRESETS``) fix the dataset, the width, the training images, ``epoch_scale`` (every epoch
count of the recipe times the same factor: bigbatch.config) and the seeds; nothing in them is CPU-only
(``--gpus-per-trial`` runs the same preset on GPUs). Data for the Fashion-MNIST presets is found by
``find_fashion_mnist``: ``BIGBATCH_DATA_DIR``, else ``../shared/data/fashion-mnist`` beside the
repository, else a download (into ``BIGBATCH_DATA_DIR`` or ``./data``); the demo falls back to
synthetic data with one line saying so, the mini preset stops with an error. See docs/sweeps.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from bigbatch.config import ConfigError, OneLineArgumentParser, RunConfig, parse_set
from bigbatch.datasets import DATASETS
from bigbatch.experiments import TABLE_EXPERIMENTS, load_experiment
from bigbatch.schema import git_commit

from .runner import Progress, SweepError, SweepOptions, planned_epochs, ray_session, run_sweep
from .search import OptunaFactorLR
from .tracking import TrackingError

REPO = Path(__file__).resolve().parents[1]
SHARED_FASHION_MNIST = REPO.parent / "shared" / "data" / "fashion-mnist"  # ../shared/data/fashion-mnist
FASHION_MNIST_FILES = DATASETS["fashion-mnist"].files
HEADLINE = ("exp1", "exp3", "exp6")
OPTUNA = "optuna"  # the step after the rows: sweeps.optuna_factor_lr's search for factor_lr (finding g)
STEPS = (*TABLE_EXPERIMENTS, OPTUNA)


# ---------------------------------------------------------------------------------------------- presets
@dataclass(frozen=True)
class Preset:
    name: str
    about: str
    overrides: dict[str, Any] = field(default_factory=dict)  # RunConfig keys for every experiment
    seeds: int = 1
    data: str = "none"  # fashion-mnist: find the files (find_fashion_mnist); none: as the overrides say
    synthetic_fallback: bool = False  # fashion-mnist missing and not downloadable: synthetic (demo) instead of an error
    fallback_overrides: dict[str, Any] = field(default_factory=dict)  # then these keys on top
    optuna_samples: int = 20  # the "optuna" step: Optuna trials per batch size (sweeps.optuna_factor_lr)
    optuna_batch_sizes: tuple[int, ...] = (256, 512, 1024)  # ... at these batch sizes (--batch-sizes overrides)


# The measurements (bigbatch.measure) stay on in every preset, small: the noise scale every 5 epochs on
# max(1024, 2 bs) images, the sharpness once on 128 images (their cost: bench/RESULTS.md, "mini preset").
MINI_MEASURE = {"gns_images": 1024, "gns_every": 5, "sharpness_images": 128, "sharpness_iters": 10}

# mini: Fashion-MNIST (zero-padded to 32x32), VGG13 at width 0.125, the first 8,192 images of the 59,000/1,000
# train/val split, every epoch count of the paper x 0.1 (bs 1024: 80 optimizer steps; bs 32: 2,560), 2 seeds.
# Its base lr, 0.1 (not the paper's 0.01), is the pick of the paper's own rule rerun in this setting: the lr grid
# on the baseline at bs 32, best validation accuracy, fixed before any other batch size ran. The grid, the cost
# arithmetic and the measured wall times: docs/results/fashion-mnist-mini/README.md, bench/RESULTS.md ("mini preset").
MINI = Preset(
    "mini",
    "Fashion-MNIST, VGG13 width 0.125, 8,192 training images, epochs x 0.1 (bs 1024: 80 steps), base lr 0.1 (the mini lr grid's pick), 2 seeds",
    overrides={
        "lr": 0.1,
        "dataset": "fashion-mnist",
        "width_mult": 0.125,
        "train_subset": 8192,
        "val_size": 1000,
        "epoch_scale": 0.1,
        "eval_batch_size": 1000,
        **MINI_MEASURE,
    },
    seeds=2,
    data="fashion-mnist",
    # (g): TPE + ASHA over factor_lr in [1, 20] at the smallest, a middle and the largest batch size, 6 trials
    # each (ASHA stops the poor ones after 1 epoch): about the cost of 9 full runs
    optuna_samples=6,
    optuna_batch_sizes=(32, 256, 1024),
)

# demo (make demo): the machinery on real data in a few minutes, not the paper's effects: 2,048 images, 5 epochs
# (epoch_scale 0.05), one seed (bs 32: 320 steps, bs 1024: 10). Measured: bench/RESULTS.md ("mini preset").
DEMO = Preset(
    "demo",
    "Fashion-MNIST, VGG13 width 0.125, 2,048 training images, 5 epochs, 1 seed (machinery + learning, not the paper's effects)",
    overrides={
        "dataset": "fashion-mnist",
        "width_mult": 0.125,
        "train_subset": 2048,
        "val_size": 1000,
        "epoch_scale": 0.05,
        "eval_batch_size": 1000,
        "gns_images": 1024, "gns_every": 5, "sharpness_images": 256, "sharpness_iters": 5,
    },
    seeds=1,
    data="fashion-mnist",
    synthetic_fallback=True,
    # the sweeps' smoke settings on synthetic data (sweeps.space.SMOKE_OVERRIDES) do the rest
    fallback_overrides={"dataset": "synthetic", "download": False},
)

PAPER = Preset("paper", "the paper's full setting: CIFAR-10, VGG13 width 1, 100 epochs (exp2: scaled), 1 seed", seeds=1)

PRESETS: dict[str, Preset] = {p.name: p for p in (MINI, DEMO, PAPER)}


# ---------------------------------------------------------------------------------------------- data
def has_fashion_mnist(path: Path) -> bool:
    """True when ``path`` (as a data_dir) holds the four Fashion-MNIST files where bigbatch.data reads
    them: in it, in its fashion-mnist/, or in torchvision's FashionMNIST/raw/."""
    return any(all((d / f).is_file() for f in FASHION_MNIST_FILES)
               for d in (path, path / "fashion-mnist", path / "FashionMNIST" / "raw"))


@dataclass(frozen=True)
class DataChoice:
    data_dir: str | None  # None: no real data (synthetic fallback)
    source: str  # env | shared | download | none
    note: str  # one line for the user


def _try_download(root: Path) -> str | None:
    """Download Fashion-MNIST into ``root`` through bigbatch.data (torchvision: URL + md5); None on
    success, else the one-line reason."""
    from bigbatch.data import DataError, load_data

    try:
        load_data(RunConfig(dataset="fashion-mnist", data_dir=str(root), download=True, val_size=0), "cpu")
    except DataError as e:
        return str(e)
    return None


def find_fashion_mnist(env: dict[str, str] | None = None, shared: Path = SHARED_FASHION_MNIST,
                       download_to: Path | None = None, download: Callable[[Path], str | None] = _try_download) -> DataChoice:
    """Where the Fashion-MNIST files are, in this order: ``$BIGBATCH_DATA_DIR`` (the folder or its
    fashion-mnist/), ``../shared/data/fashion-mnist`` beside the repository, else a download into
    ``$BIGBATCH_DATA_DIR`` (or ``download_to``, default ./data). ``source`` 'none' when all fail."""
    env = os.environ if env is None else env
    env_dir = env.get("BIGBATCH_DATA_DIR")
    if env_dir and has_fashion_mnist(Path(env_dir)):
        return DataChoice(str(Path(env_dir).resolve()), "env", f"Fashion-MNIST from BIGBATCH_DATA_DIR={env_dir}")
    if has_fashion_mnist(shared):
        return DataChoice(str(shared.resolve()), "shared", f"Fashion-MNIST from {shared}")
    target = Path(env_dir) if env_dir else (download_to or Path("data"))
    why = download(target)
    if why is None:
        return DataChoice(str(target.resolve()), "download", f"Fashion-MNIST downloaded into {target}")
    return DataChoice(None, "none", f"no Fashion-MNIST files (BIGBATCH_DATA_DIR {'unset' if not env_dir else 'without them'}, "
                                    f"none in {shared}) and the download failed: {why}")


# ---------------------------------------------------------------------------------------------- options
def build_parser() -> argparse.ArgumentParser:
    p = OneLineArgumentParser(
        prog="python -m sweeps.table1",
        description="Run Table I's experiments (a preset: dataset, width, images, epoch_scale, seeds) into one MLflow "
                    "store, then write the report; prints the whole wall time. See docs/sweeps.md.",
    )
    p.add_argument("--preset", choices=sorted(PRESETS), default="mini", help="mini (default): Fashion-MNIST at laptop scale; "
                   "demo: a few minutes; paper: the paper's full setting")
    p.add_argument("--experiments", nargs="+", default=list(STEPS), metavar="EXP",
                   help=f"rows to run, in order (default all six, then {OPTUNA}: the Optuna search for factor_lr at the "
                        f"preset's batch sizes; the headline rows: {' '.join(HEADLINE)})")
    p.add_argument("--seeds", type=int, help="seeds per cell (default: the preset's)")
    p.add_argument("--out", help="directory for mlflow.db, ray_results/ and report/ (default ./runs/table1-<preset>, git-ignored)")
    p.add_argument("--smoke-test", action="store_true", help="the sweeps' smoke settings (synthetic, 2-3 epochs): the machinery only")
    p.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE", help="override RunConfig keys of every run (e.g. width_mult=1)")
    p.add_argument("--batch-sizes", type=int, nargs="+", metavar="BS", help="batch sizes (default: each experiment's row)")
    p.add_argument("--recipe", choices=("text", "authors-code"), default="text")
    r = p.add_argument_group("packing (CPU: trials at once x torch threads per trial = the CPUs Ray gets)")
    r.add_argument("--trials-at-once", type=int, help="trials running at once (default: 2 on CPU, measured faster than 1 x 2 "
                   "threads; with GPUs: as --gpus-per-trial allows)")
    r.add_argument("--threads-per-trial", type=int, default=1, help="torch threads (= Ray CPUs) per trial (default 1)")
    r.add_argument("--gpus-per-trial", type=float, help="GPUs per trial; fractions pack trials on one GPU (default: 1 if there are GPUs, else 0)")
    r.add_argument("--no-report", action="store_true", help="run the sweeps only")
    r.add_argument("--quiet", action="store_true", help="no trial tables")
    return p


@dataclass
class Plan:
    preset: Preset
    experiments: list[str]
    seeds: int
    overrides: dict[str, Any]
    out: Path
    data: DataChoice | None
    trials_at_once: int | None
    threads_per_trial: int
    gpus_per_trial: float | None
    num_cpus: int | None
    smoke_test: bool = False  # --smoke-test, or the demo's synthetic fallback: the sweeps' smoke settings

    def sweep_options(self, exp_name: str, args: argparse.Namespace, name: str) -> SweepOptions:
        exp = load_experiment(exp_name, args.recipe)
        return SweepOptions(
            exp, batch_sizes=args.batch_sizes, seeds=self.seeds, overrides=dict(self.overrides), smoke_test=self.smoke_test,
            gpus_per_trial=self.gpus_per_trial, cpus_per_trial=float(self.threads_per_trial),
            storage_path=str(self.out / "ray_results"), name=name, tracking_uri=f"sqlite:///{self.out / 'mlflow.db'}",
            num_cpus=self.num_cpus, max_concurrent=self.trials_at_once, verbose=0 if args.quiet else 1,
        )

    def optuna_options(self, args: argparse.Namespace, name: str) -> SweepOptions:
        """The optuna step through the one sweep path: exp5's factor_lr (TPE + ASHA) at the preset's batch sizes
        (or --batch-sizes), the preset's RunConfig keys, into the same store."""
        kind = OptunaFactorLR(num_samples=3 if self.smoke_test else self.preset.optuna_samples)
        return SweepOptions(
            load_experiment("exp5", args.recipe), batch_sizes=args.batch_sizes or list(self.preset.optuna_batch_sizes),
            overrides={**self.overrides, "seed": 0}, smoke_test=self.smoke_test, gpus_per_trial=self.gpus_per_trial,
            cpus_per_trial=float(self.threads_per_trial), storage_path=str(self.out / "ray_results"), name=name,
            tracking_uri=f"sqlite:///{self.out / 'mlflow.db'}", num_cpus=self.num_cpus, max_concurrent=self.trials_at_once,
            verbose=0 if args.quiet else 1, search_kind=kind)

    def step_options(self, args: argparse.Namespace, label: str, stamp: str) -> list[tuple[str, SweepOptions]]:
        """Each step's sweep options, in order (the sweep names: table1-<label>-<step>-<stamp>)."""
        return [(exp, self.optuna_options(args, f"table1-{label}-optuna-{stamp}") if exp == OPTUNA
                 else self.sweep_options(exp, args, f"table1-{label}-{exp}-{stamp}")) for exp in self.experiments]


def plan_table(args: argparse.Namespace, env: dict[str, str] | None = None,
               find: Callable[..., DataChoice] = find_fashion_mnist) -> Plan:
    """Check the options and resolve the preset (data included) into a Plan; ConfigError on bad input."""
    preset = PRESETS[args.preset]
    bad = [e for e in args.experiments if e not in STEPS]
    if bad:
        raise ConfigError(f"unknown experiment {bad[0]!r}; Table I's rows: {', '.join(TABLE_EXPERIMENTS)}, and {OPTUNA}")
    experiments = list(dict.fromkeys(args.experiments))  # once each, in the given order

    if args.trials_at_once is not None and args.trials_at_once < 1:
        raise ConfigError(f"--trials-at-once must be >= 1, got {args.trials_at_once}")
    if args.threads_per_trial < 1:
        raise ConfigError(f"--threads-per-trial must be >= 1, got {args.threads_per_trial}")
    out = Path(args.out or f"runs/table1-{'smoke' if args.smoke_test else preset.name}").expanduser().resolve()
    overrides = dict(preset.overrides)
    data = None
    smoke = bool(args.smoke_test)
    if smoke:
        overrides = {}  # the sweeps' smoke settings: synthetic, narrow, 2-3 epochs
    elif preset.data == "fashion-mnist":
        data = find(env=env, download_to=REPO / "data")
        if data.data_dir is not None:
            overrides.update(data_dir=data.data_dir, download=False)
        elif preset.synthetic_fallback:
            overrides, smoke = dict(preset.fallback_overrides), True  # synthetic smoke data, said in one line
        else:
            raise ConfigError(f"the {preset.name} preset needs Fashion-MNIST: {data.note}")
    seeds = (1 if smoke else preset.seeds) if args.seeds is None else args.seeds  # smoke data: one seed
    if seeds < 1:
        raise ConfigError(f"--seeds must be >= 1, got {seeds}")
    overrides.update(parse_set(args.set))
    RunConfig.from_dict({k: v for k, v in overrides.items()})  # a bad --set fails here, before Ray starts
    gpus = args.gpus_per_trial
    on_gpu = gpus is not None and gpus > 0
    trials = args.trials_at_once if args.trials_at_once is not None else (None if on_gpu else 2)
    num_cpus = None if on_gpu else (trials or 1) * args.threads_per_trial
    return Plan(preset, experiments, seeds, overrides, out, data, trials, args.threads_per_trial, gpus, num_cpus, smoke)


# ---------------------------------------------------------------------------------------------- running
def machine() -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{cpu}, {os.cpu_count()} CPUs, {gpu}; torch {torch.__version__}"


def write_report(out: Path, quiet: bool = False, title: str = "") -> int:
    """analysis.table --paper (Markdown and CSV) and analysis.report, as subprocesses, into out/report/;
    ``title`` (e.g. the dataset) heads the printed table and table.md."""
    uri = f"sqlite:///{out / 'mlflow.db'}"
    report = out / "report"
    report.mkdir(parents=True, exist_ok=True)
    code = 0
    for fmt, name in (("markdown", "table.md"), ("csv", "table.csv")):
        r = subprocess.run([sys.executable, "-m", "analysis.table", "--tracking-uri", uri, "--paper", "--format", fmt],
                           capture_output=True, text=True, cwd=REPO)
        head = f"{title}\n\n" if title and fmt == "markdown" else ""
        (report / name).write_text(head + r.stdout)
        if r.returncode:
            print(r.stderr.strip(), file=sys.stderr)
            code = r.returncode
        elif fmt == "markdown":
            print(f"\n{head}{r.stdout}")
    r = subprocess.run([sys.executable, "-m", "analysis.report", "--tracking-uri", uri, "--out", str(report)],
                       capture_output=quiet, text=True, cwd=REPO)
    return code or r.returncode


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    t0 = time.perf_counter()
    started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    commit = git_commit()  # the code the runs start with (HEAD may move while a long table runs)
    try:
        plan = plan_table(args)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return 2
    if plan.data is not None:
        print(plan.data.note if plan.data.data_dir else f"{plan.data.note}; falling back to synthetic smoke data "
              "(the table says dataset synthetic)", flush=True)
    plan.out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    label = "smoke" if plan.smoke_test else plan.preset.name
    print(f"Table I, preset {label}: {', '.join(plan.experiments)}; {plan.seeds} seed(s); "
          f"{'as GPUs allow' if plan.trials_at_once is None else plan.trials_at_once} trial(s) at once x "
          f"{plan.threads_per_trial} thread(s); into {plan.out}", flush=True)
    codes: dict[str, int] = {}
    times: dict[str, float] = {}
    try:
        steps = plan.step_options(args, label, stamp)
        progress = Progress([(exp, planned_epochs(opts)) for exp, opts in steps])  # checks every step's space first
    except (ConfigError, SweepError) as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return 2
    try:
        with ray_session(None, plan.num_cpus, 0 if args.quiet else 1):
            for k, (exp, opts) in enumerate(steps):
                t_exp = time.perf_counter()
                progress.start(k)
                try:
                    codes[exp] = run_sweep(opts, progress=progress).exit_code
                except (ConfigError, SweepError, TrackingError) as e:
                    print(f"error: {exp}: {e}", file=sys.stderr, flush=True)
                    return 2
                times[exp] = time.perf_counter() - t_exp
                print(f"== {exp}: exit {codes[exp]}, {times[exp] / 60:.1f} min", flush=True)
    except KeyboardInterrupt:
        print("interrupted; each experiment resumes with python -m sweeps.<exp> --resume --storage-path "
              f"{plan.out / 'ray_results'}", file=sys.stderr, flush=True)
        return 130
    sweep_seconds = time.perf_counter() - t0
    dataset = "synthetic" if plan.smoke_test else plan.overrides.get("dataset", RunConfig.dataset)
    title = (f"Table I on {dataset}, recipe {args.recipe} "
             f"({label} preset{', real data' if dataset != 'synthetic' else ', smoke data: not the paper'})")
    report_code = 0 if args.no_report else write_report(plan.out, args.quiet, title)
    wall = time.perf_counter() - t0
    lines = [
        f"# Table I run ({label} preset)", "",
        f"- command: `python -m sweeps.table1 {' '.join(argv)}`",
        f"- started: {started}; commit {commit}",
        f"- machine: {machine()}",
        f"- data: {plan.data.note if plan.data else 'as the preset (or --smoke-test) says'}",
        f"- RunConfig overrides: `{json.dumps(plan.overrides, sort_keys=True)}`; seeds {plan.seeds}",
        f"- packing: {plan.trials_at_once or 'as GPUs allow'} trial(s) at once x {plan.threads_per_trial} thread(s), "
        f"GPUs per trial {plan.gpus_per_trial if plan.gpus_per_trial is not None else 'auto'}",
        *(f"- {exp}: {times[exp] / 60:.1f} min (exit {codes[exp]})" for exp in times),
        f"- sweeps {sweep_seconds / 60:.1f} min; whole wall time, report included: {wall / 60:.1f} min", "",
    ]
    if not args.no_report:
        (plan.out / "report").mkdir(parents=True, exist_ok=True)
        # one section per invocation: a table run in parts into one --out keeps every part's command and time
        run_md = plan.out / "report" / "RUN.md"
        earlier = run_md.read_text() + "\n" if run_md.exists() else ""
        run_md.write_text(earlier + "\n".join(lines))
    print(f"whole wall time: {wall:.0f} s ({wall / 60:.1f} min): sweeps {sweep_seconds:.0f} s, report {wall - sweep_seconds:.0f} s; "
          f"report in {plan.out / 'report'}", flush=True)
    worst = max(codes.values(), default=0)
    return worst or (1 if report_code else 0)


if __name__ == "__main__":
    sys.exit(main())
