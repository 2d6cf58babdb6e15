"""Run a study: Ray Tune + Optuna pick trials, each trial a Ray Train job; results go to the leaderboard.

    python harness/search.py [--config FILE|PROFILE] [--address ADDR] [--resume [--accept-changed-profile]]
                             [--results-dir DIR] [--data-dir DIR] [--storage URI] [--study NAME]
                             [--show-plan [--json] [--target-mde POINTS]] [--mlflow URI] [--verbose]

Layers (Ray's train/tune interop pattern): the *worker* loop lives in
harness.trial.worker and reads only its TrialConfig; the *driver* function
(harness.study.tune) runs inside one Tune trial and calls ``run_trial``; one
*Tuner* runs the whole study, sampling on this process with Optuna (TPE after
quasi-random warm-up, study kept in SQLite; harness.study.sampler) and stopping
weak trials with ASHA on the selection metric. This file is the command line;
the study itself is harness.study.

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
import math
import sys
from pathlib import Path

if __package__ in (None, ""):  # `python harness/search.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from harness.searchspace import ConfigError
from harness.study.plan import build_plan


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2
        print(f"error: {message}", file=sys.stderr)
        raise SystemExit(2)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = _Parser(
        description="Run a Ray Tune + Optuna study over MoR1E and its baselines: reference, search and final "
                    "phases, every trial a Ray Train job; results go to the leaderboard.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="""examples:
  python harness/search.py                                   the default offline study (embedded Ray)
  python harness/search.py --show-plan --target-mde 5        what it would run, its time, disk and mde
  python harness/search.py --config paper --address auto --storage s3://bucket/studies

writes, under --results-dir (default results/): leaderboard.parquet, predictions.parquet,
summary.parquet, optuna/<study>.sqlite, logs/<study>.log, ray/<study>/ (Tune's state and
TensorBoard logs); checkpoints go to --storage (default: inside the results dir).
docs/study.md: profiles, phases, resume; docs/cluster.md: storage.""")
    ap.add_argument("--config", default=None,
                    help="profile name in search_spaces/ (default, paper) or a profile .yaml file (default: default)")
    ap.add_argument("--address", default=None, help="join this Ray cluster (else $RAY_ADDRESS, else embedded Ray)")
    ap.add_argument("--resume", action="store_true", help="continue an interrupted study")
    ap.add_argument("--accept-changed-profile", action="store_true",
                    help="with --resume: continue although the profile's hash changed (rows record the old hash)")
    ap.add_argument("--results-dir", default="results", help="where the leaderboard and study state go")
    ap.add_argument("--data-dir", default=None, help="DATA_DIR/<dataset>/<split>.jsonl (overrides the profile's data)")
    ap.add_argument("--storage", default=None,
                    help="Ray's storage for trials and checkpoints: a local or shared directory, or s3://bucket/prefix "
                         "(default: the profile's storage, else inside the results dir); see docs/cluster.md")
    ap.add_argument("--study", default=None, help="study name (default: the profile's)")
    ap.add_argument("--show-plan", action="store_true",
                    help="check the profile and print the study it would run: trials per phase and method, "
                         "expected time, disk, where outputs go, parameter band, profile hash, the mde of its "
                         "verdict; starts nothing")
    ap.add_argument("--json", action="store_true", help="with --show-plan: print the plan as one JSON object")
    ap.add_argument("--target-mde", type=float, default=None, metavar="POINTS",
                    help="with --show-plan: how many final seeds an mde of POINTS needs")
    ap.add_argument("--mlflow", default=None, metavar="URI",
                    help="also log every trial to MLflow at this tracking URI (e.g. sqlite:///results/mlflow.db): "
                         "one run per trial, the study's name as the experiment (overrides the profile's tracking)")
    ap.add_argument("--verbose", action="store_true",
                    help="show Ray's, DeepSpeed's and the libraries' messages (default: <results>/logs/<study>.log)")
    args = ap.parse_args(argv)
    if args.json and not args.show_plan:
        ap.error("--json only applies with --show-plan")
    if args.target_mde is not None and not (math.isfinite(args.target_mde) and args.target_mde > 0):
        ap.error(f"--target-mde must be a positive number of points, got {args.target_mde:g}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        plan = build_plan(args)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.show_plan:
        from harness.study import power
        from harness.study.dryrun import format_overview, plan_overview

        overview = plan_overview(plan)
        overview["power"] = power.power_plan(plan, args.target_mde)
        if args.json:
            import json

            print(json.dumps(overview, indent=1))
        else:
            print("\n".join(format_overview(overview) + power.describe(overview["power"])))
        return 0
    if plan.band is not None:
        print("\n".join(plan.band.describe()), flush=True)
    if plan.profile_override:
        print(f"resuming under a changed profile: rows record profile_override={plan.profile_override[:12]}", flush=True)
    from harness.study.dryrun import log_path
    from harness.study.phases import run_study
    from harness.study.progress import console, quiet_logs

    log = log_path(plan)
    quiet_logs(log, verbose=args.verbose)
    try:
        return run_study(plan)
    except Exception as exc:
        if args.verbose:
            raise
        import traceback

        traceback.print_exc()  # into the log
        print(f"error: {type(exc).__name__}: {' '.join(str(exc).split())[:300]} (traceback in {log})",
              file=console(), flush=True)
        return 1


if __name__ == "__main__":
    sys.exit(main())
