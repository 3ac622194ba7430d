"""What a Ray Tune sweep trial costs against ``bigbatch.train.train`` alone: throughput and wall time.

The same short run (synthetic CIFAR-shaped data, exp1's recipe, a narrow VGG13 on CPU or the full
one on CUDA, ``--epochs`` epochs at ``--batch-size``) is timed three ways, one after the other:

1. ``standalone``: ``bigbatch.train.train(cfg, report=...)`` in this process, no checkpoints;
2. ``standalone+ckpt``: the same with ``checkpoint_dir`` (last.pt + best_model.pt every epoch);
3. ``ray``: one trial of a real sweep, through the sweeps package's Python API
   (``sweeps.runner.run_sweep(SweepOptions(load_experiment("exp1"), ...))``: Ray Tune, per-epoch checkpoints handed to
   Tune, MLflow logging of every epoch to a SQLite store), with ``--cpus-per-trial`` / ``--gpus-per-trial``.
   ``--mode tuner`` instead builds a minimal ``ray.tune.Tuner`` with a function trainable that calls
   ``bigbatch.train.train`` and reports every epoch with its checkpoint and plain MLflow logging:
   Ray's own overhead, without the sweeps package.

Compared (epochs 2..N, so start-up and first-epoch warm-up are excluded):
- in-loop training throughput: the ``images_per_second`` each epoch reports (measured inside
  ``train_epoch``; shows interference such as thread counts or competing Ray processes);
- the epoch period: time between consecutive epoch reports (standalone: the report callback's clock;
  Ray: Tune's ``time_this_iter_s``), which includes evaluation, checkpoint writing, Tune persisting the
  checkpoint and MLflow logging: the throughput a sweep actually gets;
- whole wall time, including Ray's start-up and shutdown (a fixed cost per sweep, not per epoch).

The issue's target: a sweep loses at most 5% of throughput to Ray, logging and checkpoints.

    python bench/ray_overhead.py                         # CPU: width 0.25, 6 epochs of 1024 images, ~3 min
    python bench/ray_overhead.py --device cuda --epochs 10 --json ray_h100.json
    python bench/ray_overhead.py --checkpoint-probe-width 1.0   # + cost of one full-width checkpoint
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

import common  # bench/common.py (puts the repository root on sys.path)
from common import describe_machine, machine_info, median, pick_device

from bigbatch.config import RunConfig

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("MLFLOW_ENABLE_ASYNC_LOGGING", "false")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python bench/ray_overhead.py", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--mode", choices=("auto", "sweeps", "tuner"), default="auto",
                   help="sweeps: a real sweep via sweeps.runner; tuner: a minimal ray.tune.Tuner (default: sweeps if importable)")
    p.add_argument("--epochs", type=int, default=6, help="epochs per run (default 6; epochs 2..N are compared)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--width-mult", type=float, help="default: 1.0 on CUDA, 0.25 on CPU")
    p.add_argument("--images", type=int, help="training images per epoch (default: 40000 on CUDA, 1024 on CPU)")
    p.add_argument("--val-images", type=int, help="validation images per epoch (default: 10000 on CUDA, 256 on CPU)")
    p.add_argument("--cpus-per-trial", type=float, help="default: --threads or all CPUs (the sweeps trial runs int(cpus) torch threads, as many as standalone)")
    p.add_argument("--gpus-per-trial", type=float, help="default: 1 on CUDA, 0 on CPU")
    p.add_argument("--skip-standalone-ckpt", action="store_true", help="skip run 2 (standalone with checkpoints)")
    p.add_argument("--checkpoint-probe-width", type=float, default=None,
                   help="also time one save_checkpoint (+ a copy, as Tune persists it) of a model of this width (e.g. 1.0)")
    p.add_argument("--workdir", help="where Ray results, checkpoints and the MLflow DB go (default: a temporary directory, removed)")
    p.add_argument("--json", help="write the figures here")
    p.add_argument("--threads", type=int, help="torch intra-op threads in this process (default: torch's, = CPUs)")
    return p


def run_config(args, device: torch.device) -> RunConfig:
    return RunConfig(
        experiment="exp1", dataset="synthetic", download=False, synthetic_size=args.images + args.val_images,
        val_size=args.val_images, batch_size=args.batch_size, width_mult=args.width_mult, epochs=args.epochs,
        eval_batch_size=1000 if device.type == "cuda" else 256, device=str(device), seed=0,
    )


# ---------------------------------------------------------------------------------------------- standalone
def run_standalone(cfg: RunConfig, checkpoint_dir: str | None) -> dict:
    from bigbatch.train import train

    stamps, epochs = [], []

    def report(m):
        stamps.append(time.perf_counter())
        epochs.append(m)

    t0 = time.perf_counter()
    summary = train(cfg, report=report, checkpoint_dir=checkpoint_dir)
    wall = time.perf_counter() - t0
    periods = [b - a for a, b in zip(stamps, stamps[1:])]  # epoch k-1 -> k, for k = 2..N
    return {"wall_seconds": wall, "images_per_second": [m["images_per_second"] for m in epochs],
            "epoch_seconds": [m["epoch_seconds"] for m in epochs], "periods": periods,
            "threads": torch.get_num_threads(), "status": summary["status"]}


# ---------------------------------------------------------------------------------------------- ray
def _read_trial_results(experiment_path: Path) -> list[dict]:
    files = sorted(experiment_path.glob("*/result.json"))
    if not files:
        raise SystemExit(f"error: no trial result.json under {experiment_path}")
    rows = [json.loads(line) for line in files[0].read_text().splitlines() if line.strip()]
    return [r for r in rows if "checkpointed" in r]  # per-epoch reports (the final summary report has none)


def _summarise_ray(rows: list[dict], wall: float, extra: dict) -> dict:
    return {"wall_seconds": wall, "images_per_second": [r["images_per_second"] for r in rows],
            "epoch_seconds": [r["epoch_seconds"] for r in rows],
            "periods": [r["time_this_iter_s"] for r in rows[1:]],  # time since the previous report
            "checkpointed": [bool(r["checkpointed"]) for r in rows], **extra}


def run_sweeps(cfg: RunConfig, args, workdir: Path) -> dict:
    from bigbatch.experiments import load_experiment
    from sweeps.runner import SweepOptions, run_sweep

    overrides = {k: v for k, v in cfg.to_dict().items()
                 if k in ("dataset", "download", "synthetic_size", "val_size", "width_mult", "epochs", "eval_batch_size", "device", "seed")}
    opts = SweepOptions(
        experiment=load_experiment("exp1"), batch_sizes=[cfg.batch_size], overrides=overrides, cpus_per_trial=args.cpus_per_trial,
        gpus_per_trial=args.gpus_per_trial, storage_path=str(workdir / "ray_results"), name="ray-overhead",
        tracking_uri="sqlite:///" + str(workdir / "mlflow.db"), num_cpus=os.cpu_count(), verbose=0,
    )
    t0 = time.perf_counter()
    result = run_sweep(opts)
    wall = time.perf_counter() - t0
    if result.exit_code != 0:
        raise SystemExit(f"error: the sweep failed (exit code {result.exit_code}); see {result.path}")
    rows = _read_trial_results(Path(result.path))
    out = _summarise_ray(rows, wall, {"mode": "sweeps (sweeps.runner.run_sweep, exp1, MLflow via sweeps.tracking)"})
    out["mlflow_images_per_second"] = _mlflow_metric(opts.tracking_uri, "images_per_second")
    return out


def _mlflow_metric(uri: str, key: str) -> list[float]:
    """The metric's per-epoch values as MLflow stored them (checks that the trial logged every epoch)."""
    try:
        from mlflow.tracking import MlflowClient

        client = MlflowClient(uri)
        runs = [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])
                if r.data.tags.get("bigbatch.role", "trial") == "trial" and key in r.data.metrics]
        if not runs:
            return []
        hist = client.get_metric_history(runs[0].info.run_id, key)
        return [m.value for m in sorted(hist, key=lambda m: m.step)]
    except Exception as e:  # the comparison does not depend on it
        print(f"# note: could not read {key} from MLflow: {type(e).__name__}: {e}", file=sys.stderr)
        return []


def _tuner_trainable(config: dict) -> None:
    """A minimal function trainable: bigbatch.train.train, per-epoch checkpoints to Tune, plain MLflow."""
    import mlflow
    from ray import tune

    from bigbatch.config import RunConfig
    from bigbatch.train import train

    torch.set_num_threads(max(1, int(config["threads"])))
    cfg = RunConfig.from_dict(config["cfg"])
    local = tempfile.mkdtemp(prefix="bench-ray-")
    mlflow.set_tracking_uri(config["tracking_uri"])
    mlflow.set_experiment("bench-ray-overhead")
    with mlflow.start_run(run_name=f"bs={cfg.batch_size}"):
        mlflow.log_params({k: json.dumps(v) if isinstance(v, list) else v for k, v in cfg.to_dict().items()})

        def report(m):
            mlflow.log_metrics({k: float(m[k]) for k in ("train_loss", "train_acc", "val_loss", "val_acc", "lr",
                                                          "momentum", "epoch_seconds", "images_per_second")}, step=m["epoch"])
            tune.report({k: v for k, v in m.items() if isinstance(v, (int, float, bool))},
                        checkpoint=tune.Checkpoint.from_directory(local))

        summary = train(cfg, report=report, checkpoint_dir=local)
        mlflow.log_metrics({"test_acc": summary["test_acc"], "best_val_acc": summary["best_val_acc"]})
        mlflow.log_artifact(str(Path(local) / "best_model.pt"))
    shutil.rmtree(local, ignore_errors=True)


def run_tuner(cfg: RunConfig, args, workdir: Path) -> dict:
    import ray
    from ray import tune

    t0 = time.perf_counter()
    ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, logging_level="WARNING")
    try:
        trainable = tune.with_resources(_tuner_trainable, {"cpu": args.cpus_per_trial, "gpu": args.gpus_per_trial})
        tuner = tune.Tuner(
            trainable,
            param_space={"cfg": cfg.to_dict(), "threads": args.cpus_per_trial,
                         "tracking_uri": "sqlite:///" + str(workdir / "mlflow.db")},
            tune_config=tune.TuneConfig(num_samples=1),
            run_config=tune.RunConfig(name="ray-overhead", storage_path=str(workdir / "ray_results"), verbose=0,
                                      checkpoint_config=tune.CheckpointConfig(num_to_keep=2)),
        )
        grid = tuner.fit()
        if grid.errors:
            raise SystemExit(f"error: the trial failed: {grid.errors[0]}")
        path = Path(grid[0].path).parent
    finally:
        ray.shutdown()
    wall = time.perf_counter() - t0
    rows = _read_trial_results(path)
    return _summarise_ray(rows, wall, {"mode": "tuner (ray.tune.Tuner + minimal function trainable, plain MLflow)"})


# ---------------------------------------------------------------------------------------------- probe
def checkpoint_probe(width: float, device: torch.device, repeats: int = 3) -> dict:
    """Seconds to write one per-epoch checkpoint of a model of ``width`` (last.pt + best_model.pt,
    fsync'd) and to copy the directory once more (what Tune does when it persists a checkpoint)."""
    from bigbatch.train import save_checkpoint, setup, cpu_state, raw_model

    cfg = RunConfig(dataset="synthetic", download=False, synthetic_size=256, val_size=64, width_mult=width,
                    batch_size=32, device=str(device), momentum=0.9)
    run = setup(cfg, device)
    x, y = run.data.train.get(torch.arange(32, device=device))
    torch.nn.functional.cross_entropy(run.model(x), y).backward()
    run.optimizer.step()  # momentum buffers exist, as in exp5 with cycle_momentum (exp1 has none)
    run.best_state = cpu_state(raw_model(run))
    save_s, copy_s, best_s = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(repeats):
            d = Path(tmp) / f"c{i}"
            t0 = time.perf_counter()
            run.best_state = cpu_state(raw_model(run))
            best_s.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            run.best_epoch = i + 1  # a new best: last.pt carries it and best_model.pt is rewritten
            save_checkpoint(run, d)
            save_s.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            shutil.copytree(d, Path(tmp) / f"copy{i}")
            copy_s.append(time.perf_counter() - t0)
        size = sum(f.stat().st_size for f in (Path(tmp) / "c0").iterdir())
    params = sum(p.numel() for p in run.model.parameters())
    return {"width_mult": width, "params": params, "checkpoint_mb": size / 1e6, "best_state_copy_seconds": median(best_s),
            "save_checkpoint_seconds": median(save_s), "copy_seconds": median(copy_s),
            "note": "momentum 0.9 (optimizer state included); best_model.pt rewritten (best changed)"}


# ---------------------------------------------------------------------------------------------- main
def pct(a: float, b: float) -> float:
    """Loss of b against a, in % (positive: b is slower)."""
    return 100.0 * (1.0 - b / a)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    device = pick_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    gpu = device.type == "cuda"
    args.width_mult = args.width_mult if args.width_mult is not None else (1.0 if gpu else 0.25)
    args.images = args.images or (40_000 if gpu else 1024)
    args.val_images = args.val_images or (10_000 if gpu else 256)
    args.cpus_per_trial = args.cpus_per_trial or float(args.threads or os.cpu_count() or 1)  # trial threads = its CPUs
    args.gpus_per_trial = args.gpus_per_trial if args.gpus_per_trial is not None else (1.0 if gpu else 0.0)
    if args.epochs < 2:
        raise SystemExit("error: --epochs must be >= 2 (epoch 1 is excluded as warm-up)")
    if args.mode == "auto":
        try:
            import sweeps.runner  # noqa: F401
            args.mode = "sweeps"
        except ImportError:
            args.mode = "tuner"
    info = machine_info(device)
    print(f"# bench/ray_overhead.py  {describe_machine(info)}")
    cfg = run_config(args, device)
    print(f"# run: exp1 recipe, synthetic {args.images} train + {args.val_images} val images, width {args.width_mult}, "
          f"bs {args.batch_size}, {args.epochs} epochs, device {device}; Ray mode {args.mode}, "
          f"{args.cpus_per_trial:g} CPU + {args.gpus_per_trial:g} GPU per trial", flush=True)

    workdir = Path(args.workdir).resolve() if args.workdir else Path(tempfile.mkdtemp(prefix="bench-ray-overhead-"))
    workdir.mkdir(parents=True, exist_ok=True)
    runs: dict[str, dict] = {}
    try:
        runs["standalone"] = run_standalone(cfg, None)
        print(f"  standalone done in {runs['standalone']['wall_seconds']:.1f} s", file=sys.stderr, flush=True)
        if not args.skip_standalone_ckpt:
            runs["standalone+ckpt"] = run_standalone(cfg, str(workdir / "standalone_ckpt"))
            print(f"  standalone+ckpt done in {runs['standalone+ckpt']['wall_seconds']:.1f} s", file=sys.stderr, flush=True)
        runs["ray"] = (run_sweeps if args.mode == "sweeps" else run_tuner)(cfg, args, workdir)
        print(f"  ray done in {runs['ray']['wall_seconds']:.1f} s", file=sys.stderr, flush=True)
    finally:
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)

    for r in runs.values():  # epochs 2..N
        r["median_images_per_second"] = median(r["images_per_second"][1:])
        r["median_period_seconds"] = median(r["periods"])
        r["median_epoch_seconds"] = median(r["epoch_seconds"][1:])
    base = runs["standalone"]
    print("| run | in-loop train img/s (median, epochs 2..N) | loss vs standalone | epoch period s (median) | "
          "throughput loss vs standalone | per-epoch overhead s (period - epoch_seconds) | its share of the period | whole wall s | extra wall s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, r in runs.items():
        r["in_loop_loss_pct"] = pct(base["median_images_per_second"], r["median_images_per_second"])
        r["period_loss_pct"] = pct(1 / base["median_period_seconds"], 1 / r["median_period_seconds"])
        # per epoch k >= 2: (time between reports k-1 and k) - (epoch k's own train+eval seconds) = what
        # checkpoints, Tune and MLflow add; robust to load that slows training itself
        extra = [p - e for p, e in zip(r["periods"], r["epoch_seconds"][1:])]
        r["per_epoch_overhead_seconds"] = median(extra)
        r["overhead_share_of_period_pct"] = 100.0 * median([x / p for x, p in zip(extra, r["periods"])])
        print(f"| {name} | {r['median_images_per_second']:,.1f} | {r['in_loop_loss_pct']:+.1f}% | "
              f"{r['median_period_seconds']:.3f} | {r['period_loss_pct']:+.1f}% | {r['per_epoch_overhead_seconds']:.3f} | "
              f"{r['overhead_share_of_period_pct']:.1f}% | "
              f"{r['wall_seconds']:.1f} | {r['wall_seconds'] - base['wall_seconds']:+.1f} |")
    ray_r = runs["ray"]
    verdict = "met" if ray_r["overhead_share_of_period_pct"] <= 5.0 else "missed"
    print(f"# Ray sweep trial vs bigbatch.train alone: checkpoints + Tune + MLflow take {ray_r['per_epoch_overhead_seconds']:.3f} s "
          f"per epoch = {ray_r['overhead_share_of_period_pct']:.1f}% of the trial's epoch period; target <= 5%: {verdict}. "
          f"Measured directly (noisier: the training itself varies with machine load): {ray_r['period_loss_pct']:+.1f}% "
          f"epoch throughput, {ray_r['in_loop_loss_pct']:+.1f}% inside the training loop. "
          f"Fixed cost (Ray start/stop, MLflow set-up): {ray_r['wall_seconds'] - base['wall_seconds']:+.1f} s of wall time.")
    if ray_r.get("mlflow_images_per_second"):
        print(f"# MLflow holds images_per_second for {len(ray_r['mlflow_images_per_second'])} epochs "
              f"(median {median(ray_r['mlflow_images_per_second'][1:]):,.1f})")

    probe = None
    if args.checkpoint_probe_width:
        probe = checkpoint_probe(args.checkpoint_probe_width, device)
        print(f"# checkpoint probe, width {probe['width_mult']} ({probe['params']:,} params): {probe['checkpoint_mb']:.0f} MB on disk; "
              f"best-state copy {probe['best_state_copy_seconds']:.3f} s, save_checkpoint {probe['save_checkpoint_seconds']:.3f} s, "
              f"copy as Tune persists it {probe['copy_seconds']:.3f} s (per checkpointed epoch)")
    info["loadavg_1m_end"] = round(os.getloadavg()[0], 2)
    print(f"# load avg (1 min) at end: {info['loadavg_1m_end']}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"machine": info, "args": vars(args), "runs": runs, "checkpoint_probe": probe},
                                              indent=1, default=str) + "\n")
        print(f"# wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
