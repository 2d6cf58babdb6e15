"""What ``python harness/search.py --show-plan`` prints: the study it would run, started by nothing.

``plan_overview(plan)`` builds one dict -- the profile and its hash, the parameter band, per phase
and method the trials, their work and expected time, the disk, and where every output goes -- and
``format_overview`` prints it as text (``--show-plan``) while ``--show-plan --json`` prints the
dict itself. New sections are new keys of that dict, and a line of text each.
"""

from __future__ import annotations

from pathlib import Path

from harness.study.disk import expected_disk
from harness.study.plan import LEADERBOARD_FILE, PREDICTIONS_FILE, Plan, trial_counts
from harness.study.timing import (DEFAULT_UNIT_S, PRIOR_UNITS, estimate_remaining_s, known_unit_s, previous_trials,
                                  trial_work)

SUMMARY_FILE = "summary.parquet"  # harness.leaderboard.SUMMARY_FILE


def outputs(plan: Plan) -> dict[str, str]:
    """Where each of the study's outputs goes."""
    r = plan.results_dir
    out = {
        "leaderboard": str(r / LEADERBOARD_FILE),
        "predictions": str(r / PREDICTIONS_FILE),
        "summary": str(r / SUMMARY_FILE),
        "optuna": str(plan.optuna_path),
        "tune": str(plan.ray_dir / "study"),
        "tensorboard": str(plan.ray_dir.parent),
        "checkpoints": plan.train_storage_path,  # --storage, else inside the results dir
        "timing": str(r / "timing" / f"{plan.study}.json"),
        "log": str(log_path(plan)),
    }
    if plan.synthetic:
        out["twins"] = str(plan.data_dir)
    if plan.mlflow_uri:
        out["mlflow"] = plan.mlflow_uri
    return out


def log_path(plan: Plan) -> Path:
    """Ray's, DeepSpeed's and the libraries' warnings of a study (harness.study.progress.quiet_logs)."""
    return plan.results_dir / "logs" / f"{plan.study}.log"


def plan_overview(plan: Plan) -> dict:
    """The study as one JSON-able dict (see the module doc)."""
    p = plan.profile
    unit_s, unit_from = known_unit_s(plan.results_dir, plan.study)
    previous = previous_trials(plan.results_dir)
    slots = p.max_concurrent_trials
    work = trial_work(plan)
    if previous:
        time_from = f"{len(previous)} finished trials in this results dir, scaled per method"
    elif unit_s:
        time_from = f"the prior at a unit of {unit_s:.2f} s ({unit_from})"
    else:
        time_from = f"the prior at an assumed unit of {DEFAULT_UNIT_S:g} s ({unit_from})"
    trainable = plan._memo.get("trainable", {})
    phases, pending = [], []
    for phase, methods in trial_counts(plan).items():
        rows = []
        for method, trials in methods.items():
            w = work[(phase, method)]
            per_trial = estimate_remaining_s([(w, 1.0)], previous, unit_s=unit_s, slots=1)
            pending += [(w, 1.0)] * trials
            rows.append({"method": method, "trials": trials, "steps_per_trial": w.steps,
                         "examples_per_trial": w.examples, "trainable_params": trainable.get(method),
                         "expected_s_per_trial": round(per_trial, 1), "expected_s": round(per_trial * trials, 1)})
        phases.append({"phase": phase, "trials": sum(methods.values()), "methods": rows})
    disk = expected_disk(plan, trainable=trainable or None)
    return {
        "study": plan.study,
        "profile": {"source": p.source, "sha256": plan.profile_sha256(),
                    "checks": plan._memo.get("checked", "now")},
        "model": p.model,
        "datasets": list(p.datasets),
        "param_band": None if plan.band is None else {**plan.band.to_json(), "describe": plan.band.describe()},
        "slots": slots,
        "phases": phases,
        "trials": sum(ph["trials"] for ph in phases),
        "time": {"expected_wall_s": round(estimate_remaining_s(pending, previous, unit_s=unit_s, slots=slots), 1),
                 "unit_s": unit_s, "from": time_from, "prior_units": dict(PRIOR_UNITS)},
        "disk": disk,
        "outputs": outputs(plan),
        "resume": plan.resume,
        "profile_override": plan.profile_override,
    }


def format_overview(o: dict) -> list[str]:
    """``plan_overview``'s dict as the lines ``--show-plan`` prints."""
    from harness.study.progress import clock

    lines = [f"study {o['study']}: profile {o['profile']['source']}, sha256 {o['profile']['sha256']}"
             + (" (checks passed before on this machine: cached)" if o["profile"]["checks"] == "cached" else "")]
    if o["profile_override"]:
        lines.append(f"resuming under a changed profile: rows record profile_override={o['profile_override'][:12]}")
    if o["param_band"] is not None:
        lines += o["param_band"]["describe"]
    lines.append(f"{o['trials']} trials, {o['slots']} at a time; {len(o['datasets'])} datasets on {o['model']}")
    for ph in o["phases"]:
        if not ph["methods"]:
            continue
        lines.append(f"  {ph['phase']}: {ph['trials']} trials")
        for m in ph["methods"]:
            params = "" if m["trainable_params"] is None else f", {_count(m['trainable_params'])} trainable"
            lines.append(f"    {m['method']:<9} {m['trials']} x ({m['steps_per_trial']} steps, "
                         f"{m['examples_per_trial']} examples scored{params}) ~ {clock(m['expected_s_per_trial'])} "
                         f"each, {clock(m['expected_s'])} in all")
    t = o["time"]
    lines.append(f"expected wall time {clock(t['expected_wall_s'])} on {o['slots']} slot(s), from {t['from']}")
    d = o["disk"]
    if d["end_bytes"] is None:
        lines.append("disk: unknown (a method's trainable parameters could not be counted here)")
    else:
        lines.append(f"disk (checkpoints): {_bytes(d['end_bytes'])} at the end, {_bytes(d['peak_bytes'])} at the peak")
    lines.append("outputs:")
    width = max(len(k) for k in o["outputs"])
    lines += [f"  {k:<{width}}  {v}" for k, v in o["outputs"].items()]
    return lines


def _count(n: int) -> str:
    return f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n:,}"


def _bytes(n: int) -> str:
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"
