"""Fault injection for the reliability tests (tests/test_reliability_faults.py); not part of bigbatch.

Python imports ``sitecustomize`` at start-up from the first directory on its path that has one. The test
helpers (tests/reliability_helpers.py) put this directory first on ``PYTHONPATH`` of the CLI they start
when a test sets ``BIGBATCH_FAULT_INJECT``; every process of that run inherits the environment, Ray's
trial workers included, so the fault fires where the trial trains. Without the variable this module does
nothing. With it, ``bigbatch.train.train_epoch`` is wrapped as soon as ``bigbatch.train`` is imported
(``python -m bigbatch.train`` included).

``BIGBATCH_FAULT_INJECT`` holds a JSON object:

- ``kind``: "kill" (the process SIGKILLs itself, as a worker dies) or "oom" (``torch.OutOfMemoryError``
  is raised, as on a full GPU);
- ``epoch``: 1-based; the fault fires right after that epoch's first optimizer step, i.e. mid-epoch;
- ``batch_size`` (optional): only runs with that batch size;
- ``once`` (optional): a marker file path; the fault fires only in the process that creates it, so a
  retried trial does not fail again.
"""

from __future__ import annotations

import json
import os
import signal
import sys

FAULT_ENV = "BIGBATCH_FAULT_INJECT"


def parse(spec: str) -> dict:
    try:
        fault = json.loads(spec)
        fault["epoch"] = int(fault["epoch"])
        if fault["kind"] not in ("kill", "oom"):
            raise ValueError(fault["kind"])
    except (ValueError, KeyError, TypeError):
        raise ValueError(f"{FAULT_ENV} must be a JSON object with kind kill|oom and epoch, got {spec!r}") from None
    return fault


def fire(fault: dict) -> None:
    if fault.get("once"):
        try:
            os.close(os.open(fault["once"], os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            return
    if fault["kind"] == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    import torch

    raise torch.OutOfMemoryError(f"CUDA out of memory (injected by {FAULT_ENV} at epoch {fault['epoch']})")


def patch(train_module) -> None:
    """Wrap train_module.train_epoch: in the chosen epoch, fire after the first optimizer step."""
    fault = parse(os.environ[FAULT_ENV])
    real_train_epoch = train_module.train_epoch

    def train_epoch(run):
        if run.epoch + 1 != fault["epoch"] or fault.get("batch_size") not in (None, run.cfg.batch_size):
            return real_train_epoch(run)

        def after_step(optimizer, args, kwargs):
            handle.remove()  # the first step only
            fire(fault)

        handle = run.optimizer.register_step_post_hook(after_step)
        try:
            return real_train_epoch(run)
        finally:
            handle.remove()

    train_module.train_epoch = train_epoch


class PatchOnImport:
    """A meta-path finder that lets the normal finders load bigbatch.train, then patches it."""

    def find_spec(self, name, path, target=None):
        if name != "bigbatch.train":
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(name, path, target)
            if spec is not None:
                break
        else:
            return None
        exec_module = spec.loader.exec_module

        def exec_and_patch(module):
            exec_module(module)
            patch(module)

        spec.loader.exec_module = exec_and_patch
        return spec


def run_module_as_main(real):
    """``python -m bigbatch.train`` executes the module as ``__main__``, which the finder never sees: import
    it as bigbatch.train (patched) and run its CLI instead; any other module runs as Python would."""

    def run(mod_name, alter_argv=True):
        if mod_name != "bigbatch.train":
            return real(mod_name, alter_argv)
        import bigbatch.train

        sys.exit(bigbatch.train.main())

    return run


if os.environ.get(FAULT_ENV):
    import runpy

    sys.meta_path.insert(0, PatchOnImport())
    runpy._run_module_as_main = run_module_as_main(runpy._run_module_as_main)  # what `python -m` calls
