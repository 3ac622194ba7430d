"""RunConfig: everything that defines one training run, as plain, validated, JSON-able data.

The defaults are the paper's *text* recipe for its baseline (experiment 1) at batch size 32;
where the text is silent they are what the authors' code did (it produced Table I). Experiments
are small diffs on top of these defaults, declared in ``bigbatch/configs/*.json`` (see
``bigbatch.experiments``); ``authors-code.json`` holds the few keys where the code differs from the
text. Every key is commented with its unit and, where it matters, where its default comes from.

Derived quantities (the learning rate after batch-size scaling, the number of epochs after epoch
scaling, the CyclicLR factor after eq. 2) are computed here, once, as properties, so that the
training loop, the sweeps and the analysis all agree on them.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import re
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

from .datasets import DATASETS


def eq2(factor_lr: float, base_batch_size: float, batch_size: float) -> float:
    """The paper's eq. 2: factor_lr scaled by sqrt(base batch size / batch size)."""
    return factor_lr * math.sqrt(base_batch_size / batch_size)


def whole_epochs(epochs: float) -> int:
    """A scaled epoch count as whole epochs, for schedules stepped once per epoch: rounded half up
    (not Python's half-to-even), at least 1 when ``epochs`` > 0, 0 when it is 0. Exact for whole
    numbers (a 1e-9 tolerance absorbs float noise such as 30 * 0.1 = 3.0000000000000004)."""
    if epochs <= 0:
        return 0
    return max(1, math.floor(epochs + 0.5 + 1e-9))


class ConfigError(ValueError):
    """A run configuration that cannot be trained. The message is one line, meant for a user."""


class OneLineArgumentParser(argparse.ArgumentParser):
    """argparse with every CLI's error format: one line ``error: ...`` on stderr and exit status 2
    (argparse's own format adds the usage block before the message)."""

    def error(self, message: str):
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


# What each key is for, declared once on the field (``role(...)``; a plain default is a "result" key).
# Every list of keys elsewhere derives from these roles (``keys_with_role``): the keys a resume may change
# (bookkeeping), the keys Table I never chooses between (identity, bookkeeping, measurement), the keys the
# report compares with the paper's setting (scale), and the README key table's role column.
ROLES: dict[str, str] = {
    "result": "changes what a run computes: runs that differ in it are different settings",
    "scale": "a result key that scales the paper's setting down; its default is the paper's value",
    "identity": "names the run or splits tables (experiment, recipe, dataset): never chosen between",
    "bookkeeping": "where and how a run executes, not what it computes: a resume may change it",
    "measurement": "measured beside training, never changes it (tested bit for bit)",
}


def role(name: str, default: Any) -> Any:
    """A field default with its role (see ROLES)."""
    if name not in ROLES:
        raise ValueError(f"unknown role {name!r}; roles: {', '.join(ROLES)}")
    return dataclasses.field(default=default, metadata={"role": name})


# Allowed values of the enumerated keys: one table, used by validation and by the README.
CHOICES: dict[str, tuple[str, ...]] = {
    "recipe": ("text", "authors-code"),
    "dataset": tuple(DATASETS),  # bigbatch/datasets.py
    "epochs_scaling": ("none", "linear"),
    "lr_scaling": ("none", "linear", "sqrt"),
    "schedule": ("constant", "warmup_step", "cyclic"),
    "factor_lr_scaling": ("none", "sqrt"),
    "cyclic_mode": ("triangular", "triangular2", "exp_range"),
    "norm": ("none", "batch", "ghost"),
    "init": ("authors", "torch"),
    "precision": ("fp32", "bf16"),
    "augment_interpolation": ("nearest", "bilinear"),
}


# The built-in models (their builders: bigbatch.model.MODELS, which must name the same ones) -> the model keys
# each reads. A model key a model does not read must keep its default: refused otherwise, never silently dropped.
# "package.module:function" is a user's own model (README, "Add your own model"): it reads the keys its
# function takes (bigbatch.model.build_model).
MODEL_KEYS = ("width_mult", "dropout", "init")
BUILTIN_MODELS: dict[str, tuple[str, ...]] = {
    "vgg13": MODEL_KEYS, "vgg11": MODEL_KEYS, "vgg16": MODEL_KEYS, "vgg19": MODEL_KEYS,
    "resnet18": ("width_mult", "init"),
}
_USER_MODEL = re.compile(r"[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*:[A-Za-z_][\w]*")


def is_user_model(name: str) -> bool:
    """True for a ``package.module:function`` model name (a user's own model)."""
    return bool(_USER_MODEL.fullmatch(name))


@dataclass(frozen=True)
class RunConfig:
    # ---- identity (recorded with every run; no effect on training) ----
    experiment: str = role("identity", "custom")  # experiment name: exp1..exp6, or "custom"
    recipe: str = role("identity", "text")  # "text" (the paper's words) | "authors-code" (what its code did)

    # ---- data ----
    dataset: str = role("identity", "cifar10")  # a name in bigbatch/datasets.py: cifar10 | cifar100 | fashion-mnist | synthetic
    data_dir: str = role("bookkeeping", "data")  # directory holding (or receiving) the dataset files
    download: bool = role("bookkeeping", True)  # download CIFAR or Fashion-MNIST when missing (torchvision: URL + md5); False: fail if missing
    val_size: int = role("scale", 10000)  # images held out of the training set for validation (paper: 10k of 50k)
    split_seed: int = 42  # seed of the train/val split (42 in the authors' code)
    train_subset: int = role("scale", 0)  # use only the first N training images after the split; 0 = all
    synthetic_size: int = 1024  # synthetic dataset only: images in its training pool (test set: a quarter)

    # ---- optimisation ----
    batch_size: int = 32  # images per SGD step
    epochs: int = role("scale", 100)  # epochs at base_batch_size (see epochs_scaling)
    epochs_scaling: str = "none"  # none | linear: epochs * batch_size / base_batch_size (experiment 2)
    epoch_scale: float = role("scale", 1.0)  # multiplies every epoch count (epochs after epochs_scaling, warmup_epochs, milestones, cyclic_step_epochs): fractional epochs become steps; 1 = the paper
    lr: float = 0.01  # learning rate at base_batch_size (see lr_scaling)
    base_batch_size: int = 32  # the batch size that lr, epochs and factor_lr are quoted at
    lr_scaling: str = "none"  # none | linear (eq. 1: lr * bs / base) | sqrt (lr * sqrt(bs / base))
    momentum: float = 0.0  # SGD momentum (the text: none); ignored when cycle_momentum
    weight_decay: float = 1e-6  # L2 penalty per step (authors' code; the text is silent)

    # ---- learning-rate schedule: step -> lr is a pure function (bigbatch.schedules) ----
    schedule: str = "constant"  # constant | warmup_step (experiment 4) | cyclic (experiments 5, 6)
    warmup_epochs: int = 5  # warmup_step: epochs rising linearly from lr (unscaled) to the scaled lr
    warmup_per_iteration: bool = True  # warmup_step: rise every iteration (the text, after Goyal et al.); False: per epoch (authors' code)
    milestones: tuple[int, ...] = (30, 60, 90)  # warmup_step: epochs at which lr is multiplied by gamma
    gamma: float = 0.1  # warmup_step: decay factor at each milestone
    factor_lr: float = 10.0  # cyclic: bounds are scaled_lr / f .. scaled_lr * f, at base_batch_size
    factor_lr_scaling: str = "none"  # none | sqrt (eq. 2: f * sqrt(base / bs), experiment 6)
    cyclic_mode: str = "triangular2"  # triangular | triangular2 (peak halves per cycle) | exp_range
    cyclic_gamma: float = 1.0  # exp_range only: amplitude multiplied by gamma**step
    cyclic_step_epochs: float = 12.0  # cyclic: half a cycle, round(this * (n_train // batch_size)) steps: epochs of full batches (authors' code)
    cycle_momentum: bool = False  # cyclic: momentum cycles max..base inversely to lr (the text: no momentum; authors' code: on, torch's default)
    base_momentum: float = 0.8  # cycle_momentum: momentum at the lr peak
    max_momentum: float = 0.9  # cycle_momentum: momentum at the lr trough

    # ---- model: the paper's adapted VGG13 by default ----
    model: str = role("identity", "vgg13")  # vgg13 (the paper's) | vgg11 | vgg16 | vgg19 | resnet18 (CIFAR variant) | package.module:function (your own: README, "Add your own model")
    norm: str = "none"  # none | batch | ghost (feature extractor only)
    virtual_batch_size: int = 32  # ghost: images per group of a full batch; every batch, the short last one too, is cut into batch_size // this groups (authors' code)
    bn_momentum: float = 0.99  # running-stat update, PyTorch convention: weight of the new batch (authors' code; the text is silent)
    width_mult: float = role("scale", 1.0)  # channel multiplier of the convolutions (tests use narrow models)
    dropout: float = 0.5  # classifier dropout probability (authors' code; the text is silent)
    init: str = "authors"  # Linear layers: authors (the authors' code: normal(0, 0.01), bias 0; the text is silent) | torch (PyTorch's default: kaiming-uniform weights, uniform biases); convolutions are kaiming-normal fan_out in both

    # ---- augmentation (runs on the training device, over the whole batch at once) ----
    hflip_p: float = 0.5  # probability of a horizontal flip (the text and the authors' code)
    rotate_p: float = 0.5  # probability of a rotation (the text; authors' code: 1.0)
    rotate_degrees: float = 15.0  # rotation drawn uniformly in +-degrees
    translate_p: float = 0.5  # probability of a translation (the text; authors' code: 1.0)
    translate_frac: float = 0.1  # translation up to +-fraction of the side per axis, in whole pixels (torchvision)
    augment_interpolation: str = "nearest"  # nearest (torchvision's default, the authors' code) | bilinear
    augment_val: bool = False  # augment the validation set too (the text: a held-out split; authors' code: True)

    # ---- the loop ----
    drop_last: bool = False  # drop the last partial batch of each epoch (authors' code kept it; the text is silent)
    eval_batch_size: int = role("bookkeeping", 1000)  # images per evaluation step (no effect on results)
    seed: int = 0  # seed of initialisation, data order and augmentation
    precision: str = "fp32"  # fp32 (authors' code; the text is silent) | bf16 (autocast: faster on GPUs; its cost in bench/RESULTS.md)
    device: str = role("bookkeeping", "auto")  # auto (cuda if available) | cpu | cuda | cuda:N
    compile: bool = role("bookkeeping", False)  # torch.compile the model (pays off only for long runs on a GPU)
    deterministic: bool = False  # deterministic algorithms on GPU (slower); CPU is always deterministic
    stop_at_val_acc: float = 0.0  # > 0: end training at the first evaluation (a step one or an epoch's) whose validation accuracy (%) reaches this (status reached; the steps-to-target study); 0 = off

    # ---- measurements (bigbatch.measure): logged beside the run, never change its training ----
    gns_images: int = role("measurement", 1024)  # gradient noise scale: images per probe, in >= 2 batches of batch_size (0 = off); cost about max(gns_images, 2 bs) / n_train of an epoch
    gns_every: int = role("measurement", 2)  # epochs between gradient-noise-scale probes (2: at most ~3.7 % of training at the paper's scale, bench/RESULTS.md)
    sharpness_images: int = role("measurement", 1000)  # Hessian top eigenvalue of the best model on this many training images (0 = off); cost about 1-2 epochs of those images
    sharpness_iters: int = role("measurement", 20)  # power-iteration steps (Hessian-vector products) for the sharpness
    step_eval_ratio: float = role("measurement", 0.0)  # > 1: also evaluate validation accuracy (no augmentation) after optimizer steps 1, 2, ... growing by this ratio (1.1: steps to a target resolved within 10 %); 0 = per epoch only

    # ------------------------------------------------------------------ derived values
    @property
    def total_epochs(self) -> int:
        """Epochs this run trains for, after epoch scaling (experiment 2: 100 * bs / 32), times
        ``epoch_scale`` (rounded, at least 1)."""
        epochs = self.epochs
        if self.epochs_scaling == "linear":
            epochs = max(1, round(self.epochs * self.batch_size / self.base_batch_size))
        if self.epoch_scale == 1.0:
            return epochs
        return max(1, round(epochs * self.epoch_scale))

    @property
    def scaled_warmup_epochs(self) -> float:
        """warmup_step: the warmup's length in epochs after ``epoch_scale`` (may be fractional; per-epoch
        warmup rounds it to whole epochs, see ``whole_epochs``)."""
        return self.warmup_epochs * self.epoch_scale

    @property
    def scaled_milestones(self) -> tuple[float, ...]:
        """warmup_step: the decay milestones in epochs after ``epoch_scale`` (may be fractional)."""
        return tuple(m * self.epoch_scale for m in self.milestones)

    @property
    def scaled_cyclic_step_epochs(self) -> float:
        """cyclic: half a cycle in epochs of full batches after ``epoch_scale``."""
        return self.cyclic_step_epochs * self.epoch_scale

    @property
    def scaled_lr(self) -> float:
        """The learning rate at this batch size (eq. 1 for linear scaling)."""
        ratio = self.batch_size / self.base_batch_size
        return {"none": 1.0, "linear": ratio, "sqrt": math.sqrt(ratio)}[self.lr_scaling] * self.lr

    @property
    def scaled_factor_lr(self) -> float:
        """The CyclicLR bound factor at this batch size (eq. 2 when factor_lr_scaling is sqrt)."""
        if self.factor_lr_scaling == "sqrt":
            return eq2(self.factor_lr, self.base_batch_size, self.batch_size)
        return self.factor_lr

    # ------------------------------------------------------------------ JSON in and out
    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["milestones"] = list(self.milestones)
        return d

    def to_json(self, path: str | Path | None = None) -> str:
        text = json.dumps(self.to_dict(), indent=2, sort_keys=False)
        if path is not None:
            Path(path).write_text(text + "\n")
        return text

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RunConfig":
        if not isinstance(d, dict):
            raise ConfigError(f"a run config must be a JSON object, got {type(d).__name__}")
        valid = [f.name for f in fields(cls)]
        for key in d:
            if key not in valid:
                raise ConfigError(_unknown_key_message(key, valid))
        hints = get_type_hints(cls)
        return cls(**{k: _coerce(k, v, hints[k]) for k, v in d.items()})  # validated by __post_init__

    @classmethod
    def from_json(cls, path: str | Path) -> "RunConfig":
        return cls.from_dict(read_json(path))

    def replace(self, **changes: Any) -> "RunConfig":
        """A copy with some keys changed, validated like from_dict."""
        return RunConfig.from_dict({**self.to_dict(), **changes})

    # ------------------------------------------------------------------ validation
    def __post_init__(self) -> None:
        self.validate()  # every RunConfig is trainable, however it was built

    def validate(self) -> None:
        """Raise ConfigError (one line) for any setting that cannot be trained."""
        for key, allowed in CHOICES.items():
            value = getattr(self, key)
            if value not in allowed:
                raise ConfigError(f"{key}={value!r} is not one of: {', '.join(allowed)}")
        positive_ints = ("batch_size", "epochs", "base_batch_size", "virtual_batch_size", "eval_batch_size", "synthetic_size",
                         "gns_every", "sharpness_iters")
        for key in positive_ints:
            if getattr(self, key) <= 0:
                raise ConfigError(f"{key} must be a positive integer, got {getattr(self, key)}")
        for key in ("val_size", "train_subset", "warmup_epochs", "gns_images", "sharpness_images"):
            if getattr(self, key) < 0:
                raise ConfigError(f"{key} must be >= 0, got {getattr(self, key)}")
        for key in ("lr", "factor_lr", "width_mult", "cyclic_step_epochs", "gamma", "cyclic_gamma", "epoch_scale"):
            value = getattr(self, key)
            if not (math.isfinite(value) and value > 0):
                raise ConfigError(f"{key} must be a positive number, got {value}")
        for key in ("momentum", "weight_decay", "base_momentum", "max_momentum"):
            value = getattr(self, key)
            if not (math.isfinite(value) and value >= 0):
                raise ConfigError(f"{key} must be a non-negative number, got {value}")
        for key in ("dropout", "hflip_p", "rotate_p", "translate_p", "bn_momentum"):
            value = getattr(self, key)
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"{key} must lie in [0, 1], got {value}")
        if not (self.step_eval_ratio == 0 or (math.isfinite(self.step_eval_ratio) and self.step_eval_ratio > 1)):
            raise ConfigError(f"step_eval_ratio must be 0 (off) or a number above 1, got {self.step_eval_ratio}")
        if not 0.0 <= self.stop_at_val_acc <= 100.0:
            raise ConfigError(f"stop_at_val_acc must lie in [0, 100] (a validation accuracy in %; 0 = off), got {self.stop_at_val_acc}")
        if not 0.0 <= self.translate_frac < 0.5:
            raise ConfigError(f"translate_frac must lie in [0, 0.5), got {self.translate_frac}")
        if not 0.0 <= self.rotate_degrees <= 180.0:
            raise ConfigError(f"rotate_degrees must lie in [0, 180], got {self.rotate_degrees}")
        if self.norm == "ghost" and self.virtual_batch_size > self.batch_size:
            raise ConfigError(
                f"virtual_batch_size={self.virtual_batch_size} is larger than batch_size={self.batch_size}"
            )
        if self.schedule == "warmup_step":
            warmup = self.scaled_warmup_epochs if self.warmup_per_iteration else whole_epochs(self.scaled_warmup_epochs)
            if warmup >= self.total_epochs:
                scaled = "" if self.epoch_scale == 1.0 else f" (x epoch_scale {self.epoch_scale:g} = {self.scaled_warmup_epochs:g} epochs" + (
                    ")" if self.warmup_per_iteration else f", {warmup} whole epochs when stepped per epoch)")
                raise ConfigError(
                    f"warmup_epochs={self.warmup_epochs}{scaled} is not shorter than training ({self.total_epochs} epochs)"
                )
            if list(self.milestones) != sorted(set(self.milestones)) or any(m <= 0 for m in self.milestones):
                raise ConfigError(f"milestones must be strictly increasing positive epochs, got {list(self.milestones)}")
        if self.schedule == "cyclic" and self.cycle_momentum and self.base_momentum > self.max_momentum:
            raise ConfigError(
                f"base_momentum={self.base_momentum} is larger than max_momentum={self.max_momentum}"
            )
        if self.model not in BUILTIN_MODELS and not is_user_model(self.model):
            raise ConfigError(f"model={self.model!r} is not one of: {', '.join(BUILTIN_MODELS)}, "
                              "or package.module:function (a user's model)")
        if self.model in BUILTIN_MODELS:
            for key in MODEL_KEYS:
                if key not in BUILTIN_MODELS[self.model] and getattr(self, key) != getattr(RunConfig, key):
                    raise ConfigError(f"model={self.model} has no {key}: {key}={getattr(self, key)!r} would be ignored; "
                                      f"leave {key} at its default ({getattr(RunConfig, key)!r})")
        if self.device != "auto" and not (self.device == "cpu" or self.device.startswith("cuda")):
            raise ConfigError(f"device={self.device!r} is not one of: auto, cpu, cuda, cuda:N")


def _unknown_key_message(key: str, valid: list[str]) -> str:
    import difflib

    close = difflib.get_close_matches(key, valid, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"unknown config key {key!r}{hint}; valid keys: {', '.join(valid)}"


def _coerce(key: str, value: Any, hint: Any) -> Any:
    """Check a JSON value against the field's type; ints are accepted where floats are expected."""
    origin = get_origin(hint)
    if origin is tuple:
        (item,) = get_args(hint)[:1]
        if not isinstance(value, (list, tuple)) or not all(_is_type(v, item) for v in value):
            raise ConfigError(f"{key} must be a list of {item.__name__}, got {value!r}")
        return tuple(value)
    if not _is_type(value, hint):
        raise ConfigError(f"{key} must be {hint.__name__}, got {type(value).__name__} {value!r}")
    return float(value) if hint is float else value


def _is_type(value: Any, hint: type) -> bool:
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, hint)


def read_json(path: str | Path) -> Any:
    """Read a JSON file, turning every failure into a one-line ConfigError."""
    p = Path(path)
    try:
        text = p.read_text()
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {p}") from None
    except OSError as e:
        raise ConfigError(f"cannot read config file {p}: {e.strerror}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"malformed JSON in {p}: {e.msg} at line {e.lineno} column {e.colno}") from None


def parse_set(pairs: list[str]) -> dict[str, Any]:
    """Parse ``key=value`` overrides; values are JSON where they parse as JSON, else strings."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set expects key=value, got {pair!r}")
        try:
            out[key] = json.loads(raw)
        except json.JSONDecodeError:
            out[key] = raw
    return out


def key_role(key: str) -> str:
    """The role of a RunConfig key (ROLES); fields without one are "result" keys."""
    f = {f.name: f for f in fields(RunConfig)}[key]
    return f.metadata.get("role", "result")


def keys_with_role(*names: str) -> frozenset[str]:
    """The RunConfig keys whose role is one of ``names``."""
    bad = [n for n in names if n not in ROLES]
    if bad:
        raise ValueError(f"unknown role {bad[0]!r}; roles: {', '.join(ROLES)}")
    return frozenset(f.name for f in fields(RunConfig) if key_role(f.name) in names)


DEFAULTS = RunConfig()
__all__ = ["RunConfig", "ConfigError", "BUILTIN_MODELS", "MODEL_KEYS", "is_user_model", "ROLES", "key_role", "keys_with_role", "whole_epochs", "OneLineArgumentParser", "CHOICES", "DEFAULTS", "read_json", "parse_set"]


def reference_table() -> str:
    """Markdown table of every key: name, default, role (ROLES), and the comment written beside it in this file.

    The README embeds this table; a test checks that every key is documented there.
    """
    import inspect

    comments: dict[str, str] = {}
    for line in inspect.getsource(RunConfig).splitlines():
        name, sep, rest = line.strip().partition(":")
        if sep and "#" in rest and name.isidentifier():
            comments[name] = rest.split("#", 1)[1].strip()
    rows = ["| key | default | role | meaning |", "| --- | --- | --- | --- |"]
    for f in fields(RunConfig):
        default = json.dumps(DEFAULTS.to_dict()[f.name])
        rows.append(f"| `{f.name}` | `{default}` | {key_role(f.name)} | {comments.get(f.name, '').replace('|', '/')} |")
    return "\n".join(rows)


if __name__ == "__main__":  # python -m bigbatch.config: print the key reference
    print(reference_table())
