"""The three phases of a study, run by one Tuner: reference, search, final.

1. reference: zero-shot evaluation of the base model (no search);
2. search: per method, ``trials_per_method`` trials sampled by Optuna, stopped early by ASHA
   (per method);
3. final: each method's best config (chosen on the selection split) trained afresh for every
   seed in ``final.seeds`` (which the search never trains with) and scored on the report split,
   as soon as that method's search has ended.
Trials of every phase and method share the ``max_concurrent_trials`` slots, so a slot freed by a
pruned trial is taken at once. Then ``summary.parquet`` is recomputed and the table printed.
"""

from __future__ import annotations

import time

from harness import leaderboard
from harness.records import write_timing
from harness.study import timing as timing_mod
from harness.study.plan import Plan, write_twins
from harness.study.progress import Progress, clock, console, start
from harness.study.sampler import PHASES, MethodScheduler, StudySearcher
from harness.study.tune import num_evals, run_tuner


def scheduler_for(plan: Plan, kind: str | None = None):
    """ASHA per method on the selection metric (``search.scheduler: asha``), or none (FIFO)."""
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    s = plan.profile.search
    if (kind or s["scheduler"]) != "asha":
        return FIFOScheduler()
    max_evals = num_evals(plan) + 1  # ASHA stops a trial at max_t: one past its last evaluation, so it ends itself
    # Timed in evaluations (the worker's "evaluation" count), not Tune iterations: the training
    # curves' reports between evaluations are iterations too.
    return MethodScheduler(lambda: ASHAScheduler(time_attr="evaluation", max_t=max_evals,
                                                 grace_period=min(s["grace_period"], max_evals),
                                                 reduction_factor=s["reduction_factor"]))


def total_trials(plan: Plan, phases: tuple[str, ...] = PHASES) -> int:
    p = plan.profile
    counts = {"reference": len(p.reference), "search": len(p.methods) * p.trials_per_method,
              "final": len(p.methods) * len(p.final["seeds"])}
    return sum(counts[phase] for phase in phases)


def run_phases(plan: Plan, progress: Progress, *, phases: tuple[str, ...] = PHASES, algorithm: str | None = None,
               scheduler: str | None = None) -> None:
    """Run ``phases`` of the study in one Tuner (harness.study.sampler.StudySearcher decides the order)."""
    run_tuner(plan, search_alg=StudySearcher(plan, phases=phases, algorithm=algorithm),
              scheduler=scheduler_for(plan, scheduler), num_samples=total_trials(plan, phases), progress=progress)


def study_eta(plan: Plan, progress: Progress, unit_s: float | None) -> timing_mod.Eta:
    """The study's ETA (harness.study.timing.Eta), timed by the unit measured before the clock or
    an earlier study's; a resumed study starts from the trials it had already finished."""
    if unit_s is None:
        unit_s, _ = timing_mod.known_unit_s(plan.results_dir, plan.study)
    eta = timing_mod.Eta(plan, unit_s)
    if plan.resume:
        done = timing_mod.previous_trials(plan.results_dir, study=plan.study)
        eta.seed(done)
        for status, n in timing_mod.recorded_statuses(plan.results_dir, plan.study).items():
            progress.counts[status] = progress.counts.get(status, 0) + n
    return eta


def run_study(plan: Plan) -> int:
    """The whole study: reference, search and final runs, then the summary and table.

    What a first run adds (the model's cache, the intuition embeddings) and, when the profile asks
    for it, the unit step (harness.study.timing) are done before the study's clock starts.
    """
    from harness.ray_env import init_ray

    p = plan.profile
    progress = start(total_trials(plan))
    progress.line(f"study {plan.study}: {p.model}, {len(p.datasets)} datasets, methods {' '.join(p.methods)}, "
                  f"{p.trials_per_method} trials each ({p.search['algorithm']} + {p.search['scheduler']}), "
                  f"final seeds {p.final['seeds']}, {p.max_concurrent_trials} trial(s) at a time, "
                  f"results in {plan.results_dir}")
    plan.results_dir.mkdir(parents=True, exist_ok=True)
    if plan.synthetic and not plan.data_dir.exists():
        write_twins(plan)
    timing = {"prepare": timing_mod.prepare(plan, progress)}
    if p.resources.get("measure_unit"):
        unit = timing_mod.measure_unit()
        timing.update(unit_s=unit["unit_s"], cpu=unit["cpu"], unit_threads=unit["threads"], unit=timing_mod.UNIT_NAME)
        progress.line(f"unit: {unit['unit_s']:.2f} s, one {timing_mod.UNIT_NAME} ({unit['cpu']}, "
                      f"{unit['threads']} threads); the study's clock starts now")
    progress.start = time.time()
    progress.eta = study_eta(plan, progress, timing.get("unit_s"))
    init_ray(plan.address, num_cpus=p.resources.get("ray_num_cpus"))
    run_phases(plan, progress)

    study_s = time.time() - progress.start
    timing["study_s"] = study_s
    in_units = ""
    if "unit_s" in timing:
        # Timed again once the clock has stopped: a unit timed while something else ran is too long
        # and flatters the study, so the shorter of the two counts; both are recorded.
        after = timing_mod.measure_unit()
        timing.update(unit_before_s=timing["unit_s"], unit_after_s=after["unit_s"],
                      unit_s=min(timing["unit_s"], after["unit_s"]))
        progress.line(f"unit again: {after['unit_s']:.2f} s; the study counts in the shorter, {timing['unit_s']:.2f} s")
        timing["study_units"] = study_s / timing["unit_s"]
        in_units = f" = {timing['study_units']:.0f} units of {timing['unit_s']:.2f} s"
    write_timing(plan.results_dir, plan.study, timing)
    leaderboard.write_summary(plan.results_dir)
    progress.line(f"study {plan.study} finished in {clock(study_s)}{in_units}")
    print(file=console())
    predictions = leaderboard.load_predictions(plan.results_dir, plan.study)
    print(leaderboard.format_table(leaderboard.load(plan.results_dir), plan.study, predictions), file=console())
    verdicts = leaderboard.format_verdicts(predictions, plan.study)
    if verdicts:
        print(verdicts, file=console())
    return 0
