"""Issue 20's lever study: the mini preset plus a few keys (a variant), run by the paper's own rule.

For each variant, into its own store ``OUT/<variant>/`` (mlflow.db, ray_results/, report/):

1. the paper's lr grid on the baseline at bs 32 (``python -m sweeps.lr_grid``, the grid of the committed
   mini run: 0.001 ... 0.3), one seed;
2. the lr it picks by validation accuracy (``analysis.lr_grid``; the test set takes no part), read from
   the store, never chosen by hand;
3. the headline rows (exp1, exp3, exp6; the preset's 2 seeds) at that base lr
   (``python -m sweeps.table1 --preset mini --set <variant keys> lr=<pick>``), or the rows given.

Each step is a subprocess with its wall time, appended to ``OUT/<variant>/levers.json``; a variant whose
grid already ran (``levers.json`` has its pick) goes straight to its rows, so a study runs in parts.

    python bench/levers.py --variant torch-0.1 --out runs/levers
    python bench/levers.py --variant authors-0.4 --out runs/levers --rows exp2 exp4 exp5 optuna
    python bench/levers.py --variant sqrt-torch-0.4 --out runs/levers      # lr_scaling=sqrt: exp3, exp6 only
    python bench/levers.py --list

A variant with ``lr_from`` takes its base lr from another variant's grid (the sqrt variants: the lr rule is
the lever, so the lr is the pick of the variant they modify) and runs no grid of its own.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import common  # bench/common.py (puts the repository root on sys.path)

from bigbatch.schema import git_commit
from sweeps.table1 import MINI, find_fashion_mnist

COMMIT = git_commit()  # the code the study starts with

GRID = [0.001, 0.003, 0.01, 0.03, 0.1, 0.3]  # the committed mini run's grid (docs/results/fashion-mnist-mini)
HEADLINE = ["exp1", "exp3", "exp6"]

# name -> the RunConfig keys it sets on top of the mini preset (and, optionally, whose grid gives its lr)
VARIANTS: dict[str, dict] = {
    "authors-0.1": {"keys": {"init": "authors", "epoch_scale": 0.1}},  # the committed mini table's setting
    "torch-0.1": {"keys": {"init": "torch", "epoch_scale": 0.1}},
    "authors-0.2": {"keys": {"init": "authors", "epoch_scale": 0.2}},
    "authors-0.4": {"keys": {"init": "authors", "epoch_scale": 0.4}},
    "torch-0.2": {"keys": {"init": "torch", "epoch_scale": 0.2}},
    "torch-0.4": {"keys": {"init": "torch", "epoch_scale": 0.4}},
    "sqrt-torch-0.1": {"keys": {"init": "torch", "epoch_scale": 0.1, "lr_scaling": "sqrt"}, "lr_from": "torch-0.1",
                       "rows": ["exp3", "exp6"]},
    "sqrt-torch-0.4": {"keys": {"init": "torch", "epoch_scale": 0.4, "lr_scaling": "sqrt"}, "lr_from": "torch-0.4",
                       "rows": ["exp3", "exp6"]},
    "sqrt-authors-0.4": {"keys": {"init": "authors", "epoch_scale": 0.4, "lr_scaling": "sqrt"}, "lr_from": "authors-0.4",
                         "rows": ["exp3", "exp6"]},
}


def sets(keys: dict) -> list[str]:
    return [f"{k}={json.dumps(v)}" for k, v in keys.items()]


def run(cmd: list[str], log: list[dict], store: Path, what: str) -> int:
    print(f"== {what}: {' '.join(cmd)}", flush=True)
    t0 = time.perf_counter()
    started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    code = subprocess.run(cmd, cwd=common.ROOT).returncode
    wall = time.perf_counter() - t0
    log.append({"step": what, "command": " ".join(cmd[2:] if cmd[1] == "-m" else cmd[1:]), "started": started,
                "wall_s": round(wall, 1), "exit": code, "commit": COMMIT})
    (store / "levers.json").write_text(json.dumps(log, indent=1) + "\n")
    print(f"== {what}: exit {code}, {wall / 60:.1f} min", flush=True)
    return code


def grid_pick(store: Path) -> float:
    """The lr the grid in ``store`` chose by validation accuracy at bs 32."""
    from analysis.lr_grid import summarize
    from analysis.runs import load_runs

    summary = summarize(load_runs(f"sqlite:///{store / 'mlflow.db'}"))
    chosen = summary[summary["chosen"] & (summary["batch_size"] == 32)]
    if len(chosen) != 1:
        raise SystemExit(f"error: no lr-grid pick in {store} (rows: {len(summary)})")
    return float(chosen["lr"].iloc[0])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python bench/levers.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--variant", choices=sorted(VARIANTS))
    p.add_argument("--out", default="runs/levers", help="one store per variant under it (default runs/levers)")
    p.add_argument("--rows", nargs="+", help="table1 steps to run (default exp1 exp3 exp6, or the variant's)")
    p.add_argument("--list", action="store_true", help="print the variants and exit")
    args = p.parse_args(argv)
    if args.list or not args.variant:
        for name, v in VARIANTS.items():
            print(f"{name}: {' '.join(sets(v['keys']))}" + (f" (lr from {v['lr_from']})" if "lr_from" in v else ""))
        return 0
    variant = VARIANTS[args.variant]
    out = Path(args.out).resolve()
    store = out / args.variant
    store.mkdir(parents=True, exist_ok=True)
    log_path = store / "levers.json"
    log = json.loads(log_path.read_text()) if log_path.exists() else []
    data = find_fashion_mnist()
    if data.data_dir is None:
        print(f"error: {data.note}", file=sys.stderr)
        return 2
    uri = f"sqlite:///{store / 'mlflow.db'}"
    source = out / variant["lr_from"] if "lr_from" in variant else store
    if "lr_from" not in variant and not (store / "mlflow.db").exists():
        preset = {k: v for k, v in MINI.overrides.items() if k not in ("dataset", "lr")}
        cmd = [sys.executable, "-m", "sweeps.lr_grid", "--dataset", "fashion-mnist", "--data-dir", data.data_dir,
               "--set", "download=false", *sets({**preset, **variant["keys"]}),
               "--search", f"lr={json.dumps(GRID)}", "--num-cpus", "2",
               "--storage-path", str(store / "ray_results"), "--tracking-uri", uri, "--quiet"]
        if run(cmd, log, store, "lr grid"):
            return 1
    lr = grid_pick(source)
    print(f"== base lr {lr:g}: the lr grid's pick in {source.name}", flush=True)
    rows = args.rows or variant.get("rows", HEADLINE)
    cmd = [sys.executable, "-m", "sweeps.table1", "--preset", "mini", "--experiments", *rows,
           "--set", *sets(variant["keys"]), f"lr={lr!r}", "--out", str(store), "--quiet"]
    return run(cmd, log, store, f"rows {' '.join(rows)} at lr {lr:g}")


if __name__ == "__main__":
    sys.exit(main())
