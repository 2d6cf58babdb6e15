"""The three phases of a study, in the order they run: reference, search, final.

1. reference: zero-shot evaluation of the base model (no search);
2. search: per method, ``trials_per_method`` trials sampled by Optuna, stopped early by ASHA;
3. final: each method's best config (chosen on the selection split) trained afresh for every
   seed in ``final.seeds`` (which the search never trains with) and scored on the report split.
Then ``summary.parquet`` is recomputed from the records and the table printed.
"""

from __future__ import annotations

import json
import time

from harness import leaderboard
from harness.study.plan import Plan, write_twins
from harness.study.progress import Progress, clock, start
from harness.study.sampler import make_searcher
from harness.study.tune import num_evals, run_tuner


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
    run_tuner(plan, method, experiment=f"search-{method}", phase="search", param_space={},
              num_samples=p.trials_per_method, space=space, seed=s["trial_seed"], progress=progress,
              search_alg=make_searcher(plan, method, algorithm), scheduler=sched)


def run_fixed(plan: Plan, method: str, *, phase: str, learning_rate, hparams: dict, seeds: list[int],
              progress: Progress) -> None:
    """Reference / final runs: one config, one trial per seed, no early stopping."""
    from ray import tune

    space = plan.profile.spaces.get(method)
    param_space = {"learning_rate": learning_rate, "hparams": hparams, "seed": tune.grid_search(list(seeds))}
    run_tuner(plan, method, experiment=f"{phase}-{method}", phase=phase, param_space=param_space,
              num_samples=1, space=space, seed=seeds[0], progress=progress)


def run_study(plan: Plan) -> int:
    """The whole study: reference, then each method's search, then the finals; the summary and table."""
    from harness.ray_env import init_ray

    p = plan.profile
    total = (len(p.methods) * p.trials_per_method + len(p.methods) * len(p.final["seeds"]) + len(p.reference))
    progress = start(total)
    progress.line(f"study {plan.study}: {p.model}, {len(p.datasets)} datasets, methods {' '.join(p.methods)}, "
                  f"{p.trials_per_method} trials each, final seeds {p.final['seeds']}, results in {plan.results_dir}")
    plan.results_dir.mkdir(parents=True, exist_ok=True)
    if plan.synthetic and not plan.data_dir.exists():
        write_twins(plan)
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

    # 3. final: each method's best config (chosen on selection), trained afresh per final seed and
    # scored on the report split; no search run is reused (search trials never train with a final seed).
    df = leaderboard.load(plan.results_dir)
    best = leaderboard.best_trials(df, plan.study).set_index("method")
    for method in p.methods:
        if method not in best.index:
            progress.line(f"final: {method} has no completed search trial; skipped")
            continue
        b = best.loc[method]
        chosen = json.loads(b.hparams_json)
        learning_rate = chosen.pop("learning_rate")
        progress.line(f"final: {method} best trial {b.trial_id} (selection {100 * b.selection_accuracy:.1f}%), "
                      f"fresh runs with seeds {p.final['seeds']}")
        run_fixed(plan, method, phase="final", learning_rate=learning_rate, hparams=chosen, seeds=p.final["seeds"],
                  progress=progress)

    leaderboard.write_summary(plan.results_dir)
    progress.line(f"study {plan.study} finished in {clock(time.time() - progress.start)}")
    print()
    print(leaderboard.format_table(leaderboard.load(plan.results_dir), plan.study,
                                   leaderboard.load_predictions(plan.results_dir, plan.study)))
    return 0

