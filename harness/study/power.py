"""The power a study will have: the smallest MoR1E-vs-baseline difference it can tell from noise.

``--show-plan`` prints it before a study runs, from the profile's final seeds and report-split
sizes and a prior for the variance (harness.stats.Prior), in this order of preference:

1. measured: an earlier study of the same profile (same sha256) in the results dir with at least
   two trained methods on two shared final seeds: its σ_seed and example part;
2. the documented prior of the data the profile uses: ``TWIN_PRIOR`` (the twins at the default
   budget) or ``REAL_PRIOR`` (an assumption for real data); docs/statistics.md, "The prior".

What ``mde`` means and how it is computed: harness/stats.py.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from harness import stats

# The twins at the default budget, measured: the default profile with MoR1E and LoRA only and four
# final seeds (study prior4, docs/statistics.md "The prior"): MoR1E - LoRA Δ̄_s = +2.7, -1.3, +0.9
# and +12.1 points over seeds 0, 1, 3, 4 (SD 5.89 on 3 df), and the example part of its SE.
TWIN_PRIOR = stats.Prior(sigma_seed=0.0589, example_sd=0.215,
                         source="twins at the default budget (docs/statistics.md, 'The prior')")
# Assumed, not measured here: finetuning a 7B model on full training sets moves a dataset's accuracy
# by about 1.5 points from seed to seed; over 14 datasets with independent run effects, the per-seed
# difference of two methods' means has SD 1.5 * sqrt(2 / 14) = 0.57 points. Per-example disagreement
# of two good finetunes: SD 0.35.
REAL_PRIOR = stats.Prior(sigma_seed=0.0057, example_sd=0.35,
                         source="assumed for real data at full budget (docs/statistics.md, 'The prior')")
# Report examples per dataset when the profile caps none and the data are not on disk (the hub).
UNKNOWN_REPORT_SIZE = 1000


def report_sizes(plan) -> list[int]:
    """Report examples per dataset each final run scores (the report cap applied)."""
    from harness.data.adapters import get_adapter
    from harness.study.plan import _count_rows

    cap = plan.profile.training.get("report_limit")
    sizes = []
    for d in plan.profile.datasets:
        if plan.synthetic:
            n = int(plan.profile.data.get("n_validation", 16))
        elif plan.data_dir is not None:
            n = _count_rows(plan.data_dir, d, get_adapter(d).report_split) or UNKNOWN_REPORT_SIZE
        else:
            n = UNKNOWN_REPORT_SIZE
        sizes.append(min(n, cap) if cap else n)
    return sizes


def measured_prior(results_dir: Path, profile_sha256: str) -> stats.Prior | None:
    """σ_seed and σ_α of the latest earlier study of this profile, from its final report predictions."""
    from harness import leaderboard

    lb_path = Path(results_dir) / leaderboard.LEADERBOARD_FILE
    if not lb_path.exists():
        return None
    df = leaderboard.load(results_dir)
    mine = df[(df.profile_sha256 == profile_sha256) & (df.phase == "final") & (df.role == "report")]
    for study in reversed(leaderboard.studies(mine)):
        preds = leaderboard.load_predictions(results_dir, study)
        if preds is None:
            continue
        ps = stats.PredictionSet(preds)
        methods = [m for m in ps.published_methods() if stats.trains(m)]
        sigmas, examples = [], []
        for i, a in enumerate(methods):
            for b in methods[i + 1:]:
                try:
                    c = stats.compare(ps, a, b, study=study)
                except stats.StatsError:
                    continue
                if c.paired_seeds and c.n_seeds >= 2:
                    m = c.mean
                    inv_n = sum(1 / d.n for d in c.datasets)
                    e = np.sqrt(m.se ** 2 - m.sigma_seed ** 2 / c.n_seeds) if m.se ** 2 > m.sigma_seed ** 2 / c.n_seeds \
                        else 0.0
                    sigmas.append(m.sigma_seed)
                    examples.append(e * len(c.datasets) / np.sqrt(inv_n))
        if sigmas:
            return stats.Prior(float(np.sqrt(np.mean(np.square(sigmas)))), float(np.sqrt(np.mean(np.square(examples)))),
                               f"measured: study {study!r} in {results_dir} ({len(sigmas)} method pairs)")
    return None


def power_plan(plan, target_mde: float | None = None) -> dict:
    """The mde of the study's mean-over-datasets comparison, and the seeds a target mde needs (points)."""
    seeds = list(plan.profile.final.get("seeds", []))
    sizes = report_sizes(plan)
    prior = measured_prior(plan.results_dir, plan.profile_sha256())
    if prior is None:
        prior = TWIN_PRIOR if plan.synthetic else REAL_PRIOR
    planned = stats.planned(len(seeds), sizes, prior) if seeds else {"mde": float("nan"), "se": float("nan")}
    out = {"final_seeds": len(seeds), "report_examples_per_dataset": sizes, "prior": {
        "sigma_seed_points": 100 * prior.sigma_seed, "example_sd": prior.example_sd, "source": prior.source},
        "mde_points": _points(planned["mde"]), "se_points": _points(planned["se"])}
    if target_mde is not None:
        need = stats.seeds_for(target_mde / 100, sizes, prior)
        out.update(target_mde_points=target_mde, seeds_for_target=need)
    return out


def describe(power: dict) -> list[str]:
    """Lines for --show-plan."""
    k, mde = power["final_seeds"], power["mde_points"]
    n = power["report_examples_per_dataset"]
    sizes = f"{min(n)}" if min(n) == max(n) else f"{min(n)}-{max(n)}"
    head = (f"power: {k} final seed{'s' if k != 1 else ''} per method, {sizes} report examples per dataset: "
            + (f"mde {mde:.1f} points" if mde is not None else "no mde (fewer than 2 final seeds)")
            + f" (80% power, α = .05; prior σ_seed {power['prior']['sigma_seed_points']:.2f} points, "
            f"{power['prior']['source']})")
    lines = [head]
    if "target_mde_points" in power:
        need = power["seeds_for_target"]
        lines.append(f"  an mde of {power['target_mde_points']:g} points needs "
                     + (f"{need} final seeds" if need else "more than 1000 final seeds: more report examples first"))
    return lines


def _points(x: float) -> float | None:
    return None if x is None or not np.isfinite(x) else round(100 * float(x), 2)
