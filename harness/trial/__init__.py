"""One trial: one method with one hyperparameter set, trained by Ray Train and scored.

Which module owns what, and where it runs:

- ``config``: ``TrialConfig``, the validated values of a trial (built on the driver, read by every worker);
- ``driver``: the driver process: checks, data and intuition loaded once, the ``TorchTrainer``, the
  leaderboard and prediction rows of a single trial (``run_trial``, ``prepare_data``);
- ``worker``: each Ray Train worker process: the training loop under DeepSpeed, evaluation, checkpoints;
- ``step``: the step's pure functions the worker calls (schedule, data order, batches, loss, precision,
  DeepSpeed config).

The command line for one trial is ``python harness/train.py``. ``TrialConfig`` is imported here; the
driver's names load Ray, so they are loaded when first asked for.
"""

from __future__ import annotations

from harness.trial.config import TrialConfig

__all__ = ["TrialConfig", "prepare_data", "run_trial"]

_DRIVER_NAMES = ("prepare_data", "run_trial")


def __getattr__(name: str):
    if name in _DRIVER_NAMES:
        from harness.trial import driver

        return getattr(driver, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
