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
    python bench/levers.py --variant sqrt-torch-0.4 --out runs/levers      # lr_scaling=sqrt: exp3, exp6 (exp3-6 with --rows;
                                                                           # exp1, exp2 scale no lr: refused)
    python bench/levers.py --list
    python bench/levers.py --summarize --out runs/levers --to docs/results/fashion-mnist-mini/levers

``--summarize`` reads every variant's store under OUT (and the committed mini table, variant authors-0.1,
from ``docs/results/fashion-mnist-mini/table.csv``) into ``summary.csv`` (one line per variant x row x batch
size), ``tables.md`` (one table per variant, the committed table's layout, the paper's values beside) and
``gap_vs_steps.png`` (the gap bs 32 - bs 1024 of exp1, exp3, exp6 against the steps at bs 1024, one line per
init and lr rule, the paper's point at 4,000 steps marked).

A variant with ``lr_from`` takes its base lr from another variant's grid (the sqrt variants: the lr rule is
the lever, so the lr is the pick of the variant they modify) and runs no grid of its own.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import common  # bench/common.py (puts the repository root on sys.path)

from bigbatch.config import ConfigError, RunConfig
from bigbatch.experiments import load_experiment
from bigbatch.schema import git_commit
from sweeps.table1 import MINI, OPTUNA, find_fashion_mnist

COMMIT = git_commit()  # the code the study starts with

COMMITTED_DIR = common.ROOT / "docs" / "results" / "fashion-mnist-mini" / "levers"  # each variant's levers.json
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
    # issue 22: the headline rows with the CIFAR ResNet-18 (the mini preset's init, so beside the committed VGG13 table)
    "resnet18-0.1": {"keys": {"model": "resnet18", "init": "authors", "epoch_scale": 0.1}},
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
    """The lr the grid in ``store`` chose by validation accuracy at bs 32; for a store that is not on this
    machine (run in an earlier session), the base lr its committed levers.json records."""
    from analysis.lr_grid import summarize
    from analysis.runs import load_runs

    summary = summarize(load_runs(f"sqlite:///{store / 'mlflow.db'}")) if (store / "mlflow.db").exists() else None
    if summary is None or not len(summary):  # a store without its grid (run in an earlier session), or none here
        pick = committed_pick(store.name)
        if pick is not None:
            return pick
        if summary is None:
            raise SystemExit(f"error: no store in {store} and no committed lr-grid pick of {store.name}")
    chosen = summary[summary["chosen"] & (summary["batch_size"] == 32)]
    if len(chosen) != 1:
        raise SystemExit(f"error: no lr-grid pick in {store} (rows: {len(summary)})")
    return float(chosen["lr"].iloc[0])


def committed_pick(variant: str) -> float | None:
    """The base lr of ``variant``'s rows from docs/results/fashion-mnist-mini/levers/<variant>/levers.json (the rows
    step is named "rows ... at lr <pick>"): a variant whose grid ran in an earlier session; None if it records none."""
    path = COMMITTED_DIR / variant / "levers.json"
    picks = {m.group(1) for s in (json.loads(path.read_text()) if path.exists() else [])
             if (m := re.search(r" at lr (\S+)$", s["step"]))}
    if len(picks) > 1:
        raise SystemExit(f"error: {path} records more than one lr-grid pick: {sorted(picks)}")
    return float(picks.pop()) if picks else None


def scales_lr(row: str) -> bool:
    """Whether a table1 step's experiment scales its lr with the batch size (the optuna step searches exp5)."""
    return load_experiment("exp5" if row == OPTUNA else row).config.get("lr_scaling", RunConfig.lr_scaling) != "none"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python bench/levers.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--variant", choices=sorted(VARIANTS))
    p.add_argument("--out", default="runs/levers", help="one store per variant under it (default runs/levers)")
    p.add_argument("--rows", nargs="+", help="table1 steps to run (default exp1 exp3 exp6, or the variant's)")
    p.add_argument("--list", action="store_true", help="print the variants and exit")
    p.add_argument("--summarize", action="store_true", help="write summary.csv, tables.md and the figure into --to")
    p.add_argument("--to", default="docs/results/fashion-mnist-mini/levers", help="--summarize: the output folder")
    args = p.parse_args(argv)
    if args.summarize:
        return summarize(Path(args.out), Path(args.to))
    if args.list or not args.variant:
        for name, v in VARIANTS.items():
            print(f"{name}: {' '.join(sets(v['keys']))}" + (f" (lr from {v['lr_from']})" if "lr_from" in v else ""))
        return 0
    variant = VARIANTS[args.variant]
    rows = args.rows or variant.get("rows", HEADLINE)
    try:
        unscaled = [r for r in rows if not scales_lr(r)] if "lr_scaling" in variant["keys"] else []
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if unscaled:  # --set would give the baseline rows a scaled lr
        print(f"error: {' '.join(unscaled)} scale no lr (lr_scaling none): their rows are "
              f"{variant.get('lr_from', 'the variant without lr_scaling')}'s, not {args.variant}'s", file=sys.stderr)
        return 2
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
    if "lr_from" not in variant and not (store / "mlflow.db").exists() and committed_pick(args.variant) is None:
        preset = {k: v for k, v in MINI.overrides.items() if k not in ("dataset", "lr")}
        cmd = [sys.executable, "-m", "sweeps.lr_grid", "--dataset", "fashion-mnist", "--data-dir", data.data_dir,
               "--set", "download=false", *sets({**preset, **variant["keys"]}),
               "--search", f"lr={json.dumps(GRID)}", "--num-cpus", "2",
               "--storage-path", str(store / "ray_results"), "--tracking-uri", uri, "--quiet"]
        if run(cmd, log, store, "lr grid"):
            return 1
    lr = grid_pick(source)
    print(f"== base lr {lr:g}: the lr grid's pick in {source.name}", flush=True)
    cmd = [sys.executable, "-m", "sweeps.table1", "--preset", "mini", "--experiments", *rows,
           "--set", *sets(variant["keys"]), f"lr={lr!r}", "--out", str(store), "--quiet"]
    return run(cmd, log, store, f"rows {' '.join(rows)} at lr {lr:g}")


# ---------------------------------------------------------------------------------------------- summary
SUMMARY_COLUMNS = ["variant", "init", "epoch_scale", "lr_scaling", "base_lr", "row", "batch_size", "steps", "n_seeds",
                   "test_acc_mean", "test_acc_std"]
COMMITTED = common.ROOT / "docs" / "results" / "fashion-mnist-mini" / "table.csv"  # the mini table: authors-0.1
BATCH_SIZES = [32, 64, 128, 256, 512, 1024]


def steps(row: str, batch_size: int, keys: dict) -> int:
    """Optimizer steps of one run of ``row`` at ``batch_size`` (the last partial batch kept, as in the preset)."""
    from bigbatch.experiments import load_experiment

    cfg = load_experiment(row.removesuffix("-best")).run_config(batch_size=batch_size, **{**MINI.overrides, **keys})
    return cfg.total_epochs * -(-cfg.train_subset // batch_size)


def store_rows(name: str, store: Path) -> tuple[list[dict], object, str]:
    """summary rows of one variant's store, its Table I (analysis.table) and its lr grid in Markdown."""
    from analysis import lr_grid
    from analysis.runs import load_runs
    from analysis.table import build_tables

    runs = load_runs(f"sqlite:///{store / 'mlflow.db'}")
    tables = build_tables(runs)
    grid = lr_grid.summarize(runs)
    grid_md = lr_grid.render_markdown(grid, heading_level=3) if len(grid) else f"(the lr grid of {VARIANTS[name].get('lr_from', name)})\n"
    if not tables:
        return [], None, grid_md
    (table,) = tables
    lr = grid_pick(out_of(store, name))
    keys = VARIANTS[name]["keys"]
    rows = []
    from bigbatch.experiments import load_experiment

    def complete(row: str) -> bool:  # every batch size of the row with the preset's seeds (a run cut short: no)
        sizes = load_experiment(row.removesuffix("-best")).batch_sizes
        return all((c := table.cell(row, b)) is not None and c.n_seeds >= MINI.seeds for b in sizes)

    for (row, bs), c in sorted(table.cells.items(), key=lambda kv: (table.all_rows.index(kv[0][0]), kv[0][1])):
        if not complete(row):
            continue
        rows.append({"variant": name, "init": keys.get("init", "authors"), "epoch_scale": keys.get("epoch_scale", 0.1),
                     "lr_scaling": keys.get("lr_scaling", "experiment's"), "base_lr": lr, "row": row, "batch_size": bs,
                     "steps": steps(row, bs, {k: v for k, v in keys.items() if k != "lr_scaling"}),
                     "n_seeds": c.n_seeds, "test_acc_mean": round(c.test_acc, 3),
                     "test_acc_std": None if c.test_std is None else round(c.test_std, 3)})
    return rows, table, grid_md


def out_of(store: Path, name: str) -> Path:
    return store.parent / VARIANTS[name]["lr_from"] if "lr_from" in VARIANTS[name] else store


def committed_rows() -> list[dict]:
    """The committed mini table (authors' init, epoch_scale 0.1, base lr 0.1, 2 seeds per cell)."""
    import pandas as pd

    table = pd.read_csv(COMMITTED)
    rows = []
    for _, r in table.iterrows():
        for bs in BATCH_SIZES:
            if pd.isna(r.get(str(bs))):
                continue
            rows.append({"variant": "authors-0.1", "init": "authors", "epoch_scale": 0.1, "lr_scaling": "experiment's",
                         "base_lr": 0.1, "row": r["row"], "batch_size": bs, "steps": steps(r["row"], bs, {}),
                         "n_seeds": 2, "test_acc_mean": round(float(r[str(bs)]), 3),
                         "test_acc_std": None if pd.isna(r[f"{bs}_std"]) else round(float(r[f"{bs}_std"]), 3)})
    return rows


def summarize(out: Path, to: Path) -> int:
    import pandas as pd

    from analysis.table import render_markdown

    to.mkdir(parents=True, exist_ok=True)
    rows = committed_rows()
    parts = []
    # a variant whose store is not here (run in an earlier session; stores are not committed) keeps what the
    # committed summary.csv and tables.md already hold for it
    kept_rows = pd.read_csv(to / "summary.csv").to_dict("records") if (to / "summary.csv").exists() else []
    kept_md = {}
    if (to / "tables.md").exists():
        for section in ("\n" + (to / "tables.md").read_text()).split("\n## ")[1:]:
            kept_md.setdefault(section.split(":", 1)[0].split(" ")[0], []).append("## " + section.rstrip("\n") + "\n")
    for name in VARIANTS:
        store = out / name
        if name == "authors-0.1":
            continue
        if not (store / "mlflow.db").exists():
            rows += [r for r in kept_rows if r["variant"] == name]
            parts += kept_md.get(name, [])
            continue
        got, table, grid_md = store_rows(name, store)
        rows += got
        # rows of this variant that an earlier session's store finished and this one has not (a variant run in
        # parts across sessions): kept from the committed summary, with that session's section of tables.md
        earlier = [r for r in kept_rows if r["variant"] == name and r["row"] not in {g["row"] for g in got}]
        rows += earlier
        if earlier:
            label = f"## {name} (earlier rows: {', '.join(sorted({r['row'] for r in earlier}))}):"
            parts += [md if "(earlier rows" in md.split("\n", 1)[0] else md.replace(f"## {name}:", label, 1)
                      for md in kept_md.get(name, [])]
        if table is not None:
            log = json.loads((store / "levers.json").read_text()) if (store / "levers.json").exists() else []
            parts.append(f"## {name}: {' '.join(sets(VARIANTS[name]['keys']))}, base lr {grid_pick(out_of(store, name)):g}\n")
            parts.append(render_markdown([table], paper=True, heading_level=3))
            done = sorted({r["row"] for r in got})
            partial = sorted({r for r, _ in table.cells} - set(done))
            if partial:
                parts.append(f"Rows not finished (left out of summary.csv): {', '.join(partial)}.\n")
            parts.append(grid_md)
            parts += [f"- {s['step']}: `{s['command']}`, started {s['started']}, commit {s['commit'][:7]}, "
                      f"{s['wall_s'] / 60:.1f} min, exit {s['exit']}" for s in log]
            parts.append("")
    frame = pd.DataFrame(rows, columns=SUMMARY_COLUMNS)
    frame.to_csv(to / "summary.csv", index=False)
    (to / "tables.md").write_text("\n".join(parts) + "\n")
    gap_figure(frame, to / "gap_vs_steps.png")
    print(f"wrote {to / 'summary.csv'} ({len(frame)} lines), tables.md, gap_vs_steps.png")
    return 0


PAPER_GAP = {"exp1": 46.91, "exp3": 9.15, "exp6": 1.26}  # the paper's Table I: bs 32 minus bs 1024
PAPER_STEPS_1024 = 4000  # 100 epochs of 40,000 images at bs 1024 (the last partial batch kept: 40 x 100)


def gap_figure(frame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6), sharey=True)
    # one line per init under the experiments' own lr rule, and the sqrt-rule variants as their own markers
    lines = [(init, "experiment's", style, f"init {init}") for init, style in (("authors", "o-"), ("torch", "s--"))]
    lines += [(init, "sqrt", style, f"init {init}, sqrt lr rule") for init, style in (("authors", "v:"), ("torch", "^:"))]
    for ax, row in zip(axes, ("exp1", "exp3", "exp6")):
        for init, rule, style, label in lines:
            points = []
            chosen = frame[(frame["row"] == row) & (frame["init"] == init) & (frame["lr_scaling"] == rule)]
            for variant, g in chosen.groupby("variant"):
                by_bs = dict(zip(g["batch_size"], g["test_acc_mean"]))
                if 32 in by_bs and 1024 in by_bs:
                    points.append((int(g[g["batch_size"] == 1024]["steps"].iloc[0]), by_bs[32] - by_bs[1024]))
            if points:
                xs, ys = zip(*sorted(points))
                ax.plot(xs, ys, style, label=label)
        ax.plot([PAPER_STEPS_1024], [PAPER_GAP[row]], "k*", markersize=12, label="paper (CIFAR-10, 100 epochs)")
        ax.set_xscale("log", base=2)
        ax.set_title(row)
        ax.set_xlabel("optimizer steps at bs 1024")
        ax.axhline(0, color="grey", linewidth=0.5)
    axes[0].set_ylabel("gap: test % at bs 32 minus bs 1024")
    handles = {}  # every line's label once (a sqrt variant draws no exp1 line, so axes[0] alone would miss it)
    for ax in axes:
        for h, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, h)
    axes[0].legend(handles.values(), handles.keys(), fontsize=8)
    fig.suptitle("Fashion-MNIST mini setting: the gap against the step budget (issue 20's levers)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
