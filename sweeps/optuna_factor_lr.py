"""Search factor_lr (the CyclicLR bound factor) per batch size with Optuna's TPE, ASHA stopping poor trials.

    python -m sweeps.optuna_factor_lr --batch-sizes 256 512 1024 --num-samples 20
    python -m sweeps.optuna_factor_lr --smoke-test

One Ray Tune ``Tuner`` per batch size (``tune.grid_search`` cannot be combined with ``OptunaSearch``),
each with ``OptunaSearch`` over ``factor_lr`` (log-uniform in [--factor-lr-min, --factor-lr-max]),
objective ``best_val_acc``, and an ``ASHAScheduler`` on ``val_acc`` per epoch. Every study lives in a
SQLite file (``--study-storage``, default ``<storage-path>/<name>/optuna.db``), so running the same
command again with the same ``--name`` continues it: finished trials count towards ``--num-samples``
and inform TPE. Trials are logged to MLflow (experiment ``bigbatch-optuna-factor-lr``, tag
``bigbatch.search=optuna``); trials stopped by ASHA get ``bigbatch.status=stopped``. At the end it prints
the best factor (after eq. 2 where the experiment scales it, as the trials report ``scaled_factor_lr``)
per batch size beside eq. 2's prediction, 10 * sqrt(32 / bs). The checks, Ray session, parent run, trial
names and trainable are the grid sweeps' own (sweeps.runner, sweeps.trainable).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Callable

from bigbatch import schema
from bigbatch.config import ConfigError, OneLineArgumentParser, parse_set
from bigbatch.datasets import DATASETS
from bigbatch.experiments import RECIPES, TABLE_EXPERIMENTS, eq2_factor, load_experiment

from .runner import (SweepError, check_resources, check_storage, default_name, known_error, ray_session, reporter,
                     trial_errors_callback, ui_hint)
from .space import SweepContext, TrialNames, build_space, prepare_space_data, trial_run_config
from .tracking import TrackingError, check_tracking, close_sweep, log_sweep_inputs, mark_stopped, open_sweep

DEFAULT_BATCH_SIZES = [256, 512, 1024]


def build_parser() -> argparse.ArgumentParser:
    p = OneLineArgumentParser(prog="python -m sweeps.optuna_factor_lr", description=__doc__.split("\n\n")[0])
    p.add_argument("--experiment", default="exp5", choices=TABLE_EXPERIMENTS, help="the experiment whose config is searched (default exp5: GBN + CyclicLR)")
    p.add_argument("--batch-sizes", type=int, nargs="+", help=f"one search per batch size (default {DEFAULT_BATCH_SIZES})")
    p.add_argument("--num-samples", type=int, help="trials per batch size (default 20; smoke test 3)")
    p.add_argument("--factor-lr-min", type=float, default=1.0, help="lower end of the log-uniform range (default 1)")
    p.add_argument("--factor-lr-max", type=float, default=20.0, help="upper end (default 20)")
    p.add_argument("--grace-period", type=int, help="ASHA: epochs before a trial may be stopped (default: a tenth of the epochs)")
    p.add_argument("--reduction-factor", type=float, default=3.0, help="ASHA reduction factor (default 3)")
    p.add_argument("--epochs", type=int, help="epochs per trial (RunConfig epochs)")
    p.add_argument("--dataset", help=" | ".join(DATASETS))
    p.add_argument("--data-dir", help="dataset directory")
    p.add_argument("--recipe", choices=RECIPES, default="text")
    p.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE", help="override any RunConfig key")
    p.add_argument("--seed", type=int, default=0, help="TPE sampler seed and the trials' training seed")
    p.add_argument("--smoke-test", action="store_true", help="narrow model, synthetic images, 2 epochs, 3 samples per batch size")
    p.add_argument("--gpus-per-trial", type=float, help="default: 1 if the cluster has GPUs, else 0")
    p.add_argument("--cpus-per-trial", type=float, default=1.0)
    p.add_argument("--max-concurrent", type=int, help="trials at once per batch size (default: as resources allow)")
    p.add_argument("--address", help="join an existing Ray cluster")
    p.add_argument("--num-cpus", type=int, help="local Ray only: CPUs it may use")
    p.add_argument("--storage-path", help="Ray Tune results (default ./ray_results)")
    p.add_argument("--name", help="search name (default optuna-<exp>-<recipe>[-smoke]-<UTC time>); same name = continue the studies")
    p.add_argument("--study-storage", help="Optuna storage URL (default sqlite:///<storage-path>/<name>/optuna.db)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default sqlite:///<cwd>/mlflow.db)")
    p.add_argument("--quiet", action="store_true")
    return p


def run_search(args: argparse.Namespace, train_fn: Callable[..., dict[str, Any]] | None = None) -> dict[int, dict[str, Any]]:
    """Run (or continue) the searches; returns {batch_size: {factor_lr, scaled_factor_lr, best_val_acc, eq2, trials, errors}}."""
    import optuna
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.optuna import OptunaSearch

    from .trainable import make_trainable

    if not (0 < args.factor_lr_min < args.factor_lr_max):
        raise ConfigError(f"need 0 < --factor-lr-min < --factor-lr-max, got {args.factor_lr_min}, {args.factor_lr_max}")
    num_samples = args.num_samples if args.num_samples is not None else (3 if args.smoke_test else 20)
    if num_samples < 1:
        raise ConfigError(f"--num-samples must be >= 1, got {num_samples}")
    exp = load_experiment(args.experiment, args.recipe)
    batch_sizes = args.batch_sizes or DEFAULT_BATCH_SIZES
    overrides = parse_set(args.set)
    for key in ("epochs", "dataset", "data_dir"):
        if getattr(args, key) is not None:
            overrides[key] = getattr(args, key)
    overrides["seed"] = args.seed
    ends = {"factor_lr": [args.factor_lr_min, args.factor_lr_max]}  # validated as a grid: every value between is valid too
    spaces = {bs: build_space(exp, [bs], 1, overrides, args.smoke_test, search=ends) for bs in batch_sizes}
    storage = Path(args.storage_path or "ray_results").expanduser().resolve()
    name = args.name or "optuna-" + default_name(exp, args.smoke_test)
    path = storage / name
    check_storage(path)
    study_url = args.study_storage or f"sqlite:///{path / 'optuna.db'}"
    tracking_uri = check_tracking(args.tracking_uri)
    datasets = prepare_space_data(*spaces.values())  # once, on the driver, before Ray; the trials get download=false
    path.mkdir(parents=True, exist_ok=True)  # check_storage leaves nothing behind; the default study DB lives here
    try:
        study_storage = optuna.storages.RDBStorage(study_url)
    except Exception as e:
        raise SweepError(f"cannot open the Optuna storage {study_url}: {str(e).splitlines()[0]}") from None

    with ray_session(args.address, args.num_cpus, 0 if args.quiet else 1):
        gpus = check_resources(args.cpus_per_trial, args.gpus_per_trial)
        first = next(iter(spaces.values()))
        params = {"batch_sizes": json.dumps(batch_sizes), "num_samples": num_samples, "factor_lr_min": args.factor_lr_min,
                  "factor_lr_max": args.factor_lr_max, "study_storage": study_url, "storage_path": str(path)}
        run = open_sweep(tracking_uri, exp, name, dataset=str(first.base.get("dataset")), search="optuna",
                             smoke_test=args.smoke_test, params=params, mlflow_experiment=schema.OPTUNA_EXPERIMENT)
        summary: dict[int, dict[str, Any]] = {}
        errors: list[str] = []
        for bs, space in spaces.items():
            ctx = SweepContext(space.base, run, ("factor_lr",), checkpoint_every=1, datasets=datasets)
            log_sweep_inputs(run, ctx.trial_datasets(space))
            study_name = f"{name}-bs{bs}"
            done = 0
            try:
                study = optuna.load_study(study_name=study_name, storage=study_storage)
                done = sum(t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED) for t in study.trials)
            except KeyError:
                pass
            todo = max(0, num_samples - done)
            if not args.quiet:
                print(f"batch size {bs}: {done} trials already in study {study_name}, running {todo} more", flush=True)
            point = {"batch_size": bs, "seed": space.seeds[0]}
            if todo:
                max_t = trial_run_config(space.base, {**point, "factor_lr": args.factor_lr_min}).total_epochs
                grace = args.grace_period or max(1, max_t // 10)  # max_t + 1 below: trials that reach the end finish themselves
                searcher = OptunaSearch(
                    space={"factor_lr": optuna.distributions.FloatDistribution(args.factor_lr_min, args.factor_lr_max, log=True)},
                    metric="best_val_acc", mode="max", study_name=study_name, storage=study_storage, seed=args.seed * 100003 + bs + done,
                )
                scheduler = ASHAScheduler(time_attr="epoch", metric="val_acc", mode="max", max_t=max_t + 1,
                                          grace_period=min(grace, max_t), reduction_factor=args.reduction_factor)
                names = TrialNames(space.base, ctx.searched)
                tuner = tune.Tuner(
                    tune.with_resources(make_trainable(ctx, train_fn), {"cpu": args.cpus_per_trial, "gpu": gpus}),
                    param_space=point,
                    tune_config=tune.TuneConfig(search_alg=searcher, scheduler=scheduler, num_samples=todo,
                                                max_concurrent_trials=args.max_concurrent, reuse_actors=True,
                                                trial_name_creator=names.name, trial_dirname_creator=names.dirname),
                    run_config=tune.RunConfig(name=f"{name}-bs{bs}-{done}", storage_path=str(storage),
                                              checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
                                              progress_reporter=reporter(["factor_lr"], cyclic=True), verbose=0 if args.quiet else 1,
                                              callbacks=[trial_errors_callback()]),
                )
                for r in tuner.fit():  # trials ASHA stopped never reach the end of train(): their runs are marked stopped
                    m = r.metrics or {}
                    if r.error is None and "status" not in m and m.get("mlflow_run_id"):
                        mark_stopped(tracking_uri, m["mlflow_run_id"])
                    if r.error is not None:
                        errors.append(f"failed bs={bs} factor_lr={(r.config or {}).get('factor_lr', float('nan')):.3g}: "
                                      f"{known_error(r.error) or type(r.error).__name__ + ' (traceback in ' + str(r.path) + '/error.txt)'}")
            study = optuna.load_study(study_name=study_name, storage=study_storage)
            finished = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE and t.value is not None]
            best = max(finished, key=lambda t: t.value) if finished else None
            f = best.params["factor_lr"] if best else None
            summary[bs] = {"factor_lr": f, "best_val_acc": best.value if best else None, "eq2": eq2_factor(bs), "trials": len(finished),
                           "errors": sum(line.startswith(f"failed bs={bs} ") for line in errors),
                           "scaled_factor_lr": trial_run_config(space.base, {**point, "factor_lr": f}).scaled_factor_lr if best else None}
        close_sweep(run, "FAILED" if errors else "FINISHED")
    if not args.quiet:
        print(f"\nbest factor per batch size ({name}; Optuna studies in {study_url}; f after eq. 2 where {exp.name} scales it):")
        print(f"{'bs':>5} {'trials':>6} {'best f':>8} {'best val_acc':>12} {'eq.2 f':>8}")
        for bs, s in summary.items():
            f = f"{s['scaled_factor_lr']:.3g}" if s["scaled_factor_lr"] is not None else "-"
            v = f"{s['best_val_acc']:.2f}" if s["best_val_acc"] is not None else "-"
            print(f"{bs:>5} {s['trials']:>6} {f:>8} {v:>12} {s['eq2']:>8.3g}")
        for line in errors:
            print(line)
        print(f"MLflow: experiment {schema.OPTUNA_EXPERIMENT}; view with: {ui_hint(tracking_uri)}", flush=True)
    return summary


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        summary = run_search(args)
    except (ConfigError, SweepError, TrackingError) as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return 2
    except KeyboardInterrupt:
        print("interrupted; run the same command with the same --name to continue the studies", file=sys.stderr)
        return 130
    return 1 if any(s["errors"] for s in summary.values()) else 0  # 1: some trials errored, as the sweeps


if __name__ == "__main__":
    sys.exit(main())
