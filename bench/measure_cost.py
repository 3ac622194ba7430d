"""What the measurements cost (issue 11): the gradient noise scale probe and the sharpness, as a share of
training time, measured inside the same runs (so a busy machine slows both sides alike).

    python bench/measure_cost.py                       # Fashion-MNIST if found, else synthetic; CPU
    python bench/measure_cost.py --device cuda --width 1 --train-subset 40000 --batch-sizes 32 1024

For each batch size it trains ``--epochs`` epochs with the defaults of RunConfig (gns_images,
gns_every, sharpness_images, sharpness_iters) and reports:
- ``probe share``: gns_seconds / epoch_seconds of the measured epochs (this run's n_train);
- ``probe s/img`` / ``train s/img``: the cost of one image in the probe and in training, from which
  the share at the paper's scale follows: images_per_probe / n_train_paper * (probe s/img / train s/img);
- ``sharpness s`` and its share of a paper run: sharpness_seconds / (100 epochs of 40k images at the
  measured training s/img).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bigbatch.config import RunConfig  # noqa: E402
from bigbatch.train import train  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
PAPER_TRAIN, PAPER_EPOCHS = 40000, 100


def find_fashion() -> str | None:
    for d in (os.environ.get("BIGBATCH_DATA_DIR"), str(REPO.parent / "shared" / "data" / "fashion-mnist")):
        if d and Path(d).is_dir() and any(Path(d).glob("train-images-idx3-ubyte*")):
            return d
    return None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[32, 256, 1024])
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--width", type=float, default=0.25)
    p.add_argument("--train-subset", type=int, default=8192)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--json", help="write the rows here too")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    data_dir = find_fashion()
    data = dict(dataset="fashion-mnist", data_dir=data_dir, download=False) if data_dir else \
        dict(dataset="synthetic", synthetic_size=args.train_subset + 1024)
    print(f"# {data['dataset']}, width {args.width}, {args.train_subset} training images, {args.epochs} epochs, "
          f"{args.device}, torch threads {torch.get_num_threads()}; defaults: gns_images {RunConfig.gns_images}, "
          f"gns_every {RunConfig.gns_every}, sharpness_images {RunConfig.sharpness_images}, "
          f"sharpness_iters {RunConfig.sharpness_iters}")
    print(f"{'bs':>5} {'probe imgs':>10} {'probe share':>11} {'probe s/img':>11} {'train s/img':>11} "
          f"{'paper probe share':>17} {'sharpness s':>11} {'paper sharpness share':>21}")
    rows = []
    for bs in args.batch_sizes:
        cfg = RunConfig(**data, experiment="exp3", norm="ghost", lr_scaling="linear", batch_size=bs,
                        train_subset=args.train_subset, val_size=1000, width_mult=args.width, epochs=args.epochs,
                        device=args.device, eval_batch_size=1000)
        s = train(cfg)
        hist = [h for h in s["history"] if "gns_seconds" in h]
        n = s["num_train"]
        train_s = sum(h["epoch_seconds"] - h.get("gns_seconds", 0.0) for h in s["history"])
        train_per_img = train_s / (n * len(s["history"]))
        probe_imgs = min(max(2, cfg.gns_images // bs), n // bs) * bs
        probe_s = sum(h["gns_seconds"] for h in hist) / max(1, len(hist))
        share = sum(h["gns_seconds"] for h in hist) / max(1e-9, sum(h["epoch_seconds"] for h in hist))
        probe_per_img = probe_s / probe_imgs
        paper_imgs = max(cfg.gns_images // bs, 2) * bs
        paper_share = paper_imgs * probe_per_img / (PAPER_TRAIN * train_per_img + paper_imgs * probe_per_img) / cfg.gns_every
        sharp_s = s.get("sharpness_seconds", float("nan"))
        paper_sharp = sharp_s / (PAPER_EPOCHS * PAPER_TRAIN * train_per_img)
        row = dict(batch_size=bs, probe_images=probe_imgs, probe_share=share, probe_s_per_img=probe_per_img,
                   train_s_per_img=train_per_img, paper_probe_share=paper_share, sharpness_s=sharp_s,
                   paper_sharpness_share=paper_sharp, gns=[h.get("gns") for h in s["history"]],
                   sharpness=s.get("sharpness"))
        rows.append(row)
        print(f"{bs:>5} {probe_imgs:>10} {share:>11.1%} {probe_per_img:>11.2e} {train_per_img:>11.2e} "
              f"{paper_share:>17.1%} {sharp_s:>11.1f} {paper_sharp:>21.2%}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
