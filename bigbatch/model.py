"""The paper's adapted VGG13 for 32x32 images, with optional (ghost) batch normalisation.

Architecture (paper text and the authors' code agree, see shared/design/paper-recipes.md)::

    [conv3x3(pad 1) -> (norm) -> ReLU] x2, maxpool2   widths 64, 64
    [conv3x3(pad 1) -> (norm) -> ReLU] x2, maxpool2   widths 128, 128
    [conv3x3(pad 1) -> (norm) -> ReLU] x2, maxpool2   widths 256, 256
    [conv3x3(pad 1) -> (norm) -> ReLU] x2, maxpool2   widths 512, 512
    [conv3x3(pad 1) -> (norm) -> ReLU] x2, maxpool2   widths 512, 512
    Flatten -> Dropout -> Linear(c, c) -> ReLU -> Dropout -> Linear(c, num_classes)

A 32x32 input is 1x1 after the five pools, so the classifier sees ``c`` = the last width (512).
Normalisation is in the feature extractor only (paper: "in the feature extractor"); convolutions
carry a bias only without normalisation (a bias before BN is cancelled by the mean subtraction).

Parameter counts at width 1 with 10 classes: 9,404,992 in the convolutions (the ~9.4M of the
paper's recipe), 9,672,778 in all with ``norm="none"``, 9,675,722 with ``batch``/``ghost``.

Initialisation (the paper does not say; the authors' code, as torchvision's VGG): convolutions
Kaiming-normal (fan_out, ReLU gain, which keeps the 13-layer BN-free network trainable at lr 0.01),
conv biases zero, norm weight 1 / bias 0, linear layers normal(0, 0.01) with bias zero; the ``init`` key
``torch`` gives the Linear layers PyTorch's default instead (``init_weights``).

This module imports torch only (no ray, no mlflow).
"""

from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["GhostBatchNorm2d", "vgg13", "build_model", "init_weights", "LINEAR_INITS", "NORM_LAYERS", "make_norm", "VGG13_WIDTHS", "scaled_widths"]

# "M" is a 2x2 max-pool.
VGG13_WIDTHS: tuple[int | str, ...] = (64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M")


class GhostBatchNorm2d(nn.Module):
    """Ghost batch normalisation (Hoffer et al., 2017) over NCHW batches, with a fixed number of groups.

    Training mode: every batch is cut into ``num_groups`` contiguous groups (the authors' code:
    ``num_splits = batch_size // 32`` fixed when the model is built), each normalised with its own
    per-channel mean and biased variance. A full batch of ``num_groups * v`` samples gives groups of
    ``v`` (the virtual batch size); a short last batch (drop_last false) is cut into the same number
    of groups, so they are smaller: at batch size 1024 the last 64 of CIFAR-10's 40,000 training
    images make 32 groups of 2. A batch of ``n`` samples that ``num_groups`` does not divide is split
    as evenly as possible, as ``torch.tensor_split``: the first ``n % num_groups`` groups get one
    sample more (n = 70, 32 groups: 6 groups of 3, then 26 of 2; the authors' code would have failed
    here, which never happens with CIFAR-10's 40,000 images and the paper's batch sizes). A batch of
    fewer than ``num_groups`` samples is one group per sample. Every group is computed in at most two
    vectorised slices (the larger groups, the smaller ones), each one native ``F.batch_norm`` call with
    the groups as extra channels (no Python loop over groups). With ``num_groups == 1`` the module is
    ``nn.BatchNorm2d`` exactly.

    Running statistics, PyTorch's convention (``momentum`` weighs the new value)::

        running_mean = (1 - momentum) * running_mean + momentum * mean_g
        running_var  = (1 - momentum) * running_var  + momentum * var_g

    where ``mean_g`` is the mean over groups of the group means and ``var_g`` the mean over groups of
    the group *unbiased* variances (group biased variance * m / (m - 1), m = samples * H * W of that
    group), both weighted by the number of samples in each group. With equal groups (every batch
    whose size num_groups divides, the short last batch included) this is the plain mean over groups,
    which is what the authors' code did (one running statistic per group, averaged for evaluation);
    with one group it is exactly BatchNorm2d's update. A group with m == 1 contributes its biased
    variance (0) instead of an undefined unbiased one. ``num_batches_tracked`` counts training
    forward passes.

    Eval mode: ``F.batch_norm`` with the running statistics, as BatchNorm2d.

    Statistics and normalisation are computed in at least float32 (also for bf16/fp16 inputs, e.g.
    under autocast); the output has the input's dtype and, for elementwise reasons, its memory
    format (channels_last stays channels_last). The state_dict has BatchNorm2d's keys (weight,
    bias, running_mean, running_var, num_batches_tracked).
    """

    def __init__(self, num_features: int, num_groups: int, momentum: float = 0.1, eps: float = 1e-5) -> None:
        super().__init__()
        if num_features <= 0:
            raise ValueError(f"num_features must be positive, got {num_features}")
        if num_groups <= 0:
            raise ValueError(f"num_groups must be positive, got {num_groups}")
        self.num_features = num_features
        self.num_groups = num_groups
        self.momentum = momentum
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))
        self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))

    def reset_running_stats(self) -> None:
        self.running_mean.zero_()
        self.running_var.fill_(1.0)
        self.num_batches_tracked.zero_()

    def reset_parameters(self) -> None:
        self.reset_running_stats()
        nn.init.ones_(self.weight)
        nn.init.zeros_(self.bias)

    def extra_repr(self) -> str:
        return f"{self.num_features}, num_groups={self.num_groups}, eps={self.eps}, momentum={self.momentum}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4:
            raise ValueError(f"GhostBatchNorm2d expects a 4D (N, C, H, W) input, got {x.dim()}D")
        if x.shape[1] != self.num_features:
            raise ValueError(f"GhostBatchNorm2d({self.num_features}) got an input with {x.shape[1]} channels")
        if not self.training:
            return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)

        n, c, h, w = x.shape
        if n * h * w <= 1:
            raise ValueError(f"Expected more than 1 value per channel when training, got input size {tuple(x.shape)}")
        groups = min(self.num_groups, n)
        q, r = divmod(n, groups)  # r groups of q + 1 samples, then groups - r groups of q
        outs, stats, start = [], [], 0  # at most two entries each: the larger groups, the smaller ones
        for count, size in ((r, q + 1), (groups - r, q)):
            if count == 0:
                continue
            xs = x if count * size == n else x[start : start + count * size]
            y, mean, uvar = self._normalise(xs, count)
            outs.append(y)
            stats.append((size, mean, uvar))
            start += count * size
        with torch.no_grad():
            # mean over groups of the group statistics (shapes (groups, C)), each group weighted
            # by its share of the batch (group size / n; 1.0 exactly for a single group)
            mean_g = sum(mu.sum(0) * (size / n) for size, mu, _ in stats)
            var_g = sum(var.sum(0) * (size / n) for size, _, var in stats)
            m = self.momentum
            self.running_mean.mul_(1.0 - m).add_(mean_g.to(self.running_mean.dtype), alpha=m)
            self.running_var.mul_(1.0 - m).add_(var_g.to(self.running_var.dtype), alpha=m)
            self.num_batches_tracked.add_(1)
        return outs[0] if len(outs) == 1 else torch.cat(outs, 0)

    def _normalise(self, xs: torch.Tensor, count: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Normalise ``xs`` (``count`` equal groups of contiguous samples, NCHW) per group and channel.
        Returns y (input shape and dtype) and the group means and unbiased variances, both (count, C)
        and detached.

        One native ``F.batch_norm`` call (its fused kernel and backward: on a CPU about 1.5x faster per
        VGG13 step than the same statistics written as var_mean and elementwise ops, and a few kernel
        launches instead of a dozen on a GPU): the groups become channels, (count, V, C, H, W) ->
        (V, count * C, H, W), which is a view for one group and a copy otherwise, and the group
        statistics are read from scratch running buffers at momentum 1."""
        size, c, h, w = xs.shape[0] // count, xs.shape[1], xs.shape[2], xs.shape[3]
        dtype = torch.promote_types(xs.dtype, torch.float32)
        xf = xs.to(dtype)
        weight, bias = self.weight.to(dtype), self.bias.to(dtype)
        if size * h * w == 1:  # one value per group and channel: it is its own mean, biased variance 0
            y = (xf - xf) * weight.view(1, -1, 1, 1) + bias.view(1, -1, 1, 1)  # gradients 0, as the formula's
            return y.to(xs.dtype), xf.detach().view(count, c), torch.zeros(count, c, dtype=dtype, device=xs.device)
        xt = xf
        if count > 1:
            xt = xf.view(count, size, c, h, w).transpose(0, 1).reshape(size, count * c, h, w)
            weight, bias = weight.repeat(count), bias.repeat(count)
        mean = torch.zeros(count * c, dtype=dtype, device=xs.device)
        uvar = torch.ones(count * c, dtype=dtype, device=xs.device)
        y = F.batch_norm(xt, mean, uvar, weight, bias, True, 1.0, self.eps)  # fills mean, uvar (unbiased)
        if count > 1:  # back to (N, C, H, W) in one copy, into the input's memory format
            yt, y = y, torch.empty_like(xf)
            y.view(count, size, c, h, w).copy_(yt.view(size, count, c, h, w).transpose(0, 1))
        return y.to(xs.dtype), mean.view(count, c), uvar.view(count, c)


# ---------------------------------------------------------------------------- norm registry
NormBuilder = Callable[..., "nn.Module | None"]


def _no_norm(num_features: int, *, ghost_groups: int, momentum: float) -> None:
    return None


def _batch_norm(num_features: int, *, ghost_groups: int, momentum: float) -> nn.Module:
    return nn.BatchNorm2d(num_features, momentum=momentum)


def _ghost_norm(num_features: int, *, ghost_groups: int, momentum: float) -> nn.Module:
    return GhostBatchNorm2d(num_features, ghost_groups, momentum=momentum)


# name -> builder(num_features, *, ghost_groups, momentum) -> module (None: no layer)
NORM_LAYERS: dict[str, NormBuilder] = {"none": _no_norm, "batch": _batch_norm, "ghost": _ghost_norm}


def make_norm(name: str, num_features: int, *, ghost_groups: int = 1, momentum: float = 0.1) -> nn.Module | None:
    """The norm layer called ``name`` (None for "none"); ValueError naming the valid ones otherwise."""
    try:
        builder = NORM_LAYERS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown norm {name!r}; valid: {', '.join(NORM_LAYERS)}") from None
    return builder(num_features, ghost_groups=ghost_groups, momentum=momentum)


# ---------------------------------------------------------------------------- the network
def scaled_widths(width_mult: float) -> list[int | str]:
    """VGG13's layer list with every width multiplied by ``width_mult`` (rounded, at least 1)."""
    if not width_mult > 0:
        raise ValueError(f"width_mult must be positive, got {width_mult}")
    return [w if w == "M" else max(1, int(round(w * width_mult))) for w in VGG13_WIDTHS]


def vgg13(
    num_classes: int = 10,
    in_channels: int = 3,
    width_mult: float = 1.0,
    norm: str = "none",
    ghost_groups: int = 1,
    bn_momentum: float = 0.1,
    dropout: float = 0.5,
    init: str = "authors",
) -> nn.Sequential:
    """The paper's adapted VGG13 (module docstring). ``features`` is ``model[0]``, ``classifier``
    ``model[1]``; 32x32 inputs (any side in 32..63 reaches 1x1 after the five pools). ``ghost_groups``:
    the number of groups of every GhostBatchNorm2d (norm "ghost"). ``init``: the Linear layers'
    initialisation, "authors" or "torch" (``init_weights``)."""
    if norm not in NORM_LAYERS:
        raise ValueError(f"unknown norm {norm!r}; valid: {', '.join(NORM_LAYERS)}")
    if num_classes <= 0 or in_channels <= 0:
        raise ValueError(f"num_classes and in_channels must be positive, got {num_classes}, {in_channels}")
    layers: list[nn.Module] = []
    c_in = in_channels
    for w in scaled_widths(width_mult):
        if w == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            continue
        assert isinstance(w, int)
        norm_layer = make_norm(norm, w, ghost_groups=ghost_groups, momentum=bn_momentum)
        layers.append(nn.Conv2d(c_in, w, kernel_size=3, padding=1, bias=norm_layer is None))
        if norm_layer is not None:
            layers.append(norm_layer)
        layers.append(nn.ReLU(inplace=True))
        c_in = w
    features = nn.Sequential(*layers)
    classifier = nn.Sequential(
        nn.Flatten(),
        nn.Dropout(dropout),
        nn.Linear(c_in, c_in),
        nn.ReLU(inplace=True),
        nn.Dropout(dropout),
        nn.Linear(c_in, num_classes),
    )
    model = nn.Sequential()
    model.add_module("features", features)
    model.add_module("classifier", classifier)
    init_weights(model, init)
    return model


LINEAR_INITS = ("authors", "torch")


def init_weights(model: nn.Module, init: str = "authors") -> None:
    """Initialise in module order: convolutions Kaiming-normal (fan_out, ReLU gain), conv biases zero,
    norm weight 1 / bias 0, and the Linear layers by ``init``: "authors" normal(0, 0.01) with bias zero
    (the authors' code), "torch" PyTorch's default (``nn.Linear.reset_parameters``: kaiming-uniform with
    a = sqrt(5), i.e. U(+-1/sqrt(fan_in)), and bias U(+-1/sqrt(fan_in))). The convolutions draw the same
    numbers in both, so two models of one seed differ only in their Linear layers."""
    if init not in LINEAR_INITS:
        raise ValueError(f"unknown init {init!r}; valid: {', '.join(LINEAR_INITS)}")
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, GhostBatchNorm2d)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear) and init == "torch":
            m.reset_parameters()
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, 0.01)
            nn.init.zeros_(m.bias)


def build_model(cfg: Any, num_classes: int, in_channels: int) -> nn.Module:
    """The VGG13 a RunConfig asks for (norm, bn_momentum, width_mult, dropout, init; ghost BN with
    ``batch_size // virtual_batch_size`` groups, fixed by the batch size as in the authors' code).
    Weights come from torch's global RNG: seed it before calling for reproducible initialisation."""
    return vgg13(
        num_classes=num_classes,
        in_channels=in_channels,
        width_mult=cfg.width_mult,
        norm=cfg.norm,
        ghost_groups=max(1, cfg.batch_size // cfg.virtual_batch_size),
        bn_momentum=cfg.bn_momentum,
        dropout=cfg.dropout,
        init=cfg.init,
    )
