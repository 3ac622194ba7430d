"""Where the linear scaling rule breaks: one experiment's cells over a grid of learning rates, mini setting.

Finding (c) of the mini Table I (docs/results/fashion-mnist-mini/) is that ghost BN + linear scaling (exp3)
recovers the baseline's loss up to bs 256 and fails at 512 and 1024. Two explanations predict that: the
linearly scaled lr (base 0.1 x bs/32 = 1.6 and 3.2) is past the largest stable lr, or 160 and 80
optimizer steps are too few whatever the lr. This script separates them: it trains the same cells (the
mini preset's settings, ``sweeps.table1.MINI``) at a grid of peak learning rates around the linearly
scaled one, and prints per (batch size, lr) the test accuracy of the best-validation model and the last
epoch's training loss, mean ± std over seeds. The rows marked "eq. 1" are the table's own setting (marked
"preset" for an experiment that does not scale its lr, such as exp1).
``--epoch-scales`` adds the step budget as a second axis (the preset's ``epoch_scale`` is 0.1, 10 epochs):
if more steps rescue eq. 1's lr, the steps were the limit; if only a smaller lr does, the lr was.

    python bench/lr_limit.py --json bench/results/lr_limit_cpu.json        # exp3 at 512 and 1024, 1 seed
    python bench/lr_limit.py --batch-sizes 1024 --lrs 0.4 0.8 --seeds 2
    python bench/lr_limit.py --batch-sizes 1024 --lrs 0.8 1.6 3.2 --epoch-scales 0.1 0.2 0.4   # x 1, 2, 4 steps
    python bench/lr_limit.py --experiment exp1 --batch-sizes 32 --lrs 0.01 0.03 0.1 --epoch-scales 1  # the lr grid, 100 epochs

Runs ``--jobs`` processes at once with ``--threads`` torch threads each (default 2 x 1, the mini preset's
packing). No Ray, no MLflow: nothing is written to a table's store, so no Table I cell can choose among
these learning rates. Every lr is the one used at that batch size (the recipe's base lr is set so that the
experiment's own scaling, eq. 1, sqrt or none, gives it back); the experiment's schedule shape is unchanged.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import torch

import common  # bench/common.py (puts the repository root on sys.path)
from common import describe_machine, machine_info, pick_device

from bigbatch.experiments import load_experiment
from bigbatch.train import train
from sweeps.table1 import MINI

DEFAULT_DATA = os.environ.get("BIGBATCH_DATA_DIR") or str(common.ROOT.parent / "shared" / "data" / "fashion-mnist")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python bench/lr_limit.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--experiment", default="exp3", help="experiment (text recipe; default exp3)")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[512, 1024], help="default 512 1024")
    p.add_argument("--lrs", type=float, nargs="+", default=[0.2, 0.4, 0.8, 1.6, 3.2],
                   help="learning rates at the batch size (after eq. 1); default 0.2 0.4 0.8 1.6 3.2")
    p.add_argument("--epoch-scales", type=float, nargs="+", metavar="SCALE",
                   help="epoch_scale values to train each cell at (more epochs = more steps); default: the preset's 0.1")
    p.add_argument("--seeds", type=int, default=1, help="seeds per cell: 0..N-1 (default 1)")
    p.add_argument("--data-dir", default=DEFAULT_DATA,
                   help="Fashion-MNIST files (default $BIGBATCH_DATA_DIR, else ../shared/data/fashion-mnist)")
    p.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE",
                   help="further RunConfig overrides on top of the mini preset's (values parsed as JSON)")
    p.add_argument("--device", default="cpu", help="cpu (default) | cuda | auto")
    p.add_argument("--jobs", type=int, default=2, help="runs at once, one process each (default 2)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per run (default 1)")
    p.add_argument("--json", help="also write every run and the table here")
    p.add_argument("--table-from", metavar="JSON", help="print the table of an earlier --json output; no training")
    return p


def run_one(job: dict) -> dict:
    """Train one (batch size, lr, seed) cell in this process; its summary row."""
    torch.set_num_threads(job["threads"])
    exp = load_experiment(job["experiment"])
    cfg = exp.run_config(job["batch_size"], **job["overrides"])
    assert abs(cfg.scaled_lr - job["lr"]) <= 1e-9 * job["lr"], (cfg.scaled_lr, job["lr"])  # the lr the run uses
    t0 = time.perf_counter()
    s = train(cfg)
    last = s["history"][-1] if s["history"] else {}
    return {**{k: job[k] for k in ("batch_size", "lr", "seed")}, "epoch_scale": cfg.epoch_scale, "base_lr": cfg.lr, "status": s["status"],
            "test_acc": s["test_acc"], "best_val_acc": s["best_val_acc"], "best_epoch": s["best_epoch"],
            "final_train_loss": last.get("train_loss"), "steps": s["steps_per_epoch"] * s["epochs_run"],
            "seconds": round(time.perf_counter() - t0, 1)}


def mean_std(xs: list[float], digits: int = 2) -> str:
    xs = [x for x in xs if x is not None]
    if not xs:
        return "-"
    if len(xs) == 1:
        return f"{xs[0]:.{digits}f}"
    return f"{statistics.mean(xs):.{digits}f} ± {statistics.stdev(xs):.{digits}f}"


LABELS = {"linear": "eq. 1", "sqrt": "sqrt scaling", "none": "preset"}  # how the preset's own lr is marked


def plan(experiment: str, batch_sizes: list[int], lrs: list[float], scales: list[float], seeds: int, threads: int,
         overrides: dict) -> tuple[list[dict], dict[int, float], str]:
    """The jobs (one per batch size x step budget x lr x seed), the preset's lr per batch size, and its label.

    ``lr`` is the rate the run uses at its batch size: the recipe's base lr is set so that the experiment's own
    scaling (eq. 1, sqrt, or none) gives it back."""
    exp = load_experiment(experiment)
    preset = {bs: exp.run_config(bs, **overrides).scaled_lr for bs in batch_sizes}
    jobs = []
    for bs in batch_sizes:
        ratio = exp.run_config(bs, **{**overrides, "lr": 1.0}).scaled_lr  # lr used / base lr at this batch size
        for scale in scales:
            for lr in lrs:
                for seed in range(seeds):
                    o = {**overrides, "seed": seed, "lr": lr / ratio, "epoch_scale": scale}
                    exp.run_config(bs, **o)  # fail fast on bad input, before any process starts
                    jobs.append({"experiment": experiment, "batch_size": bs, "lr": lr, "seed": seed,
                                 "threads": threads, "overrides": o})
    return jobs, preset, LABELS[exp.run_config(batch_sizes[0], **overrides).lr_scaling]


def summarise(runs: list[dict], eq1: dict[int, float], label: str = "eq. 1") -> list[str]:
    """Markdown rows per (batch size, step budget, lr), the preset's own lr (eq. 1's for exp3) marked."""
    lines = ["| batch size | steps | lr | test acc % | best val acc % | final train loss | diverged | s/run |",
             "|---:|---:|---:|---|---|---|---:|---:|"]
    cells = sorted({(r["batch_size"], r.get("epoch_scale", 0.0), r["lr"]) for r in runs})
    for bs, scale, lr in cells:
        rs = [r for r in runs if (r["batch_size"], r.get("epoch_scale", 0.0), r["lr"]) == (bs, scale, lr)]
        mark = f" ({label})" if abs(lr - eq1.get(bs, -1)) < 1e-9 * max(lr, 1) else ""
        steps = "/".join(str(n) for n in sorted({r["steps"] for r in rs}))  # runs stopped early would differ
        lines.append(f"| {bs} | {steps} | {lr:g}{mark} | {mean_std([r['test_acc'] for r in rs])} "
                     f"| {mean_std([r['best_val_acc'] for r in rs])} "
                     f"| {mean_std([r['final_train_loss'] for r in rs], 3)} "
                     f"| {sum(r['status'] == 'diverged' for r in rs)}/{len(rs)} "
                     f"| {statistics.mean(r['seconds'] for r in rs):.0f} |")
    return lines


def main(argv: list[str] | None = None) -> int:
    from bigbatch.config import parse_set

    args = build_parser().parse_args(argv)
    if args.table_from:
        saved = json.loads(Path(args.table_from).read_text())
        eq1 = {int(k): v for k, v in saved["eq1"].items()}
        print("\n".join(summarise(saved["runs"], eq1, saved.get("label", "eq. 1"))))
        return 0
    device = pick_device(args.device)
    info = machine_info(device)
    print(f"# bench/lr_limit.py  {describe_machine(info)}", flush=True)
    common_overrides = {**MINI.overrides, "data_dir": args.data_dir, "download": False, "device": str(device),
                        "gns_every": 10**6, "sharpness_images": 0, **parse_set(args.set)}
    if args.epoch_scales and "epoch_scale" in parse_set(args.set):
        raise SystemExit("lr_limit.py: give the step budget either as --epoch-scales or as --set epoch_scale=..., not both")
    scales = args.epoch_scales or [common_overrides["epoch_scale"]]
    jobs, eq1, label = plan(args.experiment, args.batch_sizes, args.lrs, scales, args.seeds, args.threads,
                            common_overrides)
    t0 = time.perf_counter()
    runs = []
    with ProcessPoolExecutor(max_workers=args.jobs, mp_context=get_context("spawn")) as pool:
        for row in pool.map(run_one, jobs):
            runs.append(row)
            print(json.dumps(row), flush=True)
    wall = time.perf_counter() - t0
    changed = f"; changed: {' '.join(args.set)}" if args.set else ""
    scaled = f"; epoch_scale {' '.join(f'{x:g}' for x in scales)}" if args.epoch_scales else ""
    print(f"# {args.experiment} (text recipe), the mini preset's settings ({MINI.about}{changed}{scaled}); lr = the rate used at the "
          f"batch size; test accuracy of the best-validation model; mean ± std over seeds 0..{args.seeds - 1}; "
          f"{len(jobs)} runs in {wall / 60:.1f} min, {args.jobs} at once x {args.threads} thread(s)", flush=True)
    print("\n".join(summarise(runs, eq1, label)), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": info, "args": vars(args), "eq1": eq1, "label": label, "runs": runs,
                                               "wall_seconds": round(wall, 1)}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
