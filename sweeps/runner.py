"""The one sweep path: checks first, then Ray Tune, with MLflow set up on the driver, for every search kind.

    from bigbatch.experiments import load_experiment
    from sweeps.runner import SweepOptions, run_sweep
    result = run_sweep(SweepOptions(load_experiment("exp6"), smoke_test=True, storage_path="/tmp/rr",
                                    tracking_uri="sqlite:////tmp/m.db"))
    result.exit_code, result.name, result.tracking_uri, result.parent_run_id

Every user error (bad config, resources the cluster lacks, unreachable address or tracking server,
unwritable storage, nothing to resume) raises ``SweepError`` (or ``ConfigError``, or
``sweeps.tracking.TrackingError`` for the tracking store) with one line, before any trial starts;
``sweeps.cli`` turns it into exit code 2.

What differs between the kinds of search (the experiments' grids, the Optuna search for factor_lr) is in
``sweeps.search``: their spaces, MLflow experiment, search algorithm, scheduler and summary. Everything else
is here, once: the options (``SweepOptions``, with its ``search_kind``), the plan (names, storage, tracking,
data, resume), the parent run, the Tuner, failure reporting, the closing table, and ``Progress`` (trials done
of several sweeps, with an estimate of the time left: sweeps.table1).
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Callable, Iterator

from bigbatch.config import ConfigError, RunConfig
from bigbatch.experiments import Experiment, load_experiment

from .ray_compat import trial_configs
from .search import Grid, Job, kind_from_json
from .space import SweepContext, SweepSpace, TrialNames, prepare_space_data, trial_run_config
from .tracking import check_tracking, close_sweep, log_sweep_inputs, mark_stopped, open_sweep, reopen_sweep

SWEEP_FILE = "bigbatch_sweep.json"  # in the sweep's directory: its options and trial context, to resume with


class SweepError(RuntimeError):
    """A sweep that cannot start (one line, for a user)."""


@dataclass
class SweepOptions:
    experiment: Experiment  # resolved with its recipe: bigbatch.experiments.load_experiment(name, recipe)
    batch_sizes: list[int] | None = None  # None: the experiment's (Table I row)
    seeds: int = 1  # repeats of every point, seeds seed..seed+K-1
    overrides: dict[str, Any] = field(default_factory=dict)  # RunConfig keys (--config, --set, --epochs, ...)
    search: dict[str, list[Any]] | None = None  # None: the experiment's grid (exp5: factor_lr; lr-grid: lr)
    smoke_test: bool = False
    gpus_per_trial: float | None = None  # None: 1 when the cluster has GPUs, else 0
    cpus_per_trial: float = 1.0
    storage_path: str | None = None  # None: ./ray_results
    name: str | None = None  # None: <exp>-<recipe>[-smoke]-<UTC time>
    tracking_uri: str | None = None  # None: bigbatch.schema.default_tracking_uri() (sqlite:///<cwd>/mlflow.db)
    address: str | None = None  # an existing Ray cluster; None: start one here
    num_cpus: int | None = None  # local Ray only: CPUs to give it (default: all)
    max_concurrent: int | None = None
    max_failures: int = 2
    checkpoint_every: int = 1
    keep_checkpoints: int = 2
    resume: bool = False
    verbose: int = 1  # 0 quiet, 1 trial table, 2 + Tune's own messages
    search_kind: Any = field(default_factory=Grid)  # sweeps.search: Grid (the experiment's grid) | OptunaFactorLR

    def to_json(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d.update(experiment=self.experiment.name, recipe=self.experiment.recipe, search_kind=self.search_kind.to_json())
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "SweepOptions":
        d = dict(d)
        d["search_kind"] = kind_from_json(d.get("search_kind"))
        return cls(load_experiment(d.pop("experiment"), d.pop("recipe")), **d)


@dataclass
class SweepResult:
    name: str
    path: str  # the Tune experiment directory (storage_path/name)
    tracking_uri: str
    experiment_name: str  # MLflow experiment, e.g. bigbatch-exp6
    experiment_id: str
    parent_run_id: str
    num_trials: int
    num_errors: int
    num_unfinished: int
    exit_code: int  # 0 all trials finished, 1 some errored, 130 interrupted
    summary: dict[Any, Any] = field(default_factory=dict)  # the search kind's (Optuna: the best f per batch size)


# ---------------------------------------------------------------------------------------------- checks
def check_storage(path: Path) -> None:
    """Probe that ``path`` can be created and written; leaves nothing behind (bad input writes nothing)."""
    created = [p for p in (path, *path.parents) if not p.exists()]  # deepest first
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".bigbatch-write-test-{os.getpid()}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        raise SweepError(f"storage path {path} is not writable ({e.strerror or e})") from None
    finally:
        for p in created:  # made again once every check has passed
            try:
                p.rmdir()
            except OSError:
                pass


def check_address(address: str, timeout: float = 5.0) -> None:
    """Fail fast when a host:port address does not answer (ray.init would retry for a long time)."""
    hostport = address.split("://", 1)[-1]
    if address in ("auto", "local") or ":" not in hostport:
        return
    host, _, port = hostport.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            pass
    except (OSError, ValueError) as e:
        raise SweepError(f"cannot reach the Ray cluster at --address {address} ({getattr(e, 'strerror', None) or e})") from None


def check_resources(cpus: float, gpus: float | None) -> float:
    """GPUs per trial (None: 1 when the cluster has GPUs, else 0); SweepError when no alive node can fit
    one trial (Tune would leave it PENDING forever). Needs a Ray session."""
    import ray

    total = ray.cluster_resources()
    total_gpus, total_cpus = total.get("GPU", 0.0), total.get("CPU", 0.0)
    if gpus is None:
        gpus = 1.0 if total_gpus > 0 else 0.0
    if gpus > 1 and gpus != int(gpus):
        raise SweepError(f"--gpus-per-trial {gpus:g}: fractional values must be below 1 (Ray packs trials on one GPU)")
    if cpus < 0 or gpus < 0:
        raise SweepError("--cpus-per-trial and --gpus-per-trial must be >= 0")
    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    if gpus > 0 and total_gpus == 0:
        raise SweepError(f"--gpus-per-trial {gpus:g} but the Ray cluster has 0 GPUs (use --gpus-per-trial 0 to train on CPUs)")
    if cpus > 0 and total_cpus == 0:
        raise SweepError(f"--cpus-per-trial {cpus:g} but the Ray cluster has 0 CPUs")
    if any(r.get("CPU", 0.0) >= cpus and r.get("GPU", 0.0) >= gpus for r in nodes):
        return gpus
    max_gpu = max((r.get("GPU", 0.0) for r in nodes), default=0.0)
    max_cpu = max((r.get("CPU", 0.0) for r in nodes), default=0.0)
    if gpus > max_gpu:
        raise SweepError(f"--gpus-per-trial {gpus:g} but no Ray node has more than {max_gpu:g} GPUs")
    if cpus > max_cpu:
        raise SweepError(f"--cpus-per-trial {cpus:g} but no Ray node has more than {max_cpu:g} CPUs")
    raise SweepError(f"no Ray node has {cpus:g} CPUs and {gpus:g} GPUs at once")


# ---------------------------------------------------------------------------------------------- ray
def ray_environment() -> None:
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ["RAY_AIR_NEW_OUTPUT"] = "0"  # the classic trial table (CLIReporter) with our columns
    # num_to_keep forces a state snapshot per checkpoint; with short smoke epochs Tune warns about it
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    os.environ.setdefault("MLFLOW_ENABLE_ASYNC_LOGGING", "false")
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    tmp = os.environ.get("RAY_TMPDIR", "")
    if tmp and len(tmp) > 40:  # AF_UNIX socket paths are limited to 107 bytes
        os.environ["RAY_TMPDIR"] = "/tmp"


@contextmanager
def ray_session(address: str | None, num_cpus: int | None, verbose: int) -> Iterator[None]:
    """Start or join Ray for the block (an already initialised session is used and left running)."""
    import ray

    if ray.is_initialized():
        yield
        return
    ray_environment()
    kwargs: dict[str, Any] = dict(include_dashboard=False, log_to_driver=True, logging_level="WARNING" if verbose < 2 else "INFO")
    if address:
        check_address(address)
        try:
            ray.init(address=address, **kwargs)
        except Exception as e:
            raise SweepError(f"cannot connect to the Ray cluster at --address {address}: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    else:
        # "local": a new Ray instance, never a `ray start` cluster someone else left on this machine
        ray.init(address="local", num_cpus=num_cpus or os.cpu_count() or 1, **kwargs)
    try:
        yield
    finally:
        ray.shutdown()


# ---------------------------------------------------------------------------------------------- trial errors
def error_cause(error: BaseException | None) -> BaseException | None:
    """The trainable's own exception inside Ray's wrapper (``RayTaskError.cause``), or the error itself."""
    cause = getattr(error, "cause", None)
    return cause if isinstance(cause, BaseException) else error


def known_error(error: BaseException | None) -> str | None:
    """One line ``TrainingError: out of memory ...`` for an error bigbatch knows (DataError, TrainingError,
    ConfigError, out of memory), None for any other (its traceback is what helps)."""
    import torch

    from bigbatch.data import DataError
    from bigbatch.train import TrainingError

    cause = error_cause(error)
    if not isinstance(cause, (DataError, TrainingError, ConfigError, torch.OutOfMemoryError)):
        return None
    text = str(cause).strip().splitlines()
    return f"{type(cause).__name__}: {text[0] if text else ''}"


def _load_trial_error(trial) -> BaseException | None:
    import ray.cloudpickle as cloudpickle

    try:
        with open(trial.pickled_error_file, "rb") as f:
            return cloudpickle.load(f)
    except Exception:
        return None


def trial_errors_callback():
    """A Tune callback (driver side) that prints each trial failure: one line for a known error (the full
    traceback stays in the trial's ``error.txt`` and MLflow), Ray's whole message for any other. Turns off
    Tune's own printing of trial errors (a whole remote traceback each), read when a Tuner starts."""
    from ray import tune

    os.environ["TUNE_PRINT_ALL_TRIAL_ERRORS"] = "0"

    class TrialErrors(tune.Callback):
        def _report(self, trial, retrying: bool) -> None:
            error = _load_trial_error(trial)
            line = known_error(error)
            then = f"; retrying from its last checkpoint (failure {trial.run_metadata.num_failures})" if retrying else ""
            if line is not None:
                print(f"trial {trial} failed: {line}{then} (traceback: {trial.error_file})", file=sys.stderr, flush=True)
            else:
                print(f"trial {trial} failed{then} (also in {trial.error_file}):\n{error}", file=sys.stderr, flush=True)

        def on_trial_recover(self, iteration, trials, trial, **info):
            self._report(trial, retrying=True)

        def on_trial_error(self, iteration, trials, trial, **info):
            self._report(trial, retrying=False)

    return TrialErrors()


# ---------------------------------------------------------------------------------------------- naming, state
def default_name(exp: Experiment, smoke: bool) -> str:
    return f"{exp.name}-{exp.recipe}{'-smoke' if smoke else ''}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}"


def repair_tune_state(path: Path) -> None:
    """Move aside Tune state files a kill left torn, before ``Tuner.restore`` reads them.

    Tune copies its snapshots (``experiment_state-*.json``, ``basic-variant-state-*.json``) into the
    storage path non-atomically; a driver killed during the copy leaves an empty or truncated file,
    and ``Tuner.restore`` then silently *restarts* the sweep with new, config-less trials. The newest
    readable experiment state is kept (an older one only repeats epochs, which are logged once); a
    torn search-algorithm state sets aside every such file (grid trials are all in the experiment state).
    """
    import ray.cloudpickle as cloudpickle

    def readable(f: Path, load) -> bool:
        try:
            with open(f, "rb") as fh:
                load(fh)
            return True
        except Exception:
            return False

    def aside(f: Path) -> None:
        f.rename(f.with_name(f.name + ".torn"))
        print(f"warning: {f} was torn by the interruption; set aside as {f.name}.torn", file=sys.stderr, flush=True)

    states = sorted(path.glob("experiment_state-*.json"), reverse=True)  # Tune reads the newest by name
    for f in states:
        if readable(f, json.load):
            break
        aside(f)
    else:
        if states:
            raise SweepError(f"cannot resume: every Tune experiment state in {path} is unreadable")
    searcher = sorted(path.glob("basic-variant-state-*.json"), reverse=True)
    if searcher and not readable(searcher[0], cloudpickle.load):
        for f in searcher:
            aside(f)


def latest_sweep(storage: Path, experiment: str, kind: str = "grid") -> str | None:
    """The most recently started sweep of this experiment and search kind under storage (--resume without --name)."""
    candidates = []
    for f in storage.glob(f"*/{SWEEP_FILE}"):
        try:
            saved = json.loads(f.read_text())
        except (OSError, ValueError):
            continue
        options = saved.get("options", {})
        if options.get("experiment") == experiment and (options.get("search_kind") or {}).get("kind", "grid") == kind:
            candidates.append((f.stat().st_mtime, f.parent.name))
    return max(candidates)[1] if candidates else None


def reporter(searched: list[str], cyclic: bool):
    """Tune's trial table: bs, seed and the searched keys (configured values), epoch, val_acc, lr, img/s,
    and ``f``, the CyclicLR factor after eq. 2 (``scaled_factor_lr``), for cyclic schedules."""
    from ray.tune import CLIReporter

    metrics = {"epoch": "epoch", "val_acc": "val_acc", "lr": "lr", "images_per_second": "img/s"}
    if cyclic:
        metrics["scaled_factor_lr"] = "f"
    return CLIReporter(
        metric_columns=metrics,
        parameter_columns={"batch_size": "bs", "seed": "seed", **{k: k for k in searched}},
        max_report_frequency=15,
        max_progress_rows=40,
        sort_by_metric=False,
    )


# ---------------------------------------------------------------------------------------------- progress
def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"


class Progress:
    """Where a run of several sweeps stands (sweeps.table1): step k of n, trials done of the total, the time
    elapsed and an estimate of what is left. Work is counted in planned epochs (a trial's cost grows with its
    epochs; every trial of a table trains on the same images): left = elapsed x epochs to go / epochs done.
    An early-stopped trial counts its planned epochs, so with ASHA the estimate errs long."""

    def __init__(self, steps: list[tuple[str, list[float]]], out: Callable[[str], None] | None = None,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        self.steps = steps  # (name, planned epochs of each trial)
        self.total_trials = sum(len(work) for _, work in steps)
        self.total_work = float(sum(sum(work) for _, work in steps))
        self.out = out or (lambda line: print(line, flush=True))
        self.clock = clock
        self.t0 = clock()
        self.step = -1
        self.done_trials = 0
        self.done_work = 0.0

    def start(self, k: int) -> None:
        """Step ``k`` (0-based) begins."""
        self.step = k
        name, work = self.steps[k]
        self.out(f"== step {k + 1}/{len(self.steps)}: {name} ({len(work)} trials); {self.status()}")

    def trial_done(self, work: float) -> None:
        self.done_trials += 1
        self.done_work += work
        self.out(f"progress: {self.status()}")

    def left(self) -> float | None:
        """Seconds left by the estimate (None before the first trial ends)."""
        if self.done_work <= 0:
            return None
        return (self.clock() - self.t0) * max(0.0, self.total_work - self.done_work) / self.done_work

    def status(self) -> str:
        name = self.steps[self.step][0] if self.step >= 0 else "-"
        left = self.left()
        estimate = f"about {_minutes(left)} left" if left is not None else "an estimate after the first trial"
        return (f"step {self.step + 1}/{len(self.steps)} ({name}), {self.done_trials}/{self.total_trials} trials done, "
                f"{_minutes(self.clock() - self.t0)} elapsed, {estimate}")

    def callback(self, base: dict[str, Any]):
        """A Tune callback counting each trial that ends (completed, stopped, errored) with its planned epochs."""
        from ray import tune

        progress = self

        class TrialsDone(tune.Callback):
            def _done(self, trial) -> None:
                try:
                    work = float(trial_run_config(base, trial.config).total_epochs)
                except Exception:
                    work = 0.0
                progress.trial_done(work)

            def on_trial_complete(self, iteration, trials, trial, **info):
                self._done(trial)

            def on_trial_error(self, iteration, trials, trial, **info):
                self._done(trial)

        return TrialsDone()


def planned_epochs(opts: SweepOptions) -> list[float]:
    """The planned epochs of each trial the sweep ``opts`` will run (for Progress), without starting it."""
    kind = opts.search_kind
    return [float(trial_run_config(space.base, point).total_epochs) for space, point in kind.planned(kind.spaces(opts))]


# ---------------------------------------------------------------------------------------------- the sweep
@dataclass(frozen=True)
class SweepPlan:
    """A sweep resolved and checked, before Ray starts."""

    opts: SweepOptions  # on resume: the saved options (only where Ray runs and the verbosity may change)
    spaces: tuple[SweepSpace, ...]  # the grid's one space, or one per batch size (sweeps.search)
    name: str
    path: Path  # the Tune experiment directory: storage/name
    tracking_uri: str
    context: SweepContext | None = None  # a resumed sweep's trial context, from its sweep file
    datasets: tuple[dict[str, Any], ...] = ()  # bigbatch.data.DatasetInfo of the trials' data, prepared on the driver

    @property
    def storage(self) -> Path:
        return self.path.parent

    @property
    def space(self) -> SweepSpace:
        """The first space (the grid's only one), whose trial context a resume restores."""
        return self.spaces[0]


def plan_sweep(opts: SweepOptions) -> SweepPlan:
    """Resolve the name, the saved options of a resumed sweep and the space; every check Ray is not needed for."""
    from ray import tune

    exp = opts.experiment
    storage = Path(opts.storage_path or "ray_results").expanduser().resolve()
    context = None
    if opts.resume and not opts.search_kind.resumable:
        raise ConfigError(f"a {opts.search_kind.kind} search has no --resume: run the same command with the same --name to continue it")
    if opts.resume:
        name = opts.name or (latest_sweep(storage, exp.name, opts.search_kind.kind) if storage.is_dir() else None)
        path = storage / (name or "")
        if not name or not (tune.Tuner.can_restore(str(path)) or (path / SWEEP_FILE).is_file()):
            named = f"named {opts.name!r} " if opts.name else ""
            raise SweepError(f"nothing to resume: no {exp.name} sweep {named}in {storage}")
        try:
            saved = json.loads((path / SWEEP_FILE).read_text())
            resumed = SweepOptions.from_json(saved["options"])
            context = SweepContext.from_json(saved["context"])  # the same context as the trials had: Tune restores only their params
        except (OSError, ValueError, KeyError, TypeError):
            raise SweepError(f"cannot resume {path}: its {SWEEP_FILE} is missing or from another bigbatch version") from None
        # Tuner.restore brings back the trials (with their resources) and their params from the sweep directory;
        # only where Ray runs (--address, --num-cpus) and the verbosity may change on resume.
        defaults = SweepOptions(exp)
        changed = {k: getattr(opts, k) for k in ("address", "num_cpus", "verbose") if getattr(opts, k) != getattr(defaults, k)}
        opts = replace(resumed, **changed, resume=True, name=name, storage_path=str(storage))
        uri = context.run.tracking_uri
    else:
        name = opts.name or default_name(exp, opts.smoke_test)
        path = storage / name
        if tune.Tuner.can_restore(str(path)) or (path / SWEEP_FILE).is_file():
            raise SweepError(f"a sweep named {name!r} already exists in {storage}: use --resume to continue it, or another --name")
        uri = opts.tracking_uri
    spaces = tuple(opts.search_kind.spaces(opts))
    if opts.checkpoint_every < 1:
        raise ConfigError(f"--checkpoint-every must be >= 1, got {opts.checkpoint_every}")
    if opts.max_concurrent is not None and opts.max_concurrent < 1:
        raise ConfigError(f"--max-concurrent must be >= 1, got {opts.max_concurrent}")
    check_storage(path)
    uri = check_tracking(uri)
    datasets = prepare_space_data(*spaces)  # last: it may download; the trials get download=false
    return SweepPlan(opts, spaces, name, path, uri, context, datasets)


def run_sweep(opts: SweepOptions, train_fn: Callable[..., dict[str, Any]] | None = None,
              progress: "Progress | None" = None) -> SweepResult:
    """Run or resume one sweep of any kind; raises SweepError, ConfigError or TrackingError before any trial on
    bad input. ``progress``: counts this sweep's trials into a run of several (sweeps.table1)."""
    plan = plan_sweep(opts)
    with ray_session(plan.opts.address, plan.opts.num_cpus, plan.opts.verbose):
        gpus = check_resources(plan.opts.cpus_per_trial, plan.opts.gpus_per_trial)
        return _run(plan, gpus, train_fn, progress)


def _context(plan: SweepPlan, gpus: float) -> SweepContext:
    """The trials' context: new (and the parent run created), or the saved one (the parent run reopened)."""
    if plan.context is not None:
        reopen_sweep(plan.context.run)
        return plan.context
    space, opts, kind = plan.space, plan.opts, plan.opts.search_kind
    params = {
        **kind.parent_params(plan),
        "gpus_per_trial": gpus,
        "cpus_per_trial": opts.cpus_per_trial,
        "storage_path": str(plan.path),
        **{f"base.{k}": json.dumps(v) if isinstance(v, (list, dict)) else v for k, v in space.base.items()},
    }
    run = open_sweep(plan.tracking_uri, opts.experiment, plan.name, dataset=str(space.base.get("dataset", RunConfig.dataset)),
                     search=kind.kind, smoke_test=opts.smoke_test, params=params, mlflow_experiment=kind.mlflow_experiment(opts))
    context = SweepContext(space.base, run, tuple(space.search), opts.checkpoint_every, plan.datasets)
    log_sweep_inputs(run, context.trial_datasets(*plan.spaces))
    return context


def make_tuner(plan: SweepPlan, ctx: SweepContext, job: Job, gpus: float, train_fn, callbacks: list):
    """The Tuner of one job: the trainable with its resources, the kind's search algorithm, scheduler and
    sample count, the sweep's names, failures, checkpoints, trial table and callbacks."""
    from ray import tune

    from .trainable import make_trainable

    opts = plan.opts
    trainable = tune.with_resources(make_trainable(ctx, train_fn), {"cpu": opts.cpus_per_trial, "gpu": gpus})
    names = TrialNames(ctx.base, ctx.searched)
    cyclic = ctx.base.get("schedule", RunConfig.schedule) == "cyclic"
    return tune.Tuner(
        trainable,
        param_space=job.param_space,
        tune_config=tune.TuneConfig(search_alg=job.search_alg, scheduler=job.scheduler, num_samples=job.num_samples,
                                    max_concurrent_trials=opts.max_concurrent, reuse_actors=True,
                                    trial_name_creator=names.name, trial_dirname_creator=names.dirname),
        run_config=tune.RunConfig(
            name=job.run_name,
            storage_path=str(plan.storage),
            failure_config=tune.FailureConfig(max_failures=opts.max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=job.keep_checkpoints or opts.keep_checkpoints),
            progress_reporter=reporter(list(ctx.searched), cyclic),
            callbacks=[trial_errors_callback(), *callbacks],
            verbose=opts.verbose,
        ),
    )


def _run(plan: SweepPlan, gpus: float, train_fn, progress: "Progress | None" = None) -> SweepResult:
    from ray import tune

    opts, exp, kind = plan.opts, plan.opts.experiment, plan.opts.search_kind
    ctx = _context(plan, gpus)
    if kind.resumable:
        plan.path.mkdir(parents=True, exist_ok=True)
        (plan.path / SWEEP_FILE).write_text(json.dumps({"options": opts.to_json(), "context": ctx.to_json()}, indent=2))
    if opts.verbose:
        print(f"{'resuming' if opts.resume else 'starting'} sweep {plan.name}: {exp.name} ({exp.label}), recipe {exp.recipe}, "
              f"{kind.num_trials(plan)} trials ({kind.kind}), {opts.cpus_per_trial:g} CPU + {gpus:g} GPU per trial; "
              f"MLflow {plan.tracking_uri} experiment {ctx.run.mlflow_experiment}", flush=True)
    done: list[tuple[Job, list, SweepContext]] = []
    for job in kind.jobs(plan):
        job_ctx = ctx if job.space is plan.space else replace(ctx, base=job.space.base)
        if job.label and opts.verbose:
            print(job.label, flush=True)
        callbacks = [progress.callback(job_ctx.base)] if progress is not None else []
        job_path = plan.storage / job.run_name  # the grid's one job: the sweep's own directory
        if opts.resume and tune.Tuner.can_restore(str(job_path)):  # a job that never started starts now
            repair_tune_state(job_path)
            from .trainable import make_trainable

            trainable = tune.with_resources(make_trainable(job_ctx, train_fn), {"cpu": opts.cpus_per_trial, "gpu": gpus})
            tuner = tune.Tuner.restore(str(job_path), trainable=trainable, resume_unfinished=True, resume_errored=True)
        else:
            tuner = make_tuner(plan, job_ctx, job, gpus, train_fn, callbacks)
        results = list(tuner.fit())
        if kind.early_stopping:  # trials a scheduler stopped never reach the end of train(): their runs are marked stopped
            for r in results:
                m = r.metrics or {}
                if r.error is None and "status" not in m and m.get("mlflow_run_id"):
                    mark_stopped(plan.tracking_uri, m["mlflow_run_id"])
        done.append((job, results, job_ctx))
    return _finish(done, plan, ctx)


def ui_hint(tracking_uri: str) -> str:
    """How to see the runs: a tracking server's own URL, or ``mlflow ui`` on a local store."""
    if tracking_uri.startswith(("http://", "https://")):
        return f"open {tracking_uri} in a browser (runs: Experiments -> the experiment -> Model training)"
    return f"mlflow ui --backend-store-uri {tracking_uri} (then http://127.0.0.1:5000, Model training)"


def _cell(value: Any) -> str:
    return "-" if value is None else f"{value:.3g}" if isinstance(value, float) else str(value)


def _finish(done: list[tuple[Job, list, SweepContext]], plan: SweepPlan, ctx: SweepContext) -> SweepResult:
    """Count the trials of every job, close the parent run, print the summary table (and the kind's summary)."""
    kind = plan.opts.search_kind
    searched = list(ctx.searched)
    rows, errors, unfinished, reasons = [], 0, 0, []
    # (context, configs, result) of every trial; trials that never reported have an empty Result.config
    each = [(job_ctx, configs, r) for _, results, job_ctx in done for configs in [trial_configs(results)] for r in results]
    for job_ctx, configs, r in each:
        m = r.metrics or {}
        params = r.config or configs.get(os.path.basename(str(r.path)), {})
        if r.error is not None:
            errors += 1
            state = "error"
        elif "status" not in m and kind.early_stopping:
            state = "stopped"  # by the kind's scheduler (ASHA)
        elif "status" not in m:
            unfinished += 1
            state = "unfinished"
        else:
            state = m["status"]
        try:
            cfg = trial_run_config(job_ctx.base, params)
            f = f"{cfg.scaled_factor_lr:.3g}" if cfg.schedule == "cyclic" else None
        except Exception:
            f = None
        point = [_cell(params.get(k)) for k in searched if k != "factor_lr"]
        if r.error is not None:
            cause = error_cause(r.error)
            reason = known_error(r.error) or f"{type(cause).__name__} (traceback in {os.path.join(str(r.path), 'error.txt')})"
            reasons.append((params.get("batch_size", 0), params.get("seed", 0), point, f, reason))
        rows.append((params.get("batch_size", 0), params.get("seed", 0), point, f, state, m.get("epoch"), m.get("best_val_acc"), m.get("test_acc")))
    code = 130 if unfinished else (1 if errors else 0)
    close_sweep(ctx.run, {0: "FINISHED", 1: "FAILED", 130: "KILLED"}[code], {"num_trials": len(rows), "num_errors": errors})
    if plan.opts.verbose:
        print(f"\nsweep {plan.name}: {len(rows) - errors - unfinished} finished, {errors} errored, {unfinished} unfinished")
        cols = [k for k in searched if k != "factor_lr"]
        show_f = any(row[3] is not None for row in rows)
        print(f"{'bs':>5} {'seed':>4} " + "".join(f"{k:>8} " for k in cols) + (f"{'f':>5} " if show_f else "")
              + f"{'status':>10} {'epochs':>6} {'best_val':>8} {'test_acc':>8}")
        fmt = lambda v: f"{v:8.2f}" if isinstance(v, (int, float)) else f"{'-':>8}"  # noqa: E731
        for bs, seed, point, f, state, ep, bv, ta in sorted(rows, key=lambda r: (r[0], r[1], r[2], str(r[3]))):
            print(f"{bs:>5} {seed:>4} " + "".join(f"{v:>8} " for v in point) + (f"{f or '-':>5} " if show_f else "")
                  + f"{state:>10} {str(ep if ep is not None else '-'):>6} {fmt(bv)} {fmt(ta)}")
        for bs, seed, point, f, reason in sorted(reasons, key=lambda r: (r[0], r[1], r[2], str(r[3]))):
            where = " ".join([f"bs={bs}", *(f"{k}={v}" for k, v in zip(cols, point)), *([f"f={f}"] if f else []), f"seed={seed}"])
            print(f"failed {where}: {reason}")
        print(f"MLflow: experiment {ctx.run.mlflow_experiment}, parent run {ctx.run.parent_run_id}; view with: {ui_hint(plan.tracking_uri)}")
        if code and kind.resumable:
            print(f"resume with: python -m {kind.command(plan.opts)} --resume --name {plan.name} "
                  f"--storage-path {plan.storage}", flush=True)
        elif code:
            print(f"continue with: the same command and --name {plan.name}", flush=True)
    summary = kind.summary(plan, [(job, results) for job, results, _ in done])
    run = ctx.run
    return SweepResult(plan.name, str(plan.path), plan.tracking_uri, run.mlflow_experiment, run.experiment_id, run.parent_run_id,
                       len(rows), errors, unfinished, code, summary)
