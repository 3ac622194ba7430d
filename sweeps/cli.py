"""The one CLI of every grid sweep: ``python -m sweeps.exp1`` .. ``python -m sweeps.exp6``, ``python -m sweeps.lr_grid``.

    python -m sweeps.exp5 --gpus-per-trial 0.5
    python -m sweeps.exp6 --smoke-test
    python -m sweeps.exp5 --resume            # the latest exp5 sweep in --storage-path
    python -m sweeps.lr_grid --search lr=[0.005,0.01,0.02]

The experiment is resolved once here (``load_experiment(name, recipe)``) into the ``Experiment`` the
runner and the search space take. Python API: ``main("exp6", ["--smoke-test"]) -> exit code`` (0 ok,
1 some trials errored, 2 bad input before any trial, 130 interrupted). See docs/sweeps.md.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from bigbatch.schema import mlflow_experiment
from bigbatch.config import ConfigError, OneLineArgumentParser, RunConfig, parse_set, read_json
from bigbatch.datasets import DATASETS
from bigbatch.experiments import RECIPES, Experiment, load_experiment

from .runner import SweepError, SweepOptions, run_sweep
from .tracking import TrackingError

# Keys of a --config sweep.json that are sweep options (the rest must be RunConfig keys or "config").
SWEEP_KEYS = {
    "batch_sizes", "seeds", "search", "smoke_test", "gpus_per_trial", "cpus_per_trial", "storage_path", "name",
    "tracking_uri", "address", "max_concurrent", "max_failures", "checkpoint_every", "keep_checkpoints", "recipe",
    "epochs", "dataset", "data_dir", "set",
}  # (resume, num_cpus and quiet are command-line only)
RUNCONFIG_KEYS = set(RunConfig.__dataclass_fields__)


def module_name(exp: Experiment) -> str:
    """``python -m sweeps.<this>`` runs the experiment: exp5 -> exp5, lr-grid -> lr_grid."""
    return exp.name.replace("-", "_")


def build_parser(exp: Experiment) -> argparse.ArgumentParser:
    about = f"{exp.name}: {exp.label}. Batch sizes {list(exp.batch_sizes)}" + (
        f"; searched: {', '.join(f'{k} in {list(v)}' for k, v in exp.search.items())}" if exp.search else "")
    p = OneLineArgumentParser(  # argparse errors: one line `error: ...`, exit 2
        prog=f"python -m sweeps.{module_name(exp)}",
        description=f"Ray Tune sweep of the paper's {about}. Logs to MLflow experiment {mlflow_experiment(exp.name)}; "
                    "resumable; see docs/sweeps.md.",
    )
    g = p.add_argument_group("what to train")
    g.add_argument("--batch-sizes", type=int, nargs="+", metavar="BS", help="batch sizes (default: the experiment's Table I row)")
    g.add_argument("--epochs", type=int, help="epochs at the base batch size (RunConfig epochs; default 100, smoke 2)")
    add_data_args(g, recipe_default=None)
    g.add_argument("--seeds", type=int, metavar="K", help="repeat every point with K seeds (seed .. seed+K-1; default 1)")
    g.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE", help="override any RunConfig key (values parsed as JSON)")
    g.add_argument("--search", nargs="+", default=[], metavar="KEY=[V,...]",
                   help="the searched grid, replacing the experiment's (e.g. --search lr=[0.005,0.01,0.02]; values parsed as JSON)")
    g.add_argument("--config", metavar="SWEEP.JSON", help="a JSON object of sweep options and/or RunConfig keys (docs/sweeps.md)")
    g.add_argument("--smoke-test", action="store_true", default=None, help="narrow model, a few hundred synthetic images, 1-3 epochs")
    add_resource_args(p, cpus_default=None)  # None: a --config file may set it
    o = p.add_argument_group("storage, logging, faults")
    o.add_argument("--storage-path", help="Ray Tune results and checkpoints (default ./ray_results; on a cluster: a shared path)")
    o.add_argument("--name", help="sweep name (default <exp>-<recipe>[-smoke]-<UTC time>); also the MLflow parent run name")
    o.add_argument("--tracking-uri", help="MLflow tracking URI (default sqlite:///<cwd>/mlflow.db; on a cluster: http://host:5000)")
    o.add_argument("--resume", action="store_true", default=None, help="continue an interrupted sweep (--name, default the latest)")
    o.add_argument("--max-failures", type=int, help="retries of a failed trial from its last checkpoint (default 2)")
    o.add_argument("--checkpoint-every", type=int, help="epochs between trial checkpoints (default 1)")
    o.add_argument("--quiet", action="store_true", help="no trial table")
    return p


def add_data_args(g: argparse._ActionsContainer, recipe_default: str | None = "text") -> None:
    """--dataset, --data-dir, --recipe: the same in every sweep command."""
    g.add_argument("--dataset", help=" | ".join(DATASETS))
    g.add_argument("--data-dir", help="dataset directory (made absolute: trials run in their own directories)")
    g.add_argument("--recipe", choices=RECIPES, default=recipe_default,
                   help="text (default): as the paper says; authors-code: as its code did")


def add_resource_args(p: argparse.ArgumentParser, cpus_default: float | None = 1.0) -> None:
    """The "resources and cluster" group, the same in every sweep command."""
    r = p.add_argument_group("resources and cluster")
    r.add_argument("--gpus-per-trial", type=float,
                   help="GPUs per trial; fractions pack trials on one GPU (default: 1 if the cluster has GPUs, else 0)")
    r.add_argument("--cpus-per-trial", type=float, default=cpus_default, help="CPUs per trial (default 1)")
    r.add_argument("--max-concurrent", type=int, help="at most this many trials at once (default: as resources allow)")
    r.add_argument("--address", help="join an existing Ray cluster (auto, or host:6379); default: start Ray on this machine")
    r.add_argument("--num-cpus", type=int, help="local Ray only: CPUs it may use (default: all)")


def parse_search(pairs: list[str]) -> dict[str, list[Any]]:
    """``--search key=[v1,v2] ...`` -> {key: [v1, v2]} (ConfigError unless every value is a non-empty list)."""
    search = parse_set(pairs)
    for key, values in search.items():
        if not isinstance(values, list) or not values:
            raise ConfigError(f"--search {key}=... needs a JSON list of values, e.g. {key}=[1,2]")
    return search


def options_from_args(exp: Experiment, args: argparse.Namespace) -> SweepOptions:
    """Merge defaults < --config file < command-line flags into SweepOptions (ConfigError on bad input);
    the experiment is resolved with the chosen recipe."""
    file_opts: dict[str, Any] = {}
    file_cfg: dict[str, Any] = {}
    if args.config:
        data = read_json(args.config)
        if not isinstance(data, dict):
            raise ConfigError(f"{args.config} must hold a JSON object")
        for key, value in data.items():
            if key.startswith("_"):
                continue  # comments
            if key == "config":
                if not isinstance(value, dict):
                    raise ConfigError(f"{args.config}: 'config' must be an object of RunConfig keys")
                file_cfg.update(value)
            elif key in SWEEP_KEYS:
                file_opts[key] = value
            elif key in RUNCONFIG_KEYS:
                file_cfg[key] = value
            else:
                raise ConfigError(f"{args.config}: unknown key {key!r} (neither a sweep option nor a RunConfig key)")

    def pick(name: str, default: Any = None) -> Any:
        value = getattr(args, name, None)
        return value if value is not None else file_opts.get(name, default)

    overrides: dict[str, Any] = dict(file_cfg)
    if "set" in file_opts:
        overrides.update(parse_set(list(file_opts["set"])))
    overrides.update(parse_set(args.set))
    for key in ("epochs", "dataset", "data_dir"):
        value = pick(key)
        if value is not None:
            overrides[key] = value
    if "data_dir" in overrides:
        from pathlib import Path

        overrides["data_dir"] = str(Path(str(overrides["data_dir"])).expanduser().resolve())
    recipe = pick("recipe", "text")
    if "recipe" in overrides:
        recipe = overrides.pop("recipe")
    seeds = pick("seeds", 1)
    batch_sizes = pick("batch_sizes")
    search = file_opts.get("search")
    if search is not None and not (isinstance(search, dict) and all(isinstance(v, list) for v in search.values())):
        raise ConfigError(f"{args.config}: 'search' must map RunConfig keys to lists of values")
    if args.search:
        search = {**(search or {}), **parse_search(args.search)}
    for key, kind in (("seeds", int), ("max_failures", int), ("checkpoint_every", int)):
        v = pick(key)
        if v is not None and (not isinstance(v, int) or isinstance(v, bool)):
            raise ConfigError(f"{key} must be an integer, got {v!r}")
    return SweepOptions(
        experiment=exp if recipe == exp.recipe else load_experiment(exp.name, recipe),
        batch_sizes=[int(b) for b in batch_sizes] if batch_sizes is not None else None,
        seeds=int(seeds),
        overrides=overrides,
        search=search,
        smoke_test=bool(pick("smoke_test", False)),
        gpus_per_trial=pick("gpus_per_trial"),
        cpus_per_trial=float(pick("cpus_per_trial", 1.0)),
        storage_path=pick("storage_path"),
        name=pick("name"),
        tracking_uri=pick("tracking_uri"),
        address=pick("address"),
        num_cpus=pick("num_cpus"),
        max_concurrent=pick("max_concurrent"),
        max_failures=int(pick("max_failures", 2)),
        checkpoint_every=int(pick("checkpoint_every", 1)),
        keep_checkpoints=int(pick("keep_checkpoints", 2)),
        resume=bool(pick("resume", False)),
        verbose=0 if args.quiet else 1,
    )


def main(experiment: str, argv: list[str] | None = None) -> int:
    """Run the sweep of the experiment named ``experiment`` with command-line ``argv``; returns the exit code."""
    exp = load_experiment(experiment)
    args = build_parser(exp).parse_args(argv)
    try:
        opts = options_from_args(exp, args)
        result = run_sweep(opts)
    except (ConfigError, SweepError, TrackingError) as e:  # TrackingError: e.g. a URI without a scheme
        print(f"error: {e}", file=sys.stderr, flush=True)
        return 2
    except KeyboardInterrupt:
        print("interrupted; continue with --resume", file=sys.stderr, flush=True)
        return 130
    return result.exit_code


def entry(experiment: str) -> None:
    """``if __name__ == "__main__": entry("exp5")`` in sweeps/expN.py and sweeps/lr_grid.py."""
    sys.exit(main(experiment))
