"""What a trial's outcome becomes: leaderboard rows, its status and reason, and what was recorded.

Owns the mapping from a finished Tune trial (its config, last metrics, error) to
``completed`` / ``pruned`` / ``failed`` rows, the one-line reason of a failure, the outcomes
a resumed study replays instead of training again, the reconciliation of a Tuner's results
with the leaderboard, and the final row taken from a search trial that ran the same config.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
from pathlib import Path
from typing import Any

from harness.records import append_rows, read_rows, row_template
from harness.searchspace import DATASETS, Space, num_experts
from harness.study.plan import METRIC, Plan, one_line, trial_point


def per_dataset(metrics: dict, role: str) -> dict[str, dict]:
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
        **study_provenance(plan, method, metrics),
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


def study_provenance(plan: Plan, method: str, metrics: dict) -> dict[str, Any]:
    """The provenance columns every row of the study carries (see harness.provenance)."""
    from harness.provenance import scoring_precision

    return dict(
        data_source=plan.data_source(),
        budget_json=plan.budget_json(method, _int(metrics.get("total_steps"))),
        profile_sha256=plan.profile_sha256(),
        profile_override=plan.profile_override,
        scoring_precision=scoring_precision(metrics, method=method, use_gpu=bool(plan.profile.resources["use_gpu"])),
    )


def trial_error(trial) -> str:
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
                      precision=first.precision, scoring_precision=first.scoring_precision)
        metrics.update({k: v for k, v in extras.items() if v is not None})
        if first.status == "completed":
            metrics["done_final"] = True
        out[trial_id] = (first.status, first.status_reason, metrics)
    return out


def reconcile(plan: Plan, method: str, space: Space | None, seed: int, grid, phase: str) -> None:
    """Record finished trials the callback missed (a kill between Tune's snapshot and the append)."""
    done = {t for m, t in _recorded(plan) if m == method}
    rows = []
    for result in grid:
        trial_id = Path(result.path).name
        if trial_id in done:
            continue
        error = one_line(result.error) if result.error is not None else None
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


def reuse_search_trial(plan: Plan, df, method: str, trial_id: str, seed: int) -> bool:
    """A completed search trial already trained the winning config with this seed and scored the report
    split; training it again would repeat those numbers. Record them as the final run (with a note)."""
    final_id = f"{trial_id}-final-s{seed}"
    src = df[(df.study == plan.study) & (df.method == method) & (df.trial_id == trial_id)
             & (df.role == "report") & (df.status == "completed") & (df.seed == seed)]
    if src.empty:
        return False
    rows = []
    for rec in src.to_dict("records"):
        # The numbers, and so their code, data and budget, are the search trial's; the record is made
        # by this run, under its profile (a resume that accepted a changed profile says so).
        rec = {k: (None if is_missing(v) else v) for k, v in rec.items()}
        rec.update(trial_id=final_id, phase="final",
                   status_reason=f"reuses search trial {trial_id} (same config and seed)",
                   profile_sha256=plan.profile_sha256(), profile_override=plan.profile_override)
        rec["created_at"] = row_template()["created_at"]
        rows.append(rec)
    append_rows(plan.leaderboard_path, rows, dedupe=True)
    return True


def is_missing(v) -> bool:
    """True for None, NaN, NaT and pd.NA scalars (as pandas hands back missing values)."""
    import pandas as pd

    if isinstance(v, (list, tuple, dict)):
        return False
    try:
        return bool(pd.isna(v))
    except (TypeError, ValueError):
        return False

