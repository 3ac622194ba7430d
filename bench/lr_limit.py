"""Where the linear scaling rule breaks: one experiment's cells over a grid of learning rates, mini setting.

Finding (c) of the mini Table I (docs/results/fashion-mnist-mini/) is that ghost BN + linear scaling (exp3)
recovers the baseline's loss up to bs 256 and fails at 512 and 1024. Two explanations predict that: the
linearly scaled lr (base 0.1 x bs/32 = 1.6 and 3.2) is past the largest stable lr, or 160 and 80
optimizer steps are too few whatever the lr. This script separates them: it trains the same cells (the
mini preset's settings, ``sweeps.table1.MINI``) at a grid of peak learning rates around the linearly
scaled one, and prints per (batch size, lr) the test accuracy of the best-validation model and the last
epoch's training loss, mean ± std over seeds. The rows marked "eq. 1" are the table's own setting.
``--epoch-scales`` adds the step budget as a second axis (the preset's ``epoch_scale`` is 0.1, 10 epochs):
if more steps rescue eq. 1's lr, the steps were the limit; if only a smaller lr does, the lr was.

    python bench/lr_limit.py --json bench/results/lr_limit_cpu.json        # exp3 at 512 and 1024, 1 seed
    python bench/lr_limit.py --batch-sizes 1024 --lrs 0.4 0.8 --seeds 2
    python bench/lr_limit.py --batch-sizes 1024 --lrs 0.8 1.6 3.2 --epoch-scales 0.1 0.2 0.4   # x 1, 2, 4 steps

Runs ``--jobs`` processes at once with ``--threads`` torch threads each (default 2 x 1, the mini preset's
packing). No Ray, no MLflow: nothing is written to a table's store, so no Table I cell can choose among
these learning rates. Every lr is the one used at that batch size (the recipe's base lr is set to
lr x 32 / bs so that eq. 1 gives it back); the experiment's schedule shape is unchanged.
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


def summarise(runs: list[dict], eq1: dict[int, float]) -> list[str]:
    """Markdown rows per (batch size, step budget, lr), the linearly scaled lr of the table marked."""
    lines = ["| batch size | steps | lr | test acc % | best val acc % | final train loss | diverged | s/run |",
             "|---:|---:|---:|---|---|---|---:|---:|"]
    cells = sorted({(r["batch_size"], r.get("epoch_scale", 0.0), r["lr"]) for r in runs})
    for bs, scale, lr in cells:
        rs = [r for r in runs if (r["batch_size"], r.get("epoch_scale", 0.0), r["lr"]) == (bs, scale, lr)]
        mark = " (eq. 1)" if abs(lr - eq1.get(bs, -1)) < 1e-9 * max(lr, 1) else ""
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
    base_lr = MINI.overrides["lr"]
    eq1 = {bs: base_lr * bs / 32 for bs in args.batch_sizes}
    if args.table_from:
        saved = json.loads(Path(args.table_from).read_text())
        print("\n".join(summarise(saved["runs"], {int(k): v for k, v in saved["eq1"].items()})))
        return 0
    device = pick_device(args.device)
    info = machine_info(device)
    print(f"# bench/lr_limit.py  {describe_machine(info)}", flush=True)
    common_overrides = {**MINI.overrides, "data_dir": args.data_dir, "download": False, "device": str(device),
                        "gns_every": 10**6, "sharpness_images": 0, **parse_set(args.set)}
    if args.epoch_scales and "epoch_scale" in parse_set(args.set):
        raise SystemExit("lr_limit.py: give the step budget either as --epoch-scales or as --set epoch_scale=..., not both")
    scales = args.epoch_scales or [common_overrides["epoch_scale"]]
    base_bs = load_experiment(args.experiment).run_config(32, **common_overrides).base_batch_size
    jobs = [{"experiment": args.experiment, "batch_size": bs, "lr": lr, "seed": seed, "threads": args.threads,
             "overrides": {**common_overrides, "seed": seed, "lr": lr * base_bs / bs, "epoch_scale": scale}}
            for bs in args.batch_sizes for scale in scales for lr in args.lrs for seed in range(args.seeds)]
    for job in jobs:  # fail fast on bad input, before any process starts
        load_experiment(args.experiment).run_config(job["batch_size"], **job["overrides"])
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
    print("\n".join(summarise(runs, eq1)), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": info, "args": vars(args), "eq1": eq1, "runs": runs,
                                               "wall_seconds": round(wall, 1)}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
