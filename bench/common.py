"""Helpers shared by the benchmarks in bench/: device choice (bigbatch's), synchronised timing, machine facts.

The benchmarks are scripts (``python bench/throughput.py``); they import this module by its bare name
because Python puts the script's directory first on ``sys.path``.
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from anywhere without installing the project
    sys.path.insert(0, str(ROOT))

# The targets: seconds per epoch (40k training images + 20k evaluated) on one H100.
TARGET_EPOCH_SECONDS = {32: 1.0, 64: 0.6, 128: 0.4, 256: 0.3, 512: 0.25, 1024: 0.25}
PAPER_TRAIN_IMAGES = 40_000
PAPER_EVAL_IMAGES = 20_000
DEFAULT_BATCH_SIZES = (32, 64, 128, 256, 512, 1024)


def pick_device(name: str) -> torch.device:
    """bigbatch's one device picker (``bigbatch.train.resolve_device``: auto -> cuda when visible, else cpu),
    its error as a one-line exit of the benchmark."""
    from bigbatch.train import TrainingError, resolve_device

    try:
        return resolve_device(name)
    except TrainingError as e:
        raise SystemExit(f"error: {e}") from None


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device):
    """(result, seconds) of ``fn()``, with the device synchronised before and after."""
    sync(device)
    t0 = time.perf_counter()
    out = fn()
    sync(device)
    return out, time.perf_counter() - t0


def median(xs):
    return statistics.median(xs) if xs else float("nan")


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                              text=True, timeout=5).stdout.strip() or "unknown"
    except Exception:
        return "unknown"


def machine_info(device: torch.device) -> dict:
    """What a RESULTS.md entry needs to say where a figure came from."""
    import torchvision

    info = {
        "date_utc": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "host": platform.node(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "cpu": _cpu_model(),
        "nproc": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "loadavg_1m": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        "device": str(device),
        "git_commit": _git_commit(),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1),
                    cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version())
    return info


def describe_machine(info: dict) -> str:
    gpu = f", GPU {info['gpu']} ({info['gpu_memory_gib']} GiB, CUDA {info['cuda']})" if "gpu" in info else ""
    return (f"{info['date_utc']} | {info['cpu']}, {info['nproc']} CPUs, torch {info['torch']} "
            f"({info['torch_threads']} threads){gpu} | load avg (1 min) at start {info['loadavg_1m']}")


def forward_flops_per_image(model: torch.nn.Module, in_channels: int, device: torch.device) -> float:
    """Forward FLOPs of one 32x32 image (2 per multiply-add), counted by torch's FlopCounterMode."""
    from torch.utils.flop_counter import FlopCounterMode

    was_training = model.training
    model.eval()
    x = torch.zeros(2, in_channels, 32, 32, device=device)
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(x)
    model.train(was_training)
    return counter.get_total_flops() / 2
