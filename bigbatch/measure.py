"""Why large batches lose: two measurements taken during a run, without changing it.

* **Gradient noise scale** (McCandlish et al. 2018, "An Empirical Model of Large-Batch Training",
  appendix A). With ``G`` the true gradient and ``Sigma`` the per-example gradient covariance,
  ``B_simple = tr(Sigma) / |G|^2`` is the batch size beyond which a bigger batch stops buying a
  proportionally better step. A gradient averaged over ``B`` examples has ``E|G_B|^2 = |G|^2 +
  tr(Sigma) / B``, so the norms at two batch sizes ``b < B`` give unbiased estimates::

      |G|^2     ~ (B |G_B|^2 - b |G_b|^2) / (B - b)
      tr(Sigma) ~ (|G_b|^2 - |G_B|^2) / (1/b - 1/B)

  ``probe_gradient_norms`` draws ``k`` batches of ``b`` examples, takes the mean of their squared
  gradient norms as ``|G_b|^2`` and the squared norm of their mean as ``|G_B|^2`` (``B = k b``), as the
  paper does across data-parallel workers. ``NoiseScale`` smooths both terms with an exponential
  moving average and reports their ratio (single estimates are noisy; the paper does the same).

* **Sharpness** (Keskar et al. 2017, the sharp-minima argument): the largest eigenvalue of the
  Hessian of the training loss at the chosen model, by power iteration on Hessian-vector products
  (``hessian_top_eigenvalue``), with the model in eval mode (BN running statistics, no dropout) on a
  fixed probe subset.

Both run inside ``isolated(model)``: the global RNG states (CPU and CUDA) and every buffer (BN running
statistics) are restored afterwards and gradients are taken with ``torch.autograd.grad`` (``.grad`` is
never touched), so a run with the measurements on trains exactly as the run with them off.

Torch only; nothing here knows about the training loop's config.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["isolated", "probe_gradient_norms", "noise_scale_terms", "NoiseScale", "hessian_top_eigenvalue",
           "NoiseScaleProbe", "sharpness"]

Batch = tuple[torch.Tensor, torch.Tensor]
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@contextlib.contextmanager
def isolated(model: nn.Module) -> Iterator[None]:
    """Run a measurement without leaving a trace: RNG states (CPU and the CUDA devices the model uses),
    buffers (BN running stats, num_batches_tracked) and the train/eval mode are restored on exit."""
    devices = sorted({p.device.index or 0 for p in model.parameters() if p.device.type == "cuda"})
    buffers = [(b, b.detach().clone()) for b in model.buffers()]
    modes = [(m, m.training) for m in model.modules()]
    with torch.random.fork_rng(devices=devices):
        try:
            yield
        finally:
            with torch.no_grad():
                for b, saved in buffers:
                    b.copy_(saved)
            for m, training in modes:
                m.training = training


def _params(model: nn.Module) -> list[torch.Tensor]:
    return [p for p in model.parameters() if p.requires_grad]


def _sq_norm(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    return sum((t.double() ** 2).sum() for t in tensors)


def probe_gradient_norms(model: nn.Module, batches: Iterable[Batch], loss_fn: LossFn = F.cross_entropy,
                         autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext
                         ) -> tuple[float, float, int, int]:
    """Gradients of the mean loss on each of ``k`` equal batches, at the current weights, in the
    model's current mode. Returns ``(|G_b|^2, |G_B|^2, b, B)``: the mean over batches of the squared
    gradient norm, the squared norm of the batches' mean gradient, the batch size and ``B = k b``.
    Call it inside :func:`isolated`. Needs ``k >= 2``."""
    params = _params(model)
    total: list[torch.Tensor] | None = None
    sq_small, k, b = 0.0, 0, None
    for x, y in batches:
        if b is None:
            b = x.shape[0]
        elif x.shape[0] != b:
            raise ValueError(f"probe batches must have equal sizes, got {b} and {x.shape[0]}")
        with autocast():
            loss = loss_fn(model(x).float(), y)
        grads = torch.autograd.grad(loss, params)
        sq_small += float(_sq_norm(grads))
        total = [g.double() for g in grads] if total is None else [t + g.double() for t, g in zip(total, grads)]
        k += 1
    if k < 2 or b is None or total is None:
        raise ValueError(f"the noise scale needs at least 2 probe batches, got {k}")
    mean_sq_big = float(_sq_norm([t / k for t in total]))
    return sq_small / k, mean_sq_big, b, k * b


def noise_scale_terms(sq_small: float, sq_big: float, b_small: int, b_big: int) -> tuple[float, float]:
    """McCandlish et al.'s unbiased estimates ``(|G|^2, tr(Sigma))`` from squared gradient norms at two
    batch sizes (either may come out negative for a single draw: that is the price of unbiasedness)."""
    if not 0 < b_small < b_big:
        raise ValueError(f"need 0 < b_small < b_big, got {b_small}, {b_big}")
    g2 = (b_big * sq_big - b_small * sq_small) / (b_big - b_small)
    trace = (sq_small - sq_big) / (1.0 / b_small - 1.0 / b_big)
    return g2, trace


@dataclass
class NoiseScale:
    """Exponential moving averages of ``|G|^2`` and ``tr(Sigma)``; ``value`` is their ratio, B_simple.

    ``decay`` weighs the past (0: no smoothing). The averages are bias-corrected as in Adam, so the
    first value is the first estimate itself."""

    decay: float = 0.9
    g2: float = 0.0
    trace: float = 0.0
    count: int = 0

    def update(self, g2: float, trace: float) -> float:
        self.g2 = self.decay * self.g2 + (1 - self.decay) * g2
        self.trace = self.decay * self.trace + (1 - self.decay) * trace
        self.count += 1
        return self.value

    @property
    def value(self) -> float:
        """B_simple from the smoothed terms; NaN before the first update or when |G|^2 <= 0."""
        if self.count == 0:
            return math.nan
        correction = 1 - self.decay**self.count
        g2, trace = self.g2 / correction, self.trace / correction
        return trace / g2 if g2 > 0 else math.nan

    def state_dict(self) -> dict[str, float]:
        return {"decay": self.decay, "g2": self.g2, "trace": self.trace, "count": self.count}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.decay, self.g2, self.trace, self.count = state["decay"], state["g2"], state["trace"], int(state["count"])


def hessian_top_eigenvalue(model: nn.Module, batches: Sequence[Batch], iters: int = 20,
                           generator: torch.Generator | None = None, loss_fn: LossFn = F.cross_entropy,
                           tol: float = 1e-4) -> float:
    """The largest (most positive) eigenvalue of the Hessian of the mean loss over ``batches`` (weighted
    by batch size), in the model's current mode (use eval mode): power iteration on Hessian-vector
    products finds the largest-magnitude eigenvalue; when that one is negative (away from a minimum),
    a second power iteration on ``H - lambda I`` finds the top of the spectrum. ``generator`` (CPU) draws
    the start vectors. Each iteration stops after ``iters`` products or when the Rayleigh quotient
    changes by less than ``tol`` relative. Call it inside :func:`isolated`."""
    top = _power_iteration(model, batches, iters, generator, loss_fn, tol, shift=0.0)
    if top < 0:
        top = _power_iteration(model, batches, iters, generator, loss_fn, tol, shift=top) + top
    return top


def _power_iteration(model: nn.Module, batches: Sequence[Batch], iters: int, generator: torch.Generator | None,
                     loss_fn: LossFn, tol: float, shift: float) -> float:
    """The largest-magnitude eigenvalue of ``H - shift I``."""
    params = _params(model)
    n = sum(int(x.shape[0]) for x, _ in batches)
    if n == 0:
        raise ValueError("no probe images for the Hessian")
    v = [torch.randn(p.shape, generator=generator).to(p) for p in params]
    norm = _sq_norm(v).sqrt()
    v = [t / norm.to(t.dtype) for t in v]
    eig = math.nan
    for _ in range(max(1, iters)):
        hv = [torch.zeros_like(p) for p in params]
        for x, y in batches:
            loss = loss_fn(model(x).float(), y) * (x.shape[0] / n)
            grads = torch.autograd.grad(loss, params, create_graph=True)
            dot = sum((g * u).sum() for g, u in zip(grads, v))
            for acc, h in zip(hv, torch.autograd.grad(dot, params)):
                acc += h.detach()
        if shift:
            hv = [h - shift * u for h, u in zip(hv, v)]
        new = float(sum((h.double() * u.double()).sum() for h, u in zip(hv, v)))  # Rayleigh quotient v.Hv
        norm = _sq_norm(hv).sqrt()
        if float(norm) == 0.0:
            return 0.0
        v = [h / norm.to(h.dtype) for h in hv]
        if math.isfinite(eig) and abs(new - eig) <= tol * max(abs(new), 1e-12):
            return new
        eig = new
    return eig


# ---------------------------------------------------------------------------------------------- in a run
class NoiseScaleProbe:
    """The gradient noise scale of a training run, measured between its steps.

    Each call draws ``k = max(2, images // batch_size)`` disjoint batches of the run's own batch size
    from the training set (its own generator on the device, and its own augmentation callable, so the
    run's data order and augmentation streams are untouched), measures ``|G_b|^2`` and ``|G_B|^2`` in
    train mode (the run's BN and dropout) inside :func:`isolated`, and updates the EMA. Returns
    ``(b_simple_ema, b_simple_raw)``.

    ``data`` needs ``len()`` and ``get(idx) -> (x, y)`` (bigbatch.data.DeviceDataset).
    """

    def __init__(self, data, batch_size: int, images: int, seed: int, augment: Callable | None = None,
                 decay: float = 0.9):
        self.data, self.batch_size, self.augment = data, batch_size, augment
        self.k = min(max(2, images // batch_size), len(data) // batch_size)
        self.generator = torch.Generator(device=data.device)
        self.generator.manual_seed(seed)
        self.ema = NoiseScale(decay)

    @property
    def images(self) -> int:
        """Images one probe spends (its cost, in units of training images: k batches, no optimizer step)."""
        return self.k * self.batch_size

    def __call__(self, model: nn.Module, autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext
                 ) -> tuple[float, float]:
        if self.k < 2:  # the training set holds fewer than two batches
            return math.nan, math.nan
        order = torch.randperm(len(self.data), generator=self.generator, device=self.data.device)
        batches = []
        for i in range(self.k):
            x, y = self.data.get(order[i * self.batch_size:(i + 1) * self.batch_size])
            batches.append((self.augment(x) if self.augment is not None else x, y))
        with isolated(model):
            model.train()
            g2, trace = noise_scale_terms(*probe_gradient_norms(model, batches, autocast=autocast))
        raw = trace / g2 if g2 > 0 else math.nan
        return self.ema.update(g2, trace), raw

    def state_dict(self) -> dict:
        state = {"generator": self.generator.get_state(), "ema": self.ema.state_dict()}
        if hasattr(self.augment, "state_dict"):
            state["augment"] = self.augment.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"].cpu())
        self.ema.load_state_dict(state["ema"])
        if "augment" in state:
            self.augment.load_state_dict(state["augment"])


def sharpness(model: nn.Module, data, images: int, iters: int, seed: int, batch_size: int = 500) -> float:
    """The Hessian's top eigenvalue of the training loss at ``model``, on the first ``images`` images of
    ``data`` (a fixed subset), in eval mode, inside :func:`isolated` (the run is left as it was)."""
    n = min(images, len(data))
    idx = torch.arange(n, device=data.device)
    batches = [data.get(idx[i:i + batch_size]) for i in range(0, n, batch_size)]
    with isolated(model):
        model.eval()
        return hessian_top_eigenvalue(model, batches, iters=iters, generator=torch.Generator().manual_seed(seed))
