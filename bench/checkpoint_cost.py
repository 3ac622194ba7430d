"""Cost of one per-epoch checkpoint (bigbatch.train.save_checkpoint): an epoch that improved the best
model (last.pt carries the best weights and best_model.pt is rewritten) against one that did not (last.pt
alone, without the best weights). Sizes and fsync'd write times, median of --repeats.

    .venv/bin/python bench/checkpoint_cost.py [--width-mult 1.0] [--momentum 0.9] [--device auto]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from bigbatch.config import RunConfig
from bigbatch.train import BEST_MODEL, CHECKPOINT, cpu_state, raw_model, resolve_device, save_checkpoint, setup


def measure(width: float, momentum: float, device: torch.device, repeats: int) -> dict:
    cfg = RunConfig(dataset="synthetic", synthetic_size=256, val_size=64, width_mult=width, batch_size=32,
                    device=str(device), momentum=momentum)
    run = setup(cfg, device)
    x, y = run.data.train.get(torch.arange(32, device=device))
    torch.nn.functional.cross_entropy(run.model(x), y).backward()
    run.optimizer.step()  # creates the momentum buffers when momentum > 0
    run.best_state = cpu_state(raw_model(run))
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for case in ("improved", "not improved"):
            seconds, sizes = [], []
            for i in range(repeats):
                d = Path(tmp) / f"{case.replace(' ', '_')}{i}"
                if case == "not improved":  # best_model.pt already holds this epoch's best
                    run.best_epoch = 10_000 + i
                    save_checkpoint(run, d)
                run.best_epoch = 20_000 + i if case == "improved" else run.best_epoch
                t0 = time.perf_counter()
                save_checkpoint(run, d)
                seconds.append(time.perf_counter() - t0)
                sizes.append((d / CHECKPOINT).stat().st_size + ((d / BEST_MODEL).stat().st_size if case == "improved" else 0))
            out[case] = {"seconds": statistics.median(seconds), "bytes_written": statistics.median(sizes)}
    out["params"] = sum(p.numel() for p in run.model.parameters())
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench/checkpoint_cost.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--width-mult", type=float, default=1.0)
    p.add_argument("--momentum", type=float, nargs="+", default=[0.0, 0.9])
    p.add_argument("--device", default="auto")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json", help="write the figures here")
    args = p.parse_args(argv)
    device = resolve_device(args.device)
    rows = {m: measure(args.width_mult, m, device, args.repeats) for m in args.momentum}
    print(f"checkpoint cost, width {args.width_mult}, device {device}, median of {args.repeats}")
    print("| momentum | epoch | MB written | seconds |\n|---|---|---|---|")
    for m, r in rows.items():
        for case in ("improved", "not improved"):
            print(f"| {m} | {case} | {r[case]['bytes_written'] / 1e6:.1f} | {r[case]['seconds']:.3f} |")
    if args.json:
        Path(args.json).write_text(json.dumps({str(m): r for m, r in rows.items()}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
