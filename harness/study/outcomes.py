"""What a trial's outcome becomes: leaderboard rows, its status and reason, and what was recorded.

Owns the mapping from a finished Tune trial (its config, last metrics, error) to
``completed`` / ``pruned`` / ``failed`` rows and the per-example predictions behind them, the
one-line reason of a failure, what a trial cost, the outcomes a resumed study replays instead
of training again, and the reconciliation of a Tuner's results with the leaderboard.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import posixpath
import re
from pathlib import Path
from typing import Any

from harness.predictions import EXAMPLES_FILE, append_predictions, identified
from harness.records import TELEMETRY_KEYS, append_rows, device_seconds, read_rows, row_template
from harness import methods as registry
from harness.data.adapters import is_known_dataset
from harness.searchspace import num_experts
from harness.study.plan import METRIC, Plan, one_line, trial_point


def per_dataset(metrics: dict, role: str) -> dict[str, dict]:
    """{dataset: {accuracy, acc_norm, n_examples}} for ``role`` out of a trial's reported metrics."""
    nested = metrics.get(role)
    if isinstance(nested, dict):
        return {d: v for d, v in nested.items() if isinstance(v, dict) and is_known_dataset(d)}
    out: dict[str, dict] = {}
    prefix = f"{role}/"
    for key, value in metrics.items():
        if key.startswith(prefix):
            parts = key[len(prefix):].split("/")
            if len(parts) == 2 and is_known_dataset(parts[0]):
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
        **study_provenance(plan, method, phase, metrics),
        study=plan.study, method=method, trial_id=trial_id, status=status, status_reason=status_reason,
        trainable_params=_int(metrics.get("trainable_params")),
        num_experts=_int(num_experts(method, hparams)),
        num_clusters=_int(registry.num_clusters(method, hparams)),
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
        device_s=device_seconds(wall_s, p.resources["num_workers"], metrics.get("devices_per_worker")),
        train_tokens=_int(metrics.get("tokens")),
        **{k: _float(metrics.get(k)) for k in TELEMETRY_KEYS},
    )
    rows = []
    for role in roles:
        for dataset, m in sorted(per_dataset(metrics, role).items()):
            rows.append(row_template(
                **common, dataset=dataset, split=split_name(dataset, role), role=role,
                accuracy=_float(m.get("accuracy")), acc_norm=_float(m.get("acc_norm")),
                n_examples=_int(m.get("n_examples")),
            ))
    if not rows:
        rows.append(row_template(**common, dataset=None, split=None, role=None, accuracy=None,
                                 acc_norm=None, n_examples=None))
    return rows


def trial_predictions(plan: Plan, *, method: str, trial_id: str, phase: str, seed: int, metrics: dict,
                      roles: tuple[str, ...]) -> list[dict]:
    """The per-example predictions behind a trial's ``roles`` rows, with the trial's identity.

    The worker leaves them in the checkpoint of each report (``EXAMPLES_FILE``); the last report's
    checkpoint holds the evaluation the rows summarise. It is read through the study's storage file
    system (the checkpoint was written on whichever node ran the trial). A replayed (resumed) trial
    has none here: its predictions were recorded with it. Raises MissingCheckpoint when the
    checkpoint is not in the storage.
    """
    path = metrics.get("checkpoint_path")
    if not path:
        return []
    rows = [r for r in read_checkpoint_examples(plan.storage, path) if r["role"] in roles]
    return identified(rows, study=plan.study, trial_id=trial_id, phase=phase, method=method, seed=seed)


class MissingCheckpoint(RuntimeError):
    """A trial's reported checkpoint is not in the study's storage (written to another node's disk)."""


def read_checkpoint_examples(storage, checkpoint_path: str) -> list[dict]:
    """The per-example rows in the checkpoint at ``checkpoint_path`` of ``storage`` (a Storage)."""
    import pyarrow.parquet as pq

    from harness.predictions import EXAMPLE_COLUMNS

    if not storage.exists(checkpoint_path):
        raise MissingCheckpoint(
            f"checkpoint {checkpoint_path} is not in storage {storage.uri}: it was written on another node's "
            "disk; give every node the same storage (--storage s3://... or a shared directory)")
    examples = posixpath.join(checkpoint_path, EXAMPLES_FILE)
    if not storage.exists(examples):
        return []
    return pq.read_table(examples, filesystem=storage.filesystem, columns=list(EXAMPLE_COLUMNS)).to_pylist()


@dataclasses.dataclass
class Outcome:
    """A finished trial as it is recorded: status, reason, leaderboard rows and predictions."""

    status: str
    reason: str | None
    rows: list[dict]
    predictions: list[dict]

    def save(self, plan: Plan) -> None:
        """Predictions first, then rows: a study killed between the two replays the trial on resume
        (it is not in the leaderboard yet), and the predictions' append skips what is already there."""
        if self.predictions:
            append_predictions(plan.predictions_path, self.predictions, dedupe=True)
        append_rows(plan.leaderboard_path, self.rows, dedupe=True)


def study_provenance(plan: Plan, method: str, phase: str, metrics: dict) -> dict[str, Any]:
    """The provenance columns every row of the study carries (see harness.provenance)."""
    from harness.provenance import scoring_precision

    return dict(
        data_source=plan.data_source(),
        budget_json=plan.budget_json(method, phase, _int(metrics.get("total_steps"))),
        profile_sha256=plan.profile_sha256(),
        profile_override=plan.profile_override,
        scoring_precision=scoring_precision(metrics, method=method, use_gpu=bool(plan.profile.resources["use_gpu"])),
    )


def trial_error(trial) -> str:
    """The failed trial's exception as one line, from the traceback Tune stored for it."""
    text = ""
    with contextlib.suppress(OSError, TypeError):
        text = Path(trial.error_file).read_text()
    text = text or str(getattr(trial, "error_msg", "") or "")
    line = error_line(text)
    # A full disk (a checkpoint that could not be written) says so first, whatever wrapped it.
    if _NO_SPACE.search(text) and not _NO_SPACE.search(line):
        line = f"no space left on device ({line})"[:300]
    return line


_NO_SPACE = re.compile(r"No space left on device|ENOSPC|\[Errno 28\]", re.I)


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


def record_trial(plan: Plan, trial_id: str, config: dict, result: dict, error: str | None, *, default_seed: int,
                 retried=()) -> Outcome:
    """The Outcome of a finished Tune trial: completed, pruned (ASHA) or failed.

    The trial's ``config`` names its ``method`` and ``phase`` (see harness.study.sampler).
    ``default_seed``: the training seed of trials whose config names none (search trials).
    ``retried``: the errors Tune restarted the trial after; a trial that then
    finished keeps its status, and its reason says what it survived.
    """
    config = config or {}
    method, phase = config["method"], config["phase"]
    space = plan.profile.spaces.get(method)
    learning_rate, hparams, seed = trial_point(method, space.params if space else None, default_seed, config)
    if error is not None:
        status, reason = "failed", error
        roles = ("selection",)
    elif result.get("diverged"):
        status, reason = "failed", f"diverged: {result['diverged']}"
        roles = ("selection",)
    elif result.get("done_final"):
        status, reason = "completed", None
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
    try:
        predictions = trial_predictions(plan, method=method, trial_id=trial_id, phase=phase, seed=seed,
                                        metrics=result, roles=roles)
    except (MissingCheckpoint, OSError) as exc:
        # Numbers without the predictions behind them are not recorded as a result.
        status, reason, predictions = "failed", f"predictions unreadable: {one_line(exc)}", []
        rows = trial_records(plan, method=method, trial_id=trial_id, phase=phase, status=status,
                             status_reason=reason, learning_rate=learning_rate, hparams=hparams, seed=seed,
                             metrics=result, roles=(), wall_s=result.get("time_total_s"))
    return Outcome(status, reason, rows, predictions)


def recorded_outcomes(plan: Plan) -> dict[str, tuple[str, str | None, dict]]:
    """{trial_id: (status, reason, metrics as the driver reported them)} the study already recorded."""
    if not plan.leaderboard_path.exists():
        return {}
    df = read_rows(plan.leaderboard_path).to_pandas()
    df = df[df.study == plan.study]
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
                      precision=first.precision, scoring_precision=first.scoring_precision)
        metrics.update({k: v for k, v in extras.items() if v is not None})
        if first.status == "completed":
            metrics["done_final"] = True
        out[trial_id] = (first.status, first.status_reason, metrics)
    return out


def reconcile(plan: Plan, grid, *, default_seed: int, recorded=None) -> None:
    """Record finished trials the callback missed (a kill between Tune's snapshot and the append).

    ``recorded(trial_id, config, metrics)``: called after each trial recorded here."""
    done = _recorded(plan)
    for result in grid:
        trial_id = Path(result.path).name
        if trial_id in done or not result.config:
            continue
        error = one_line(result.error) if result.error is not None else None
        record_trial(plan, trial_id, result.config, result.metrics or {}, error, default_seed=default_seed).save(plan)
        if recorded is not None:
            recorded(trial_id, result.config, result.metrics or {})


def _recorded(plan: Plan) -> set[str]:
    """Trial ids already in the leaderboard for this study."""
    if not plan.leaderboard_path.exists():
        return set()
    t = read_rows(plan.leaderboard_path).to_pandas()
    return set(t[t.study == plan.study].trial_id)
