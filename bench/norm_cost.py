"""What a normalisation layer costs per VGG13 training step: exp1's model (no norm) against exp3-6's
ghost batch norm as bigbatch computes it (one native ``F.batch_norm`` per slice of groups) and as it did
before (``composite``: var_mean and elementwise ops, kept here as the baseline), in NCHW and channels_last.

    python bench/norm_cost.py                                   # CPU, the mini preset's width 0.125, 1 thread
    python bench/norm_cost.py --device cuda --width-mult 1 --in-channels 3

One forward + backward + SGD step (momentum 0.9) on a fixed random batch, ``--images`` images per timed
repeat; the variants take turns within every repeat, so a change in the machine's load hits them alike.
The table gives images/s (best or median of the repeats) and the ghost speed-up over the composite.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import common  # noqa: F401  (puts the repository root on sys.path)
import torch
import torch.nn.functional as F
from common import describe_machine, machine_info, median, pick_device, sync

from bigbatch import model as bbmodel

FORMATS = {"nchw": torch.contiguous_format, "channels_last": torch.channels_last}


class CompositeGhostBatchNorm2d(bbmodel.GhostBatchNorm2d):
    """bigbatch's GhostBatchNorm2d with the statistics written out (its ``_normalise`` up to 2026-12-05):
    the same function, the baseline of this benchmark."""

    def _normalise(self, xs, count):
        size, c, h, w = xs.shape[0] // count, xs.shape[1], xs.shape[2], xs.shape[3]
        dtype = torch.promote_types(xs.dtype, torch.float32)
        xf = xs.reshape(count, size, c, h, w).to(dtype)
        var, mean = torch.var_mean(xf, dim=(1, 3, 4), keepdim=True, correction=0)
        scale = torch.rsqrt(var + self.eps) * self.weight.to(dtype).view(1, 1, -1, 1, 1)
        y = (xf - mean) * scale + self.bias.to(dtype).view(1, 1, -1, 1, 1)
        m = size * h * w
        unbias = m / (m - 1) if m > 1 else 1.0
        return y.to(xs.dtype).reshape(count * size, c, h, w), mean.detach().view(count, c), var.detach().view(count, c) * unbias


def build(variant: str, bs: int, args, device: torch.device, fmt) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    norm = "none" if variant == "none" else "ghost"
    torch.manual_seed(0)
    model = bbmodel.vgg13(num_classes=10, in_channels=args.in_channels, width_mult=args.width_mult, norm=norm,
                          ghost_groups=max(1, bs // 32), bn_momentum=0.99)
    if variant == "ghost-composite":
        for mod in model.modules():
            if isinstance(mod, bbmodel.GhostBatchNorm2d):
                mod.__class__ = CompositeGhostBatchNorm2d
    model = model.to(device).to(memory_format=fmt).train()
    return model, torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu", help="cpu (default) | cuda | auto")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[32, 256, 1024])
    p.add_argument("--width-mult", type=float, default=0.125, help="default 0.125, the mini preset's")
    p.add_argument("--in-channels", type=int, default=1, help="1 (Fashion-MNIST, default) or 3 (CIFAR-10)")
    p.add_argument("--images", type=int, default=4096, help="images per timed repeat (at least one batch)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--stat", choices=["best", "median"], default="best")
    p.add_argument("--formats", nargs="+", choices=list(FORMATS), default=list(FORMATS))
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1; 0: torch's default)")
    p.add_argument("--json", help="write every figure and the machine here too")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    info = machine_info(device)
    print(f"# bench/norm_cost.py  {describe_machine(info)}")
    print(f"# VGG13 width {args.width_mult}, {args.in_channels} input channel(s), {args.images} images per repeat, "
          f"{args.stat} of {args.repeats}; img/s of forward + backward + SGD")
    variants = ["none", "ghost", "ghost-composite"]
    stat = max if args.stat == "best" else median
    rows = []
    print("| bs | format | none (exp1) | ghost (bigbatch) | ghost, composite (before) | ghost speed-up |")
    print("|---:|---|---:|---:|---:|---:|")
    for bs in args.batch_sizes:
        steps = max(1, args.images // bs)
        x = torch.randn(bs, args.in_channels, 32, 32, device=device)
        y = torch.randint(0, 10, (bs,), device=device)
        for fname in args.formats:
            fmt = FORMATS[fname]
            xf = x.contiguous(memory_format=fmt)
            built = {v: build(v, bs, args, device, fmt) for v in variants}
            outs = []
            for v in ("ghost", "ghost-composite"):  # the baseline is the same function: same init and dropout
                torch.manual_seed(1)
                with torch.no_grad():
                    outs.append(built[v][0](xf))
            torch.testing.assert_close(outs[0], outs[1], rtol=1e-3, atol=1e-4)

            def step(v):
                model, opt = built[v]
                opt.zero_grad(set_to_none=True)
                F.cross_entropy(model(xf), y).backward()
                opt.step()

            for v in variants:  # warm-up: allocator, oneDNN / cuDNN plans
                for _ in range(2):
                    step(v)
            rates = {v: [] for v in variants}
            for _ in range(args.repeats):
                for v in variants:
                    sync(device)
                    t0 = time.perf_counter()
                    for _ in range(steps):
                        step(v)
                    sync(device)
                    rates[v].append(steps * bs / (time.perf_counter() - t0))
            r = {v: stat(rates[v]) for v in variants}
            rows.append(dict(batch_size=bs, format=fname, steps=steps, img_per_s=r, repeats=rates))
            print(f"| {bs} | {fname} | {r['none']:,.0f} | {r['ghost']:,.0f} | {r['ghost-composite']:,.0f} | "
                  f"{r['ghost'] / r['ghost-composite']:.2f}x |", flush=True)
    info["loadavg_end_1m"] = round(os.getloadavg()[0], 2)
    print(f"# load avg (1 min) at end: {info['loadavg_end_1m']}")
    if args.json:
        Path(args.json).write_text(json.dumps(dict(machine=info, args=vars(args), rows=rows), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
