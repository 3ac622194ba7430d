"""Step e of bench/gpu_check.sh: the mini preset's headline cells at full width, while time remains.

bigbatch.train alone (no Ray, no MLflow: the GPU image has neither unless .whl/ travelled, and .whl/ and
Fashion-MNIST do not fit one 64 MiB carry together), seed 0, the mini preset's keys (sweeps.table1.MINI)
with width_mult 1, cells in priority order (the ends of each headline row first). A cell starts only
when the time it is expected to take (the slowest so far, x 1.2) fits before ``--deadline`` (a Unix time).
Results are written to ``--out`` after every cell. Exit 75 (and one line) when there is no Fashion-MNIST.

    python bench/gpu_mini.py --mode gpu --out e_mini.json --deadline $(( $(date +%s) + 300 ))
    python bench/gpu_mini.py --mode cpu --out e_mini.json     # the code path: tiny synthetic cells
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import common  # bench/common.py (puts the repository root on sys.path)

from bigbatch.experiments import load_experiment
from bigbatch.train import train

CELLS = [("exp1", 32), ("exp3", 1024), ("exp6", 1024), ("exp1", 1024), ("exp3", 32), ("exp6", 32),
         ("exp3", 256), ("exp6", 256), ("exp1", 256), ("exp3", 512), ("exp6", 512), ("exp1", 128)]
SMOKE = {"dataset": "synthetic", "download": False, "synthetic_size": 256, "val_size": 64, "width_mult": 0.0625,
         "epochs": 1, "gns_images": 0, "sharpness_images": 0}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python bench/gpu_mini.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--mode", choices=("gpu", "cpu"), default="gpu")
    p.add_argument("--out", required=True)
    p.add_argument("--deadline", type=float, default=time.time() + 300, help="Unix time by which the last cell ends")
    args = p.parse_args(argv)
    from sweeps.table1 import MINI, find_fashion_mnist

    if args.mode == "gpu":
        data = find_fashion_mnist(download=lambda root: "not downloaded here (no network on a lent GPU)")
        if data.data_dir is None:
            print(f"no Fashion-MNIST here ({data.note}); carry it instead of .whl/ and run --only e")
            return 75
        keys = {**MINI.overrides, "width_mult": 1.0, "data_dir": data.data_dir, "download": False, "device": "cuda"}
        cells = CELLS
    else:
        keys, cells = {**SMOKE, "device": "cpu"}, [("exp1", 32), ("exp6", 64)]
    done: list[dict] = []
    slowest = 0.0
    for exp_name, bs in cells:
        if time.time() + 1.2 * slowest > args.deadline:
            print(f"stopping before {exp_name} bs {bs}: its expected {slowest:.0f} s do not fit before the deadline")
            break
        cfg = load_experiment(exp_name).run_config(batch_size=bs, **{**keys, "seed": 0})
        t0 = time.perf_counter()
        summary = train(cfg)
        wall = time.perf_counter() - t0
        slowest = max(slowest, wall)
        done.append({"experiment": exp_name, "batch_size": bs, "seconds": round(wall, 1), "lr": cfg.scaled_lr,
                     "test_acc": summary["test_acc"], "best_val_acc": summary.get("best_val_acc"),
                     "epochs": cfg.total_epochs})
        print(json.dumps(done[-1]), flush=True)
        Path(args.out).write_text(json.dumps({"keys": keys, "cells": done}, indent=1) + "\n")
    Path(args.out).write_text(json.dumps({"keys": keys, "cells": done}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
