"""The steps-to-target study: per batch size, the lr tuned independently, the optimizer steps to a validation target.

    python -m sweeps.scaling --out runs/scaling                      # the mini setting (Fashion-MNIST), then the analysis
    python -m sweeps.scaling --smoke-test --out /tmp/scaling          # synthetic images, a minute
    python -m sweeps.scaling --resume --out runs/scaling              # the latest interrupted study

Shallue et al. 2019 (arXiv 1811.03600) and McCandlish et al. 2018 (arXiv 1812.06162): for each batch size B an
independent quasi-random search (Optuna's QMC sampler) over a constant lr, log-uniform in a range that grows
with B (``--lr-bounds scaled``: [lr_min sqrt(B/32), lr_max B/32], so both the sqrt and the linear rule lie
inside); optionally momentum too (``--search-momentum``). Everything else is the experiment's (exp3: ghost BN).
Each trial evaluates the validation set after optimizer steps 1, 2, ... growing by ``--step-eval-ratio`` (1.1:
every steps-to-target is resolved to within 10 %), logs each evaluation to MLflow (metric ``val_acc_at_step``,
step = the optimizer step), and stops at the first evaluation reaching the hardest target (status ``reached``),
at the step cap (``--max-epochs``) or on divergence; a trial that never gets there is kept as not reached.
It runs through the one sweep path (``sweeps.runner.run_sweep``, search kind ``sweeps.search.StepsToTarget``),
so data, resources, storage, tracking, ``--resume``, ``--smoke-test`` and the cluster options are every sweep's.
With ``--out`` it then runs ``python -m analysis.scaling`` into ``OUT/scaling/`` (CSV, figures, report section).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

from bigbatch.config import ConfigError, OneLineArgumentParser, parse_set
from bigbatch.experiments import load_experiment

from .cli import add_data_args, add_resource_args
from .runner import Progress, SweepError, SweepOptions, default_name, planned_epochs, run_sweep
from .search import DEFAULT_SCALING_BATCH_SIZES, StepsToTarget
from .tracking import TrackingError

# the mini setting of sweeps.table1 (Fashion-MNIST, VGG13 width 0.125, 8,192 images) without its lr and
# epoch_scale (the study searches the lr; --max-epochs is the cap); the noise scale every 2nd epoch, no sharpness
MINI_SCALING = {"dataset": "fashion-mnist", "width_mult": 0.125, "train_subset": 8192, "val_size": 1000,
                "eval_batch_size": 1000, "gns_images": 1024, "gns_every": 2, "sharpness_images": 0}
SMOKE = {"targets": [15.0, 25.0], "trials": 2, "batch_sizes": [32, 64], "max_epochs": 3}


def build_parser() -> argparse.ArgumentParser:
    p = OneLineArgumentParser(prog="python -m sweeps.scaling", description=__doc__.split("\n\n")[1].split("\n")[0])
    g = p.add_argument_group("the study")
    g.add_argument("--experiment", default="exp3", choices=["exp1", "exp3"], help="the config trained (default exp3: ghost BN); a constant lr")
    g.add_argument("--batch-sizes", type=int, nargs="+", metavar="BS", help=f"default {DEFAULT_SCALING_BATCH_SIZES} (smoke {SMOKE['batch_sizes']})")
    g.add_argument("--targets", type=float, nargs="+", metavar="ACC", help="validation accuracies (%%) to reach (default 70 75 80; smoke 15 25)")
    g.add_argument("--trials-per-batch-size", type=int, metavar="N", help="lr trials per batch size (default 6; smoke 2)")
    g.add_argument("--max-epochs", type=int, help="the step cap, in epochs (RunConfig epochs; default 40: bs 32 10,240 steps, bs 1024 320; smoke 3)")
    g.add_argument("--lr-min", type=float, default=0.01, help="lr range at --base-batch-size, low end (default 0.01)")
    g.add_argument("--lr-max", type=float, default=0.5, help="high end (default 0.5)")
    g.add_argument("--lr-bounds", choices=["scaled", "fixed"], default="scaled",
                   help="scaled (default): [lr_min sqrt(B/B0), lr_max B/B0]; fixed: [lr_min, lr_max] at every B")
    g.add_argument("--base-batch-size", type=int, default=32, help="B0 of the scaled bounds (default 32)")
    g.add_argument("--search-momentum", action="store_true", help="search momentum too (1 - momentum log-uniform in [0.01, 1])")
    g.add_argument("--step-eval-ratio", type=float, default=1.1, help="evaluate after steps growing by this ratio (default 1.1: within 10%%)")
    g.add_argument("--preset", choices=["mini", "none"], default="mini",
                   help="mini (default): Fashion-MNIST, VGG13 width 0.125, 8,192 images (sweeps.table1's); none: the experiment's own data")
    add_data_args(g)
    g.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE", help="override any RunConfig key (not lr: it is searched)")
    g.add_argument("--seed", type=int, default=0, help="the quasi-random points' seed and the trials' training seed")
    g.add_argument("--smoke-test", action="store_true", help="synthetic images, narrow model, 2 batch sizes x 2 trials, 3 epochs")
    add_resource_args(p)
    o = p.add_argument_group("storage, logging, faults")
    o.add_argument("--out", help="one folder for everything: OUT/ray_results, OUT/mlflow.db, and the analysis in OUT/scaling/")
    o.add_argument("--storage-path", help="Ray Tune results (default ./ray_results, or OUT/ray_results)")
    o.add_argument("--tracking-uri", help="MLflow tracking URI (default sqlite:///<cwd>/mlflow.db, or OUT/mlflow.db)")
    o.add_argument("--name", help="study name (default scaling-<exp>-<recipe>[-smoke]-<UTC time>)")
    o.add_argument("--resume", action="store_true", help="continue an interrupted study (--name, default the latest)")
    o.add_argument("--max-failures", type=int, default=2, help="retries of a failed trial from its last checkpoint")
    o.add_argument("--checkpoint-every", type=int, default=1, help="epochs between trial checkpoints")
    o.add_argument("--no-analysis", action="store_true", help="with --out: do not run analysis.scaling at the end")
    o.add_argument("--quiet", action="store_true")
    return p


def options_from_args(args: argparse.Namespace) -> SweepOptions:
    """The command line as the one sweep path's options (ConfigError on bad input)."""
    exp = load_experiment(args.experiment, args.recipe)
    smoke = args.smoke_test
    overrides = {}
    if args.preset == "mini" and not smoke:
        from .table1 import find_fashion_mnist

        overrides.update(MINI_SCALING)
        if args.data_dir is None and args.dataset in (None, "fashion-mnist"):
            found = find_fashion_mnist()
            if found.data_dir is None:
                raise ConfigError(found.note)
            overrides.update(data_dir=found.data_dir, download=False)
    overrides.update(parse_set(args.set))
    for key in ("dataset", "data_dir"):
        if getattr(args, key) is not None:
            overrides[key] = getattr(args, key)
    if args.data_dir is not None:
        overrides["data_dir"] = str(Path(args.data_dir).expanduser().resolve())
    max_epochs = args.max_epochs if args.max_epochs is not None else (SMOKE["max_epochs"] if smoke else 40)
    if max_epochs < 1:
        raise ConfigError(f"--max-epochs must be >= 1, got {max_epochs}")
    overrides.setdefault("epochs", max_epochs)
    overrides["seed"] = args.seed
    kind = StepsToTarget(
        targets=tuple(args.targets or (SMOKE["targets"] if smoke else (70.0, 75.0, 80.0))),
        num_samples=args.trials_per_batch_size or (SMOKE["trials"] if smoke else 6),
        lr_min=args.lr_min, lr_max=args.lr_max, lr_bounds=args.lr_bounds, base_batch_size=args.base_batch_size,
        search_momentum=args.search_momentum, step_eval_ratio=args.step_eval_ratio, seed=args.seed)
    kind.check()
    out = Path(args.out).expanduser().resolve() if args.out else None
    storage = args.storage_path or (str(out / "ray_results") if out else None)
    uri = args.tracking_uri or (f"sqlite:///{out / 'mlflow.db'}" if out else None)
    if out:
        out.mkdir(parents=True, exist_ok=True)
    batch_sizes = args.batch_sizes or (SMOKE["batch_sizes"] if smoke else DEFAULT_SCALING_BATCH_SIZES)
    return SweepOptions(exp, batch_sizes=batch_sizes, overrides=overrides, smoke_test=smoke,
                        gpus_per_trial=args.gpus_per_trial, cpus_per_trial=args.cpus_per_trial, storage_path=storage,
                        name=args.name or ("scaling-" + default_name(exp, smoke) if not args.resume else None),
                        tracking_uri=uri, address=args.address, num_cpus=args.num_cpus, max_concurrent=args.max_concurrent,
                        max_failures=args.max_failures, checkpoint_every=args.checkpoint_every, resume=args.resume,
                        verbose=0 if args.quiet else 1, search_kind=kind)


def analyse(uri: str, name: str, out: Path) -> int:
    """``python -m analysis.scaling`` as a subprocess (sweeps never import analysis) into ``out``."""
    cmd = [sys.executable, "-m", "analysis.scaling", "--tracking-uri", uri, "--name", name, "--out", str(out)]
    print(f"analysis: {' '.join(cmd[1:])}", flush=True)
    return subprocess.run(cmd).returncode


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    t0 = time.perf_counter()
    try:
        opts = options_from_args(args)
        progress = None if opts.resume or args.quiet else Progress([("scaling", planned_epochs(opts))])
        if progress is not None:
            progress.start(0)
        result = run_sweep(opts, progress=progress)
    except (ConfigError, SweepError, TrackingError) as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return 2
    except KeyboardInterrupt:
        print("interrupted; continue with the same command and --resume", file=sys.stderr)
        return 130
    print(f"study {result.name}: {result.num_trials} trials in {(time.perf_counter() - t0) / 60:.1f} min "
          f"(MLflow experiment {result.experiment_name})", flush=True)
    code = result.exit_code
    if args.out and not args.no_analysis and code in (0, 1):
        code = analyse(result.tracking_uri, result.name, Path(args.out).expanduser().resolve() / "scaling") or code
    return code


if __name__ == "__main__":
    sys.exit(main())
