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
per batch size beside eq. 2's prediction, 10 * sqrt(32 / bs). It runs through the one sweep path
(``sweeps.runner.run_sweep`` with the search kind ``sweeps.search.OptunaFactorLR``): the checks, Ray session,
parent run, Tuner, trial names, trainable and failure reporting are every sweep's.
"""

from __future__ import annotations

import argparse
import sys

from bigbatch.config import ConfigError, OneLineArgumentParser, parse_set
from bigbatch.experiments import TABLE_EXPERIMENTS, load_experiment

from .cli import add_data_args, add_resource_args
from .runner import SweepError, SweepOptions, default_name, run_sweep
from .search import DEFAULT_OPTUNA_BATCH_SIZES as DEFAULT_BATCH_SIZES
from .search import OptunaFactorLR
from .tracking import TrackingError


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
    add_data_args(p)
    p.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE", help="override any RunConfig key")
    p.add_argument("--seed", type=int, default=0, help="TPE sampler seed and the trials' training seed")
    p.add_argument("--smoke-test", action="store_true", help="narrow model, synthetic images, 2 epochs, 3 samples per batch size")
    add_resource_args(p)
    p.add_argument("--storage-path", help="Ray Tune results (default ./ray_results)")
    p.add_argument("--name", help="search name (default optuna-<exp>-<recipe>[-smoke]-<UTC time>); same name = continue the studies")
    p.add_argument("--study-storage", help="Optuna storage URL (default sqlite:///<storage-path>/<name>/optuna.db)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default sqlite:///<cwd>/mlflow.db)")
    p.add_argument("--quiet", action="store_true")
    return p


def options_from_args(args: argparse.Namespace) -> SweepOptions:
    """The command line as the one sweep path's options (ConfigError on bad input)."""
    exp = load_experiment(args.experiment, args.recipe)
    overrides = parse_set(args.set)
    for key in ("epochs", "dataset", "data_dir"):
        if getattr(args, key) is not None:
            overrides[key] = getattr(args, key)
    overrides["seed"] = args.seed
    kind = OptunaFactorLR(num_samples=args.num_samples if args.num_samples is not None else (3 if args.smoke_test else 20),
                          factor_lr_min=args.factor_lr_min, factor_lr_max=args.factor_lr_max, grace_period=args.grace_period,
                          reduction_factor=args.reduction_factor, study_storage=args.study_storage, seed=args.seed)
    kind.check()
    return SweepOptions(exp, batch_sizes=args.batch_sizes or DEFAULT_BATCH_SIZES, overrides=overrides, smoke_test=args.smoke_test,
                        gpus_per_trial=args.gpus_per_trial, cpus_per_trial=args.cpus_per_trial,
                        storage_path=args.storage_path, name=args.name or "optuna-" + default_name(exp, args.smoke_test),
                        tracking_uri=args.tracking_uri, address=args.address, num_cpus=args.num_cpus,
                        max_concurrent=args.max_concurrent, verbose=0 if args.quiet else 1, search_kind=kind)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        result = run_sweep(options_from_args(args))
    except (ConfigError, SweepError, TrackingError) as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return 2
    except KeyboardInterrupt:
        print("interrupted; run the same command with the same --name to continue the studies", file=sys.stderr)
        return 130
    return result.exit_code  # 1: some trials errored, as the sweeps


if __name__ == "__main__":
    sys.exit(main())
