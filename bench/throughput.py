"""Training and evaluation images/second: bigbatch's pipeline against a straightforward baseline.

One run, same model (bigbatch.model.build_model of the same RunConfig), same images, per batch size:

- **bigbatch**: ``bigbatch.train.setup`` / ``train_epoch`` / ``evaluate`` as they are: the dataset
  resident on the device as uint8, each batch gathered + normalised + augmented (one affine warp) on
  the device, fp32 (``--precision bf16``: bf16 autocast) and channels_last, no host
  synchronisation per step.
- **baseline**: what a tutorial does: a ``torch.utils.data.Dataset`` of PIL images with CPU
  transforms (RandomHorizontalFlip, RandomRotation(15), RandomAffine(translate=0.1), ToTensor,
  Normalize), a ``DataLoader`` (shuffle, ``--workers`` processes, no pinned memory), ``.to(device)``
  per batch, fp32, ``loss.item()`` and an accuracy ``.item()`` per step, ``cudnn.benchmark`` off.

Printed per batch size: train img/s of both and their ratio, eval img/s of both, and the seconds
per epoch extrapolated to the paper's 40k training + 20k evaluated images; on CUDA the issue's
H100 target is printed beside it. Data are synthetic CIFAR-shaped images (dataset="synthetic").

    python bench/throughput.py                       # CPU: width 0.25, small epochs, ~3-5 min on 2 cores
    python bench/throughput.py --device cuda --json bench/results/h100_none.json   # GPU: width 1.0
    python bench/throughput.py --norm ghost --skip-baseline --json ghost.json      # exp3-6's model
    python bench/throughput.py --breakdown --batch-sizes 32                        # where the time goes

Timing: every timed region is bracketed by ``torch.cuda.synchronize``; each pipeline is warmed up
(``--warmup-steps`` training steps and one evaluation batch; with ``--compile`` this includes the
compile time, reported separately) before timing; repeats alternate between the two pipelines and
the medians are reported.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

import common  # bench/common.py (puts the repository root on sys.path)
from common import (DEFAULT_BATCH_SIZES, PAPER_EVAL_IMAGES, PAPER_TRAIN_IMAGES, TARGET_EPOCH_SECONDS,
                    describe_machine, forward_flops_per_image, machine_info, median, pick_device, sync, timed)

from bigbatch.config import RunConfig
from bigbatch.data import DeviceDataset, load_data
from bigbatch.model import build_model, vgg13
from bigbatch.train import evaluate, setup, train_epoch


# ---------------------------------------------------------------------------------------------- options
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python bench/throughput.py", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto", help="auto (cuda if visible) | cpu | cuda | cuda:N")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=list(DEFAULT_BATCH_SIZES))
    p.add_argument("--width-mult", type=float, help="VGG13 width multiplier (default: 1.0 on CUDA, 0.25 on CPU)")
    p.add_argument("--norm", choices=("none", "ghost", "batch"), default="none",
                   help="none = exp1's model; ghost = exp3-6's (virtual batch 32)")
    p.add_argument("--images", type=int,
                   help="training images per timed epoch (default: 40000 on CUDA, 1024 on CPU; raised to the largest batch size)")
    p.add_argument("--eval-images", type=int, help="images per timed evaluation (default: 20000 on CUDA, 1000 on CPU)")
    p.add_argument("--baseline-images", type=int,
                   help="cap on the baseline's training and evaluation images (default: 8000 on CUDA, no cap on CPU)")
    p.add_argument("--eval-batch-size", type=int, default=1000, help="evaluation batch, both pipelines (default 1000)")
    p.add_argument("--warmup-steps", type=int, help="untimed training steps before timing (default: 20 on CUDA, 3 on CPU)")
    p.add_argument("--repeats", type=int, help="timed epochs per pipeline; the median is reported (default: 3 on CUDA, 1 on CPU)")
    p.add_argument("--stat", choices=("median", "best"), default="median",
                   help="how repeats are combined: median (default) or best (highest img/s: for a machine shared with other load)")
    p.add_argument("--workers", type=int, help="baseline DataLoader worker processes (default: min(8, CPUs))")
    p.add_argument("--compile", action="store_true", help="torch.compile bigbatch's model (cfg.compile); compile time is reported as warmup")
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32", help="bigbatch's precision (fp32, the paper's; bf16: autocast)")
    p.add_argument("--skip-baseline", action="store_true", help="time bigbatch only (e.g. for table_time.py inputs)")
    p.add_argument("--breakdown", action="store_true",
                   help="also time the parts of one bigbatch step (gather, augment, model) and the baseline's loader alone")
    p.add_argument("--json", help="write every figure and the machine description to this file")
    p.add_argument("--threads", type=int, help="torch intra-op threads in this process (default: torch's, = CPUs)")
    return p


def resolve_defaults(args: argparse.Namespace, device: torch.device) -> argparse.Namespace:
    import os

    gpu = device.type == "cuda"
    pick = lambda value, on_gpu, on_cpu: value if value is not None else (on_gpu if gpu else on_cpu)
    args.width_mult = pick(args.width_mult, 1.0, 0.25)
    args.images = max(pick(args.images, PAPER_TRAIN_IMAGES, 1024), max(args.batch_sizes))
    args.eval_images = pick(args.eval_images, PAPER_EVAL_IMAGES, 1000)
    args.baseline_images = pick(args.baseline_images, 8000, 0)
    args.warmup_steps = pick(args.warmup_steps, 20, 3)
    args.repeats = pick(args.repeats, 3, 1)
    args.workers = args.workers if args.workers is not None else min(8, os.cpu_count() or 1)
    if min(args.batch_sizes) <= 0 or args.eval_images <= 0 or args.repeats <= 0:
        raise SystemExit("error: batch sizes, --eval-images and --repeats must be positive")
    if args.norm == "ghost" and min(args.batch_sizes) < 32:
        raise SystemExit("error: --norm ghost needs batch sizes >= 32 (virtual batch 32)")
    return args


def run_config(args: argparse.Namespace, device: torch.device, batch_size: int) -> RunConfig:
    """The RunConfig of both pipelines: the paper's baseline recipe on synthetic data of the asked size."""
    return RunConfig(
        dataset="synthetic", download=False, synthetic_size=args.images + args.eval_images,
        val_size=args.eval_images, batch_size=batch_size, width_mult=args.width_mult, norm=args.norm,
        eval_batch_size=args.eval_batch_size, device=str(device), compile=args.compile,
        precision=args.precision, seed=0,
    )


# ---------------------------------------------------------------------------------------------- bigbatch
def bench_bigbatch(cfg: RunConfig, device: torch.device, data, args) -> tuple[dict, callable]:
    """Warm up, return (facts, timers): timers['train']() / ['eval']() -> (images, seconds)."""
    run = setup(cfg, device, data)
    n = len(run.data.train)
    warm_steps = max(1, min(args.warmup_steps, n // cfg.batch_size))
    warm_run = dataclasses.replace(run, steps_per_epoch=warm_steps)  # same model/optimizer/augmenter
    val = run.data.val
    ebs = min(cfg.eval_batch_size, len(val))
    warm_val = DeviceDataset(val.x[:ebs], val.y[:ebs], val.mean, val.std)
    _, warm_s = timed(lambda: (train_epoch(warm_run), evaluate(run, warm_val)), device)

    peak = {"gib": 0.0}

    def train_once():
        if device.type == "cuda":  # the peak of bigbatch's own epochs (the baseline runs in between)
            torch.cuda.reset_peak_memory_stats(device)
        stats, secs = timed(lambda: train_epoch(run), device)
        if device.type == "cuda":
            peak["gib"] = max(peak["gib"], torch.cuda.max_memory_allocated(device) / 2**30)
        return stats["images"], secs

    def eval_once():
        _, secs = timed(lambda: evaluate(run, val), device)
        return len(val), secs

    facts = {"warmup_seconds": warm_s, "warmup_steps": warm_steps, "steps_per_epoch": run.steps_per_epoch,
             "amp_dtype": str(run.amp_dtype) if run.amp_dtype else "fp32", "run": run, "peak": peak}
    return facts, {"train": train_once, "eval": eval_once}


# ---------------------------------------------------------------------------------------------- baseline
class UInt8ImageDataset(torch.utils.data.Dataset):
    """torchvision.datasets.CIFAR10's shape: uint8 HWC images, a PIL image per __getitem__, a transform."""

    def __init__(self, images_hwc: np.ndarray, labels: list[int], transform):
        self.images, self.labels, self.transform = images_hwc, labels, transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        from PIL import Image

        return self.transform(Image.fromarray(self.images[i])), self.labels[i]


def baseline_datasets(data, args):
    """The same images as bigbatch's train/val splits, as PIL datasets with tutorial transforms."""
    import torchvision.transforms as T

    mean = data.train.mean.cpu().tolist()
    std = data.train.std.cpu().tolist()
    train_tf = T.Compose([
        T.RandomHorizontalFlip(), T.RandomRotation(15), T.RandomAffine(degrees=0, translate=(0.1, 0.1)),
        T.ToTensor(), T.Normalize(mean, std),
    ])
    eval_tf = T.Compose([T.ToTensor(), T.Normalize(mean, std)])

    def take(split, cap):
        k = len(split) if cap <= 0 else min(cap, len(split))
        x = split.x[:k].cpu().permute(0, 2, 3, 1).contiguous().numpy()
        if x.shape[-1] == 1:
            x = x[..., 0]
        return x, split.y[:k].cpu().tolist()

    return (UInt8ImageDataset(*take(data.train, args.baseline_images), train_tf),
            UInt8ImageDataset(*take(data.val, args.baseline_images), eval_tf))


def bench_baseline(cfg: RunConfig, device: torch.device, data, datasets, args) -> tuple[dict, dict]:
    loader_args = dict(num_workers=args.workers)  # a tutorial's loader: no pinning, no persistent workers
    train_set, val_set = datasets
    if len(train_set) < cfg.batch_size:
        return {"skipped": f"baseline training set ({len(train_set)}) smaller than the batch"}, {}
    train_loader = torch.utils.data.DataLoader(train_set, batch_size=cfg.batch_size, shuffle=True, drop_last=True, **loader_args)
    val_loader = torch.utils.data.DataLoader(val_set, batch_size=cfg.eval_batch_size, shuffle=False, **loader_args)

    torch.manual_seed(0)
    model = build_model(cfg, data.num_classes, data.in_channels).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=cfg.scaled_lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)

    def train_steps(max_steps: int | None):
        model.train()
        running_loss, correct, seen = 0.0, 0, 0
        for step, (x, y) in enumerate(train_loader):
            if max_steps is not None and step >= max_steps:
                break
            x, y = x.to(device), y.to(device)
            out = model(x)
            loss = F.cross_entropy(out, y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            running_loss += loss.item() * x.size(0)
            correct += (out.argmax(1) == y).sum().item()
            seen += x.size(0)
        return seen

    @torch.no_grad()
    def eval_all():
        model.eval()
        total_loss, correct, seen = 0.0, 0, 0
        for x, y in val_loader:
            x, y = x.to(device), y.to(device)
            out = model(x)
            total_loss += F.cross_entropy(out, y, reduction="sum").item()
            correct += (out.argmax(1) == y).sum().item()
            seen += x.size(0)
        return seen

    _, warm_s = timed(lambda: train_steps(args.warmup_steps), device)

    def train_once():
        return timed(lambda: train_steps(None), device)

    def eval_once():
        return timed(eval_all, device)

    return {"warmup_seconds": warm_s, "workers": args.workers, "train_images_per_epoch": (len(train_set) // cfg.batch_size) * cfg.batch_size,
            "eval_images": len(val_set)}, {"train": train_once, "eval": eval_once}


# ---------------------------------------------------------------------------------------------- breakdown
def count_ops(fn, device: torch.device) -> int:
    """CUDA kernels launched by ``fn()`` (on CUDA), or its top-level aten ops (on CPU)."""
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=acts) as prof:
        fn()
        sync(device)
    if device.type == "cuda":
        return sum(1 for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA)
    return sum(1 for e in prof.events() if e.name.startswith("aten::")
               and (e.cpu_parent is None or not e.cpu_parent.name.startswith("aten::")))


def breakdown(run, datasets, args, device: torch.device, steps: int | None = None) -> dict:
    """ms per step of each part of bigbatch's step (fixed batch, synchronised), and the baseline's
    loader alone (CPU transforms + collation, no model) in images/s."""
    cfg, model, opt = run.cfg, run.model, run.optimizer
    steps = steps or max(2, min(10, 2048 // cfg.batch_size))
    idx = torch.randperm(len(run.data.train), device=device)[: cfg.batch_size]
    x, y = run.data.train.get(idx)
    xa = run.augment(x)

    def model_step():
        with run.autocast():
            loss = F.cross_entropy(model(xa), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def per_step(fn):
        fn()  # warm
        _, s = timed(lambda: [fn() for _ in range(steps)], device)
        return 1000.0 * s / steps

    model.train()
    parts = {"gather+normalise": per_step(lambda: run.data.train.get(idx)),
             "augment (affine warp)": per_step(lambda: run.augment(x)),
             "forward+backward+SGD": per_step(model_step)}
    out = {"ms_per_step": parts}
    # operations per step: on CUDA the kernels launched (what bounds a small-batch step on a fast GPU),
    # on CPU the top-level aten ops (a proxy for the same count)
    ops = {"gather+normalise": count_ops(lambda: run.data.train.get(idx), device),
           "augment (affine warp)": count_ops(lambda: run.augment(x), device),
           "forward+backward+SGD": count_ops(model_step, device)}
    if len(run.data.train) >= 4 * cfg.batch_size:  # the whole loop per step: (4 steps - 2 steps) / 2
        two = dataclasses.replace(run, steps_per_epoch=2)
        four = dataclasses.replace(run, steps_per_epoch=4)
        ops["whole train_epoch step"] = (count_ops(lambda: train_epoch(four), device) - count_ops(lambda: train_epoch(two), device)) / 2
    out["ops_per_step"] = ops
    out["ops_unit"] = "CUDA kernels" if device.type == "cuda" else "top-level aten ops"
    if datasets is not None:
        loader = torch.utils.data.DataLoader(datasets[0], batch_size=cfg.batch_size, shuffle=True, drop_last=True,
                                             num_workers=args.workers)
        n_batches = max(1, min(len(datasets[0]) // cfg.batch_size, 2 * steps))
        t0 = time.perf_counter()
        seen = 0
        for i, (bx, _) in enumerate(loader):
            seen += bx.shape[0]
            if i + 1 >= n_batches:
                break
        out["baseline_loader_only_images_per_second"] = seen / (time.perf_counter() - t0)
        out["baseline_loader_note"] = f"{args.workers} workers, including worker start-up"
        # the same transforms in the main process, one image at a time (no workers, no start-up)
        ds = datasets[0]
        k = min(len(ds), 256)
        t0 = time.perf_counter()
        for i in range(k):
            ds[i]
        out["baseline_transforms_one_process_images_per_second"] = k / (time.perf_counter() - t0)
    return out


# ---------------------------------------------------------------------------------------------- main
def fmt(x: float, digits: int = 0) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "-"
    return f"{x:,.{digits}f}"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    device = pick_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    args = resolve_defaults(args, device)
    info = machine_info(device)
    gpu = device.type == "cuda"
    print(f"# bench/throughput.py  {describe_machine(info)}")
    cfg0 = run_config(args, device, args.batch_sizes[0])
    data = load_data(cfg0, device)
    flops = forward_flops_per_image(
        vgg13(num_classes=data.num_classes, in_channels=data.in_channels, width_mult=args.width_mult, norm=args.norm),
        data.in_channels, torch.device("cpu"))
    datasets = None if args.skip_baseline else baseline_datasets(data, args)
    print(f"# VGG13 width {args.width_mult}, norm {args.norm}: {flops / 1e9:.3f} GFLOP/image forward "
          f"(~{3 * flops * PAPER_TRAIN_IMAGES / 1e12:.1f} TFLOP per 40k-image training epoch); "
          f"train {args.images} / eval {args.eval_images} synthetic images per timed epoch"
          + (f"; baseline capped at {args.baseline_images}" if args.baseline_images else "")
          + (f"; baseline DataLoader workers {args.workers}" if datasets else "")
          + f"; warmup {args.warmup_steps} steps; {args.stat} of {args.repeats}; torch threads {torch.get_num_threads()}")
    if not gpu:
        print("# CPU figures: the H100 targets do not apply (printed only on CUDA).")
    elif args.width_mult != 1.0:
        print("# note: width_mult != 1, so the H100 targets (for the full VGG13) do not apply.")

    results = []
    for bs in args.batch_sizes:
        cfg = run_config(args, device, bs)
        row: dict = {"batch_size": bs}
        bb_facts, bb = bench_bigbatch(cfg, device, data, args)
        run = bb_facts.pop("run")
        peak = bb_facts.pop("peak")
        bl_facts, bl = ({"skipped": "--skip-baseline"}, {}) if datasets is None else bench_baseline(cfg, device, data, datasets, args)
        old_bench = torch.backends.cudnn.benchmark
        times: dict[str, list[float]] = {"bb_train": [], "bl_train": [], "bb_eval": [], "bl_eval": []}
        for _ in range(args.repeats):  # alternate the pipelines, so that drifting load hits both
            images, s = bb["train"]()
            times["bb_train"].append(images / s)
            if bl:
                torch.backends.cudnn.benchmark = False  # a tutorial does not set it (bigbatch's setup does)
                images, s = bl["train"]()
                times["bl_train"].append(images / s)
                torch.backends.cudnn.benchmark = old_bench
        for _ in range(args.repeats):
            images, s = bb["eval"]()
            times["bb_eval"].append(images / s)
            if bl:
                torch.backends.cudnn.benchmark = False
                images, s = bl["eval"]()
                times["bl_eval"].append(images / s)
                torch.backends.cudnn.benchmark = old_bench
        agg = median if args.stat == "median" else (lambda xs: max(xs) if xs else float("nan"))
        bb_train, bb_eval = agg(times["bb_train"]), agg(times["bb_eval"])
        bl_train, bl_eval = agg(times["bl_train"]), agg(times["bl_eval"])
        paper_epoch = lambda tr, ev: PAPER_TRAIN_IMAGES / tr + PAPER_EVAL_IMAGES / ev
        row.update(
            bigbatch={**bb_facts, "train_images_per_second": bb_train, "eval_images_per_second": bb_eval,
                      "train_all": times["bb_train"], "eval_all": times["bb_eval"],
                      "train_tflops": 3 * flops * bb_train / 1e12},
            baseline={**bl_facts, "train_images_per_second": bl_train, "eval_images_per_second": bl_eval,
                      "train_all": times["bl_train"], "eval_all": times["bl_eval"]},
            ratio_train=bb_train / bl_train if bl else None,
            ratio_eval=bb_eval / bl_eval if bl else None,
            epoch_seconds_bigbatch=paper_epoch(bb_train, bb_eval),
            epoch_seconds_baseline=paper_epoch(bl_train, bl_eval) if bl else None,
            target_epoch_seconds=TARGET_EPOCH_SECONDS.get(bs) if gpu else None,
        )
        if gpu:
            row["bigbatch"]["peak_memory_gib"] = peak["gib"]  # max_memory_allocated during its training epochs
        if args.breakdown:
            row["breakdown"] = breakdown(run, datasets, args, device)
        results.append(row)
        del run, bb, bl
        if gpu:
            torch.cuda.empty_cache()
        print(f"  bs {bs}: done (bigbatch {fmt(bb_train)} img/s train; its warm-up"
              f"{' incl. torch.compile' if args.compile else ''} {row['bigbatch']['warmup_seconds']:.1f} s)", file=sys.stderr, flush=True)

    print_table(results, gpu)
    if args.breakdown:
        print_breakdown(results)
    info["loadavg_1m_end"] = round(__import__("os").getloadavg()[0], 2)
    print(f"# load avg (1 min) at end: {info['loadavg_1m_end']}")
    if args.json:
        out = {"machine": info, "args": vars(args), "model": {"width_mult": args.width_mult, "norm": args.norm,
               "forward_flops_per_image": flops}, "results": results}
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=1, default=str) + "\n")
        print(f"# wrote {args.json}")
    return 0


def print_table(results: list[dict], gpu: bool) -> None:
    head = ["bs", "bigbatch train img/s", "baseline train img/s", "ratio", "bigbatch eval img/s",
            "baseline eval img/s", "ratio", "s/epoch bigbatch (40k+20k)", "s/epoch baseline", "bigbatch TFLOP/s"]
    if gpu:
        head += ["H100 target s/epoch", "bigbatch peak GiB"]
    rows = []
    for r in results:
        cells = [str(r["batch_size"]), fmt(r["bigbatch"]["train_images_per_second"]),
                 fmt(r["baseline"]["train_images_per_second"]), fmt(r["ratio_train"], 1) + ("x" if r["ratio_train"] else ""),
                 fmt(r["bigbatch"]["eval_images_per_second"]), fmt(r["baseline"]["eval_images_per_second"]),
                 fmt(r["ratio_eval"], 1) + ("x" if r["ratio_eval"] else ""), fmt(r["epoch_seconds_bigbatch"], 2),
                 fmt(r["epoch_seconds_baseline"], 2), fmt(r["bigbatch"]["train_tflops"], 3)]
        if gpu:
            t = r["target_epoch_seconds"]
            ok = "" if t is None else (" (met)" if r["epoch_seconds_bigbatch"] <= t else " (missed)")
            cells += [f"{t}{ok}", fmt(r["bigbatch"].get("peak_memory_gib"), 2)]
        rows.append(cells)
    print("| " + " | ".join(head) + " |")
    print("|" + "|".join(["---"] * len(head)) + "|")
    for cells in rows:
        print("| " + " | ".join(cells) + " |")


def print_breakdown(results: list[dict]) -> None:
    print("\n# bigbatch step, parts timed separately on one fixed batch (ms per step, share of their sum)")
    for r in results:
        parts = r["breakdown"]["ms_per_step"]
        total = sum(parts.values())
        text = ", ".join(f"{k} {v:.2f} ms ({100 * v / total:.0f}%)" for k, v in parts.items())
        extra = ""
        b = r["breakdown"]
        if "baseline_loader_only_images_per_second" in b:
            extra = (f"; baseline loader alone {b['baseline_loader_only_images_per_second']:,.0f} img/s "
                     f"({b['baseline_loader_note']}), its transforms in one process "
                     f"{b['baseline_transforms_one_process_images_per_second']:,.0f} img/s")
        ops = b.get("ops_per_step", {})
        ops_text = ", ".join(f"{k} {v:g}" for k, v in ops.items())
        print(f"  bs {r['batch_size']}: {text}{extra}")
        print(f"      {b.get('ops_unit', 'ops')} per step: {ops_text}")


if __name__ == "__main__":
    sys.exit(main())
