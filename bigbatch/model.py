"""The models, by name (``MODELS``): the paper's adapted VGG13 for 32x32 images (and VGG11/16/19 built the
same way), the CIFAR ResNet-18, or a user's own ``package.module:function``; each with optional (ghost)
batch normalisation from the run's config.

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

Other models (``model`` key, ``MODELS``): ``vgg11``, ``vgg16``, ``vgg19`` (torchvision's layer lists, the same
classifier, norms and init as VGG13); ``resnet18``, the usual CIFAR variant (He et al. 2016 with a 3x3 stride-1
stem and no max-pool: four stages of two BasicBlocks, widths 64..512, global average pool, one Linear), its
norm layers from the config as everywhere (with ``norm="none"`` the convolutions carry a bias and the blocks
are plain residual sums), convs and Linear initialised as above. A user's model, ``package.module:function``,
is called ``function(num_classes=..., in_channels=..., norm=...)`` (and ``width_mult=``, ``dropout=`` when
its signature takes them), where ``norm(C)`` returns the run's normalisation layer for C channels
(``nn.Identity``, ``BatchNorm2d`` or ``GhostBatchNorm2d``): every experiment applies to any model.

This module imports torch only (no ray, no mlflow).
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from .config import BUILTIN_MODELS, ConfigError, RunConfig, is_user_model

__all__ = ["GhostBatchNorm2d", "vgg", "vgg13", "resnet18", "MODELS", "build_model", "check_model", "model_keys", "model_provenance",
           "init_weights", "LINEAR_INITS", "NORM_LAYERS", "make_norm", "norm_factory", "VGG13_WIDTHS", "VGG_LAYERS",
           "scaled_widths"]

# "M" is a 2x2 max-pool.
VGG13_WIDTHS: tuple[int | str, ...] = (64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M")
# torchvision's VGG layer lists (configurations A, B, D, E of Simonyan & Zisserman)
VGG_LAYERS: dict[str, tuple[int | str, ...]] = {
    "vgg11": (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    "vgg13": VGG13_WIDTHS,
    "vgg16": (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"),
    "vgg19": (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M"),
}


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


def norm_factory(name: str, *, ghost_groups: int = 1, momentum: float = 0.1) -> Callable[[int], nn.Module]:
    """``norm(C)``: the layer ``make_norm`` gives for C channels, ``nn.Identity()`` for "none" (what a model
    that is not the VGG receives, so it never needs to know which norm the experiment asked for)."""
    make_norm(name, 1, ghost_groups=ghost_groups, momentum=momentum)  # the name is checked once, here

    def norm(num_features: int) -> nn.Module:
        layer = make_norm(name, num_features, ghost_groups=ghost_groups, momentum=momentum)
        return nn.Identity() if layer is None else layer

    norm.kind = name  # "none" | "batch" | "ghost": a model may drop a conv bias when it is not "none"
    return norm


# ---------------------------------------------------------------------------- the network
def scaled_widths(width_mult: float, layers: tuple[int | str, ...] = VGG13_WIDTHS) -> list[int | str]:
    """A VGG layer list (VGG13's by default) with every width multiplied by ``width_mult`` (rounded, at least 1)."""
    if not width_mult > 0:
        raise ValueError(f"width_mult must be positive, got {width_mult}")
    return [w if w == "M" else max(1, int(round(w * width_mult))) for w in layers]


def vgg13(num_classes: int = 10, in_channels: int = 3, width_mult: float = 1.0, norm: str = "none", ghost_groups: int = 1,
          bn_momentum: float = 0.1, dropout: float = 0.5, init: str = "authors") -> nn.Sequential:
    """The paper's adapted VGG13 (module docstring): ``vgg("vgg13", ...)``."""
    return vgg("vgg13", num_classes, in_channels, width_mult, norm, ghost_groups, bn_momentum, dropout, init)


def vgg(
    name: str = "vgg13",
    num_classes: int = 10,
    in_channels: int = 3,
    width_mult: float = 1.0,
    norm: str = "none",
    ghost_groups: int = 1,
    bn_momentum: float = 0.1,
    dropout: float = 0.5,
    init: str = "authors",
) -> nn.Sequential:
    """The VGG ``name`` (``VGG_LAYERS``) adapted as the paper's VGG13 (module docstring). ``features`` is
    ``model[0]``, ``classifier`` ``model[1]``; 32x32 inputs (any side in 32..63 reaches 1x1 after the five
    pools). ``ghost_groups``: the number of groups of every GhostBatchNorm2d (norm "ghost"). ``init``: the
    Linear layers' initialisation, "authors" or "torch" (``init_weights``)."""
    if name not in VGG_LAYERS:
        raise ValueError(f"unknown VGG {name!r}; valid: {', '.join(VGG_LAYERS)}")
    if norm not in NORM_LAYERS:
        raise ValueError(f"unknown norm {norm!r}; valid: {', '.join(NORM_LAYERS)}")
    if num_classes <= 0 or in_channels <= 0:
        raise ValueError(f"num_classes and in_channels must be positive, got {num_classes}, {in_channels}")
    layers: list[nn.Module] = []
    c_in = in_channels
    for w in scaled_widths(width_mult, VGG_LAYERS[name]):
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


# ---------------------------------------------------------------------------- ResNet-18 (CIFAR)
class BasicBlock(nn.Module):
    """conv3x3 -> norm -> ReLU -> conv3x3 -> norm, plus the shortcut (1x1 conv -> norm where the shape
    changes), then ReLU. ``norm(C)`` is the run's norm layer (``norm_factory``)."""

    def __init__(self, c_in: int, c_out: int, stride: int, norm: Callable[[int], nn.Module]) -> None:
        super().__init__()
        bias = getattr(norm, "kind", "batch") == "none"  # a bias before a norm layer is cancelled by it
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=bias)
        self.bn1 = norm(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, stride=1, padding=1, bias=bias)
        self.bn2 = norm(c_out)
        self.shortcut = nn.Sequential()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=bias), norm(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


def resnet18(num_classes: int = 10, in_channels: int = 3, norm: Callable[[int], nn.Module] | None = None,
             width_mult: float = 1.0, init: str = "authors") -> nn.Module:
    """The CIFAR ResNet-18 (module docstring): 3x3 stride-1 stem, no max-pool, stages of widths 64, 128, 256,
    512 (times ``width_mult``) with two BasicBlocks each, strides 1, 2, 2, 2, global average pool, Linear.
    11,173,962 parameters at width 1 with BatchNorm and 10 classes, as the usual CIFAR ResNet-18."""
    norm = norm or norm_factory("batch")
    widths = [max(1, int(round(w * width_mult))) for w in (64, 128, 256, 512)]
    bias = getattr(norm, "kind", "batch") == "none"
    layers: list[nn.Module] = [nn.Conv2d(in_channels, widths[0], 3, stride=1, padding=1, bias=bias), norm(widths[0]),
                               nn.ReLU(inplace=True)]
    c_in = widths[0]
    for i, w in enumerate(widths):
        for j in range(2):
            layers.append(BasicBlock(c_in, w, 2 if (i > 0 and j == 0) else 1, norm))
            c_in = w
    model = nn.Sequential()
    model.add_module("features", nn.Sequential(*layers))
    model.add_module("classifier", nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c_in, num_classes)))
    init_weights(model, init)
    return model


# ---------------------------------------------------------------------------- the registry
@dataclass(frozen=True)
class ModelSpec:
    """A built-in model: ``build(cfg, num_classes, in_channels, norm)``; the keys it reads are
    ``bigbatch.config.BUILTIN_MODELS[name]`` (RunConfig refuses any other model key off its default)."""

    build: Callable[[Any, int, int, Callable[[int], nn.Module]], nn.Module]
    about: str


def _vgg_spec(name: str) -> ModelSpec:
    def build(cfg, num_classes, in_channels, norm):  # the VGG keeps its own norm handling (bit for bit VGG13)
        return vgg(name, num_classes, in_channels, cfg.width_mult, cfg.norm, ghost_groups(cfg), cfg.bn_momentum,
                   cfg.dropout, cfg.init)

    return ModelSpec(build, f"{name.upper()}, adapted as the paper's VGG13 (32x32 input, classifier c -> c -> classes)")


# name -> spec; its keys must be config.BUILTIN_MODELS' (checked below: a model named in one and not the other fails at import)
MODELS: dict[str, ModelSpec] = {
    **{name: _vgg_spec(name) for name in VGG_LAYERS},
    "resnet18": ModelSpec(lambda cfg, num_classes, in_channels, norm: resnet18(
        num_classes, in_channels, norm, width_mult=cfg.width_mult, init=cfg.init), "ResNet-18, CIFAR variant"),
}
if set(MODELS) != set(BUILTIN_MODELS):
    raise ImportError(f"bigbatch.model.MODELS {sorted(MODELS)} and bigbatch.config.BUILTIN_MODELS {sorted(BUILTIN_MODELS)} differ")


def ghost_groups(cfg: Any) -> int:
    """Groups of every GhostBatchNorm2d: ``batch_size // virtual_batch_size``, fixed by the batch size (authors' code)."""
    return max(1, cfg.batch_size // cfg.virtual_batch_size)


def _user_builder(path: str) -> Callable[..., nn.Module]:
    """The function ``package.module:function`` names (ConfigError, one line, when it cannot be had)."""
    module_name, _, fn_name = path.partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as e:  # ImportError, or anything the module raises while importing
        raise ConfigError(f"model={path!r}: cannot import {module_name}: {_one_line(e)} (is it on PYTHONPATH?)") from None
    fn = getattr(module, fn_name, None)
    if not callable(fn):
        raise ConfigError(f"model={path!r}: {module_name} has no function {fn_name!r}")
    return fn


def _user_kwargs(path: str, fn: Callable[..., nn.Module], cfg: Any) -> dict[str, Any]:
    """The optional keyword arguments ``fn`` takes (width_mult, dropout); a model key it cannot take must
    keep its default (ConfigError otherwise: a value that would be silently dropped)."""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        params = {}
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    missing = [k for k in ("num_classes", "in_channels", "norm") if k not in params and not takes_any]
    if params and missing:
        raise ConfigError(f"model={path!r}: the function must take num_classes, in_channels and norm; "
                          f"it does not take {', '.join(missing)}")
    kwargs = {}
    for key in ("width_mult", "dropout"):
        if key in params or takes_any:
            kwargs[key] = getattr(cfg, key)
        elif getattr(cfg, key) != getattr(RunConfig, key):
            raise ConfigError(f"model={path!r} does not take {key}: {key}={getattr(cfg, key)!r} would be ignored; "
                              f"add a {key} argument to it or leave {key} at its default")
    if cfg.init != RunConfig.init:
        raise ConfigError(f"model={path!r}: init={cfg.init!r} applies to the built-in models only (a user's model "
                          "initialises itself); leave init at its default")
    return kwargs


def model_keys(model_name: str) -> tuple[str, ...]:
    """The model keys (config.MODEL_KEYS) the model reads: a built-in's declared ones; for a user's model the
    ones its function takes (never init). ConfigError when a user's model cannot be imported."""
    if not is_user_model(model_name):
        return BUILTIN_MODELS[model_name]
    try:
        params = inspect.signature(_user_builder(model_name)).parameters
    except (TypeError, ValueError):
        return ()
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    return tuple(k for k in ("width_mult", "dropout") if k in params or takes_any)


def build_model(cfg: Any, num_classes: int, in_channels: int) -> nn.Module:
    """The model a RunConfig asks for (``cfg.model``: a name in ``MODELS`` or ``package.module:function``),
    with the run's norm (norm, bn_momentum; ghost BN with ``batch_size // virtual_batch_size`` groups, fixed
    by the batch size as in the authors' code) and the model keys it reads. Weights come from torch's global
    RNG: seed it before calling for reproducible initialisation. A user's model that cannot be imported,
    called or that returns no ``nn.Module``: ConfigError (one line)."""
    model_name = getattr(cfg, "model", "vgg13")
    norm = norm_factory(cfg.norm, ghost_groups=ghost_groups(cfg), momentum=cfg.bn_momentum)
    if not is_user_model(model_name):
        return MODELS[model_name].build(cfg, num_classes, in_channels, norm)
    fn = _user_builder(model_name)
    kwargs = _user_kwargs(model_name, fn, cfg)
    try:
        model = fn(num_classes=num_classes, in_channels=in_channels, norm=norm, **kwargs)
    except Exception as e:
        raise ConfigError(f"model={model_name!r}: building it failed: {_one_line(e)}") from None
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model={model_name!r} returned {type(model).__name__}, not a torch.nn.Module")
    return model


def check_model(cfg: Any, num_classes: int, in_channels: int, image_size: int = 32) -> None:
    """Build ``cfg``'s model on the CPU and run two blank images through it in eval mode, so a model that
    cannot be built or gives the wrong output shape fails on the sweep's driver before any trial (ConfigError)."""
    with torch.random.fork_rng(devices=[]):  # the caller's RNG stream is not touched
        model = build_model(cfg, num_classes, in_channels).eval()
        try:
            with torch.no_grad():
                out = model(torch.zeros(2, in_channels, image_size, image_size))
        except Exception as e:
            raise ConfigError(f"model={cfg.model!r} fails on a batch of (2, {in_channels}, {image_size}, {image_size}) "
                              f"images: {_one_line(e)}") from None
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (2, num_classes):
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ConfigError(f"model={cfg.model!r} gives {shape} for 2 images, expected (2, {num_classes}) logits")


def model_provenance(model_name: str) -> dict[str, str]:
    """For a user's model, where its code came from: ``model_source`` (the module's file) and
    ``model_source_sha256`` (a hash of that file), logged with the run; {} for a built-in model."""
    if not is_user_model(model_name):
        return {}
    module = importlib.import_module(model_name.partition(":")[0])
    source = Path(getattr(module, "__file__", "") or "")
    digest = hashlib.sha256(source.read_bytes()).hexdigest() if source.is_file() else "unknown"
    return {"model_source": str(source), "model_source_sha256": digest}


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text}" if text else type(e).__name__
