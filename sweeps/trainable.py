"""The Ray Tune function trainable: one trial = one ``bigbatch.train.train`` run, logged to MLflow.

- Tune's trial config holds only the trial's hyperparameters (batch_size, seed, searched keys); the
  rest (the shared base config, where to log, how often to checkpoint) is the sweep's ``SweepContext``,
  closed over by the trainable (``make_trainable``), saved in the sweep directory, and rebuilt from
  there on ``--resume``.
- The device comes from the resources Tune gave the trial (not from ``torch.cuda.is_available()``:
  a 0-GPU worker on a GPU node still sees the parent's CUDA_VISIBLE_DEVICES, ray#54868): ``cpu`` or
  ``cuda:0``, a name ``bigbatch.train.resolve_device`` checks inside ``train``.
- The trial trains in a local directory restored from ``tune.get_checkpoint()``; ``train`` resumes
  from ``last.pt`` there. After every epoch ``train`` writes the checkpoint (every ``checkpoint_every``
  epochs) and calls ``report``, which logs the epoch to MLflow and hands the directory to Tune. The
  MLflow run id travels in that directory (``RUN_FILE``), and ``last.pt`` holds the history from which
  epochs MLflow missed are logged again.
- A diverged run is a result (status ``diverged``), not an error.
- A trial a scheduler stops (ASHA) ends cleanly: Tune only signals the training thread and lets the actor
  exit, which would destroy native objects the thread still uses (SIGABRT); ``make_trainable``'s class joins
  the thread in ``cleanup`` first (ray_compat: the one place on Ray's private API; the story: docs/reliability.md).
- An actor Ray ends with SIGTERM exits quietly: where Python cannot raise Ray's ``SystemExit`` (inside a
  garbage-collector callback), ``exit_on_unraisable_system_exit`` exits with Ray's code instead.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import tempfile
from typing import Any, Callable

from ray import tune

from .ray_compat import STORAGE_LOGGER, joining_function_trainable
from .space import SweepContext, trial_label, trial_run_config
from .tracking import TrialInfo, TrialLogger


def trial_device(requested: str) -> str:
    """The trial's device name: an explicit one as given; ``auto``: its first GPU (``cuda:0``: Ray sets
    CUDA_VISIBLE_DEVICES to the trial's GPUs) when Ray gave it one, else ``cpu``."""
    if requested != "auto":
        return requested
    import ray

    return "cuda:0" if ray.get_gpu_ids() else "cpu"


def device_name(device: str) -> str:
    """The device's human name (tag bigbatch.device): the GPU's model, or ``cpu (<processor>)``."""
    if device.startswith("cuda"):
        import torch

        try:
            return torch.cuda.get_device_name(torch.device(device))
        except Exception:  # no such GPU: train() refuses it (bigbatch.train.resolve_device), with the reason
            return device
    import platform

    return f"cpu ({platform.processor() or platform.machine()})"


def exit_on_unraisable_system_exit(unraisable: Any) -> None:
    """``sys.unraisablehook`` of a trial process: a ``SystemExit`` that could not be raised (Ray's SIGTERM
    handler firing inside a GC or weakref callback) ends the process with its code, without a traceback;
    anything else goes to Python's default hook."""
    exc = unraisable.exc_value
    if isinstance(exc, SystemExit):
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:  # a closed stream: nothing left to flush
                pass
        os._exit(code)
    sys.__unraisablehook__(unraisable)


def _tune_value(v: Any) -> bool:
    return isinstance(v, (int, float, bool))


STOP_JOIN_S = 60.0  # how long a stopped trial's actor waits for its training thread (Tune force-kills after ~60 s)


def make_trainable(context: SweepContext, train_fn: Callable[..., dict[str, Any]] | None = None) -> type:
    """The trainable of one sweep: Tune's function trainable of ``run_trial``, whose ``cleanup`` waits for
    the training thread to end (a stopped trial ends cleanly, see the module doc). Its Tune name is
    ``bigbatch_trial``. ``train_fn`` defaults to ``bigbatch.train.train`` (tests may inject another)."""

    def bigbatch_trial(params: dict[str, Any]) -> None:
        run_trial(context, params, train_fn)

    return joining_function_trainable(bigbatch_trial, STOP_JOIN_S)  # Tune name "bigbatch_trial", as always


def run_trial(context: SweepContext, params: dict[str, Any], train_fn: Callable[..., dict[str, Any]] | None = None) -> None:
    import torch

    if train_fn is None:
        from bigbatch.train import train as train_fn
    # Keep HTTP tracking calls short inside trials: a dead server must not stall training for minutes.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
    # one "Checkpoint successfully created" line per epoch and trial would drown the trial table
    logging.getLogger(STORAGE_LOGGER).setLevel(logging.WARNING)
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")  # "View run ... at http://...", once per trial

    sys.unraisablehook = exit_on_unraisable_system_exit  # Ray's SIGTERM ends the actor quietly (module doc)
    ctx = tune.get_context()
    cpus = float(ctx.get_trial_resources().required_resources.get("CPU", 1.0))
    torch.set_num_threads(max(1, int(cpus)))
    cfg = trial_run_config(context.base, params)
    cfg = cfg.replace(device=trial_device(cfg.device))
    trial_id = ctx.get_trial_id()

    local_dir = tempfile.mkdtemp(prefix=f"bigbatch-{trial_id}-")
    try:
        checkpoint = tune.get_checkpoint()
        if checkpoint is not None:
            checkpoint.to_directory(local_dir)
        logger = TrialLogger(context.run, TrialInfo(cfg, trial_id, trial_label(cfg, context.searched), device_name(cfg.device),
                                                      context.dataset_info(cfg)), local_dir)
        logger.start()
        # the CyclicLR factor after eq. 2 (the trial table's f); factor_lr, if searched, is in the trial's params
        extra = {"scaled_factor_lr": cfg.scaled_factor_lr} if cfg.schedule == "cyclic" else {}

        def report(metrics: dict[str, Any]) -> None:
            logger.log_epoch(metrics)  # before Tune persists the directory
            out = {**{k: v for k, v in metrics.items() if _tune_value(v)}, **extra, "mlflow_run_id": logger.run_id or ""}
            if metrics.get("checkpointed"):
                tune.report(out, checkpoint=tune.Checkpoint.from_directory(local_dir))
            else:
                tune.report(out)

        try:
            summary = train_fn(cfg, report=report, checkpoint_dir=local_dir, checkpoint_every=context.checkpoint_every)
        except SystemExit:  # Tune stopped the trial (a scheduler such as ASHA): a result, not a failure
            logger.stopped()
            raise
        except BaseException as e:
            logger.fail(e)
            raise
        logger.finish(summary)
        history = summary.get("history") or [{}]
        final = {k: v for k, v in history[-1].items() if _tune_value(v) and not isinstance(v, bool)}
        final.update(
            extra,
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
