"""The Ray Tune function trainable: one trial = one ``bigbatch.train.train`` run, logged to MLflow.

- The device comes from the resources Tune gave the trial (not from ``torch.cuda.is_available()``:
  a 0-GPU worker on a GPU node still sees the parent's CUDA_VISIBLE_DEVICES, ray#54868).
- The trial trains in a local directory restored from ``tune.get_checkpoint()``; ``train`` resumes
  from ``last.pt`` there. After every epoch ``train`` writes the checkpoint (every ``checkpoint_every``
  epochs) and calls ``report``, which logs the epoch to MLflow and hands the directory to Tune.
- The MLflow run id lives in that directory (``mlflow_run.json``), so it travels with the checkpoint.
- A diverged run is a result (status ``diverged``), not an error.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from typing import Any, Callable

from ray import tune

from .space import trial_label, trial_run_config
from .tracking import TrialLogger

# Shown in the terminal's trial table and reported to Tune.
TABLE_METRICS = ("epoch", "val_acc", "lr", "images_per_second")


def trial_resources() -> tuple[float, float]:
    """(cpus, gpus) this trial was given."""
    try:
        res = tune.get_context().get_trial_resources().required_resources
    except Exception:
        return 1.0, 0.0
    return float(res.get("CPU", 1.0)), float(res.get("GPU", 0.0))


def pick_device(requested: str, gpus: float) -> str:
    """The trial's device: a GPU only when the trial was given one (Ray sets CUDA_VISIBLE_DEVICES to
    the trial's GPU ids, so its first assigned GPU is ``cuda:0``); ``cpu`` otherwise."""
    if requested != "auto":
        return requested
    if gpus > 0:
        import ray

        return "cuda:0" if ray.get_gpu_ids() else "cpu"
    return "cpu"


def device_name(device: str) -> str:
    if device.startswith("cuda"):
        import torch

        try:
            return torch.cuda.get_device_name(torch.device(device))
        except Exception:
            return device
    import platform

    return f"cpu ({platform.processor() or platform.machine()})"


def make_trainable(train_fn: Callable[..., dict[str, Any]] | None = None) -> Callable[[dict[str, Any]], None]:
    """The function trainable. ``train_fn`` defaults to ``bigbatch.train.train`` (tests may inject another)."""

    def bigbatch_trial(config: dict[str, Any]) -> None:
        run_trial(config, train_fn)

    return bigbatch_trial


def run_trial(config: dict[str, Any], train_fn: Callable[..., dict[str, Any]] | None = None) -> None:
    import torch

    if train_fn is None:
        from bigbatch.train import train as train_fn
    # Keep HTTP tracking calls short inside trials: a dead server must not stall training for minutes.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")

    # one "Checkpoint successfully created" line per epoch and trial would drown the trial table
    logging.getLogger("ray.train._internal.storage").setLevel(logging.WARNING)
    # MLflow's "View run ... at http://..." lines, once per trial
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    if "sweep" not in config or "base" not in config:
        raise RuntimeError(f"trial config without 'sweep'/'base' keys ({sorted(config)}): not a bigbatch sweep trial")
    sweep = config["sweep"]
    cpus, gpus = trial_resources()
    torch.set_num_threads(max(1, int(cpus)))
    cfg = trial_run_config(config)
    device = pick_device(cfg.device, gpus)
    cfg = cfg.replace(device=device)
    trial_id = tune.get_context().get_trial_id()
    label = trial_label(cfg)

    local_dir = tempfile.mkdtemp(prefix=f"bigbatch-{trial_id}-")
    try:
        checkpoint = tune.get_checkpoint()
        if checkpoint is not None:
            checkpoint.to_directory(local_dir)
        logger = TrialLogger(sweep, cfg, trial_id, label, local_dir, device_name(device))
        logger.start()
        extra = {"batch_size": cfg.batch_size, "factor_lr": cfg.scaled_factor_lr}

        def report(metrics: dict[str, Any]) -> None:
            logger.log_epoch(metrics)  # before Tune persists the directory: pending epochs travel with it
            out = {**{k: v for k, v in metrics.items() if isinstance(v, (int, float, bool))}, **extra, "mlflow_run_id": logger.run_id or ""}
            if metrics.get("checkpointed"):
                tune.report(out, checkpoint=tune.Checkpoint.from_directory(local_dir))
            else:
                tune.report(out)

        try:
            summary = train_fn(cfg, report=report, checkpoint_dir=local_dir, checkpoint_every=int(sweep.get("checkpoint_every", 1)))
        except SystemExit:  # Tune stopped the trial (a scheduler such as ASHA): a result, not a failure
            logger.stopped()
            raise
        except BaseException as e:
            logger.fail(e)
            raise
        logger.finish(summary)
        history = summary.get("history") or [{}]
        final = {k: v for k, v in history[-1].items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        final.update(extra)
        final.update(
            status=summary.get("status", "completed"),
            test_acc=float(summary.get("test_acc", float("nan"))),
            best_val_acc=float(summary.get("best_val_acc", float("nan"))),
            best_epoch=int(summary.get("best_epoch") or 0),
            epoch=int(summary.get("epochs_run") or final.get("epoch", 0)),
            mlflow_run_id=logger.run_id or "",
        )
        tune.report(final)
    finally:
        shutil.rmtree(local_dir, ignore_errors=True)
