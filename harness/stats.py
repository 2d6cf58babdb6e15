"""Paired statistics over per-example predictions: intervals, tests and a verdict.

Two methods are compared on the same report examples, paired by
``(dataset, example_id)``. A method's score on one example is its correctness
averaged over its seeds (0, 1/k, ..., 1), so a dataset's score is the accuracy
averaged over seeds, and the per-example difference ``d_i = a_i - b_i`` has
the dataset's Δ as its mean. The mean over datasets is unweighted: every
dataset counts once, whatever its size.

- **Confidence intervals**: percentile intervals of a two-level bootstrap, the
  stratified bootstrap of rliable (Agarwal et al., NeurIPS 2021): each
  replicate draws seeds with replacement (one draw per replicate, shared by
  every dataset, since one seed is one training run over all of them) and,
  within each dataset independently, examples with replacement. When both
  sides ran the same seed list, seeds are drawn jointly (seed s means the same
  data order for both methods), otherwise each side's seeds are drawn on their
  own. ``scipy.stats.bootstrap`` resamples one level only, so the two levels
  are drawn here; the example level is drawn as a multinomial over the
  distinct correctness patterns of an example across seeds (at most
  2^(k_a + k_b) of them), which is the same distribution as resampling the
  examples themselves and costs O(patterns) per replicate instead of O(n).
- **p-values**: per dataset the exact McNemar test (``scipy.stats.binomtest``
  on the discordant pairs) when each side has one seed, otherwise a sign-flip
  permutation test of ``sum(d_i)``; for the mean over datasets a sign-flip
  test of ``sum_d sum_i d_i / (D n_d)``. The test conditions on the seeds that
  ran (it asks whether swapping A and B on each example could give the
  observed Δ); the interval carries the seed variance. Flipping the signs of
  m values of equal magnitude v adds ``v (2 Binomial(m, 1/2) - m)``, so the
  null is drawn per group of equal magnitudes: the null distribution of
  ``scipy.stats.permutation_test(..., permutation_type='samples')`` at a small
  fraction of its cost (tests/test_stats.py checks they agree), with its
  p-value convention ((hits + 1) / (resamples + 1), two-sided = twice the
  smaller tail). Per-dataset p-values are Holm-adjusted across datasets.

Every draw comes from one seeded generator, so the output is reproducible.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd
from scipy import stats as scipy_stats

ALPHA = 0.05  # significance level of the verdict and of the table's marks
CONFIDENCE = 0.95
N_RESAMPLES = 10_000
RANDOM_SEED = 0
METRICS = {"accuracy": "pred", "acc_norm": "pred_norm"}  # metric -> the prediction column it scores
# Which phase publishes a method's report numbers: fresh final runs, or the one zero-shot reference run.
PUBLISHED_PHASE = {"zeroshot": "reference"}
DEFAULT_PUBLISHED_PHASE = "final"
# Columns a comparison reads; the option log-likelihood lists are not needed.
PREDICTION_COLUMNS = ["study", "method", "trial_id", "phase", "seed", "dataset", "role", "example_id", "gold",
                      "pred", "pred_norm", "created_at"]


class StatsError(ValueError):
    """The predictions cannot support the requested comparison (one line, for the CLI)."""


# ---------------------------------------------------------------- per-example correctness


def published_phase(method: str) -> str:
    return PUBLISHED_PHASE.get(method, DEFAULT_PUBLISHED_PHASE)


def correctness(predictions: pd.DataFrame, method: str, *, metric: str = "accuracy") -> dict[str, pd.DataFrame]:
    """Per dataset, a bool frame (example_id x seed) of ``method``'s report predictions being right.

    Only the phase that publishes the method counts (final; reference for
    zeroshot). A seed scored twice (a re-run) counts once, its latest record.
    Examples some seed did not score are dropped.
    """
    if metric not in METRICS:
        raise StatsError(f"unknown metric {metric!r}; expected one of: {', '.join(METRICS)}")
    rows = predictions[(predictions.method == method) & (predictions.role == "report")
                       & (predictions.phase == published_phase(method))]
    if rows.empty:
        return {}
    rows = rows.sort_values("created_at").drop_duplicates(["seed", "dataset", "example_id"], keep="last")
    hit = (rows[METRICS[metric]] == rows["gold"]).rename("hit")
    out = {}
    for dataset, part in pd.concat([rows[["dataset", "example_id", "seed"]], hit], axis=1).groupby("dataset"):
        matrix = part.pivot(index="example_id", columns="seed", values="hit").dropna(how="any")
        out[str(dataset)] = matrix.astype(bool).sort_index(axis=0).sort_index(axis=1)
    return out


class PredictionSet:
    """One study's prediction rows with each method's correctness computed once (the table compares
    every method with the best baseline, which would otherwise rebuild the same matrices)."""

    def __init__(self, predictions: pd.DataFrame):
        self.frame = predictions
        self._cache: dict[tuple[str, str], dict[str, pd.DataFrame]] = {}

    def correctness(self, method: str, metric: str = "accuracy") -> dict[str, pd.DataFrame]:
        key = (method, metric)
        if key not in self._cache:
            self._cache[key] = correctness(self.frame, method, metric=metric)
        return self._cache[key]

    def published_methods(self) -> list[str]:
        f = self.frame
        return sorted({str(m) for m in f.loc[(f.role == "report") & (f.phase == f.method.map(published_phase)),
                                             "method"]})


def _as_set(predictions: pd.DataFrame | PredictionSet) -> PredictionSet:
    return predictions if isinstance(predictions, PredictionSet) else PredictionSet(predictions)


def dataset_order(names) -> list[str]:
    """The paper's dataset order (DESIGN.md), then ARC; unknown names follow, alphabetically."""
    from harness.searchspace import KNOWN_DATASETS as order

    return sorted(names, key=lambda d: (order.index(d) if d in order else len(order), d))


def seeds_of(matrices: dict[str, pd.DataFrame]) -> tuple[int, ...]:
    return tuple(sorted({int(s) for m in matrices.values() for s in m.columns}))


# ---------------------------------------------------------------- the numerics


def seed_weights(rng: np.random.Generator, n_seeds: int, n_resamples: int) -> np.ndarray:
    """(R, k): how often each seed is drawn in each replicate, over k (rows sum to 1)."""
    return rng.multinomial(n_seeds, np.full(n_seeds, 1.0 / n_seeds), size=n_resamples) / n_seeds


def bootstrap_replicates(
    a: list[np.ndarray],
    b: list[np.ndarray] | None,
    *,
    paired_seeds: bool,
    n_resamples: int,
    rng: np.random.Generator,
) -> np.ndarray:
    """(R, D) bootstrap replicates of each dataset's mean of ``a_i - b_i`` (of ``a_i`` when ``b`` is None).

    ``a[d]`` is (n_d, k_a) 0/1 correctness of side A on dataset d, seeds in
    columns (the same seed order in every dataset); ``b[d]`` is (n_d, k_b),
    rows paired with ``a[d]``'s.
    """
    k_a = a[0].shape[1]
    w_a = seed_weights(rng, k_a, n_resamples)  # one seed draw per replicate, shared by all datasets
    w_b = None
    if b is not None:
        w_b = w_a if paired_seeds else seed_weights(rng, b[0].shape[1], n_resamples)
    out = np.empty((n_resamples, len(a)))
    for d, a_d in enumerate(a):
        joint = a_d if b is None else np.hstack([a_d, b[d]])
        patterns, counts = np.unique(joint.astype(np.float64), axis=0, return_counts=True)  # (G, k_a + k_b), (G,)
        # (R, G): a replicate's seed-averaged score difference on an example of each pattern
        score = w_a @ patterns[:, :k_a].T
        if b is not None:
            score = score - w_b @ patterns[:, k_a:].T
        n = len(a_d)
        draws = rng.multinomial(n, counts / n, size=n_resamples)  # (R, G): examples drawn per pattern
        out[:, d] = (draws * score).sum(axis=1) / n
    return out


def percentile_interval(replicates: np.ndarray, confidence: float = CONFIDENCE) -> tuple[np.ndarray, np.ndarray]:
    tail = (1 - confidence) / 2
    low, high = np.quantile(replicates, [tail, 1 - tail], axis=0)
    return low, high


def sign_flip_pvalue(values: np.ndarray, *, n_resamples: int, rng: np.random.Generator) -> float:
    """Two-sided p-value of ``sum(values)`` under independent random sign flips of each value.

    The null of ``scipy.stats.permutation_test((values,), sum,
    permutation_type='samples')``, drawn per group of equal magnitudes: m
    values of magnitude v contribute v (2 Binomial(m, 1/2) - m).
    """
    values = np.asarray(values, dtype=np.float64)
    nonzero = values[values != 0]
    if nonzero.size == 0:
        return 1.0  # nothing differs: every sign flip gives the observed sum
    magnitudes, counts = np.unique(np.abs(nonzero), return_counts=True)
    observed = float(nonzero.sum())
    heads = rng.binomial(counts, 0.5, size=(n_resamples, len(counts)))
    null = (2 * heads - counts) @ magnitudes
    # Sums of the same terms in another order differ in the last bits; count those as ties.
    tol = 1e-9 * float(np.abs(nonzero).sum())
    p_greater = (np.count_nonzero(null >= observed - tol) + 1) / (n_resamples + 1)
    p_less = (np.count_nonzero(null <= observed + tol) + 1) / (n_resamples + 1)
    return float(min(1.0, 2 * min(p_greater, p_less)))


def mcnemar_pvalue(a: np.ndarray, b: np.ndarray) -> float:
    """Exact McNemar: a binomial test of the discordant pairs (A right, B wrong vs the reverse)."""
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    a_only, b_only = int(np.sum(a & ~b)), int(np.sum(~a & b))
    if a_only + b_only == 0:
        return 1.0
    return float(scipy_stats.binomtest(a_only, a_only + b_only, 0.5).pvalue)


def holm(pvalues) -> np.ndarray:
    """Holm's step-down adjustment: the i-th smallest p times (m - i + 1), kept monotone, capped at 1."""
    p = np.asarray(pvalues, dtype=np.float64)
    m = len(p)
    if m == 0:
        return p
    order = np.argsort(p, kind="stable")
    adjusted = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * p[order]))
    out = np.empty(m)
    out[order] = adjusted
    return out


# ---------------------------------------------------------------- one method's intervals


@dataclass(frozen=True)
class MethodInterval:
    """A method's report accuracy with bootstrap intervals (fractions in [0, 1])."""

    method: str
    seeds: tuple[int, ...]
    datasets: pd.DataFrame  # dataset, n, accuracy, ci_low, ci_high
    mean: float
    mean_ci_low: float
    mean_ci_high: float


def method_interval(predictions: pd.DataFrame | PredictionSet, method: str, *, metric: str = "accuracy",
                    n_resamples: int = N_RESAMPLES, seed: int = RANDOM_SEED) -> MethodInterval | None:
    """Per dataset and for the unweighted mean: accuracy over seeds with its 95% interval; None without predictions."""
    matrices = _as_set(predictions).correctness(method, metric)
    matrices = {d: m for d, m in matrices.items() if len(m)}
    if not matrices:
        return None
    seeds = seeds_of(matrices)
    datasets = dataset_order(matrices)
    a = [matrices[d].reindex(columns=list(seeds)).to_numpy(dtype=np.float64) for d in datasets]
    if any(np.isnan(x).any() for x in a):
        # a seed that skipped a dataset: its matrix has a missing column there
        raise StatsError(f"{method}: not every seed scored every dataset ({', '.join(map(str, seeds))})")
    rng = np.random.default_rng(seed)
    reps = bootstrap_replicates(a, None, paired_seeds=False, n_resamples=n_resamples, rng=rng)
    low, high = percentile_interval(reps)
    mean_low, mean_high = percentile_interval(reps.mean(axis=1))
    accuracy = np.array([x.mean() for x in a])
    frame = pd.DataFrame({"dataset": datasets, "n": [len(x) for x in a], "accuracy": accuracy,
                          "ci_low": low, "ci_high": high})
    return MethodInterval(method, seeds, frame, float(accuracy.mean()), float(mean_low), float(mean_high))


# ---------------------------------------------------------------- comparing two methods


@dataclass(frozen=True)
class DatasetResult:
    dataset: str
    n: int
    a: float
    b: float
    delta: float
    ci_low: float
    ci_high: float
    p: float
    p_holm: float


@dataclass(frozen=True)
class MeanResult:
    a: float
    b: float
    delta: float
    ci_low: float
    ci_high: float
    p: float


@dataclass(frozen=True)
class Comparison:
    """A paired comparison of methods ``a`` and ``b`` on one study's report examples.

    ``n_seeds`` is the number of seeds both sides have: the shared count when
    both ran the same seeds, otherwise the smaller of the two counts
    (``seeds_a``/``seeds_b`` name them; zero-shot has one deterministic run).
    """

    a: str
    b: str
    study: str
    n_seeds: int
    datasets: list[DatasetResult]
    mean: MeanResult
    seeds_a: tuple[int, ...] = ()
    seeds_b: tuple[int, ...] = ()
    metric: str = "accuracy"
    test: str = ""  # which per-dataset test produced p
    n_resamples: int = N_RESAMPLES
    unpaired_datasets: tuple[str, ...] = field(default=())  # scored by only one side; left out

    def to_json(self) -> dict:
        """The documented shape: {"a", "b", "study", "n_seeds", "datasets": [...], "mean": {...}}."""
        return {"a": self.a, "b": self.b, "study": self.study, "n_seeds": self.n_seeds,
                "datasets": [asdict(d) for d in self.datasets], "mean": asdict(self.mean)}

    def dumps(self) -> str:
        return json.dumps(self.to_json())

    def significant(self) -> list[DatasetResult]:
        """Datasets whose Holm-adjusted p is below ALPHA."""
        return [d for d in self.datasets if d.p_holm < ALPHA]

    def mean_significant(self) -> bool:
        """The mean differs: p < ALPHA and a 95% CI that excludes 0 (the test conditions on the
        seeds that ran, the interval also carries their variance)."""
        return self.mean.p < ALPHA and (self.mean.ci_low > 0 or self.mean.ci_high < 0)

    def verdict(self) -> str:
        """One line; a win is :meth:`mean_significant`."""
        m, n = self.mean, len(self.datasets)
        better = sum(d.delta > 0 for d in self.significant())
        worse = sum(d.delta < 0 for d in self.significant())
        detail = f"Δ {_pts(m.delta)} points, 95% CI {_pts(m.ci_low)} to {_pts(m.ci_high)}, p = {fmt_p(m.p)}"
        per_dataset = (f"{self.a} significantly better on {better} and worse on {worse} of {n} dataset"
                       f"{'s' if n != 1 else ''} (Holm, p < {ALPHA})")
        over = f"the mean over {n} dataset{'s' if n != 1 else ''}"
        winner, loser = (self.a, self.b) if m.delta > 0 else (self.b, self.a)
        if self.mean_significant():
            return f"verdict: {winner} beats {loser} on {over} ({detail}); {per_dataset}"
        if m.p < ALPHA:
            return (f"verdict: {winner} is ahead of {loser} on these examples, but the 95% CI (with seed "
                    f"variance) includes 0: no robust difference on {over} ({detail}); {per_dataset}")
        return f"verdict: no significant difference between {self.a} and {self.b} on {over} ({detail}); {per_dataset}"

    def format_text(self) -> str:
        def seeds(name, s):
            return f"{name} {len(s)} seed{'s' if len(s) != 1 else ''}"

        lines = [
            f"{self.a} vs {self.b}, study {self.study}: report split, {self.metric} %, "
            f"{seeds(self.a, self.seeds_a)}, {seeds(self.b, self.seeds_b)}",
            f"Δ = {self.a} − {self.b}; 95% CI: paired bootstrap over examples and seeds ({self.n_resamples} draws); "
            f"p: {self.test} per dataset, Holm-adjusted across datasets (* = p (Holm) < {ALPHA}), "
            f"sign-flip permutation for the mean",
            f"| dataset | n | {self.a} | {self.b} | Δ | 95% CI | p | p (Holm) |",
            "|---|---:|---:|---:|---:|---|---:|---:|",
        ]
        for d in self.datasets:
            mark = " *" if d.p_holm < ALPHA else ""
            lines.append(f"| {d.dataset} | {d.n} | {100 * d.a:.1f} | {100 * d.b:.1f} | {_pts(d.delta)} | "
                         f"[{_pts(d.ci_low)}, {_pts(d.ci_high)}] | {fmt_p(d.p)} | {fmt_p(d.p_holm)}{mark} |")
        m = self.mean
        lines.append(f"| mean | {sum(d.n for d in self.datasets)} | {100 * m.a:.1f} | {100 * m.b:.1f} | "
                     f"{_pts(m.delta)} | [{_pts(m.ci_low)}, {_pts(m.ci_high)}] | {fmt_p(m.p)} | |")
        if self.unpaired_datasets:
            lines.append(f"left out (scored by one side only): {', '.join(self.unpaired_datasets)}")
        lines.append(self.verdict())
        return "\n".join(lines)


def _pts(x: float) -> str:
    """A difference of fractions as signed percentage points."""
    return f"{100 * x:+.1f}"


def fmt_p(p: float) -> str:
    return f"{p:.2g}" if p >= 0.001 else f"{p:.1e}"


def compare(predictions: pd.DataFrame | PredictionSet, a: str, b: str, *, study: str, metric: str = "accuracy",
            n_resamples: int = N_RESAMPLES, seed: int = RANDOM_SEED) -> Comparison:
    """Paired comparison of methods ``a`` and ``b`` in ``predictions`` (one study's rows)."""
    predictions = _as_set(predictions)
    sides = {}
    for method in (a, b):
        matrices = predictions.correctness(method, metric)
        if not matrices:
            have = predictions.published_methods()
            raise StatsError(f"method {method!r} has no {published_phase(method)} report predictions in study "
                             f"{study!r} (methods with them: {', '.join(have) or 'none'})")
        sides[method] = matrices
    seeds_a, seeds_b = seeds_of(sides[a]), seeds_of(sides[b])
    common = dataset_order(set(sides[a]) & set(sides[b]))
    unpaired = tuple(sorted(set(sides[a]) ^ set(sides[b])))
    mats_a, mats_b, names = [], [], []
    for d in common:
        ids = sides[a][d].index.intersection(sides[b][d].index)
        if len(ids) == 0:
            continue
        ma = sides[a][d].loc[ids].reindex(columns=list(seeds_a)).to_numpy(dtype=np.float64)
        mb = sides[b][d].loc[ids].reindex(columns=list(seeds_b)).to_numpy(dtype=np.float64)
        if np.isnan(ma).any() or np.isnan(mb).any():
            raise StatsError(f"dataset {d}: not every seed of {a if np.isnan(ma).any() else b} scored it")
        mats_a.append(ma), mats_b.append(mb), names.append(d)
    if not names:
        raise StatsError(f"{a} and {b} have no report examples in common in study {study!r} "
                         f"(paired by dataset and example_id)")

    rng = np.random.default_rng(seed)
    paired_seeds = seeds_a == seeds_b
    reps = bootstrap_replicates(mats_a, mats_b, paired_seeds=paired_seeds, n_resamples=n_resamples, rng=rng)
    low, high = percentile_interval(reps)
    mean_low, mean_high = percentile_interval(reps.mean(axis=1))

    single_seed = len(seeds_a) == 1 and len(seeds_b) == 1
    per_example = [ma.mean(axis=1) - mb.mean(axis=1) for ma, mb in zip(mats_a, mats_b)]  # d_i per dataset
    if single_seed:
        pvalues = [mcnemar_pvalue(ma[:, 0], mb[:, 0]) for ma, mb in zip(mats_a, mats_b)]
        test = "exact McNemar"
    else:
        pvalues = [sign_flip_pvalue(d, n_resamples=n_resamples, rng=rng) for d in per_example]
        test = f"sign-flip permutation ({n_resamples} draws)"
    # The mean over datasets: sum_d sum_i d_i / (D n_d) is its Δ; flip every example's sign.
    weighted = np.concatenate([d / (len(names) * len(d)) for d in per_example])
    mean_p = sign_flip_pvalue(weighted, n_resamples=n_resamples, rng=rng)
    p_holm = holm(pvalues)

    results = []
    for i, name in enumerate(names):
        acc_a, acc_b = float(mats_a[i].mean()), float(mats_b[i].mean())
        results.append(DatasetResult(name, len(mats_a[i]), acc_a, acc_b, acc_a - acc_b,
                                     float(low[i]), float(high[i]), float(pvalues[i]), float(p_holm[i])))
    mean = MeanResult(float(np.mean([r.a for r in results])), float(np.mean([r.b for r in results])),
                      float(np.mean([r.delta for r in results])), float(mean_low), float(mean_high), mean_p)
    n_seeds = len(seeds_a) if paired_seeds else min(len(seeds_a), len(seeds_b))
    return Comparison(a, b, study, n_seeds, results, mean, seeds_a, seeds_b, metric, test, n_resamples, unpaired)
