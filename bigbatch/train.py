"""Train one run of the paper: one readable loop, config as data, lr as a pure function of the step.

    from bigbatch.config import RunConfig
    from bigbatch.train import train
    summary = train(RunConfig(dataset="synthetic", val_size=256, width_mult=0.25, epochs=2), report=print)

Design (see docs/architecture.md):
- the whole dataset lives on the device as uint8; each epoch draws a permutation on the device and
  the batch is gathered, normalised and augmented there (bigbatch.data), never per image in Python;
- lr and momentum come from pure functions of the global step (bigbatch.schedules);
- no host synchronisation inside the step loop: losses and accuracies accumulate on the device and
  are read once per epoch, where divergence (a non-finite loss) is also detected;
- fp32, as the authors trained (``precision: bf16`` turns on bf16 autocast, on any device); channels_last
  on every device;
- with a checkpoint directory, every `checkpoint_every` epochs the full state (model, optimizer,
  step, every RNG, best model, history) is written atomically *before* `report` is called, and a
  run started on a directory holding a checkpoint resumes from it bit-exactly (on CPU).

CLI: ``python -m bigbatch.train [--config F|expN] [--recipe R] [--set k=v ...] [--checkpoint-dir D]``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F

from .config import DEFAULTS, ConfigError, OneLineArgumentParser, RunConfig, keys_with_role
from .data import Augmenter, DataError, DataSplits, DeviceDataset, epoch_order, load_data, require_batch_fits
from .measure import NoiseScaleProbe, sharpness
from .model import build_model, model_keys
from .schedules import eval_steps, lr_schedule, momentum_schedule

CHECKPOINT = "last.pt"
BEST_MODEL = "best_model.pt"
# Keys that may differ between a checkpoint and the config resuming it (they do not change results).
RESUME_FREE_KEYS = keys_with_role("bookkeeping")  # where and how a run executes (bigbatch.config.ROLES)


class TrainingError(RuntimeError):
    """A run that cannot go on (out of memory, a device that is not there). One line, for a user."""


# ---------------------------------------------------------------------------------------------- setup
def resolve_device(name: str) -> torch.device:
    """'auto' -> cuda if a GPU is visible else cpu; an explicit cuda device must exist."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise TrainingError(f"device={name!r} but no CUDA GPU is visible (CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')})")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise TrainingError(f"device={name!r} but only {torch.cuda.device_count()} GPU(s) are visible")
    return dev




@dataclass
class Run:
    """Everything one run needs while it trains; built by `setup`, advanced by `train_epoch`."""

    cfg: RunConfig
    device: torch.device
    data: DataSplits
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    lr_at: Callable[[int], float]
    momentum_at: Callable[[int], float]
    steps_per_epoch: int
    order_gen: torch.Generator  # draws each epoch's permutation, on the device
    augment: Augmenter
    amp_dtype: torch.dtype | None  # torch.bfloat16 with precision bf16 (autocast); None: fp32
    gns: NoiseScaleProbe | None = None  # gradient noise scale probe (own data stream; never changes training)
    epoch: int = 0  # epochs completed
    history: list[dict[str, Any]] = field(default_factory=list)
    best_val_acc: float = -1.0
    best_epoch: int = 0
    best_state: dict[str, torch.Tensor] | None = None
    best_saved_epoch: int = 0  # the epoch whose weights checkpoint_dir/best_model.pt holds (0: none)
    train_seconds: float = 0.0
    eval_at: frozenset[int] = frozenset()  # step_eval_ratio: the optimizer steps (from 1) after which val is evaluated

    @property
    def step(self) -> int:
        return self.epoch * self.steps_per_epoch

    def autocast(self):
        if self.amp_dtype is None:
            return nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)


def setup(cfg: RunConfig, device: torch.device | None = None, data: DataSplits | None = None) -> Run:
    """Load data onto the device and build model, optimizer, schedules and RNGs from the config."""
    device = device or resolve_device(cfg.device)
    # Set both ways: a Ray actor reused for the next trial must not keep the previous trial's mode.
    if cfg.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # read when cuBLAS first starts
    torch.use_deterministic_algorithms(cfg.deterministic, warn_only=True)
    torch.backends.cudnn.deterministic = cfg.deterministic
    torch.backends.cudnn.benchmark = device.type == "cuda" and not cfg.deterministic  # autotuning picks by timing
    torch.manual_seed(cfg.seed)  # model init and dropout
    model_keys(cfg.model)  # a user's model that cannot be imported fails now, not after the data has loaded
    data = data or load_data(cfg, device)
    n = len(data.train)
    require_batch_fits(cfg.batch_size, n)  # the virtual batch is checked by RunConfig itself
    full_batches = n // cfg.batch_size  # the cyclic half-period counts these (authors' code: 12 * (40000 // bs))
    steps_per_epoch = full_batches if cfg.drop_last else math.ceil(n / cfg.batch_size)

    # channels_last on every device: cuDNN's and oneDNN's fast layout (CPU, width 0.125: 1.4x per step
    # without norm, 1.1-1.4x with ghost BN; bench/norm_cost.py, bench/RESULTS.md)
    model = build_model(cfg, data.num_classes, data.in_channels).to(device).to(memory_format=torch.channels_last)
    lr_at = lr_schedule(cfg, steps_per_epoch, full_batches)
    momentum_at = momentum_schedule(cfg, steps_per_epoch, full_batches)
    optimizer = torch.optim.SGD(
        model.parameters(),
        lr=lr_at(0),
        momentum=momentum_at(0),
        weight_decay=cfg.weight_decay,
        foreach=device.type == "cuda" or None,
    )
    if cfg.compile:
        model = torch.compile(model)
    order_gen = torch.Generator(device=device)
    order_gen.manual_seed(cfg.seed + 1)
    augment = Augmenter(cfg, device, seed=cfg.seed + 2)
    gns = None
    if cfg.gns_images > 0:  # its own order generator and augmentation stream: the run's are untouched
        gns = NoiseScaleProbe(data.train, cfg.batch_size, cfg.gns_images, seed=cfg.seed + 3,
                              augment=Augmenter(cfg, device, seed=cfg.seed + 4))
    eval_at = frozenset(eval_steps(cfg.step_eval_ratio, cfg.total_epochs * steps_per_epoch))
    return Run(cfg, device, data, model, optimizer, lr_at, momentum_at, steps_per_epoch, order_gen, augment,
               torch.bfloat16 if cfg.precision == "bf16" else None, gns, eval_at=eval_at)


# ---------------------------------------------------------------------------------------------- loop
def train_epoch(run: Run) -> dict[str, float]:
    """One epoch of SGD. Returns train_loss, train_acc (%), lr, momentum, images, seconds, and the step
    evaluations: ``step_evals`` ([step, val_acc] after each step of ``run.eval_at``; the epoch's last step is
    left to the epoch's own evaluation unless that one augments) and ``steps`` (optimizer steps done in all).
    With ``stop_at_val_acc``, an evaluation that reaches it ends the epoch there (``reached``: its (val_loss,
    val_acc), which the epoch's own evaluation reuses: the same model, so evaluating it again would only cost time)."""
    cfg, model, opt = run.cfg, run.model, run.optimizer
    train = run.data.train
    n, bs = len(train), cfg.batch_size
    model.train()
    order = epoch_order(n, run.order_gen, run.device)
    loss_sum = torch.zeros((), device=run.device)
    correct = torch.zeros((), device=run.device, dtype=torch.long)
    seen = 0
    step_evals: list[list[float]] = []  # [step, val_acc] after the steps of run.eval_at in this epoch
    eval_seconds = 0.0
    last = run.step + run.steps_per_epoch  # the epoch's last step (from 1), evaluated by the epoch's own evaluation
    reached: tuple[float, float] | None = None
    done = run.steps_per_epoch
    t0 = time.perf_counter()
    for i in range(run.steps_per_epoch):
        step = run.step + i
        lr, momentum = run.lr_at(step), run.momentum_at(step)
        for group in opt.param_groups:  # host-side floats: no device synchronisation
            group["lr"] = lr
            group["momentum"] = momentum
        idx = order[i * bs : (i + 1) * bs]
        x, y = train.get(idx)
        x = run.augment(x)
        with run.autocast():
            logits = model(x)
            loss = F.cross_entropy(logits, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        count = min(bs, n - i * bs)
        loss_sum += loss.detach().float() * count
        correct += (logits.detach().argmax(1) == y).sum()
        seen += count
        if step + 1 in run.eval_at and (step + 1 != last or cfg.augment_val):
            # eval mode, no augmentation: no random stream, running statistic or weight moves (training is the same)
            t_eval = time.perf_counter()
            val_loss, acc = evaluate(run, run.data.val)
            step_evals.append([step + 1, acc])
            model.train()
            eval_seconds += time.perf_counter() - t_eval
            if cfg.stop_at_val_acc and acc >= cfg.stop_at_val_acc:
                reached, done = (val_loss, acc), i + 1
                break
    loss_value = (loss_sum / seen).item()  # the epoch's one synchronisation
    seconds = time.perf_counter() - t0 - eval_seconds
    return {
        "train_loss": loss_value,
        "train_acc": 100.0 * correct.item() / seen,
        "lr": run.lr_at(run.step + done - 1),
        "momentum": run.momentum_at(run.step + done - 1),
        "images": seen,
        "seconds": seconds,
        "step_evals": step_evals,
        "steps": run.step + done,
        "reached": reached,
    }


@torch.no_grad()
def evaluate(run: Run, dataset: DeviceDataset, augment: bool = False) -> tuple[float, float]:
    """(mean loss, accuracy %) of the model in eval mode over a whole dataset."""
    run.model.eval()
    n, bs = len(dataset), run.cfg.eval_batch_size
    loss_sum = torch.zeros((), device=run.device)
    correct = torch.zeros((), device=run.device, dtype=torch.long)
    for start in range(0, n, bs):
        idx = torch.arange(start, min(start + bs, n), device=run.device)
        x, y = dataset.get(idx)
        if augment:
            x = run.augment(x)
        with run.autocast():
            logits = run.model(x)
        loss_sum += F.cross_entropy(logits.float(), y, reduction="sum")
        correct += (logits.argmax(1) == y).sum()
    return (loss_sum / n).item(), 100.0 * correct.item() / n


def raw_model(run: Run) -> torch.nn.Module:
    """The run's model without torch.compile's wrapper (its state_dict keys are the plain model's)."""
    return getattr(run.model, "_orig_mod", run.model)  # unwrap torch.compile


def cpu_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A copy of ``module``'s state on the CPU (the best model kept while training goes on)."""
    return {k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()}


# ---------------------------------------------------------------------------------------------- checkpoints
def _atomic_save(obj: Any, path: Path) -> None:
    """Write to a temporary file in the same directory, fsync, then rename over the target."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:  # the previous file stays; no half-written temporary is left beside it
        tmp.unlink(missing_ok=True)
        raise


def save_checkpoint(run: Run, directory: Path) -> None:
    """Write last.pt, then best_model.pt when the best model changed since it was last written.

    The best weights travel inside last.pt only on those checkpoints (not every epoch: at full width
    they double its size). Writing last.pt first keeps the pair consistent after a crash at any point:
    best_model.pt is only ever replaced by weights that a complete last.pt already holds, so a last.pt
    without them always names the best_model.pt beside it (see load_checkpoint).
    """
    directory.mkdir(parents=True, exist_ok=True)
    rng = {
        "torch": torch.get_rng_state(),
        "order": run.order_gen.get_state(),
        "augment": run.augment.state_dict(),
    }
    if run.device.type == "cuda":
        rng["cuda"] = torch.cuda.get_rng_state(run.device)
    if run.gns is not None:
        rng["gns"] = run.gns.state_dict()
    new_best = run.best_state is not None and run.best_epoch != run.best_saved_epoch
    state = {
        "epoch": run.epoch,
        "model": raw_model(run).state_dict(),
        "optimizer": run.optimizer.state_dict(),
        "rng": rng,
        "best": {"val_acc": run.best_val_acc, "epoch": run.best_epoch, "state": run.best_state if new_best else None},
        "history": run.history,
        "train_seconds": run.train_seconds,
        "config": run.cfg.to_dict(),
    }
    _atomic_save(state, directory / CHECKPOINT)
    if new_best:
        _atomic_save(run.best_state, directory / BEST_MODEL)
        run.best_saved_epoch = run.best_epoch


def load_checkpoint(run: Run, directory: Path) -> bool:
    """Restore a run from directory/last.pt; False when there is none."""
    path = directory / CHECKPOINT
    if not path.exists():
        return False
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a torn or foreign file: say which, do not guess
        raise TrainingError(f"cannot read checkpoint {path}: {type(e).__name__}: {e}".splitlines()[0]) from None
    saved = state["config"]
    # a key that a checkpoint lacks was added later with the old behaviour as its default (e.g. init)
    default = DEFAULTS.to_dict()
    diff = [k for k, v in run.cfg.to_dict().items() if k not in RESUME_FREE_KEYS and saved.get(k, default[k]) != v]
    if diff:
        k = diff[0]
        raise ConfigError(f"checkpoint {path} was written for another config ({k}={saved.get(k, default[k])!r}, now {getattr(run.cfg, k)!r}); use a new --checkpoint-dir")
    raw_model(run).load_state_dict(state["model"])
    run.optimizer.load_state_dict(state["optimizer"])
    torch.set_rng_state(state["rng"]["torch"])
    run.order_gen.set_state(state["rng"]["order"])  # generator states are CPU byte tensors, on any device
    run.augment.load_state_dict(state["rng"]["augment"])
    if run.gns is not None:
        run.gns.load_state_dict(state["rng"]["gns"])
    if "cuda" in state["rng"] and run.device.type == "cuda":
        torch.cuda.set_rng_state(state["rng"]["cuda"], run.device)
    run.epoch = state["epoch"]
    run.history = list(state["history"])
    run.best_val_acc = state["best"]["val_acc"]
    run.best_epoch = state["best"]["epoch"]
    run.best_state = state["best"]["state"]
    if run.best_state is not None:  # written with this checkpoint; best_model.pt may not have followed
        _atomic_save(run.best_state, directory / BEST_MODEL)
    else:  # unchanged since an earlier checkpoint: best_model.pt holds it
        try:
            run.best_state = torch.load(directory / BEST_MODEL, map_location="cpu", weights_only=True)
        except Exception as e:
            raise TrainingError(f"cannot read {directory / BEST_MODEL} (the best model of checkpoint {path}): {type(e).__name__}") from None
    run.best_saved_epoch = run.best_epoch
    run.train_seconds = state["train_seconds"]
    return True


# ---------------------------------------------------------------------------------------------- train
def train(
    cfg: RunConfig,
    report: Callable[[dict[str, Any]], None] | None = None,
    checkpoint_dir: str | Path | None = None,
    checkpoint_every: int = 1,
    device: torch.device | None = None,
) -> dict[str, Any]:
    """Train one run; returns the summary (see docs/architecture.md for every key)."""
    if checkpoint_every < 1:
        raise ConfigError(f"checkpoint_every must be >= 1, got {checkpoint_every}")
    run = setup(cfg, device)
    ckpt = Path(checkpoint_dir) if checkpoint_dir is not None else None
    if ckpt is not None:
        load_checkpoint(run, ckpt)
    total = cfg.total_epochs
    status, diverged_epoch = "completed", None
    try:
        while run.epoch < total:
            t0 = time.perf_counter()
            tr = train_epoch(run)
            if not math.isfinite(tr["train_loss"]):
                status, diverged_epoch = "diverged", run.epoch + 1
                break
            probe = measure_noise_scale(run) if run.gns is not None and (run.epoch + 1) % cfg.gns_every == 0 else {}
            if tr["reached"] and not cfg.augment_val:
                val_loss, val_acc = tr["reached"]  # the step evaluation that reached the target, not a second pass
            else:
                val_loss, val_acc = evaluate(run, run.data.val, augment=cfg.augment_val)
            step_evals = tr["step_evals"]
            if cfg.step_eval_ratio and not cfg.augment_val and not tr["reached"]:
                step_evals = [*step_evals, [tr["steps"], val_acc]]  # the epoch's own evaluation is a step evaluation too
            reached = tr["reached"] is not None or bool(cfg.stop_at_val_acc and val_acc >= cfg.stop_at_val_acc)
            run.epoch += 1
            best_changed = val_acc > run.best_val_acc
            if best_changed:
                run.best_val_acc, run.best_epoch = val_acc, run.epoch
                run.best_state = cpu_state(raw_model(run))
            epoch_seconds = time.perf_counter() - t0
            run.train_seconds += epoch_seconds
            metrics = {
                "epoch": run.epoch,
                "train_loss": tr["train_loss"],
                "train_acc": tr["train_acc"],
                "val_loss": val_loss,
                "val_acc": val_acc,
                "lr": tr["lr"],
                "momentum": tr["momentum"],
                "epoch_seconds": epoch_seconds,
                "images_per_second": tr["images"] / tr["seconds"],
                "best_val_acc": run.best_val_acc,
                "best_epoch": run.best_epoch,
                "steps": tr["steps"],
                **probe,
                **({"step_evals": step_evals} if cfg.step_eval_ratio else {}),
            }
            run.history.append(metrics)
            # a partial epoch (stopped at the target) is never checkpointed: a resume redoes it from the last whole one
            checkpointed = ckpt is not None and not tr["reached"] and (run.epoch % checkpoint_every == 0 or run.epoch == total)
            if checkpointed:
                save_checkpoint(run, ckpt)
            if report is not None:
                report({**metrics, "checkpointed": checkpointed})
            if reached:  # stop_at_val_acc (the steps-to-target study): the rest of the training is not needed
                status = "reached"
                break
        return _summary(run, status, diverged_epoch)  # evaluates the test set: may run out of memory too
    except torch.OutOfMemoryError:
        raise TrainingError(
            f"out of memory on {run.device} at batch_size={cfg.batch_size} "
            f"(another trial packed on the same GPU, or the batch is too large)"
        ) from None


def _summary(run: Run, status: str, diverged_epoch: int | None) -> dict[str, Any]:
    if run.best_state is not None:
        # the paper's rule: test the best-validation model; after a divergence, the best one before it
        # (the authors' code saved it at every improvement)
        raw_model(run).load_state_dict(run.best_state)
        test_loss, test_acc = evaluate(run, run.data.test)
        best_val_acc, best_epoch = run.best_val_acc, run.best_epoch
    else:  # diverged in its first epoch: no model to test, chance level
        best_val_acc = test_acc = 100.0 / run.data.num_classes
        best_epoch, test_loss = 0, float("nan")
    extra = {}
    if run.best_state is not None and run.cfg.sharpness_images > 0:  # Keskar et al.: the minimum the run chose
        t0 = time.perf_counter()
        extra["sharpness"] = sharpness(raw_model(run), run.data.train, run.cfg.sharpness_images,
                                       run.cfg.sharpness_iters, seed=run.cfg.seed + 5, batch_size=run.cfg.eval_batch_size)
        extra["sharpness_seconds"] = time.perf_counter() - t0
    return {
        "status": status,
        "best_val_acc": best_val_acc,
        "best_epoch": best_epoch,
        "test_acc": test_acc,
        "test_loss": test_loss,
        "diverged_epoch": diverged_epoch,
        "epochs_run": run.epoch,
        "train_seconds": run.train_seconds,
        "steps_per_epoch": run.steps_per_epoch,
        "num_train": len(run.data.train),
        "device": str(run.device),
        "device_name": torch.cuda.get_device_name(run.device) if run.device.type == "cuda" else "cpu",
        "history": run.history,
        "config": run.cfg.to_dict(),
        **extra,
    }


def measure_noise_scale(run: Run) -> dict[str, float]:
    """One gradient-noise-scale probe at the current weights: ``gns`` (B_simple, EMA-smoothed), ``gns_raw``
    (this probe alone) and ``gns_seconds`` (its cost); empty when the estimate is not finite."""
    t0 = time.perf_counter()
    smoothed, raw = run.gns(raw_model(run), run.autocast)
    out = {"gns": smoothed, "gns_raw": raw, "gns_seconds": time.perf_counter() - t0}
    return {k: v for k, v in out.items() if math.isfinite(v)} if math.isfinite(smoothed) else {}


# ---------------------------------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    p = OneLineArgumentParser(
        prog="python -m bigbatch.train",
        description="Train one run. Prints one JSON line per epoch, then a JSON summary.",
    )
    p.add_argument("--config", help="a RunConfig JSON file, an experiment name (exp1..exp6) or bigbatch/configs/expN.json")
    p.add_argument("--recipe", default="text", help="experiments only: text (default) | authors-code")
    p.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE", help="override config keys (values parsed as JSON)")
    p.add_argument("--checkpoint-dir", help="save a checkpoint here after every epoch; resume from it if it holds one")
    p.add_argument("--checkpoint-every", type=int, default=1, help="epochs between checkpoints (default 1)")
    return p


def main(argv: list[str] | None = None) -> int:
    from .config import parse_set
    from .experiments import load_config

    args = build_parser().parse_args(argv)
    try:
        cfg = load_config(args.config, args.recipe, parse_set(args.set))
        summary = train(
            cfg,
            report=lambda m: print(json.dumps(m), flush=True),
            checkpoint_dir=args.checkpoint_dir,
            checkpoint_every=args.checkpoint_every,
        )
    except (ConfigError, DataError, TrainingError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        where = f"; resume with --checkpoint-dir {args.checkpoint_dir}" if args.checkpoint_dir else ""
        print(f"interrupted{where}", file=sys.stderr)
        return 130
    summary.pop("history")
    print(json.dumps({"summary": summary}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
