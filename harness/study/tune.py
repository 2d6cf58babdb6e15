"""The Tune side of a study: the driver function each trial runs, its deadline, and the callback
that records every trial as it ends.

Owns ``trial_driver`` (one Tune trial: build its TrialConfig and run it as a Ray Train job
through ``harness.trial.driver.run_trial``), ``run_with_deadline``, ``RecordAndReport`` (runs on the
study's process: leaderboard rows and progress lines per trial), and ``run_tuner``, which runs
or restores the study's Tuner and reconciles its results with the leaderboard.
"""

from __future__ import annotations

import json
import math
import shutil
import time

from ray.tune import Callback

from harness.background import Background
from harness.study.outcomes import per_dataset, reconcile, record_trial, recorded_outcomes, trial_error
from harness.study.plan import METRIC, Plan, make_trial_config, trial_point
from harness.study.progress import Progress, current, routing_note, short

# Seconds between sweeps for placement groups that dead Train controllers left behind.
ORPHAN_SWEEP_S = 10.0


class TrialTimeout(RuntimeError):
    """A trial's Train run did not finish within the profile's ``resources.trial_timeout_s``."""


def run_with_deadline(fn, timeout_s: float | None):
    """``fn()``, or TrialTimeout once ``timeout_s`` has passed without it returning.

    ``fn`` runs on a daemon thread that is abandoned on timeout: the raise ends
    the Tune trial, Tune removes the trial's actor, and the Train controller and
    workers that actor owns go with it.
    """
    if timeout_s is None:
        return fn()
    call = Background(fn, name="trial")
    if not call.join(timeout_s):
        raise TrialTimeout(f"no result within trial_timeout_s={timeout_s:g}s; the Train run was abandoned "
                           "(a lost node or a stuck worker group)")
    return call.result()


def trial_driver(config: dict, *, bases: dict, space_params: dict, default_seed: int, storage_path: str,
                 recorded: dict | None = None, timeout_s: float | None = None, storage_filesystem=None) -> None:
    """One Tune trial: build the TrialConfig from its config and run it as a Ray Train job.

    ``config`` names the trial's ``method`` and ``phase`` (harness.study.sampler.StudySearcher)
    and carries either a sampled point (search) or ``learning_rate`` + ``hparams`` + ``seed``.
    ``bases``: {phase: {method: TrialConfig kwargs}}; ``space_params``: {method: its space's params}.
    ``recorded``: on resume, trials the leaderboard already holds. Tune's own
    snapshot can lag the leaderboard by a moment; a trial it restarts that was
    in fact finished replays its recorded outcome instead of training again.
    ``timeout_s``: the trial fails with TrialTimeout if its Train run has not
    finished by then. ``storage_path`` (in ``storage_filesystem``, a pyarrow file system; None: local):
    where the Train run keeps its checkpoints (harness.study.storage).
    """
    import ray
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from harness.trial.driver import run_trial

    trial_id = tune.get_context().get_trial_id()
    if recorded and trial_id in recorded:
        status, reason, metrics = recorded[trial_id]
        if status == "failed":
            raise RuntimeError(reason or "trial failed")
        tune.report(metrics)
        return
    method, phase = config["method"], config["phase"]
    learning_rate, hparams, seed = trial_point(method, space_params.get(method), default_seed, config)
    cfg = make_trial_config(bases[phase][method], learning_rate=learning_rate, hparams=hparams, seed=seed)
    start = time.time()
    callbacks = [TuneReportCallback()]
    result = run_with_deadline(
        lambda: run_trial(cfg, name=trial_id, storage_path=storage_path, callbacks=callbacks,
                          storage_filesystem=storage_filesystem), timeout_s)
    # The last worker report already reached Tune (TuneReportCallback); this one
    # marks the trial as run to the end. Only keys with values: the recorder
    # merges reports, and Train's returned metrics are those of the last
    # *checkpointed* report, which an evaluate-only (zeroshot) run never makes.
    final = {k: v for k, v in _json_safe(result).items() if v is not None}
    # A diverged run ended early on purpose (harness.trial.worker): recorded failed, not run to the end.
    final["done_final"] = not final.get("diverged")
    final["driver_node"] = ray.get_runtime_context().get_node_id()
    final["wall_s"] = time.time() - start
    tune.report(final)


def _json_safe(d: dict) -> dict:
    return json.loads(json.dumps(d, default=lambda o: o.item() if hasattr(o, "item") else str(o)))


class RecordAndReport(Callback):
    """Runs on this (driver) process: records each finished trial and prints progress."""

    def __init__(self, plan: Plan, default_seed: int):
        self.plan, self.default_seed = plan, default_seed
        self.last: dict[str, dict] = {}
        self.retries: dict[str, list[str]] = {}  # trial_id -> the errors it was restarted after
        self.swept_at = 0.0

    def _sweep(self, *, every_s: float = 0.0) -> None:
        """Free the CPUs/GPUs of placement groups that dead Train controllers left behind (a lost node)."""
        if time.monotonic() - self.swept_at < every_s:
            return
        self.swept_at = time.monotonic()
        from harness.ray_env import remove_orphaned_placement_groups

        removed = remove_orphaned_placement_groups()
        if removed:
            current().line(f"removed {len(removed)} placement group(s) left by dead Train controllers: "
                           + " ".join(pg[:8] for pg in removed))

    def on_step_begin(self, iteration, trials, **info):
        self._sweep(every_s=ORPHAN_SWEEP_S)
        progress = current()
        if progress.status_due():
            progress.line(progress.status())

    def on_trial_start(self, iteration, trials, trial, **info):
        progress = current()
        progress.running.add(trial.trial_id)
        if progress.eta is not None:
            progress.eta.started(trial.trial_id, trial.config["method"], trial.config["phase"])
        shown = ", ".join(f"{k}={short(v)}" for k, v in trial.config.items() if k not in ("method", "phase"))
        progress.line(f"{_name(trial)} trial {trial.trial_id} started: {shown}")

    def on_trial_result(self, iteration, trials, trial, result, **info):
        # Merged: the driver's closing report adds to the workers' last one.
        self.last[trial.trial_id] = {**self.last.get(trial.trial_id, {}), **result}
        if current().eta is not None:
            current().eta.progressed(trial.trial_id, result.get("step"))
        if not result.get("done_final") and METRIC in result:
            step = result.get("step", result.get("training_iteration"))
            current().line(f"{trial.config['method']} trial {trial.trial_id} step {step}: selection "
                           f"{100 * result[METRIC]:.1f}%")

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._record(trial, error=None)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._record(trial, error=trial_error(trial))
        self._sweep()

    def on_trial_recover(self, iteration, trials, trial, **info):
        self._sweep()
        errors = self.retries.setdefault(trial.trial_id, [])
        errors.append(trial_error(trial))
        current().line(f"{_name(trial)} trial {trial.trial_id} failed ({errors[-1]}); restarting it, "
                       f"from its last checkpoint if it has one (retry {len(errors)})")

    def _record(self, trial, error: str | None):
        progress = current()
        result = self.last.get(trial.trial_id) or trial.last_result or {}
        outcome = record_trial(self.plan, trial.trial_id, trial.config, result, error,
                               default_seed=self.default_seed, retried=self.retries.get(trial.trial_id, []))
        outcome.save(self.plan)
        status, reason = outcome.status, outcome.reason
        method, phase = trial.config["method"], trial.config["phase"]
        prune(self.plan, trial.trial_id, trial.config, result)
        score = result.get(METRIC) if status == "completed" and phase == "search" else None
        progress.finished(trial.trial_id, status, method, score)
        if progress.eta is not None:
            progress.eta.ended(trial.trial_id, result.get("step"), result.get("wall_s"))
        report = [m.get("accuracy") for m in per_dataset(result, "report").values()]
        report = [a for a in report if a is not None]
        progress.line(f"{_name(trial)} trial {trial.trial_id} {status}" + (f" ({reason})" if reason else "")
                      + (f", selection {100 * score:.1f}%" if score is not None else "")
                      + (f", report mean {100 * sum(report) / len(report):.1f}%" if report and phase != "search"
                         else "") + routing_note(result))
        progress.line(progress.status())


def prune(plan: Plan, trial_id: str, config: dict, result: dict) -> None:
    """Once a trial is recorded its checkpoints go (harness.study.disk); a failure to delete is a line, not a stop."""
    from harness.study.disk import prune_trial

    try:
        prune_trial(plan, trial_id, phase=config["phase"], method=config["method"],
                    checkpoint_path=result.get("checkpoint_path"))
    except OSError as exc:
        current().line(f"trial {trial_id}: its checkpoints stay in {plan.storage.uri} ({' '.join(str(exc).split())})")
def tracker_callbacks(plan: Plan) -> list:
    """Ray Tune's own tracker callbacks the study asks for: MLflow (``plan.mlflow_uri``) logs one run
    per trial -- its config as params, every result (curves, evaluations, final metrics) as metrics at
    the trial's optimizer step -- in an experiment named after the study. TensorBoard, CSV and JSON
    are Tune's default loggers and need no callback here."""
    if not plan.mlflow_uri:
        return []
    from ray.air.integrations.mlflow import MLflowLoggerCallback

    return [MLflowLoggerCallback(tracking_uri=plan.mlflow_uri, experiment_name=plan.study,
                                 tags={"study": plan.study, "profile_sha256": plan.profile_sha256()})]


def _name(trial) -> str:
    return f"{trial.config['method']} {trial.config['phase']}"


def num_evals(plan: Plan) -> int:
    """Selection evaluations a full trial reports: ASHA's max_t (in Tune iterations)."""
    t = plan.profile.training
    steps, every = t.get("steps"), t.get("eval_every")
    if steps and every:
        return max(1, math.ceil(steps / every))
    # Epoch-based budgets depend on the data size; a bound that never cuts a trial short.
    return 10_000


def run_tuner(plan: Plan, *, search_alg, scheduler, num_samples: int, progress: Progress,
              experiment: str = "study") -> None:
    """Run (or, with --resume, restore and finish) the study's Tuner over trial_driver; record every trial.

    One Tuner runs every trial of the study (``search_alg`` decides which, in what order): at most
    ``max_concurrent_trials`` at a time, whatever their method or phase.
    """
    from ray import tune

    p = plan.profile
    default_seed = p.search["trial_seed"]
    trainable = tune.with_resources(
        tune.with_parameters(
            trial_driver,
            bases={phase: {m: plan.base_trial(m, phase) for m in (*p.methods, *p.reference)}
                   for phase in ("reference", "search", "final")},
            space_params={m: space.params for m, space in p.spaces.items()},
            default_seed=default_seed,
            storage_path=plan.train_storage_path,
            storage_filesystem=None if plan.storage.local else plan.storage.filesystem,
            recorded=recorded_outcomes(plan) if plan.resume else None,
            timeout_s=p.resources.get("trial_timeout_s"),
        ),
        # The driver only waits on its TorchTrainer; a whole CPU would starve small machines.
        {"cpu": 0.01},
    )
    path = plan.ray_dir / experiment
    if plan.resume and (path / "tuner.pkl").exists():
        progress.line(f"resuming {path}")
        tuner = tune.Tuner.restore(str(path), trainable=trainable, resume_unfinished=True,
                                   resume_errored=False, restart_errored=False)
        # tuner.pkl holds the interrupted run's callbacks and, in them, its plan; rows recorded from
        # now on carry this run's plan (a resume that accepted a changed profile says so).
        for callback in tuner._local_tuner.get_run_config().callbacks or []:
            if isinstance(callback, RecordAndReport):
                callback.plan = plan
        # A tracker asked for now and not by the interrupted run joins it (one of a kind each).
        run_config = tuner._local_tuner.get_run_config()
        kinds = {type(c) for c in run_config.callbacks or []}
        run_config.callbacks = [*(run_config.callbacks or []),
                                *(c for c in tracker_callbacks(plan) if type(c) not in kinds)]
    else:
        if path.exists():  # a start that was killed before Tune saved any state
            shutil.rmtree(path)
        tuner = tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(
                # The searcher and the scheduler read the selection metric of search trials only;
                # reference and final runs never report it (harness.study.progress.quiet_logs).
                metric=METRIC, mode="max", search_alg=search_alg, scheduler=scheduler, num_samples=num_samples,
                max_concurrent_trials=p.max_concurrent_trials,
                trial_name_creator=lambda t: t.trial_id, trial_dirname_creator=lambda t: t.trial_id,
                # A fresh actor per trial: a timed-out trial's actor, and the Train run it owns, are removed.
                reuse_actors=False,
            ),
            run_config=tune.RunConfig(
                name=experiment, storage_path=str(plan.ray_dir),
                callbacks=[RecordAndReport(plan, default_seed), *tracker_callbacks(plan)],
                verbose=0, failure_config=tune.FailureConfig(max_failures=p.resources["trial_retries"]),
            ),
        )
    grid = tuner.fit()
    reconcile(plan, grid, default_seed=default_seed, recorded=lambda trial_id, config, metrics:
              prune(plan, trial_id, config, metrics))
