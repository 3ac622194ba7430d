"""Run (or resume) one sweep: checks first, then Ray Tune, with MLflow set up on the driver.

    from sweeps.runner import SweepOptions, run_sweep
    result = run_sweep(SweepOptions("exp6", smoke_test=True, storage_path="/tmp/rr", tracking_uri="sqlite:////tmp/m.db"))
    result.exit_code, result.name, result.tracking_uri, result.parent_run_id

Every user error (bad config, resources the cluster lacks, unreachable address or tracking server,
unwritable storage, nothing to resume) raises ``SweepError`` with one line, before any trial starts;
``sweeps.cli`` turns it into exit code 2.
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from bigbatch.config import ConfigError
from bigbatch.experiments import EXPERIMENTS

from .space import SweepSpace, build_space, trial_dirname, trial_label, trial_run_config
from .tracking import TrackingError, check_tracking, default_tracking_uri, finish_sweep, git_commit, normalize_tracking_uri, setup_sweep

SWEEP_FILE = "bigbatch_sweep.json"  # in the sweep's directory: the options, to resume with


class SweepError(RuntimeError):
    """A sweep that cannot start (one line, for a user)."""


@dataclass
class SweepOptions:
    experiment: str  # exp1..exp6
    recipe: str = "text"
    batch_sizes: list[int] | None = None  # None: the experiment's (Table I row)
    seeds: int = 1  # repeats of every point, seeds seed..seed+K-1
    overrides: dict[str, Any] = field(default_factory=dict)  # RunConfig keys (--config, --set, --epochs, ...)
    search: dict[str, list[Any]] | None = None  # None: the experiment's search grid (exp5: factor_lr)
    smoke_test: bool = False
    gpus_per_trial: float | None = None  # None: 1 when the cluster has GPUs, else 0
    cpus_per_trial: float = 1.0
    storage_path: str | None = None  # None: ./ray_results
    name: str | None = None  # None: <exp>-<recipe>[-smoke]-<UTC time>
    tracking_uri: str | None = None  # None: sqlite:///<cwd>/mlflow.db
    address: str | None = None  # an existing Ray cluster; None: start one here
    num_cpus: int | None = None  # local Ray only: CPUs to give it (default: all)
    max_concurrent: int | None = None
    max_failures: int = 2
    checkpoint_every: int = 1
    keep_checkpoints: int = 2
    resume: bool = False
    verbose: int = 1  # 0 quiet, 1 trial table, 2 + Tune's own messages

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


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
        for p in created:  # made again by _run once every check has passed
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


def check_resources(cpus: float, gpus: float) -> None:
    """Raise SweepError when no alive node can fit one trial (Tune would leave it PENDING forever)."""
    import ray

    if gpus > 1 and gpus != int(gpus):
        raise SweepError(f"--gpus-per-trial {gpus:g}: fractional values must be below 1 (Ray packs trials on one GPU)")
    if cpus < 0 or gpus < 0:
        raise SweepError("--cpus-per-trial and --gpus-per-trial must be >= 0")
    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    total = ray.cluster_resources()
    total_gpus, total_cpus = total.get("GPU", 0.0), total.get("CPU", 0.0)
    if gpus > 0 and total_gpus == 0:
        raise SweepError(f"--gpus-per-trial {gpus:g} but the Ray cluster has 0 GPUs (use --gpus-per-trial 0 to train on CPUs)")
    if cpus > 0 and total_cpus == 0:
        raise SweepError(f"--cpus-per-trial {cpus:g} but the Ray cluster has 0 CPUs")
    if any(r.get("CPU", 0.0) >= cpus and r.get("GPU", 0.0) >= gpus for r in nodes):
        return
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


def connect_ray(address: str | None, num_cpus: int | None, verbose: int) -> bool:
    """Start or join Ray; returns True when this call started it (so it should shut it down)."""
    import ray

    if ray.is_initialized():
        return False
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
    return True


# ---------------------------------------------------------------------------------------------- naming
def _trial_name(trial) -> str:
    try:
        return trial_label(trial_run_config(trial.config)).replace(" ", "_")
    except Exception:
        return str(trial)


def _trial_dirname(trial) -> str:
    try:
        return trial_dirname(trial_run_config(trial.config), trial.trial_id)
    except Exception:
        return trial.trial_id


def default_name(experiment: str, recipe: str, smoke: bool) -> str:
    return f"{experiment}-{recipe}{'-smoke' if smoke else ''}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}"


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


def latest_sweep(storage: Path, experiment: str) -> str | None:
    """The most recently started sweep of this experiment under storage (for --resume without --name)."""
    candidates = []
    for f in storage.glob(f"*/{SWEEP_FILE}"):
        try:
            saved = json.loads(f.read_text())
        except (OSError, ValueError):
            continue
        if saved.get("options", {}).get("experiment") == experiment:
            candidates.append((f.stat().st_mtime, f.parent.name))
    return max(candidates)[1] if candidates else None


def reporter(search_keys: list[str]):
    from ray.tune import CLIReporter

    params = {"batch_size": "bs", "seed": "seed"}
    for key in search_keys:
        params[key] = {"factor_lr": "f"}.get(key, key)
    return CLIReporter(
        metric_columns={"epoch": "epoch", "val_acc": "val_acc", "lr": "lr", "images_per_second": "img/s"},
        parameter_columns=params,
        max_report_frequency=15,
        max_progress_rows=40,
        sort_by_metric=False,
    )


# ---------------------------------------------------------------------------------------------- the sweep
def run_sweep(opts: SweepOptions, train_fn: Callable[..., dict[str, Any]] | None = None) -> SweepResult:
    """Run or resume one sweep; raises SweepError (or ConfigError) before any trial on bad input."""
    from ray import tune

    if opts.experiment not in EXPERIMENTS:
        raise ConfigError(f"unknown experiment {opts.experiment!r}; valid: {', '.join(EXPERIMENTS)}")
    storage = Path(opts.storage_path or "ray_results").expanduser().resolve()
    saved: dict[str, Any] | None = None
    if opts.resume:
        name = opts.name or (latest_sweep(storage, opts.experiment) if storage.is_dir() else None)
        path = storage / (name or "")
        if not name or not tune.Tuner.can_restore(str(path)):
            raise SweepError(f"nothing to resume: no {opts.experiment} sweep {'named ' + repr(opts.name) + ' ' if opts.name else ''}in {storage}")
        try:
            saved = json.loads((path / SWEEP_FILE).read_text())
        except (OSError, ValueError):
            raise SweepError(f"nothing to resume: {path} holds no {SWEEP_FILE} (not a bigbatch sweep)") from None
        base = SweepOptions(**saved["options"])
        # Tuner.restore brings back the trials (with their resources) and the Tune configs from the sweep
        # directory; only where Ray runs (--address, --num-cpus) and the verbosity may change on resume.
        for key in ("address", "num_cpus", "verbose"):
            value = getattr(opts, key)
            if value is not None and value != getattr(SweepOptions(opts.experiment), key):
                setattr(base, key, value)
        opts = dataclasses.replace(base, resume=True, name=name, storage_path=str(storage))
    else:
        name = opts.name or default_name(opts.experiment, opts.recipe, opts.smoke_test)
        path = storage / name
        if tune.Tuner.can_restore(str(path)):
            raise SweepError(f"a sweep named {name!r} already exists in {storage}: use --resume to continue it, or another --name")

    space = build_space(opts.experiment, opts.recipe, opts.batch_sizes, opts.seeds, opts.overrides, opts.smoke_test, opts.search)
    tracking_uri = normalize_tracking_uri(saved["tracking_uri"] if saved else (opts.tracking_uri or default_tracking_uri()))
    if opts.checkpoint_every < 1:
        raise ConfigError(f"--checkpoint-every must be >= 1, got {opts.checkpoint_every}")
    if opts.max_concurrent is not None and opts.max_concurrent < 1:
        raise ConfigError(f"--max-concurrent must be >= 1, got {opts.max_concurrent}")
    check_storage(path)
    try:
        check_tracking(tracking_uri)
    except TrackingError as e:
        raise SweepError(str(e)) from None

    started_ray = connect_ray(opts.address, opts.num_cpus, opts.verbose)
    try:
        import ray

        gpus = opts.gpus_per_trial
        if gpus is None:
            gpus = 1.0 if ray.cluster_resources().get("GPU", 0) > 0 else 0.0
        check_resources(opts.cpus_per_trial, gpus)
        return _run(opts, space, name, storage, path, tracking_uri, gpus, saved, train_fn)
    finally:
        if started_ray:
            ray.shutdown()


def _run(opts: SweepOptions, space: SweepSpace, name: str, storage: Path, path: Path, tracking_uri: str, gpus: float,
         saved: dict[str, Any] | None, train_fn) -> SweepResult:
    from ray import tune

    from .trainable import make_trainable

    exp = space.experiment
    mlflow_experiment = f"bigbatch-{exp.name}"
    commit = git_commit()
    tags = {
        "bigbatch.experiment": exp.name,
        "bigbatch.paper_row": exp.label,
        "bigbatch.recipe": exp.recipe,
        "bigbatch.dataset": str(space.base.get("dataset", "cifar10")),
        "bigbatch.search": "grid",
        "bigbatch.git_commit": commit,
        "bigbatch.smoke_test": str(opts.smoke_test).lower(),
    }
    params = {
        "batch_sizes": json.dumps(space.batch_sizes),
        "seeds": json.dumps(space.seeds),
        "search": json.dumps(space.search),
        "num_trials": space.num_trials,
        "gpus_per_trial": gpus,
        "cpus_per_trial": opts.cpus_per_trial,
        "storage_path": str(path),
        **{f"base.{k}": json.dumps(v) if isinstance(v, (list, dict)) else v for k, v in space.base.items()},
    }
    try:
        experiment_id, parent_run_id = setup_sweep(tracking_uri, mlflow_experiment, name, tags, params, saved["parent_run_id"] if saved else None)
    except TrackingError as e:
        raise SweepError(str(e)) from None
    sweep_info = {
        "tracking_uri": tracking_uri,
        "experiment_id": experiment_id,
        "parent_run_id": parent_run_id,
        "sweep_name": name,
        "paper_row": exp.label,
        "search": "grid",
        "git_commit": commit,
        "checkpoint_every": opts.checkpoint_every,
    }
    path.mkdir(parents=True, exist_ok=True)
    (path / SWEEP_FILE).write_text(json.dumps({"options": opts.to_json(), "tracking_uri": tracking_uri, "experiment_id": experiment_id,
                                                "parent_run_id": parent_run_id, "mlflow_experiment": mlflow_experiment}, indent=2))
    trainable = tune.with_resources(make_trainable(train_fn), {"cpu": opts.cpus_per_trial, "gpu": gpus})
    if opts.verbose:
        what = "resuming" if opts.resume else "starting"
        print(f"{what} sweep {name}: {exp.name} ({exp.label}), recipe {exp.recipe}, {space.num_trials} trials, "
              f"{opts.cpus_per_trial:g} CPU + {gpus:g} GPU per trial; MLflow {tracking_uri} experiment {mlflow_experiment}", flush=True)
    if opts.resume:
        repair_tune_state(path)
        tuner = tune.Tuner.restore(str(path), trainable=trainable, resume_unfinished=True, resume_errored=True,
                                   param_space=space.param_space(sweep_info))
    else:
        tuner = tune.Tuner(
            trainable,
            param_space=space.param_space(sweep_info),
            tune_config=tune.TuneConfig(
                max_concurrent_trials=opts.max_concurrent,
                reuse_actors=True,
                trial_name_creator=_trial_name,
                trial_dirname_creator=_trial_dirname,
            ),
            run_config=tune.RunConfig(
                name=name,
                storage_path=str(storage),
                failure_config=tune.FailureConfig(max_failures=opts.max_failures),
                checkpoint_config=tune.CheckpointConfig(num_to_keep=opts.keep_checkpoints),
                progress_reporter=reporter(list(space.search)),
                verbose=opts.verbose,
            ),
        )
    results = tuner.fit()
    return _finish(results, opts, name, path, tracking_uri, mlflow_experiment, experiment_id, parent_run_id)


def _finish(results, opts, name, path, tracking_uri, mlflow_experiment, experiment_id, parent_run_id) -> SweepResult:
    rows, errors, unfinished = [], 0, 0
    try:  # trials that never reported have an empty Result.config: take it from the trial objects
        configs = {os.path.basename(t.path): t.config for t in results._experiment_analysis.trials}
    except Exception:
        configs = {}
    for r in results:
        m = r.metrics or {}
        cfg = r.config or configs.get(os.path.basename(str(r.path)), {})
        if r.error is not None:
            errors += 1
            state = "error"
        elif "status" not in m:
            unfinished += 1
            state = "unfinished"
        else:
            state = m["status"]
        f = m.get("factor_lr", cfg.get("factor_lr"))
        rows.append((cfg.get("batch_size", 0), cfg.get("seed", 0), f"{f:.3g}" if isinstance(f, (int, float)) else "-", state, m.get("epoch"), m.get("best_val_acc"), m.get("test_acc")))
    code = 130 if unfinished else (1 if errors else 0)
    status = {0: "FINISHED", 1: "FAILED", 130: "KILLED"}[code]
    finish_sweep(tracking_uri, parent_run_id, status, {"num_trials": len(rows), "num_errors": errors})
    if opts.verbose:
        print(f"\nsweep {name}: {len(rows) - errors - unfinished} finished, {errors} errored, {unfinished} unfinished")
        print(f"{'bs':>5} {'seed':>4} {'f':>5} {'status':>10} {'epochs':>6} {'best_val':>8} {'test_acc':>8}")
        fmt = lambda v: f"{v:8.2f}" if isinstance(v, (int, float)) else f"{'-':>8}"
        for bs, seed, f, state, ep, bv, ta in sorted(rows, key=lambda r: (r[0], r[1], str(r[2]))):
            print(f"{bs:>5} {seed:>4} {str(f):>5} {state:>10} {str(ep if ep is not None else '-'):>6} {fmt(bv)} {fmt(ta)}")
        print(f"MLflow: experiment {mlflow_experiment}, parent run {parent_run_id}; view with: mlflow ui --backend-store-uri {tracking_uri}")
        if code:
            print(f"resume with: python -m sweeps.{opts.experiment} --resume --name {name} --storage-path {path.parent}", flush=True)
    return SweepResult(name, str(path), tracking_uri, mlflow_experiment, experiment_id, parent_run_id, len(rows), errors, unfinished, code)
