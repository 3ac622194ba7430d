"""Several trials packed on one GPU: total images/s and peak memory for K = 1, 2, 4 concurrent trials.

GPU only. On a machine without CUDA it prints one line and exits 0 (``--allow-cpu`` runs the same
orchestration on CPU with tiny settings, for the smoke test only: CPU figures mean nothing here).

Each of the K trials is a separate process (as Ray runs trials with ``--gpus-per-trial 1/K``: K=2 is
``0.5``, K=4 is ``0.25``; without CUDA MPS the processes time-share the GPU). Every process sets up
bigbatch's pipeline (``setup``, data resident on the GPU, fp32, channels_last), warms up, waits until all
K are ready, then repeats ``train_epoch`` + ``evaluate`` (train:eval images 2:1, like the paper's 40k:20k)
for ``--seconds``. Reported per (batch size, K): total training images/s over all K (sum of images over
the span from the first start to the last end), the speed-up against K=1, seconds per paper epoch
(40k train + 20k eval) per trial and the effective seconds per epoch of the whole packed GPU, each
process's peak ``max_memory_reserved``, the GPU's peak used memory (nvidia-smi, sampled), and OOMs.

    python bench/packing.py --json bench/results/packing_h100.json            # 6 batch sizes x K=1,2,4 (~10 min)
    python bench/packing.py --batch-sizes 32 64 128 --seconds 15             # split across two commands
    python bench/packing.py --k 1 2 4 8 --batch-sizes 32                      # also K=8 (0.125 GPU each)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import common  # bench/common.py (puts the repository root on sys.path)
from common import DEFAULT_BATCH_SIZES, PAPER_TRAIN_IMAGES, describe_machine, machine_info

HERE = Path(__file__).resolve()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python bench/packing.py", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch-sizes", type=int, nargs="+", default=list(DEFAULT_BATCH_SIZES))
    p.add_argument("--k", type=int, nargs="+", default=[1, 2, 4], help="concurrent trials per GPU (default 1 2 4)")
    p.add_argument("--seconds", type=float, default=15.0, help="timed seconds per configuration (default 15)")
    p.add_argument("--width-mult", type=float, default=1.0)
    p.add_argument("--norm", choices=("none", "ghost", "batch"), default="none")
    p.add_argument("--images", type=int, default=10_000, help="training images per trial epoch (default 10000; eval = half)")
    p.add_argument("--warmup-steps", type=int, default=20)
    p.add_argument("--compile", action="store_true", help="torch.compile in every trial (compile time is in the warm-up)")
    p.add_argument("--allow-cpu", action="store_true", help="run on CPU anyway (smoke test of the orchestration only)")
    p.add_argument("--json", help="write the figures here")
    # internal: one trial process
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--batch-size", type=int, help=argparse.SUPPRESS)
    p.add_argument("--sync-dir", help=argparse.SUPPRESS)
    p.add_argument("--rank", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--device", default="cuda", help=argparse.SUPPRESS)
    return p


# ---------------------------------------------------------------------------------------------- one trial
def worker(args) -> int:
    import dataclasses

    import torch

    from bigbatch.config import RunConfig
    from bigbatch.data import DeviceDataset
    from bigbatch.train import evaluate, setup, train_epoch

    sync_dir = Path(args.sync_dir)
    out_path = sync_dir / f"result{args.rank}.json"
    device = torch.device(args.device)
    gpu = device.type == "cuda"
    result: dict = {"rank": args.rank, "pid": os.getpid()}
    n_eval = max(args.images // 2, 1)
    try:
        cfg = RunConfig(dataset="synthetic", download=False, synthetic_size=args.images + n_eval, val_size=n_eval,
                        batch_size=args.batch_size, width_mult=args.width_mult, norm=args.norm, device=str(device),
                        compile=args.compile, eval_batch_size=min(1000, n_eval), seed=args.rank)
        t0 = time.perf_counter()
        run = setup(cfg, device)
        warm = dataclasses.replace(run, steps_per_epoch=max(1, min(args.warmup_steps, run.steps_per_epoch)))
        val = run.data.val
        ebs = min(cfg.eval_batch_size, len(val))
        train_epoch(warm)
        evaluate(run, DeviceDataset(val.x[:ebs], val.y[:ebs], val.mean, val.std))
        if gpu:
            torch.cuda.synchronize(device)
        result["setup_warmup_seconds"] = time.perf_counter() - t0
        (sync_dir / f"ready{args.rank}").touch()
        while not (sync_dir / "go").exists():
            time.sleep(0.005)
        start = time.time()
        images = epochs = 0
        while time.time() - start < args.seconds or epochs == 0:
            images += train_epoch(run)["images"]  # ends with a synchronisation (the loss is read)
            evaluate(run, val)  # likewise
            epochs += 1
        end = time.time()
        result.update(start=start, end=end, images=images, eval_images=epochs * len(val), epochs=epochs,
                      images_per_second=images / (end - start))
        if gpu:
            result["peak_memory_reserved_gib"] = torch.cuda.max_memory_reserved(device) / 2**30
            result["peak_memory_allocated_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    except torch.OutOfMemoryError:
        result["oom"] = True
    except Exception as e:  # the error message is part of the result
        from bigbatch.train import TrainingError

        result["error"] = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        result["oom"] = isinstance(e, TrainingError) and "out of memory" in str(e)
    out_path.write_text(json.dumps(result))
    (sync_dir / f"ready{args.rank}").touch()  # never leave the parent waiting
    return 0


# ---------------------------------------------------------------------------------------------- parent
class GpuMemorySampler:
    """Peak of nvidia-smi's memory.used (MiB) over a period, sampled every 0.2 s; None without nvidia-smi."""

    def __init__(self):
        self.peak: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _sample(self) -> float | None:
        if shutil.which("nvidia-smi") is None:
            return None
        try:
            out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits", "-i",
                                  os.environ.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0]],
                                 capture_output=True, text=True, timeout=5).stdout
            return float(out.strip().splitlines()[0])
        except Exception:
            return None

    def _loop(self):
        while not self._stop.is_set():
            v = self._sample()
            if v is not None:
                self.peak = max(self.peak or 0.0, v)
            self._stop.wait(0.2)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def run_config(args, bs: int, k: int, device: str) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench-packing-") as tmp:
        sync_dir = Path(tmp)
        cmd = [sys.executable, str(HERE), "--worker", "--batch-size", str(bs), "--sync-dir", str(sync_dir),
               "--seconds", str(args.seconds), "--width-mult", str(args.width_mult), "--norm", args.norm,
               "--images", str(args.images), "--warmup-steps", str(args.warmup_steps), "--device", device]
        if args.compile:
            cmd.append("--compile")
        env = dict(os.environ)
        if device == "cpu":
            env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // k))
        with GpuMemorySampler() as sampler:
            procs = [subprocess.Popen(cmd + ["--rank", str(r)], env=env) for r in range(k)]
            deadline = time.time() + 900
            while len(list(sync_dir.glob("ready*"))) < k:
                if time.time() > deadline or any(p.poll() not in (None, 0) for p in procs):
                    break
                time.sleep(0.05)
            (sync_dir / "go").touch()
            for p in procs:
                p.wait()
        results = []
        for r in range(k):
            f = sync_dir / f"result{r}.json"
            results.append(json.loads(f.read_text()) if f.exists() else {"rank": r, "error": "no result (crashed)"})
    ok = [r for r in results if "images" in r]
    row = {"batch_size": bs, "k": k, "gpus_per_trial": 1.0 / k, "trials": results,
           "oom": any(r.get("oom") for r in results), "errors": [r["error"] for r in results if r.get("error")],
           "gpu_peak_used_gib": sampler.peak / 1024 if sampler.peak is not None else None}
    if len(ok) == k:
        span = max(r["end"] for r in ok) - min(r["start"] for r in ok)
        total = sum(r["images"] for r in ok) / span
        row.update(total_images_per_second=total,
                   per_trial_images_per_second=[r["images_per_second"] for r in ok],
                   peak_memory_reserved_gib=[r.get("peak_memory_reserved_gib") for r in ok])
        # the packed GPU's time per paper epoch: the timed loop already evaluates 1 image per 2 trained,
        # as a 40k-train + 20k-eval epoch does, so 40k / (train images/s) includes the evaluation
        row["effective_epoch_seconds"] = PAPER_TRAIN_IMAGES / total
    return row


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.worker:
        return worker(args)
    import torch

    gpu = torch.cuda.is_available()
    if not gpu and not args.allow_cpu:
        print("bench/packing.py: no CUDA GPU visible; packing is a GPU benchmark (nothing measured, exit 0).")
        return 0
    device = "cuda" if gpu else "cpu"
    info = machine_info(torch.device(device))
    print(f"# bench/packing.py  {describe_machine(info)}")
    print(f"# VGG13 width {args.width_mult}, norm {args.norm}; each trial: {args.images} train + {args.images // 2} eval "
          f"images per epoch, {args.seconds:g} s timed after all K are warm" + ("" if gpu else "; CPU: orchestration smoke test only"),
          flush=True)
    rows = []
    for bs in args.batch_sizes:
        for k in args.k:
            row = run_config(args, bs, k, device)
            rows.append(row)
            print(f"  bs {bs} K={k}: {row.get('total_images_per_second', float('nan')):,.0f} img/s"
                  + (" OOM" if row["oom"] else "") + (f" errors: {row['errors']}" if row["errors"] else ""),
                  file=sys.stderr, flush=True)
    print("| bs | K (gpus/trial) | total train img/s | speed-up vs K=1 | s per 40k+20k epoch, packed GPU | "
          "per-trial img/s | peak reserved GiB/trial | GPU peak used GiB | OOM |")
    print("|---|---|---|---|---|---|---|---|---|")
    best: dict[int, tuple[int, float]] = {}
    for row in rows:
        base = next((r for r in rows if r["batch_size"] == row["batch_size"] and r["k"] == 1), None)
        total = row.get("total_images_per_second")
        speed = total / base["total_images_per_second"] if total and base and base.get("total_images_per_second") else None
        row["speedup_vs_k1"] = speed
        if total and not row["oom"] and (row["batch_size"] not in best or total > best[row["batch_size"]][1]):
            best[row["batch_size"]] = (row["k"], total)
        per = ", ".join(f"{v:,.0f}" for v in row.get("per_trial_images_per_second", []))
        mem = ", ".join(f"{v:.1f}" for v in row.get("peak_memory_reserved_gib", []) if v is not None)
        used = f"{row['gpu_peak_used_gib']:.1f}" if row["gpu_peak_used_gib"] is not None else "-"
        print(f"| {row['batch_size']} | {row['k']} ({row['gpus_per_trial']:g}) | {total or float('nan'):,.0f} | "
              f"{f'{speed:.2f}x' if speed else '-'} | {row.get('effective_epoch_seconds', float('nan')):.3f} | {per or '-'} | "
              f"{mem or '-'} | {used} | {'yes' if row['oom'] else 'no'} |")
    print("# best packing per batch size: " + ", ".join(f"bs {bs}: K={k} ({1 / k:g} GPU/trial)" for bs, (k, _) in sorted(best.items())))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"machine": info, "args": vars(args), "results": rows,
                                               "best_k": {str(bs): k for bs, (k, _) in best.items()}}, indent=1) + "\n")
        print(f"# wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
