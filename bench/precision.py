"""What bf16 autocast costs in accuracy: fp32 vs bf16 on real data (Fashion-MNIST), same seeds.

The authors trained in fp32 and so does bigbatch by default; ``precision: bf16`` (autocast) is an explicit
choice that is faster on GPUs. This script trains ``bigbatch.train.train`` on a few cells of the paper's
recipes at small scale (a narrow VGG13, a few thousand Fashion-MNIST training images, a few epochs), once
per (cell, precision, seed), and prints the test accuracy of the best-validation model and the last
epoch's training loss, each as mean ± std over the seeds and as the bf16 - fp32 difference paired by seed
(same initialisation, data order and augmentation draws). At this scale the training loss is the steadier
of the two: with the default BN momentum of 0.99 (the authors' code) the evaluation statistics are
essentially those of the epoch's last batch, which makes test accuracy jump by several points. CPU bf16 autocast works with recent torch, so it runs anywhere; time is not
what is measured, accuracy is.

    python bench/precision.py --json bench/results/precision_cpu.json   # exp3 at bs 32 and 128, 3 seeds
    python bench/precision.py --device cuda --cells exp3:64 exp6:512 --width-mult 1 --train-subset 0 --epochs 30 --lr 0.01

On a CPU without native bf16 (AVX2 only) bf16 autocast is 5 to 10 times slower than fp32 (torch falls back to
``slow_conv2d``), hence the small defaults: about 20 minutes of one core.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

import common  # bench/common.py (puts the repository root on sys.path)
from common import describe_machine, machine_info, pick_device

from bigbatch.experiments import load_experiment
from bigbatch.train import train

PRECISIONS = ("fp32", "bf16")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python bench/precision.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--cells", nargs="+", default=["exp3:32", "exp3:128"], metavar="EXP:BS",
                   help="experiment:batch size cells (text recipe); default exp3:32 exp3:128")
    p.add_argument("--seeds", type=int, default=3, help="seeds per (cell, precision): 0..N-1 (default 3)")
    p.add_argument("--epochs", type=int, default=3, help="epochs per run (default 3)")
    p.add_argument("--lr", type=float, default=0.1,
                   help="base lr at bs 32, scaled by the recipe (default 0.1; the paper's 0.01 does not leave the "
                        "plateau of the small classifier init within a few epochs of a narrow model)")
    p.add_argument("--train-subset", type=int, default=2000, help="training images (default 2000)")
    p.add_argument("--val-size", type=int, default=500, help="validation images held out (default 500)")
    p.add_argument("--width-mult", type=float, default=0.125, help="VGG13 width multiplier (default 0.125)")
    p.add_argument("--data-dir", default=str(common.ROOT.parent / "shared" / "data" / "fashion-mnist"),
                   help="Fashion-MNIST files (default ../shared/data/fashion-mnist)")
    p.add_argument("--device", default="cpu", help="cpu (default) | cuda | auto")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1: the CPU is shared)")
    p.add_argument("--json", help="also write every run and the table here")
    p.add_argument("--table-from", metavar="JSON", help="print the table of an earlier --json output; no training")
    return p


def mean_std(xs: list[float], digits: int = 2) -> str:
    if len(xs) == 1:
        return f"{xs[0]:.{digits}f}"
    return f"{statistics.mean(xs):.{digits}f} ± {statistics.stdev(xs):.{digits}f}"


def summarise(runs: list[dict], cells: list[str]) -> tuple[list[str], list[dict]]:
    """Markdown rows (and their figures) per cell: test accuracy and the last epoch's training loss, each as
    mean ± std over seeds per precision and as the bf16 - fp32 difference paired by seed."""
    lines = ["| cell | fp32 test acc % | bf16 test acc % | bf16 - fp32 (paired) | fp32 final train loss "
             "| bf16 final train loss | bf16 - fp32 (paired) | s/run fp32, bf16 |",
             "|---|---|---|---|---|---|---|---|"]
    table = []
    for cell in cells:
        by = {p: sorted((r for r in runs if r["cell"] == cell and r["precision"] == p), key=lambda r: r["seed"])
              for p in PRECISIONS}
        acc = {p: [r["test_acc"] for r in by[p]] for p in PRECISIONS}
        loss = {p: [r["final_train_loss"] for r in by[p]] for p in PRECISIONS}
        dacc = [b - f for f, b in zip(acc["fp32"], acc["bf16"])]
        dloss = [b - f for f, b in zip(loss["fp32"], loss["bf16"])]
        secs = {p: statistics.mean(r["seconds"] for r in by[p]) for p in PRECISIONS}
        table.append({"cell": cell, "test_acc": acc, "final_train_loss": loss, "diff_test_acc": dacc,
                      "diff_final_train_loss": dloss})
        lines.append(f"| {cell} | {mean_std(acc['fp32'])} | {mean_std(acc['bf16'])} | {mean_std(dacc)} "
                     f"| {mean_std(loss['fp32'], 3)} | {mean_std(loss['bf16'], 3)} | {mean_std(dloss, 3)} "
                     f"| {secs['fp32']:.0f}, {secs['bf16']:.0f} |")
    return lines, table


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.table_from:  # print the table of an earlier run's JSON, without training
        saved = json.loads(Path(args.table_from).read_text())
        print("\n".join(summarise(saved["runs"], saved["args"]["cells"])[0]))
        return 0
    torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    info = machine_info(device)
    print(f"# bench/precision.py  {describe_machine(info)}", flush=True)
    runs = []
    for cell in args.cells:
        exp_name, _, bs = cell.partition(":")
        exp = load_experiment(exp_name)
        for seed in range(args.seeds):
            for precision in PRECISIONS:
                cfg = exp.run_config(int(bs), dataset="fashion-mnist", data_dir=args.data_dir, download=False,
                                     train_subset=args.train_subset, val_size=args.val_size,
                                     width_mult=args.width_mult, epochs=args.epochs, lr=args.lr, device=str(device),
                                     precision=precision, seed=seed)
                t0 = time.perf_counter()
                s = train(cfg)
                row = {"cell": cell, "precision": precision, "seed": seed, "status": s["status"],
                       "test_acc": s["test_acc"], "test_loss": s["test_loss"], "best_val_acc": s["best_val_acc"],
                       "best_epoch": s["best_epoch"], "seconds": round(time.perf_counter() - t0, 1),
                       "final_train_loss": s["history"][-1]["train_loss"] if s["history"] else None}
                runs.append(row)
                print(json.dumps(row), flush=True)

    lines, table = summarise(runs, args.cells)
    print(f"# Fashion-MNIST, text recipe with base lr {args.lr}, VGG13 width {args.width_mult}, {args.train_subset} "
          f"training images, {args.val_size} validation, 10,000 test, {args.epochs} epochs, seeds 0..{args.seeds - 1}, "
          f"device {device}; test accuracy of the best-validation model; mean ± std over seeds", flush=True)
    print("\n".join(lines), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": info, "args": vars(args), "runs": runs, "table": table},
                                              indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
