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
the best factor_lr per batch size beside eq. 2's prediction, 10 * sqrt(32 / bs).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Callable

from bigbatch.config import ConfigError, OneLineArgumentParser, parse_set
from bigbatch.experiments import EXPERIMENTS, RECIPES, eq2_factor

from .runner import SweepError, check_resources, check_storage, connect_ray, default_name, reporter, _trial_dirname, _trial_name
from .space import build_space, trial_run_config
from .tracking import TrackingError, check_tracking, default_tracking_uri, finish_sweep, git_commit, normalize_tracking_uri, setup_sweep

MLFLOW_EXPERIMENT = "bigbatch-optuna-factor-lr"
DEFAULT_BATCH_SIZES = [256, 512, 1024]


def build_parser() -> argparse.ArgumentParser:
    p = OneLineArgumentParser(prog="python -m sweeps.optuna_factor_lr", description=__doc__.split("\n\n")[0])
    p.add_argument("--experiment", default="exp5", choices=EXPERIMENTS, help="the experiment whose config is searched (default exp5: GBN + CyclicLR)")
    p.add_argument("--batch-sizes", type=int, nargs="+", help=f"one search per batch size (default {DEFAULT_BATCH_SIZES})")
    p.add_argument("--num-samples", type=int, help="trials per batch size (default 20; smoke test 3)")
    p.add_argument("--factor-lr-min", type=float, default=1.0, help="lower end of the log-uniform range (default 1)")
    p.add_argument("--factor-lr-max", type=float, default=20.0, help="upper end (default 20)")
    p.add_argument("--grace-period", type=int, help="ASHA: epochs before a trial may be stopped (default: a tenth of the epochs)")
    p.add_argument("--reduction-factor", type=float, default=3.0, help="ASHA reduction factor (default 3)")
    p.add_argument("--epochs", type=int, help="epochs per trial (RunConfig epochs)")
    p.add_argument("--dataset", help="cifar10 | cifar100 | fashion-mnist | synthetic")
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
    """Run (or continue) the searches; returns {batch_size: {factor_lr, best_val_acc, eq2, trials}}."""
    import optuna
    import ray
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.optuna import OptunaSearch

    from .trainable import make_trainable

    if not (0 < args.factor_lr_min < args.factor_lr_max):
        raise ConfigError(f"need 0 < --factor-lr-min < --factor-lr-max, got {args.factor_lr_min}, {args.factor_lr_max}")
    num_samples = args.num_samples if args.num_samples is not None else (3 if args.smoke_test else 20)
    if num_samples < 1:
        raise ConfigError(f"--num-samples must be >= 1, got {num_samples}")
    batch_sizes = args.batch_sizes or DEFAULT_BATCH_SIZES
    overrides = parse_set(args.set)
    for key in ("epochs", "dataset", "data_dir"):
        if getattr(args, key) is not None:
            overrides[key] = getattr(args, key)
    overrides["seed"] = args.seed
    spaces = {bs: build_space(args.experiment, args.recipe, [bs], 1, overrides, args.smoke_test, search={}) for bs in batch_sizes}
    for bs, space in spaces.items():
        # validate the range ends too
        space.search = {"factor_lr": [args.factor_lr_min, args.factor_lr_max]}
        space.validate()
        space.search = {}
    storage = Path(args.storage_path or "ray_results").expanduser().resolve()
    name = args.name or "optuna-" + default_name(args.experiment, args.recipe, args.smoke_test)
    path = storage / name
    check_storage(path)
    study_url = args.study_storage or f"sqlite:///{path / 'optuna.db'}"
    tracking_uri = normalize_tracking_uri(args.tracking_uri or default_tracking_uri())
    try:
        check_tracking(tracking_uri)
    except TrackingError as e:
        raise SweepError(str(e)) from None
    path.mkdir(parents=True, exist_ok=True)  # check_storage leaves nothing behind; the default study DB lives here
    try:
        study_storage = optuna.storages.RDBStorage(study_url)
    except Exception as e:
        raise SweepError(f"cannot open the Optuna storage {study_url}: {str(e).splitlines()[0]}") from None

    started = connect_ray(args.address, args.num_cpus, 0 if args.quiet else 1)
    try:
        gpus = args.gpus_per_trial
        if gpus is None:
            gpus = 1.0 if ray.cluster_resources().get("GPU", 0) > 0 else 0.0
        check_resources(args.cpus_per_trial, gpus)
        commit = git_commit()
        first = next(iter(spaces.values()))
        exp = first.experiment
        tags = {
            "bigbatch.experiment": exp.name, "bigbatch.paper_row": exp.label, "bigbatch.recipe": exp.recipe,
            "bigbatch.dataset": str(first.base.get("dataset")), "bigbatch.search": "optuna", "bigbatch.git_commit": commit,
            "bigbatch.smoke_test": str(args.smoke_test).lower(),
        }
        params = {"batch_sizes": json.dumps(batch_sizes), "num_samples": num_samples, "factor_lr_min": args.factor_lr_min,
                  "factor_lr_max": args.factor_lr_max, "study_storage": study_url, "storage_path": str(path)}
        try:
            experiment_id, parent = setup_sweep(tracking_uri, MLFLOW_EXPERIMENT, name, tags, params)
        except TrackingError as e:
            raise SweepError(str(e)) from None
        total_epochs = {bs: trial_run_config({"base": s.base, "batch_size": bs}).total_epochs for bs, s in spaces.items()}
        trainable = tune.with_resources(make_trainable(train_fn), {"cpu": args.cpus_per_trial, "gpu": gpus})
        summary: dict[int, dict[str, Any]] = {}
        for bs, space in spaces.items():
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
            if todo:
                sweep_info = {"tracking_uri": tracking_uri, "experiment_id": experiment_id, "parent_run_id": parent, "sweep_name": name,
                              "paper_row": exp.label, "search": "optuna", "git_commit": commit, "checkpoint_every": 1}
                max_t = total_epochs[bs]
                grace = args.grace_period or max(1, max_t // 10)  # max_t + 1 below: trials that reach the end finish themselves
                searcher = OptunaSearch(
                    space={"factor_lr": optuna.distributions.FloatDistribution(args.factor_lr_min, args.factor_lr_max, log=True)},
                    metric="best_val_acc", mode="max", study_name=study_name, storage=study_storage, seed=args.seed * 100003 + bs + done,
                )
                scheduler = ASHAScheduler(time_attr="epoch", metric="val_acc", mode="max", max_t=max_t + 1,
                                          grace_period=min(grace, max_t), reduction_factor=args.reduction_factor)
                tuner = tune.Tuner(
                    trainable,
                    param_space={"base": space.base, "sweep": sweep_info, "batch_size": bs, "seed": space.seeds[0]},
                    tune_config=tune.TuneConfig(search_alg=searcher, scheduler=scheduler, num_samples=todo,
                                                max_concurrent_trials=args.max_concurrent, reuse_actors=True,
                                                trial_name_creator=_trial_name, trial_dirname_creator=_trial_dirname),
                    run_config=tune.RunConfig(name=f"{name}-bs{bs}-{done}", storage_path=str(storage),
                                              checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
                                              progress_reporter=reporter(["factor_lr"]), verbose=0 if args.quiet else 1),
                )
                results = tuner.fit()
                _close_stopped(results, tracking_uri)
            study = optuna.load_study(study_name=study_name, storage=study_storage)
            finished = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE and t.value is not None]
            best = max(finished, key=lambda t: t.value) if finished else None
            summary[bs] = {"factor_lr": best.params["factor_lr"] if best else None, "best_val_acc": best.value if best else None,
                           "eq2": eq2_factor(bs), "trials": len(finished)}
        finish_sweep(tracking_uri, parent, "FINISHED")
    finally:
        if started:
            ray.shutdown()
    if not args.quiet:
        print(f"\nbest factor_lr per batch size ({name}; Optuna studies in {study_url}):")
        print(f"{'bs':>5} {'trials':>6} {'best f':>8} {'best val_acc':>12} {'eq.2 f':>8}")
        for bs, s in summary.items():
            f = f"{s['factor_lr']:.3g}" if s["factor_lr"] is not None else "-"
            v = f"{s['best_val_acc']:.2f}" if s["best_val_acc"] is not None else "-"
            print(f"{bs:>5} {s['trials']:>6} {f:>8} {v:>12} {s['eq2']:>8.3g}")
        print(f"MLflow: experiment {MLFLOW_EXPERIMENT}; view with: mlflow ui --backend-store-uri {tracking_uri}", flush=True)
    return summary


def _close_stopped(results, tracking_uri: str) -> None:
    """Trials ASHA stopped never reach the end of train(): mark their MLflow runs stopped."""
    from .tracking import _client

    client = None
    for r in results:
        m = r.metrics or {}
        run_id = m.get("mlflow_run_id")
        if r.error is None and "status" not in m and run_id:
            try:
                client = client or _client(tracking_uri)
                if client.get_run(run_id).data.tags.get("bigbatch.status") != "running":
                    continue
                client.set_tag(run_id, "bigbatch.status", "stopped")
                client.set_terminated(run_id, status="FINISHED")
            except Exception as e:
                print(f"warning: could not mark MLflow run {run_id} stopped: {e}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        run_search(args)
    except (ConfigError, SweepError) as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return 2
    except KeyboardInterrupt:
        print("interrupted; run the same command with the same --name to continue the studies", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
