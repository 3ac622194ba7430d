"""Estimate the wall time of a whole Table I (exp1, exp3-exp6) from measured per-epoch seconds.

Inputs: one or two JSON files written by ``bench/throughput.py --json`` (their ``model.norm`` says
which model they timed: exp1 trains VGG13 without normalisation, exp3-exp6 with ghost batch norm;
a missing norm falls back to the other file, with a note), and a packing speed-up: either
``--packing packing.json`` from ``bench/packing.py`` (the best K per batch size, its total img/s
over K=1) or a single ``--packing-factor``.

    trials       = batch sizes x the experiment's search grid (exp5: factor_lr in 10, 5, 2) x seeds
    trial time   = epochs x seconds per epoch (40k train + 20k eval, from throughput.py) + per-trial start-up
    wall time    = sum over batch sizes of trial time / packing speed-up at that batch size

The issue's target: the whole table (exp1, exp3-exp6 at 100 epochs) in under 30 minutes on one H100.
A throughput JSON measured on a CPU gives a CPU estimate, and the output says so.

    python bench/table_time.py --throughput none.json ghost.json --packing packing.json
    python bench/table_time.py --throughput bench/results/cpu_none.json --packing-factor 1
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import common  # bench/common.py (puts the repository root on sys.path)

from bigbatch.experiments import load_experiment

TARGET_MINUTES = 30.0
EXPERIMENTS = ("exp1", "exp3", "exp4", "exp5", "exp6")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python bench/table_time.py", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--throughput", nargs="+", required=True, metavar="JSON", help="throughput.py --json output(s)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--packing", metavar="JSON", help="packing.py --json output: best speed-up per batch size")
    g.add_argument("--packing-factor", type=float, default=1.0, help="one speed-up for every batch size (default 1: one trial at a time)")
    p.add_argument("--experiments", nargs="+", default=list(EXPERIMENTS))
    p.add_argument("--epochs", type=int, default=100, help="epochs per run (default 100, the paper's; exp2 is not in the 30-min target)")
    p.add_argument("--seeds", type=int, default=1)
    p.add_argument("--batch-sizes", type=int, nargs="+", help="only these batch sizes of each row (default: the whole row)")
    p.add_argument("--recipe", default="text")
    p.add_argument("--trial-overhead", type=float, default=None,
                   help="seconds of start-up per trial (default: the warm-up seconds measured by throughput.py)")
    p.add_argument("--json", help="write the estimate here")
    return p


def load_epoch_seconds(paths: list[str]) -> tuple[dict[str, dict[int, dict]], list[dict]]:
    """norm -> batch size -> {'epoch_s', 'warmup_s'}, and the machine descriptions of the files."""
    by_norm: dict[str, dict[int, dict]] = {}
    machines = []
    for path in paths:
        data = json.loads(Path(path).read_text())
        norm = data["model"]["norm"]
        machines.append({"file": path, "norm": norm, "width_mult": data["model"]["width_mult"], **data["machine"]})
        for r in data["results"]:
            by_norm.setdefault(norm, {})[r["batch_size"]] = {
                "epoch_s": r["epoch_seconds_bigbatch"], "warmup_s": r["bigbatch"].get("warmup_seconds", 0.0)}
    return by_norm, machines


def load_packing(path: str | None, factor: float) -> tuple[dict[int, float], float]:
    if path is None:
        return {}, factor
    data = json.loads(Path(path).read_text())
    best: dict[int, float] = {}
    for r in data["results"]:
        s = r.get("speedup_vs_k1")
        if s and not r.get("oom"):
            best[r["batch_size"]] = max(best.get(r["batch_size"], 1.0), s)
    return best, 1.0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    by_norm, machines = load_epoch_seconds(args.throughput)
    speedups, default_speedup = load_packing(args.packing, args.packing_factor)
    on_gpu = all(m["device"].startswith("cuda") for m in machines)
    full_width = all(m["width_mult"] == 1.0 for m in machines)
    label = "GPU estimate" if on_gpu and full_width else "CPU ESTIMATE (not a GPU figure)" if not on_gpu else "GPU estimate, NARROW model"
    for m in machines:
        print(f"# {m['file']}: norm {m['norm']}, width {m['width_mult']}, {m['device']} "
              f"{m.get('gpu', m['cpu'])}, measured {m['date_utc']}")
    notes: list[str] = []
    rows, total_wall, total_gpu = [], 0.0, 0.0
    for name in args.experiments:
        exp = load_experiment(name, args.recipe)
        norm = exp.config.get("norm", "none")
        table = by_norm.get(norm)
        if table is None:
            other = next(iter(by_norm))
            notes.append(f"{name}: no throughput file for norm={norm}; used norm={other}'s epoch times")
            table = by_norm[other]
        grid = math.prod(len(v) for v in exp.search.values()) if exp.search else 1
        wall = gpu_s = 0.0
        trials = 0
        for bs in exp.batch_sizes:
            if args.batch_sizes and bs not in args.batch_sizes:
                continue
            if bs not in table:
                raise SystemExit(f"error: {name} needs batch size {bs}, not in the throughput files (norm {norm})")
            cfg = exp.run_config(bs, epochs=args.epochs)
            n = grid * args.seeds
            overhead = args.trial_overhead if args.trial_overhead is not None else table[bs]["warmup_s"]
            t = n * (cfg.total_epochs * table[bs]["epoch_s"] + overhead)
            gpu_s += t
            wall += t / speedups.get(bs, default_speedup)
            trials += n
        rows.append({"experiment": name, "label": exp.label, "norm": norm, "trials": trials, "epochs": args.epochs,
                     "device_seconds": gpu_s, "wall_seconds": wall})
        total_wall += wall
        total_gpu += gpu_s
    subset = f", batch sizes {args.batch_sizes} only" if args.batch_sizes else ""
    print(f"# {label}: {args.epochs} epochs per run, {args.seeds} seed(s){subset}; packing "
          + (f"from {args.packing} (best K per batch size)" if args.packing else f"factor {args.packing_factor:g}"))
    print("| experiment | trials | device time (one trial at a time) | wall time with packing |")
    print("|---|---|---|---|")
    for r in rows:
        print(f"| {r['experiment']} ({r['label']}) | {r['trials']} | {hms(r['device_seconds'])} | {hms(r['wall_seconds'])} |")
    print(f"| **total** | {sum(r['trials'] for r in rows)} | {hms(total_gpu)} | **{hms(total_wall)}** |")
    verdict = "met" if total_wall <= TARGET_MINUTES * 60 else "missed"
    print(f"# target: whole table in < {TARGET_MINUTES:g} min on one H100: {verdict if label == 'GPU estimate' else 'not applicable (' + label + ')'}")
    for n in notes:
        print(f"# note: {n}")
    if args.json:
        Path(args.json).write_text(json.dumps({"label": label, "inputs": machines, "rows": rows, "total_wall_seconds": total_wall,
                                               "total_device_seconds": total_gpu, "notes": notes, "args": vars(args)}, indent=1) + "\n")
    return 0


def hms(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


if __name__ == "__main__":
    sys.exit(main())
