"""Search efficiency: TPE + ASHA against random search at the same trial budget.

    python -m harness.bench search [--config PROFILE] [--methods mor1e,lora] [--trials N]
                                   [--datasets a,b] [--steps N] [--eval-every N] [--results-dir DIR]

Both arms run the same profile through harness.study (real Ray Tune, Optuna,
Train) with the same trials per method; only the sampler (TPE after Sobol
warm-up vs Optuna's RandomSampler) and the scheduler (ASHA vs none) differ.
Reported per method and arm: the best selection accuracy reached, and the
training steps actually spent (pruned trials stop early). Prints a markdown table.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from harness import leaderboard
from harness.searchspace import expand_params
from harness.study import progress
from harness.study.phases import run_phases
from harness.study.plan import Plan, build_plan, make_trial_config, one_line, space_corner, write_twins
from harness.searchspace import ConfigError

ARMS = (("tpe+asha", "tpe", "asha"), ("random", "random", "none"))


def _plan(args, study: str, results_dir: Path) -> Plan:
    ns = argparse.Namespace(config=args.config, address=args.address, resume=False,
                            results_dir=str(results_dir), data_dir=args.data_dir, study=study)
    plan = build_plan(ns)
    raw = plan.profile.raw
    if args.methods:
        raw["methods"] = args.methods.split(",")
        unknown = [m for m in raw["methods"] if m not in plan.profile.spaces]
        if unknown:
            raise ConfigError(f"--methods: {unknown[0]!r} is not searched by profile {plan.profile.name}")
    if args.trials:
        raw["trials_per_method"] = args.trials
    if args.datasets:
        raw["datasets"] = args.datasets.split(",")
    if args.steps:
        raw["training"] = dict(raw["training"], steps=args.steps)
    if args.eval_every:
        raw["training"] = dict(raw["training"], eval_every=args.eval_every)
    # Validate the reduced plan's trial configs too.
    for m in raw["methods"]:
        space = plan.profile.spaces[m]
        lr, hp = expand_params(m, space_corner(space, "low"), space)
        try:
            make_trial_config(plan.base_trial(m, "search"), learning_rate=lr, hparams=hp, seed=0)
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"{m}: {one_line(exc)}") from None
    return plan


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m harness.bench search", description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="default")
    ap.add_argument("--methods", default="mor1e,lora", help="methods to search (default: mor1e,lora)")
    ap.add_argument("--trials", type=int, default=4, help="trials per method and arm (default: 4)")
    ap.add_argument("--datasets", default=None, help="comma list (default: the profile's)")
    ap.add_argument("--steps", type=int, default=None, help="training steps per trial (default: the profile's)")
    ap.add_argument("--eval-every", type=int, default=None, help="steps between selection evaluations (ASHA rungs)")
    ap.add_argument("--results-dir", default=None, help="where both arms write (default: a temp dir)")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--address", default=None)
    args = ap.parse_args(argv)

    results_dir = Path(args.results_dir or tempfile.mkdtemp(prefix="bench-search-"))
    stamp = time.strftime("%Y%m%d-%H%M%S")
    try:
        plans = {name: _plan(args, f"bench-{name.replace('+', '-')}-{stamp}", results_dir) for name, _, _ in ARMS}
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    progress.quiet_logs()
    from harness.ray_env import init_ray

    first = next(iter(plans.values()))
    first.results_dir.mkdir(parents=True, exist_ok=True)
    if first.synthetic and not first.data_dir.exists():
        write_twins(first)
    init_ray(args.address, num_cpus=first.profile.resources.get("ray_num_cpus"))

    walls = {}
    for name, algorithm, scheduler in ARMS:
        plan = plans[name]
        methods = plan.profile.methods
        shown = progress.start(len(methods) * plan.profile.trials_per_method)
        start = time.time()
        shown.line(f"[{name}] {', '.join(methods)}: {plan.profile.trials_per_method} trials each")
        run_phases(plan, shown, phases=("search",), algorithm=algorithm, scheduler=scheduler)
        walls[name] = time.time() - start

    df = leaderboard.load(results_dir)
    p = first.profile
    print()
    print(f"Search efficiency on profile `{p.name}` (model {p.model}, {len(p.datasets)} datasets, "
          f"{p.trials_per_method} trials per method and arm, {p.training.get('steps')} steps per full trial), "
          f"results in {results_dir}")
    print()
    print("| method | search | best selection acc % | trials completed / pruned / failed | training steps spent | wall |")
    print("|---|---|---|---|---|---|")
    for m in p.methods:
        for name, _, _ in ARMS:
            sub = df[(df.study == plans[name].study) & (df.method == m) & (df.phase == "search")]
            trials = sub.drop_duplicates("trial_id")
            sel = sub[(sub.role == "selection") & (sub.status == "completed")]
            best = sel.groupby("trial_id").accuracy.mean().max() if not sel.empty else float("nan")
            steps = int(trials.steps.fillna(0).sum())
            counts = " / ".join(str(int((trials.status == s).sum())) for s in ("completed", "pruned", "failed"))
            print(f"| {m} | {name} | {100 * best:.1f} | {counts} | {steps} | {walls[name] / 60:.1f} min (all methods) |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
