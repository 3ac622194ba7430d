"""The only place that touches Ray's private API: what bigbatch needs and Ray has no public call for.

Checked against Ray ``RAY_CHECKED`` (pyproject pins the range); ``tests/test_ray_compat.py`` fails loudly
on another Ray version and whenever one of these names is gone, so an upgrade is a one-file review:

- ``joining_function_trainable``: Tune's function trainable whose ``cleanup`` waits for the training
  thread. Tune runs a function trainable in a thread and, on a scheduler's stop, only signals it and
  returns (``FunctionTrainable.cleanup``: ``session.finish(timeout=0)``); the actor then exits under a
  thread still inside torch (``terminate called without an active exception``; sweeps.trainable's doc).
  Needs ``ray.tune.trainable.function_trainable.wrap_function`` and ``ray.train._internal.session.get_session``.
- ``trial_configs``: the config of every trial of a ``ResultGrid``, also of trials that never reported
  (their ``Result.config`` is empty): ``ResultGrid._experiment_analysis.trials``.
- ``STORAGE_LOGGER``: the logger that prints "Checkpoint successfully created" once per epoch and trial.
"""

from __future__ import annotations

from typing import Any, Callable

RAY_CHECKED = "2.60"  # major.minor of the Ray these private names were read in
STORAGE_LOGGER = "ray.train._internal.storage"


def joining_function_trainable(fn: Callable[[dict[str, Any]], None], join_s: float) -> type:
    """Tune's class for the function trainable ``fn`` (its Tune name is ``fn.__name__``), whose ``cleanup``
    waits up to ``join_s`` for the training thread to end."""
    from ray.train._internal.session import get_session
    from ray.tune.trainable.function_trainable import wrap_function

    class JoiningTrainable(wrap_function(fn)):
        def cleanup(self):
            session = get_session()
            thread = session.training_thread if session is not None and session.training_started else None
            try:
                super().cleanup()  # signals the thread (SystemExit at its next report) without waiting
            finally:
                if thread is not None and thread.is_alive():
                    thread.join(timeout=join_s)

    return JoiningTrainable


def trial_configs(results: Any) -> dict[str, dict[str, Any]]:
    """Trial directory name -> trial config of every trial of a ``tune.ResultGrid``; {} if Ray hides them."""
    import os

    try:
        return {os.path.basename(t.path): t.config for t in results._experiment_analysis.trials}
    except Exception:  # a Ray without this attribute: the caller falls back to Result.config
        return {}
