"""Run a study: Ray Tune + Optuna pick trials, each trial a Ray Train job; results go to the leaderboard.

    python harness/search.py [--config FILE|PROFILE] [--address ADDR] [--resume]
                             [--results-dir DIR] [--data-dir DIR] [--study NAME]

Layers (Ray's train/tune interop pattern): the *worker* loop lives in
harness.train and reads only its TrialConfig; the *driver* function below runs
inside one Tune trial and calls ``run_trial``; the *Tuner* here runs the sweep
for one method, sampling on this process with Optuna (TPE after quasi-random
warm-up, study kept in SQLite) and stopping weak trials with ASHA on the
selection metric.

Phases of a study, all recorded in ``<results>/leaderboard.parquet``:
1. reference: zero-shot evaluation of the base model (no search);
2. search: per method, ``trials_per_method`` trials; every trial is recorded
   as completed, pruned (ASHA) or failed, with its reason;
3. final: each method's best config (chosen on the selection split) re-run per
   seed and scored on the report split.
Then ``summary.parquet`` is recomputed from the records and the table printed.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import math
import os
import re
import shutil
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # `python harness/search.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import optuna
from ray.tune.search.optuna import OptunaSearch

from harness import leaderboard
from harness.background import Background
from harness.records import append_rows, read_rows, row_template
from harness.searchspace import (
    DATASETS,
    ConfigError,
    Profile,
    Space,
    expand_params,
    load_profile,
    num_experts,
)

METRIC = "selection_accuracy"
# Seconds between sweeps for placement groups that dead Train controllers left behind.
ORPHAN_SWEEP_S = 10.0


# --------------------------------------------------------------------------- plan


@dataclasses.dataclass
class Plan:
    """Everything a study needs, validated before Ray starts."""

    profile: Profile
    study: str
    results_dir: Path
    data_dir: Path | None  # None: the hub (real datasets) -- only for users with network
    synthetic: bool
    address: str | None
    resume: bool

    @property
    def leaderboard_path(self) -> Path:
        return self.results_dir / leaderboard.LEADERBOARD_FILE

    @property
    def ray_dir(self) -> Path:
        return (self.results_dir / "ray" / self.study).resolve()

    @property
    def optuna_path(self) -> Path:
        return (self.results_dir / "optuna" / f"{self.study}.sqlite").resolve()

    def experiment_name(self, method: str) -> str:
        return method

    def base_trial(self, method: str) -> dict[str, Any]:
        """TrialConfig kwargs every trial of the study shares (the per-trial budget)."""
        p = self.profile
        kwargs = dict(p.training)
        kwargs.update(
            method=method,
            model=p.model,
            datasets=list(p.datasets),
            data_dir=None if self.data_dir is None else str(self.data_dir),
            num_workers=p.resources["num_workers"],
            use_gpu=p.resources["use_gpu"],
            zero_stage=p.resources["zero_stage"],
        )
        return kwargs


def _trial_config_class():
    try:
        from harness.train import TrialConfig
    except ImportError:  # defined in harness.trial; harness.train re-exports it
        from harness.trial import TrialConfig
    return TrialConfig


def make_trial_config(base: dict, *, learning_rate: float | None, hparams: dict, seed: int):
    TrialConfig = _trial_config_class()
    kwargs = dict(base, hparams=dict(hparams), seed=seed)
    if learning_rate is not None:
        kwargs["learning_rate"] = learning_rate
    return TrialConfig(**kwargs)


def _synthetic_dir(results_dir: Path, data: dict) -> Path:
    seed, n_train, n_val = data.get("seed", 0), data.get("n_train", 64), data.get("n_validation", 16)
    return results_dir / "data" / f"synthetic-s{seed}-t{n_train}-v{n_val}"


def _count_train_examples(raw: dict, data_dir: Path | None, synthetic: bool) -> int | None:
    """Training examples k-means will cluster (train role, after the per-dataset cap), or None if unknown."""
    from harness.data.loading import selection_size
    from harness.data.adapters import get_adapter

    cap = raw["training"].get("train_limit", _default_field("train_limit"))
    total = 0
    for d in raw["datasets"]:
        if synthetic and data_dir is None:
            n = raw["data"].get("n_train", 64)
        else:
            if data_dir is None:
                return None
            split = get_adapter(d).train_split
            n = _count_rows(data_dir, d, split)
            if n is None:
                return None
        n -= selection_size(n)
        total += min(n, cap) if cap else n
    return total


def _default_field(name: str):
    try:
        fields = {f.name: f for f in dataclasses.fields(_trial_config_class())}
    except ImportError:
        return None
    f = fields.get(name)
    return None if f is None or f.default is dataclasses.MISSING else f.default


def _count_rows(data_dir: Path, dataset: str, split: str) -> int | None:
    jsonl = data_dir / dataset / f"{split}.jsonl"
    if jsonl.exists():
        with open(jsonl, "rb") as fh:
            return sum(1 for line in fh if line.strip())
    pq_path = data_dir / dataset / f"{split}.parquet"
    if pq_path.exists():
        import pyarrow.parquet as pq

        return pq.ParquetFile(pq_path).metadata.num_rows
    return None


def _check_results_dir(results_dir: Path) -> None:
    """The results dir must be creatable/writable; an existing leaderboard must be readable."""
    probe = results_dir
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise ConfigError(f"results dir {results_dir}: {probe} is not a directory")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise ConfigError(f"results dir {results_dir} is not writable")
    # os.access says yes to root and on read-only mounts; try a real write (nothing is left behind).
    try:
        with tempfile.TemporaryFile(dir=probe):
            pass
    except OSError as exc:
        raise ConfigError(f"results dir {results_dir} is not writable ({exc.strerror or exc})") from None
    if results_dir.exists():
        lb = results_dir / leaderboard.LEADERBOARD_FILE
        if lb.exists():
            try:
                read_rows(lb)
            except Exception as exc:
                raise ConfigError(f"{lb} is not a readable leaderboard: {str(exc).splitlines()[0]}") from None


def build_plan(args: argparse.Namespace) -> Plan:
    """Validate the profile, spaces, data and results dir; raise ConfigError with one line."""
    results_dir = Path(args.results_dir)
    data_dir = Path(args.data_dir).resolve() if args.data_dir else None
    if data_dir is not None and not data_dir.is_dir():
        raise ConfigError(f"data dir {args.data_dir} does not exist")

    try:
        TrialConfig = _trial_config_class()
        training_keys = {f.name for f in dataclasses.fields(TrialConfig)}
    except ImportError:
        training_keys = None

    # The profile decides whether data is synthetic; --data-dir always wins.
    state = {}

    def count(raw):
        synthetic = bool(raw["data"].get("synthetic")) and data_dir is None
        state["synthetic"] = synthetic
        return _count_train_examples(raw, data_dir, synthetic)

    profile = load_profile(args.config, training_keys=training_keys, count_train_examples=count)
    study = args.study or profile.study
    if not study or not all(c.isalnum() or c in "-_." for c in study):
        raise ConfigError(f"study name {study!r} may use only letters, digits, '-', '_', '.'")

    if data_dir is not None:
        for d in profile.datasets:
            from harness.data.adapters import get_adapter

            a = get_adapter(d)
            for split in (a.train_split, a.report_split):
                if _count_rows(data_dir, d, split) is None:
                    raise ConfigError(f"data dir {data_dir}: missing {d}/{split}.jsonl (or .parquet)")

    _check_results_dir(results_dir)
    synthetic = state.get("synthetic", False)
    if synthetic:
        data_dir = _synthetic_dir(results_dir, profile.data).resolve()
    plan = Plan(profile, study, results_dir.resolve(), data_dir, synthetic, args.address, args.resume)

    existing = leaderboard.load(results_dir) if plan.leaderboard_path.exists() else None
    study_recorded = existing is not None and (existing.study == study).any()
    if args.resume:
        if not plan.ray_dir.exists() and not study_recorded:
            raise ConfigError(f"nothing to resume: no study {study!r} in {results_dir}")
    elif study_recorded or plan.ray_dir.exists():
        raise ConfigError(
            f"study {study!r} already exists in {results_dir}; pass --resume to continue it or --study NEW"
        )

    # Every method's trial config must construct: catches bad training keys and values now.
    if training_keys is not None:
        for method, space in profile.spaces.items():
            for pick in (_pick(space, "low"), _pick(space, "high")):
                lr, hp = expand_params(method, pick, space)
                try:
                    make_trial_config(plan.base_trial(method), learning_rate=lr, hparams=hp, seed=0)
                except (ValueError, TypeError) as exc:
                    raise ConfigError(f"{profile.source}: {method}: {_one_line(exc)}") from None
        for method in profile.reference:
            try:
                make_trial_config(plan.base_trial(method), learning_rate=None, hparams={}, seed=0)
            except (ValueError, TypeError) as exc:
                raise ConfigError(f"{profile.source}: {method}: {_one_line(exc)}") from None
    return plan


def _pick(space: Space, end: str) -> dict:
    out = {}
    for name, p in space.searched().items():
        if p.type == "categorical":
            out[name] = p.choices[0 if end == "low" else -1]
        else:
            out[name] = p.low if end == "low" else p.high
    return out


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


# ---------------------------------------------------------------------- records


def _per_dataset(metrics: dict, role: str) -> dict[str, dict]:
    """{dataset: {accuracy, acc_norm, n_examples}} for ``role`` out of a trial's reported metrics."""
    nested = metrics.get(role)
    if isinstance(nested, dict):
        return {d: v for d, v in nested.items() if isinstance(v, dict) and d in DATASETS}
    out: dict[str, dict] = {}
    prefix = f"{role}/"
    for key, value in metrics.items():
        if key.startswith(prefix):
            parts = key[len(prefix):].split("/")
            if len(parts) == 2 and parts[0] in DATASETS:
                out.setdefault(parts[0], {})[parts[1]] = value
    return out


def _float(v):
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)


def _int(v):
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else int(v)


def trial_records(
    plan: Plan,
    *,
    method: str,
    trial_id: str,
    phase: str,
    status: str,
    status_reason: str | None,
    learning_rate: float | None,
    hparams: dict,
    seed: int,
    metrics: dict | None,
    roles: tuple[str, ...] = ("selection", "report"),
    wall_s: float | None = None,
) -> list[dict]:
    """Leaderboard rows for one trial: one per (dataset, role) it has numbers for, or one bare row."""
    from harness.data import split_name

    p = plan.profile
    metrics = metrics or {}
    common = dict(
        study=plan.study, method=method, trial_id=trial_id, status=status, status_reason=status_reason,
        trainable_params=_int(metrics.get("trainable_params")),
        num_experts=_int(num_experts(method, hparams)),
        num_clusters=_int(hparams.get("num_clusters")) if method == "mor1e" else None,
        router_temperature=_float(hparams.get("router_temperature")),
        learning_rate=_float(learning_rate), zero_stage=p.resources["zero_stage"],
        num_workers=p.resources["num_workers"], model=p.model, seed=seed,
        scoring=p.training.get("scoring", "letter"), phase=phase,
        hparams_json=json.dumps({"learning_rate": learning_rate, **hparams}, sort_keys=True, default=str),
        steps=_int(metrics.get("step", metrics.get("steps"))),
        tokens_per_s=_float(metrics.get("tokens_per_s")),
        precision=metrics.get("precision"),
        peak_rss_mb=_float(metrics.get("peak_rss_mb")),
        wall_s=_float(wall_s),
        driver_node=metrics.get("driver_node"),
        worker_nodes=",".join(metrics.get("worker_nodes") or []) or None,
    )
    rows = []
    for role in roles:
        for dataset, m in sorted(_per_dataset(metrics, role).items()):
            rows.append(row_template(
                **common, dataset=dataset, split=split_name(dataset, role), role=role,
                accuracy=_float(m.get("accuracy")), acc_norm=_float(m.get("acc_norm")),
                n_examples=_int(m.get("n_examples")),
            ))
    if not rows:
        rows.append(row_template(**common, dataset=None, split=None, role=None, accuracy=None,
                                 acc_norm=None, n_examples=None))
    return rows


# ------------------------------------------------------------------ driver side


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


def trial_driver(config: dict, *, base: dict, method: str, space_params: dict, seed: int,
                 storage_path: str, recorded: dict | None = None, timeout_s: float | None = None) -> None:
    """One Tune trial: build the TrialConfig from the sampled point and run it as a Ray Train job.

    ``recorded``: on resume, trials the leaderboard already holds. Tune's own
    snapshot can lag the leaderboard by a moment; a trial it restarts that was
    in fact finished replays its recorded outcome instead of training again.
    ``timeout_s``: the trial fails with TrialTimeout if its Train run has not
    finished by then.
    """
    import ray
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from harness.train import run_trial

    trial_id = tune.get_context().get_trial_id()
    if recorded and trial_id in recorded:
        status, reason, metrics = recorded[trial_id]
        if status == "failed":
            raise RuntimeError(reason or "trial failed")
        tune.report(metrics)
        return
    learning_rate, hparams, seed = trial_point(method, space_params, seed, config)
    cfg = make_trial_config(base, learning_rate=learning_rate, hparams=hparams, seed=seed)
    start = time.time()
    callbacks = [TuneReportCallback()]
    result = run_with_deadline(
        lambda: run_trial(cfg, name=trial_id, storage_path=storage_path, callbacks=callbacks), timeout_s)
    # The last worker report already reached Tune (TuneReportCallback); this one
    # marks the trial as run to the end. Only keys with values: the recorder
    # merges reports, and Train's returned metrics are those of the last
    # *checkpointed* report, which an evaluate-only (zeroshot) run never makes.
    final = {k: v for k, v in _json_safe(result).items() if v is not None}
    final["done_final"] = True
    final["driver_node"] = ray.get_runtime_context().get_node_id()
    final["wall_s"] = time.time() - start
    tune.report(final)


def trial_point(method: str, space_params: dict | None, seed: int, config: dict) -> tuple[float | None, dict, int]:
    """(learning_rate, hparams, seed) of a Tune trial's config.

    Search trials carry the sampled point (e.g. expert_shape "4x8"); fixed runs
    (reference, final) carry ``learning_rate`` + expanded ``hparams`` + ``seed``.
    """
    if "hparams" in config:
        return config.get("learning_rate"), dict(config["hparams"]), int(config.get("seed", seed))
    space = Space(method, space_params, "trial") if space_params else None
    sampled = {k: config[k] for k in (space_params or {}) if k in config}
    learning_rate, hparams = expand_params(method, sampled, space)
    return learning_rate, hparams, int(config.get("seed", seed))


def _json_safe(d: dict) -> dict:
    return json.loads(json.dumps(d, default=lambda o: o.item() if hasattr(o, "item") else str(o)))


# --------------------------------------------------------------------- progress


class Progress:
    """Readable progress lines: trial counts, best selection accuracy per method, elapsed, ETA."""

    def __init__(self, total_trials: int):
        self.total = total_trials
        self.start = time.time()
        self.counts = {"completed": 0, "pruned": 0, "failed": 0}
        self.running: set[str] = set()
        self.best: dict[str, float] = {}

    def line(self, msg: str) -> None:
        print(f"[{_clock(time.time() - self.start)}] {msg}", flush=True)

    def finished(self, trial_id: str, status: str, method: str, score: float | None) -> None:
        self.running.discard(trial_id)
        self.counts[status] += 1
        if status == "completed" and score is not None:
            self.best[method] = max(score, self.best.get(method, -1.0))

    def status(self) -> str:
        done = sum(self.counts.values())
        best = " ".join(f"{m}={100 * v:.1f}" for m, v in self.best.items()) or "-"
        eta = "?"
        if done:  # the pace so far (concurrent trials included), applied to the trials left
            eta = _clock((time.time() - self.start) / done * max(self.total - done, 0))
        c = self.counts
        return (f"trials {done}/{self.total} (completed {c['completed']}, pruned {c['pruned']}, "
                f"failed {c['failed']}, running {len(self.running)}) | best selection %: {best} | ETA {eta}")


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 60:02d}:{seconds % 60:02d}"


# The live Progress of this process. Callbacks look it up here at call time
# rather than holding it: Tune pickles its callbacks into tuner.pkl, and a
# restored (resumed) Tuner must report to the new run's progress, not a copy.
_PROGRESS: Progress | None = None


def _progress() -> Progress:
    global _PROGRESS
    if _PROGRESS is None:
        _PROGRESS = Progress(total_trials=0)
    return _PROGRESS


try:
    from ray.tune import Callback as _TuneCallback
except ImportError:  # pragma: no cover - ray is a dependency
    _TuneCallback = object


class RecordAndReport(_TuneCallback):
    """Runs on this (driver) process: records each finished trial and prints progress."""

    def __init__(self, plan: Plan, method: str, seed: int, space: Space | None, phase: str = "search"):
        self.plan, self.method, self.seed, self.space, self.phase = plan, method, seed, space, phase
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
            _progress().line(f"removed {len(removed)} placement group(s) left by dead Train controllers: "
                             + " ".join(pg[:8] for pg in removed))

    def on_step_begin(self, iteration, trials, **info):
        self._sweep(every_s=ORPHAN_SWEEP_S)

    def on_trial_start(self, iteration, trials, trial, **info):
        progress = _progress()
        progress.running.add(trial.trial_id)
        shown = ", ".join(f"{k}={_short(v)}" for k, v in trial.config.items())
        progress.line(f"{self.method} {self.phase} trial {trial.trial_id} started: {shown}")

    def on_trial_result(self, iteration, trials, trial, result, **info):
        # Merged: the driver's closing report adds to the workers' last one.
        self.last[trial.trial_id] = {**self.last.get(trial.trial_id, {}), **result}
        if not result.get("done_final") and METRIC in result:
            step = result.get("step", result.get("training_iteration"))
            _progress().line(f"{self.method} trial {trial.trial_id} step {step}: selection "
                             f"{100 * result[METRIC]:.1f}%")

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._record(trial, error=None)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._record(trial, error=_trial_error(trial))
        self._sweep()

    def on_trial_recover(self, iteration, trials, trial, **info):
        self._sweep()
        errors = self.retries.setdefault(trial.trial_id, [])
        errors.append(_trial_error(trial))
        _progress().line(f"{self.method} {self.phase} trial {trial.trial_id} failed ({errors[-1]}); restarting it, "
                         f"from its last checkpoint if it has one (retry {len(errors)})")

    def _record(self, trial, error: str | None):
        progress = _progress()
        result = self.last.get(trial.trial_id) or trial.last_result or {}
        status, reason, rows = record_trial(self.plan, self.method, self.space, self.seed, trial.trial_id,
                                            trial.config, result, error, phase=self.phase,
                                            retried=self.retries.get(trial.trial_id, []))
        append_rows(self.plan.leaderboard_path, rows, dedupe=True)
        score = result.get(METRIC) if status == "completed" and self.phase == "search" else None
        progress.finished(trial.trial_id, status, self.method, score)
        report = [m.get("accuracy") for m in _per_dataset(result, "report").values()]
        report = [a for a in report if a is not None]
        progress.line(f"{self.method} {self.phase} trial {trial.trial_id} {status}" + (f" ({reason})" if reason else "")
                      + (f", selection {100 * score:.1f}%" if score is not None else "")
                      + (f", report mean {100 * sum(report) / len(report):.1f}%" if report and self.phase != "search"
                         else ""))
        progress.line(progress.status())


def _short(v):
    return f"{v:.3g}" if isinstance(v, float) else v


def _trial_error(trial) -> str:
    """The failed trial's exception as one line, from the traceback Tune stored for it."""
    text = ""
    with contextlib.suppress(OSError, TypeError):
        text = Path(trial.error_file).read_text()
    return error_line(text or str(getattr(trial, "error_msg", "") or ""))


_EXC_LINE = re.compile(r"^([A-Za-z_][\w.]*(Error|Exception|Failure|Interrupt|Exit)\w*)(: .*)?$")


def error_line(traceback_text: str) -> str:
    """The innermost ``Type: message`` line of a (possibly chained, Ray-wrapped) traceback."""
    lines = [ln.rstrip() for ln in traceback_text.splitlines()]
    # Unindented exception lines; Ray and Train wrap the root cause, which is printed last.
    found = [i for i, ln in enumerate(lines) if _EXC_LINE.match(ln)]
    if not found:
        rest = [ln.strip() for ln in lines if ln.strip()]
        return (rest[-1] if rest else "trial failed")[:300]
    line = lines[found[-1]]
    if line.endswith(":"):  # "ControllerError: Training failed due to controller error:" + the cause below
        cause = next((ln.strip() for ln in lines[found[-1] + 1:] if ln.strip()), "")
        line = f"{line} {cause}".rstrip()
    return line[:300]


def record_trial(plan, method, space, seed, trial_id, config, result, error, *, phase="search", retried=()):
    """(status, reason, rows) for a finished Tune trial: completed, pruned (ASHA) or failed.

    ``retried``: the errors Tune restarted the trial after; a trial that then
    finished keeps its status, and its reason says what it survived.
    """
    learning_rate, hparams, seed = trial_point(method, space.params if space else None, seed, config or {})
    if error is not None:
        status, reason = "failed", error
        roles = ("selection",)
    elif result.get("done_final"):
        status, reason = "completed", None
        # Search trials publish nothing: their report numbers stay out of the table
        # unless the final phase reuses them (same config and seed).
        roles = ("selection", "report")
    else:
        step = result.get("step", result.get("training_iteration", 0))
        status, reason = "pruned", f"asha stopped at step {step}"
        roles = ("selection",)
    if retried:
        restarts = f"{len(retried)} restart{'s' if len(retried) > 1 else ''}"
        if status == "failed":
            reason = f"{reason} (after {restarts})"
        else:
            survived = f"after {restarts} (first: {retried[0]})"
            reason = f"{reason}; {survived}" if reason else survived
    rows = trial_records(plan, method=method, trial_id=trial_id, phase=phase, status=status,
                         status_reason=reason, learning_rate=learning_rate, hparams=hparams, seed=seed,
                         metrics=result, roles=roles, wall_s=result.get("time_total_s"))
    return status, reason, rows


# ----------------------------------------------------------------- the search


class QuasiRandomThenTPE(optuna.samplers.BaseSampler):
    """Scrambled Sobol points for the first ``n_quasi`` trials, TPE after: explore, then exploit.

    Picks by trial number, so the switch is the same after a resume (Optuna
    numbers trials in its SQLite storage). Trial n of the warm-up is Sobol
    point n of the whole space, known up front: Optuna's own QMCSampler learns
    the space from a first, randomly sampled trial. TPE runs with a constant
    liar, so trials asked while others are still running get distinct points.
    Module-level so Tune can pickle it with the searcher's checkpoint.
    """

    def __init__(self, n_quasi: int, seed: int, space: dict[str, optuna.distributions.BaseDistribution]):
        self.n_quasi = n_quasi
        self.seed = seed
        self.space = dict(space)
        self.tpe = optuna.samplers.TPESampler(n_startup_trials=n_quasi, seed=seed, constant_liar=True)

    def _quasi(self, trial) -> bool:
        return trial.number < self.n_quasi

    def sobol_point(self, number: int) -> dict[str, Any]:
        """Sobol point ``number`` (scrambled with ``seed``), mapped onto the space."""
        from scipy.stats import qmc

        names = sorted(self.space)
        sobol = qmc.Sobol(d=len(names), scramble=True, seed=self.seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # balance warnings: single points are what a trial needs
            if number:
                sobol.fast_forward(number)
            u = sobol.random(1)[0]
        return {name: _from_unit(self.space[name], float(x)) for name, x in zip(names, u)}

    def infer_relative_search_space(self, study, trial):
        if self._quasi(trial):
            return dict(self.space)
        return self.tpe.infer_relative_search_space(study, trial)

    def sample_relative(self, study, trial, search_space):
        if self._quasi(trial):
            return {k: v for k, v in self.sobol_point(trial.number).items() if k in search_space}
        return self.tpe.sample_relative(study, trial, search_space)

    def sample_independent(self, study, trial, param_name, param_distribution):
        return self.tpe.sample_independent(study, trial, param_name, param_distribution)

    def before_trial(self, study, trial):
        self.tpe.before_trial(study, trial)

    def after_trial(self, study, trial, state, values):
        self.tpe.after_trial(study, trial, state, values)

    def reseed_rng(self):
        self.tpe.reseed_rng()


def _from_unit(dist, u: float):
    """The value at quantile ``u`` in [0, 1) of a uniform (or log-uniform) draw from ``dist``."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    if isinstance(dist, CategoricalDistribution):
        return dist.choices[min(int(u * len(dist.choices)), len(dist.choices) - 1)]
    if isinstance(dist, FloatDistribution):
        if dist.log:
            return math.exp(math.log(dist.low) + u * (math.log(dist.high) - math.log(dist.low)))
        return dist.low + u * (dist.high - dist.low)
    if isinstance(dist, IntDistribution):
        if dist.log:  # uniform in log space over [low - 0.5, high + 0.5], as Optuna rounds
            lo, hi = math.log(dist.low - 0.5), math.log(dist.high + 0.5)
            return min(max(round(math.exp(lo + u * (hi - lo))), dist.low), dist.high)
        return min(dist.low + int(u * (dist.high - dist.low + 1)), dist.high)
    raise TypeError(f"unsupported distribution {dist!r}")


class StudySearch(OptunaSearch):
    """OptunaSearch that ignores results for an Optuna trial its SQLite study already closed.

    That happens only on resume, when a trial finished in the interrupted run is
    replayed (see trial_driver); the study keeps the first, real outcome.
    """

    def on_trial_result(self, trial_id: str, result: dict):
        try:
            super().on_trial_result(trial_id, result)
        except optuna.exceptions.UpdateFinishedTrialError:
            pass


def recorded_outcomes(plan: Plan, method: str, phase: str = "search") -> dict[str, tuple[str, str | None, dict]]:
    """{trial_id: (status, reason, metrics as the driver reported them)} already in the leaderboard."""
    if not plan.leaderboard_path.exists():
        return {}
    df = read_rows(plan.leaderboard_path).to_pandas()
    df = df[(df.study == plan.study) & (df.method == method) & (df.phase == phase)]
    out = {}
    for trial_id, rows in df.groupby("trial_id"):
        first = rows.iloc[0]
        metrics: dict[str, Any] = {}
        for role in ("selection", "report"):
            part = rows[rows.role == role]
            if not part.empty:
                metrics[role] = {r.dataset: {"accuracy": _float(r.accuracy), "acc_norm": _float(r.acc_norm),
                                             "n_examples": _int(r.n_examples)} for r in part.itertuples()}
        sel = rows[rows.role == "selection"].accuracy.dropna()
        if not sel.empty:
            metrics[METRIC] = float(sel.mean())
        extras = dict(step=_int(first.steps), trainable_params=_int(first.trainable_params),
                      tokens_per_s=_float(first.tokens_per_s), peak_rss_mb=_float(first.peak_rss_mb),
                      precision=first.precision)
        metrics.update({k: v for k, v in extras.items() if v is not None})
        if first.status == "completed":
            metrics["done_final"] = True
        out[trial_id] = (first.status, first.status_reason, metrics)
    return out


def optuna_space(space: Space) -> dict[str, optuna.distributions.BaseDistribution]:
    """The searched parameters of ``space`` as Optuna distributions (the searcher samples them)."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    out: dict[str, optuna.distributions.BaseDistribution] = {}
    for name, p in space.searched().items():
        if p.type == "categorical":
            out[name] = CategoricalDistribution(list(p.choices))
        elif p.type == "float":
            out[name] = FloatDistribution(float(p.low), float(p.high), log=bool(p.log))
        else:
            out[name] = IntDistribution(int(p.low), int(p.high), log=bool(p.log))
    return out


def _searcher(plan: Plan, method: str, algorithm: str):
    s = plan.profile.search
    space = optuna_space(plan.profile.spaces[method])
    if algorithm == "random":
        sampler = optuna.samplers.RandomSampler(seed=s["seed"])
    elif s["quasi_random_trials"]:
        sampler = QuasiRandomThenTPE(s["quasi_random_trials"], s["seed"], space)
    else:
        sampler = optuna.samplers.TPESampler(seed=s["seed"], constant_liar=True)
    plan.optuna_path.parent.mkdir(parents=True, exist_ok=True)
    storage = optuna.storages.RDBStorage(f"sqlite:///{plan.optuna_path}")
    return StudySearch(space=space, metric=METRIC, mode="max", sampler=sampler, storage=storage,
                       study_name=f"{plan.study}-{method}")


def num_evals(plan: Plan) -> int:
    """Selection evaluations a full trial reports: ASHA's max_t (in Tune iterations)."""
    t = plan.profile.training
    steps, every = t.get("steps"), t.get("eval_every")
    if steps and every:
        return max(1, math.ceil(steps / every))
    # Epoch-based budgets depend on the data size; a bound that never cuts a trial short.
    return 10_000


def _run_tuner(plan: Plan, method: str, *, experiment: str, phase: str, param_space: dict, num_samples: int,
               space: Space | None, progress: Progress, search_alg=None, scheduler=None) -> None:
    """Run (or, with --resume, restore and finish) one Tuner over trial_driver; record every trial."""
    from ray import tune

    seed = plan.profile.final["seeds"][0]
    trainable = tune.with_resources(
        tune.with_parameters(
            trial_driver, base=plan.base_trial(method), method=method,
            space_params=space.params if space else None, seed=seed,
            storage_path=str(plan.ray_dir / "train"),
            recorded=recorded_outcomes(plan, method, phase) if plan.resume else None,
            timeout_s=plan.profile.resources.get("trial_timeout_s"),
        ),
        # The driver only waits on its TorchTrainer; a whole CPU would starve small machines.
        {"cpu": 0.01},
    )
    path = plan.ray_dir / experiment
    if plan.resume and (path / "tuner.pkl").exists():
        progress.line(f"{method} {phase}: resuming {path}")
        tuner = tune.Tuner.restore(str(path), trainable=trainable, resume_unfinished=True,
                                   resume_errored=False, restart_errored=False)
    else:
        if path.exists():  # a start that was killed before Tune saved any state
            shutil.rmtree(path)
        tuner = tune.Tuner(
            trainable,
            param_space=param_space,
            tune_config=tune.TuneConfig(
                # Fixed runs (reference, final) have nothing to optimise; without a
                # metric Tune does not require every report to carry one.
                metric=METRIC if search_alg is not None else None, mode="max" if search_alg is not None else None,
                search_alg=search_alg, scheduler=scheduler, num_samples=num_samples,
                max_concurrent_trials=plan.profile.max_concurrent_trials,
                trial_name_creator=lambda t: t.trial_id, trial_dirname_creator=lambda t: t.trial_id,
                # A fresh actor per trial: a timed-out trial's actor, and the Train run it owns, are removed.
                reuse_actors=False,
            ),
            run_config=tune.RunConfig(
                name=experiment, storage_path=str(plan.ray_dir),
                callbacks=[RecordAndReport(plan, method, seed, space, phase)],
                verbose=0, failure_config=tune.FailureConfig(max_failures=plan.profile.resources["trial_retries"]),
            ),
        )
    grid = tuner.fit()
    reconcile(plan, method, space, seed, grid, phase)


def run_method_search(plan: Plan, method: str, progress: Progress, *, algorithm: str | None = None,
                      scheduler: str | None = None) -> None:
    """The search phase for one method: Optuna (TPE after Sobol, or random) + ASHA (or none)."""
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    p = plan.profile
    s = p.search
    algorithm = algorithm or s["algorithm"]
    scheduler = scheduler or s["scheduler"]
    max_evals = num_evals(plan) + 1  # the driver's closing report is one more iteration
    sched = (ASHAScheduler(max_t=max_evals, grace_period=min(s["grace_period"], max_evals),
                           reduction_factor=s["reduction_factor"])
             if scheduler == "asha" else FIFOScheduler())
    space = p.spaces[method]
    _run_tuner(plan, method, experiment=f"search-{method}", phase="search", param_space={},
               num_samples=p.trials_per_method, space=space, progress=progress,
               search_alg=_searcher(plan, method, algorithm), scheduler=sched)


def run_fixed(plan: Plan, method: str, *, phase: str, learning_rate, hparams: dict, seeds: list[int],
              progress: Progress) -> None:
    """Reference / final runs: one config, one trial per seed, no early stopping."""
    from ray import tune

    space = plan.profile.spaces.get(method)
    param_space = {"learning_rate": learning_rate, "hparams": hparams, "seed": tune.grid_search(list(seeds))}
    _run_tuner(plan, method, experiment=f"{phase}-{method}", phase=phase, param_space=param_space,
               num_samples=1, space=space, progress=progress)


def reconcile(plan: Plan, method: str, space: Space | None, seed: int, grid, phase: str) -> None:
    """Record finished trials the callback missed (a kill between Tune's snapshot and the append)."""
    done = {t for m, t in _recorded(plan) if m == method}
    rows = []
    for result in grid:
        trial_id = Path(result.path).name
        if trial_id in done:
            continue
        error = _one_line(result.error) if result.error is not None else None
        _, _, r = record_trial(plan, method, space, seed, trial_id, result.config or {}, result.metrics or {},
                               error, phase=phase)
        rows += r
    if rows:
        append_rows(plan.leaderboard_path, rows, dedupe=True)


def _recorded(plan: Plan) -> set[tuple[str, str]]:
    """(method, trial_id) pairs already in the leaderboard for this study."""
    if not plan.leaderboard_path.exists():
        return set()
    t = read_rows(plan.leaderboard_path).to_pandas()
    t = t[t.study == plan.study]
    return set(zip(t.method, t.trial_id))


def run_study(plan: Plan) -> int:
    from harness.ray_env import init_ray

    global _PROGRESS
    p = plan.profile
    total = (len(p.methods) * p.trials_per_method + len(p.methods) * len(p.final["seeds"]) + len(p.reference))
    progress = _PROGRESS = Progress(total)
    progress.line(f"study {plan.study}: {p.model}, {len(p.datasets)} datasets, methods {' '.join(p.methods)}, "
                  f"{p.trials_per_method} trials each, final seeds {p.final['seeds']}, results in {plan.results_dir}")
    plan.results_dir.mkdir(parents=True, exist_ok=True)
    if plan.synthetic and not plan.data_dir.exists():
        _write_twins(plan)
    init_ray(plan.address, num_cpus=p.resources.get("ray_num_cpus"))

    # 1. reference rows: one evaluation each, no search
    for method in p.reference:
        progress.line(f"reference: {method}")
        run_fixed(plan, method, phase="reference", learning_rate=None, hparams={}, seeds=[p.final["seeds"][0]],
                  progress=progress)

    # 2. search, one Tuner (and one Optuna study) per method
    for method in p.methods:
        progress.line(f"search: {method} ({p.trials_per_method} trials, {p.search['algorithm']} + "
                      f"{p.search['scheduler']})")
        run_method_search(plan, method, progress)

    # 3. final: each method's best config (chosen on selection) per seed, scored on the report split
    df = leaderboard.load(plan.results_dir)
    best = leaderboard.best_trials(df, plan.study).set_index("method")
    for method in p.methods:
        if method not in best.index:
            progress.line(f"final: {method} has no completed search trial; skipped")
            continue
        b = best.loc[method]
        chosen = json.loads(b.hparams_json)
        learning_rate = chosen.pop("learning_rate")
        progress.line(f"final: {method} best trial {b.trial_id} (selection {100 * b.selection_accuracy:.1f}%)")
        seeds = []
        for seed in p.final["seeds"]:
            if _reuse_search_trial(plan, df, method, b.trial_id, seed):
                progress.line(f"final: {method} seed {seed}: search trial {b.trial_id} ran this config with this "
                              "seed to the end; its report-split numbers are the final record")
                progress.finished(f"{b.trial_id}-final-s{seed}", "completed", method, None)
            else:
                seeds.append(seed)
        if seeds:
            run_fixed(plan, method, phase="final", learning_rate=learning_rate, hparams=chosen, seeds=seeds,
                      progress=progress)

    leaderboard.write_summary(plan.results_dir)
    progress.line(f"study {plan.study} finished in {_clock(time.time() - progress.start)}")
    print()
    print(leaderboard.format_table(leaderboard.load(plan.results_dir), plan.study))
    return 0


def _reuse_search_trial(plan: Plan, df, method: str, trial_id: str, seed: int) -> bool:
    """A completed search trial already trained the winning config with this seed and scored the report
    split; training it again would repeat those numbers. Record them as the final run (with a note)."""
    final_id = f"{trial_id}-final-s{seed}"
    src = df[(df.study == plan.study) & (df.method == method) & (df.trial_id == trial_id)
             & (df.role == "report") & (df.status == "completed") & (df.seed == seed)]
    if src.empty:
        return False
    rows = []
    for rec in src.to_dict("records"):
        rec = {k: (None if _isnan(v) else v) for k, v in rec.items()}
        rec.update(trial_id=final_id, phase="final",
                   status_reason=f"reuses search trial {trial_id} (same config and seed)")
        rec["created_at"] = row_template()["created_at"]
        rows.append(rec)
    append_rows(plan.leaderboard_path, rows, dedupe=True)
    return True


def _isnan(v) -> bool:
    """True for None, NaN, NaT and pd.NA scalars (as pandas hands back missing values)."""
    import pandas as pd

    if isinstance(v, (list, tuple, dict)):
        return False
    try:
        return bool(pd.isna(v))
    except (TypeError, ValueError):
        return False


def _write_twins(plan: Plan) -> None:
    """Synthetic twins, written to a temp dir beside the target and renamed into place."""
    from harness.data import write_synthetic

    d = plan.profile.data
    target = plan.data_dir
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        write_synthetic(tmp, seed=d.get("seed", 0), n_train=d.get("n_train", 64),
                        n_validation=d.get("n_validation", 16))
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


# -------------------------------------------------------------------------- CLI


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2
        print(f"error: {message}", file=sys.stderr)
        raise SystemExit(2)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = _Parser(description="Run a Ray Tune + Optuna study over MoR1E and its baselines.")
    ap.add_argument("--config", default=None,
                    help="profile name in search_spaces/ (default, paper) or a profile .yaml file (default: default)")
    ap.add_argument("--address", default=None, help="join this Ray cluster (else $RAY_ADDRESS, else embedded Ray)")
    ap.add_argument("--resume", action="store_true", help="continue an interrupted study")
    ap.add_argument("--results-dir", default="results", help="where the leaderboard and study state go")
    ap.add_argument("--data-dir", default=None, help="DATA_DIR/<dataset>/<split>.jsonl (overrides the profile's data)")
    ap.add_argument("--study", default=None, help="study name (default: the profile's)")
    return ap.parse_args(argv)


def quiet_logs() -> None:
    """Keep the terminal readable: Ray's per-process logs stay in its session dir."""
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # Snapshot Tune's experiment state every second (default: every >= 10 s), so
    # that a killed study's snapshot is close to its leaderboard when resumed.
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "1")
    # Tune's own Ctrl-C handler ends only the current Tuner, and the study would
    # go on to the next method; a Ctrl-C should stop the study (--resume continues it).
    os.environ.setdefault("TUNE_DISABLE_SIGINT_HANDLER", "1")
    for name in ("ray", "ray.tune", "ray.train", "ray.air", "optuna"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    optuna.logging.set_verbosity(optuna.logging.ERROR)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        plan = build_plan(args)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    quiet_logs()
    return run_study(plan)


if __name__ == "__main__":
    # Run through the importable module, so that what Tune pickles (callbacks,
    # the driver function) refers to harness.search, not to __main__.
    from harness.search import main as _main

    sys.exit(_main())
