"""Learning-rate and momentum schedules as pure functions of the global optimizer step.

``lr_schedule(cfg, steps_per_epoch, full_batches)(s)`` is the learning rate used by optimizer step ``s``
(0-based, counted over the whole run); ``momentum_schedule`` likewise for SGD momentum.
``steps_per_epoch`` is the number of optimizer steps in an epoch (with ``drop_last`` false, the short
last batch is one of them); ``full_batches`` the number of full batches in an epoch, ``n_train //
batch_size``, which only the cyclic half-period counts (the authors' ``12 * (40000 // bs)``). Nothing here
holds state, so resuming from a checkpoint needs only the step counter (nanoGPT's ``get_lr`` style).

The formulas are torch's own, re-implemented in closed form (tests/test_schedules.py compares them,
step by step, with the torch schedulers they stand for):

* ``constant``: ``cfg.scaled_lr``.
* ``warmup_step`` (experiment 4): ``LinearLR(start_factor=cfg.lr / cfg.scaled_lr, end_factor=1)``
  times ``MultiStepLR(milestones, gamma)``, composed multiplicatively as torch's
  ``ChainedScheduler`` does. Warmup per iteration (``warmup_per_iteration``, Goyal et al.):
  ``total_iters = warmup_epochs * steps_per_epoch``, stepped every iteration; per epoch (the
  authors' code): ``total_iters = warmup_epochs``, stepped once per epoch, so the value depends on
  ``s // steps_per_epoch``. Milestones are epochs counted from the start of training (step
  ``m * steps_per_epoch`` is the first step at the decayed rate), the same either way. The warmup
  rises from the unscaled ``cfg.lr`` to ``cfg.scaled_lr`` (a start factor above 1, i.e. a batch
  size below ``base_batch_size``, simply interpolates downwards; torch's LinearLR would refuse it).
  ``warmup_epochs == 0`` means no warmup.
* ``epoch_scale`` (default 1: all of the above exactly) multiplies every epoch count: the warmup, the
  milestones and the cyclic half-period (and, in the config, the number of epochs). Fractional epochs
  become steps: per iteration, a warmup of ``warmup_epochs * epoch_scale`` epochs lasts
  ``round(warmup_epochs * epoch_scale * steps_per_epoch)`` steps and a milestone ``m`` falls at step
  ``round(m * epoch_scale * steps_per_epoch)``; the half-period is ``round(cyclic_step_epochs *
  epoch_scale * full_batches)``. Per epoch (the authors' stepping), the lr stays constant within every
  epoch, so the scaled warmup and milestones are rounded half up to whole epochs, at least 1
  (``bigbatch.config.whole_epochs``): a warmup of 5 * 0.1 = 0.5 epochs is one epoch at the unscaled lr.
* ``cyclic`` (experiments 5, 6): ``CyclicLR(base_lr=lr / f, max_lr=lr * f)`` with ``lr =
  cfg.scaled_lr``, ``f = cfg.scaled_factor_lr``, ``step_size_up = step_size_down =
  max(1, round(cfg.cyclic_step_epochs * full_batches))`` (Python's round): half a cycle is 12 epochs
  of *full* batches, as the authors' code (468 steps at bs 1024 on 40,000 images, while an epoch is
  40 steps with its short last batch, so the cycle drifts against the epochs as theirs did), mode
  ``cfg.cyclic_mode`` (``exp_range`` with ``gamma = cfg.cyclic_gamma``), torch's default
  scale_mode (``cycle`` for triangular/triangular2, ``iterations`` for exp_range). Step ``s`` has
  the lr CyclicLR holds after ``s`` calls of ``scheduler.step()`` (construction sets step 0: base_lr).
* momentum: ``cfg.momentum``; with ``schedule == "cyclic"`` and ``cfg.cycle_momentum``, CyclicLR's
  momentum cycling instead (``cfg.momentum`` is then ignored, as torch overwrites it):
  ``max_momentum`` at the lr trough, ``base_momentum`` at the peak, same mode and scaling.

The returned callables are ``functools.partial`` objects over module-level functions, so they
pickle (Ray ships them between processes) and print their parameters.
"""

from __future__ import annotations

import bisect
import math
from functools import partial
from typing import Any, Callable

__all__ = ["lr_schedule", "momentum_schedule", "epoch_of", "cyclic_step_size", "warmup_iters", "milestone_steps", "eval_steps"]


def epoch_of(step: int, steps_per_epoch: int) -> int:
    """The 0-based epoch that global step ``step`` belongs to."""
    return step // steps_per_epoch


def cyclic_step_size(cfg: Any, full_batches: int) -> int:
    """CyclicLR's step_size_up (= step_size_down) in optimizer steps: half a cycle, counted in epochs of
    full batches (``full_batches = n_train // batch_size``)."""
    _check_positive("full_batches", full_batches)
    return max(1, round(_scale(cfg) * cfg.cyclic_step_epochs * full_batches))


def _scale(cfg: Any) -> float:
    return float(getattr(cfg, "epoch_scale", 1.0))


def warmup_iters(cfg: Any, steps_per_epoch: int) -> int:
    """warmup_step: the warmup's length in scheduler steps (LinearLR's total_iters). Per iteration:
    ``round(warmup_epochs * epoch_scale * steps_per_epoch)`` optimizer steps; per epoch: the scaled
    warmup rounded half up to whole epochs, at least 1 (``bigbatch.config.whole_epochs``), since a
    schedule stepped once per epoch cannot end mid-epoch. 0: no warmup."""
    epochs = cfg.warmup_epochs * _scale(cfg)
    if cfg.warmup_per_iteration:
        return round(epochs * steps_per_epoch)
    return _whole_epochs(epochs)


def milestone_steps(cfg: Any, steps_per_epoch: int) -> tuple[int, ...]:
    """warmup_step: the first optimizer step at each decayed rate. Per iteration: ``round(m * epoch_scale
    * steps_per_epoch)``; per epoch: the scaled milestone rounded half up to whole epochs (at least 1),
    times steps_per_epoch. With epoch_scale 1 both are ``m * steps_per_epoch``."""
    scale = _scale(cfg)
    if cfg.warmup_per_iteration:
        return tuple(round(m * scale * steps_per_epoch) for m in cfg.milestones)
    return tuple(_whole_epochs(m * scale) * steps_per_epoch for m in cfg.milestones)


def _whole_epochs(epochs: float) -> int:
    from .config import whole_epochs  # the same rounding as the config's validation

    return whole_epochs(epochs)


def lr_schedule(cfg: Any, steps_per_epoch: int, full_batches: int) -> Callable[[int], float]:
    """step (0-based, global) -> learning rate of that optimizer step, for RunConfig ``cfg``."""
    _check_positive("steps_per_epoch", steps_per_epoch)
    lr = cfg.scaled_lr
    if cfg.schedule == "constant":
        return partial(_constant, value=lr)
    if cfg.schedule == "warmup_step":
        per_iter = bool(cfg.warmup_per_iteration)
        return partial(
            _warmup_step,
            lr=lr,
            start_factor=cfg.lr / lr,
            warmup_iters=warmup_iters(cfg, steps_per_epoch),
            warmup_unit=1 if per_iter else steps_per_epoch,
            milestone_steps=milestone_steps(cfg, steps_per_epoch),
            gamma=cfg.gamma,
        )
    if cfg.schedule == "cyclic":
        f = cfg.scaled_factor_lr
        return partial(_cyclic, **_cyclic_shape(cfg, full_batches), low=lr / f, high=lr * f, rising=True)
    raise ValueError(f"unknown schedule {cfg.schedule!r}; valid: constant, warmup_step, cyclic")


def momentum_schedule(cfg: Any, steps_per_epoch: int, full_batches: int) -> Callable[[int], float]:
    """step (0-based, global) -> SGD momentum of that optimizer step, for RunConfig ``cfg``."""
    _check_positive("steps_per_epoch", steps_per_epoch)
    if cfg.schedule == "cyclic" and cfg.cycle_momentum:
        return partial(
            _cyclic, **_cyclic_shape(cfg, full_batches), low=cfg.base_momentum, high=cfg.max_momentum, rising=False
        )
    return partial(_constant, value=cfg.momentum)


# ---------------------------------------------------------------------------- the formulas
def _check_positive(name: str, value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def _check_step(step: int) -> None:
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")


def _constant(step: int, *, value: float) -> float:
    _check_step(step)
    return value


def _warmup_step(
    step: int,
    *,
    lr: float,
    start_factor: float,
    warmup_iters: int,
    warmup_unit: int,
    milestone_steps: tuple[int, ...],
    gamma: float,
) -> float:
    _check_step(step)
    # LinearLR's closed form: start + (end - start) * min(T, t) / T, with end = 1
    t = step // warmup_unit
    warm = 1.0 if warmup_iters == 0 else start_factor + (1.0 - start_factor) * min(warmup_iters, t) / warmup_iters
    # MultiStepLR's closed form: gamma ** (number of milestones already reached)
    decay = gamma ** bisect.bisect_right(milestone_steps, step)
    return lr * warm * decay


def _cyclic_shape(cfg: Any, full_batches: int) -> dict[str, Any]:
    return {
        "step_size": cyclic_step_size(cfg, full_batches),
        "mode": cfg.cyclic_mode,
        "gamma": cfg.cyclic_gamma,
    }


def _cyclic(step: int, *, step_size: int, mode: str, gamma: float, low: float, high: float, rising: bool) -> float:
    """CyclicLR.get_lr with last_epoch = step (symmetric cycle). rising=True: the lr (low ->
    high -> low); rising=False: the momentum (high -> low -> high), as torch does both."""
    _check_step(step)
    total = 2.0 * float(step_size)
    ratio = float(step_size) / total  # 0.5
    cycle = math.floor(1 + step / total)
    x = 1.0 + step / total - cycle
    scale_factor = x / ratio if x <= ratio else (x - 1) / (ratio - 1)
    if mode == "triangular":
        scale = 1.0
    elif mode == "triangular2":
        scale = 1 / (2.0 ** (cycle - 1))
    elif mode == "exp_range":
        scale = gamma**step  # scale_mode "iterations"
    else:
        raise ValueError(f"unknown cyclic_mode {mode!r}; valid: triangular, triangular2, exp_range")
    height = (high - low) * scale_factor
    return low + height * scale if rising else high - height * scale


def eval_steps(ratio: float, total: int) -> list[int]:
    """The optimizer steps (counted from 1: after the first update) after which a run with ``step_eval_ratio``
    ``ratio`` evaluates validation accuracy: 1, then each the larger of the previous + 1 and ceil(previous x
    ratio), up to ``total``; [] when ``ratio`` is 0. A step count S between two of them is resolved to within
    the ratio: the next evaluation comes at most (ratio - 1) x S steps after it (for S >= 1 / (ratio - 1))."""
    if ratio == 0 or total <= 0:
        return []
    if not ratio > 1:
        raise ValueError(f"ratio must be 0 or above 1, got {ratio}")
    out = [1]
    while True:
        nxt = max(out[-1] + 1, math.ceil(out[-1] * ratio - 1e-9))
        if nxt > total:
            return out
        out.append(nxt)
