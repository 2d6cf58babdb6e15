"""Run-level statistics: the training run is the unit of inference.

A finetuning method's score moves with its seed (initialisation, data order)
as much as with the test examples (Bouthillier et al., MLSys 2021), so every
interval and p-value here carries both. Per dataset d, a method's runs give
a 0/1 matrix ``x[i, s]`` (report example i, seed s). Two methods are paired by
``(dataset, example_id)`` and, when they ran the same seed list, by seed.

The model behind the standard error is the two-way random-effects layout of
a paired difference ``D[i, s] = a[i, s] - b[i, s]``:

    D[i, s] = Δ + α_i + β_s + ε_is

``β_s`` is the run (seed) effect, ``α_i`` the example effect that persists
across runs, ``ε_is`` the example x run churn. For the unweighted mean over
datasets, ``Δ̄_s`` (the per-seed mean over datasets of the per-seed accuracy
difference) carries ``β`` and ``ε``; the example effects are shared by every
seed, so they add a second, example part:

    Var(Δ̂) = Var(Δ̄_s) / k  +  Σ_d w_d² σ²_α,d / n_d

- the run part: the sample variance of ``Δ̄_s`` over the k seeds (k − 1
  degrees of freedom), floored at what example x run churn alone gives
  (``Σ_d w_d² MS_residual,d / n_d``, on its own many degrees of freedom):
  two seeds that tie by chance on 16 examples are no evidence of a run
  variance of 0;
- the example part: per dataset, ``σ²_α = (MS_examples − MS_residual) / k``
  from the two-way ANOVA of ``D`` (truncated at 0);
- the interval: ``Δ̂ ± t(0.975, ν) · SE`` with ν by Satterthwaite over the
  mean squares, and never narrower than the seeds' own t interval
  (``t(0.975, k − 1) · SD(Δ̄_s) / √k``); the p-value is the larger of the two
  tests', so p < .05 exactly when the interval excludes 0.

When the two sides ran different seed lists, each side's run part enters on
its own (Welch), and the example part is the variance of the per-example
difference of seed means less each side's residual mean square / its seed
count. A side that does not train (zero-shot: one deterministic run) has no
run part. A trained side with one run has a run part that cannot be
estimated: its comparisons have no interval and are ``inconclusive``.

``mde`` is the difference the comparison detects with 80% power in a
two-sided test at α = .05, from its own SE and ν: the noncentral-t shift
that reaches 80% power, times the SE.

The verdict reads the 95% interval: ``a_better`` / ``b_better`` when it
excludes 0, ``equivalent`` when it lies inside ±margin (default 1 point),
``inconclusive`` otherwise. Its level is proved by simulation
(:func:`calibrate`, ``python -m harness.stats calibrate``, and
tests/test_stats_calibration.py). What it conditions on: one
hyperparameter search per method; the search's own randomness is not
resampled.

A single method's accuracy: within one run, Clopper–Pearson over its
examples; across k ≥ 2 runs, the run-level t interval above, widened to
contain Clopper–Pearson's (so 16/16 on every seed is not [100, 100]).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd
from scipy import stats as scipy_stats

ALPHA = 0.05  # two-sided level of every test, interval and verdict
CONFIDENCE = 1 - ALPHA
POWER = 0.80  # the power an `mde` is quoted at
DEFAULT_MARGIN = 0.01  # ±1 point: a 95% interval inside it reads `equivalent`
VERDICTS = ("a_better", "b_better", "equivalent", "inconclusive")
METRICS = {"accuracy": "pred", "acc_norm": "pred_norm"}  # metric -> the prediction column it scores
# Which phase publishes a method's report numbers: fresh final runs, or, for a method of the
# registry's "reference" role (the base model, untrained), its one deterministic reference run.
DEFAULT_PUBLISHED_PHASE = "final"
# A reference-phase method is one deterministic run that trains nothing: it has no run-to-run variance.
UNTRAINED_PHASES = ("reference",)
# Columns a comparison reads; the option log-likelihood lists are not needed.
PREDICTION_COLUMNS = ["study", "method", "trial_id", "phase", "seed", "dataset", "role", "example_id", "gold",
                      "pred", "pred_norm", "created_at"]


class StatsError(ValueError):
    """The predictions cannot support the requested comparison (one line, for the CLI)."""


# ---------------------------------------------------------------- per-example correctness


def published_phase(method: str) -> str:
    """``reference`` for a method of the registry's reference role, else ``final`` (a plugin method this
    process has not imported publishes final runs, as every trained method does)."""
    from harness import methods

    try:
        return "reference" if methods.get(method).role == "reference" else DEFAULT_PUBLISHED_PHASE
    except ValueError:
        return DEFAULT_PUBLISHED_PHASE


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


def trains(method: str) -> bool:
    """False for a method published from one deterministic, untrained run (zero-shot)."""
    return published_phase(method) not in UNTRAINED_PHASES


# ---------------------------------------------------------------- the numerics
#
# Everything below works on arrays with leading batch dimensions (``...``), so
# the same code scores one study (no batch) and 2,000 simulated ones.


@dataclass(frozen=True)
class DatasetStats:
    """What one dataset contributes: per-seed mean scores of each side and the example part's mean squares.

    ``seed_a`` is (..., k_a): side A's accuracy per seed (``seed_b`` likewise, None for one method).
    ``example_terms`` are (value (...,), df) pairs whose sum estimates σ²_α (the example part is
    that sum / n); a sum ≤ 0 counts as 0.
    """

    n: int
    seed_a: np.ndarray
    seed_b: np.ndarray | None
    example_terms: tuple[tuple[np.ndarray, float], ...]
    churn_a: np.ndarray | float = 0.0  # MS_residual / n of side A (of the paired difference when paired)
    churn_b: np.ndarray | float = 0.0

    def __getitem__(self, index) -> "DatasetStats":
        """The same statistics for part of the batch, e.g. ``part[:, d]``: dataset d of a (studies, datasets) batch."""
        def pick(x):
            return np.asarray(x)[index] if np.ndim(x) else x

        return DatasetStats(self.n, pick(self.seed_a), None if self.seed_b is None else pick(self.seed_b),
                            tuple((pick(v), d) for v, d in self.example_terms), pick(self.churn_a),
                            pick(self.churn_b))


def _as_float(x) -> np.ndarray:
    x = np.asarray(x)
    return x if np.issubdtype(x.dtype, np.floating) else x.astype(np.float64)


# Means over one axis of (..., n examples, k seeds) as matrix products: numpy's reductions over a
# short or strided axis are several times slower, which the calibration's millions of studies feel.
def _over_seeds(x: np.ndarray) -> np.ndarray:
    return (x @ np.ones(x.shape[-1], dtype=x.dtype)) / x.shape[-1]


def _over_examples(x: np.ndarray) -> np.ndarray:
    return (np.ones(x.shape[-2], dtype=x.dtype) @ x) / x.shape[-2]


def _residual_ms(x: np.ndarray) -> np.ndarray:
    """Residual mean square of the additive example + seed fit of x (..., n, k); needs n, k ≥ 2.

    From sums of squares (no residual array): SS = Σx² − kΣ r̄_i² − nΣ c̄_s² + nk ḡ².
    """
    n, k = x.shape[-2:]
    rows, cols = _over_seeds(x), _over_examples(x)
    grand = rows.mean(axis=-1)
    ss = (np.einsum("...ik,...ik->...", x, x) - k * (rows * rows).sum(axis=-1) - n * (cols * cols).sum(axis=-1)
          + n * k * grand * grand)
    return np.maximum(ss, 0.0) / ((n - 1) * (k - 1))


def dataset_stats(a: np.ndarray, b: np.ndarray | None = None, *, paired: bool = False) -> DatasetStats:
    """Per-seed means and the example part of one dataset. ``a`` is (..., n, k_a), ``b`` (..., n, k_b), rows paired.

    ``churn_*`` is MS_residual / n: the part of one seed's score variance that example x run churn
    alone explains, estimated on (n - 1)(k - 1) degrees of freedom. The run part never goes below
    it: with few examples, two seeds can tie by chance, and a run variance of 0 is not evidence.
    """
    a = _as_float(a)
    b = None if b is None else _as_float(b)
    n, k_a = a.shape[-2:]
    seed_a = _over_examples(a)
    seed_b = None if b is None else _over_examples(b)
    terms: list[tuple[np.ndarray, float]] = []
    churn = {"a": np.zeros(a.shape[:-2]), "b": np.zeros(a.shape[:-2])}
    if n >= 2:
        if b is not None and paired:
            # two-way ANOVA of the paired differences: σ²_α = (MS_examples - MS_residual) / k
            d = a - b
            k = k_a
            ms_examples = k * _over_seeds(d).var(axis=-1, ddof=1)
            terms.append((ms_examples / k, n - 1))
            if k >= 2:
                residual = _residual_ms(d)
                terms.append((-residual / k, (n - 1) * (k - 1)))
                churn["a"] = residual / n
        else:
            # var of the per-example seed means, less each side's churn over its seed count
            diff = _over_seeds(a) if b is None else _over_seeds(a) - _over_seeds(b)
            terms.append((diff.var(axis=-1, ddof=1), n - 1))
            for name, side in (("a", a),) if b is None else (("a", a), ("b", b)):
                k = side.shape[-1]
                if k >= 2:
                    residual = _residual_ms(side)
                    terms.append((-residual / k, (n - 1) * (k - 1)))
                    churn[name] = residual / n
    return DatasetStats(n, seed_a, seed_b, tuple(terms), churn["a"], churn["b"])


@dataclass(frozen=True)
class Estimate:
    """A difference (or one method's accuracy) with its run-level uncertainty; fractions, arrays over a batch.

    ``se``, ``ci_*``, ``p`` and ``mde`` are NaN when a trained side has a single run (its run part
    cannot be estimated). ``sigma_seed``: the SD of one seed's Δ̄_s (paired seeds), or of one run
    of each side (unpaired; an untrained side adds 0). ``example_se``: the example part alone.
    """

    delta: np.ndarray
    se: np.ndarray
    df: np.ndarray
    ci_low: np.ndarray
    ci_high: np.ndarray
    p: np.ndarray
    sigma_seed: np.ndarray
    example_se: np.ndarray
    mde: np.ndarray
    n_seeds: int


@dataclass(frozen=True)
class _RunPart:
    """One side's run part: the variance of its seed mean, and the same from the seeds alone."""

    var: np.ndarray  # max(S², churn) / k: the seeds' variance, never below what churn alone gives
    df: np.ndarray  # k - 1 when the seeds' variance is used, the churn's df when the floor is
    raw_var: np.ndarray  # S² / k on k - 1 df: the run-level t interval no interval may be narrower than
    raw_df: float
    per_run: np.ndarray  # max(S², churn): one run's variance (σ_seed²)


def _run_part(seed_means: np.ndarray, trained: bool, churn, churn_df) -> _RunPart:
    """The run part of per-seed scores (..., k); ``churn`` (with ``churn_df``) is what example-level
    churn alone puts into one seed's score variance."""
    k = seed_means.shape[-1]
    shape = seed_means.shape[:-1]
    if not trained:
        zeros = np.zeros(shape)
        return _RunPart(zeros, np.full(shape, np.inf), zeros, np.inf, zeros)
    if k < 2:
        nan = np.full(shape, np.nan)
        return _RunPart(nan, nan, nan, np.nan, nan)
    s2 = seed_means.var(axis=-1, ddof=1)
    floored = s2 < churn
    per_run = np.where(floored, churn, s2)
    return _RunPart(per_run / k, np.where(floored, churn_df, k - 1.0), s2 / k, k - 1.0, per_run)


def _churn(parts: list[DatasetStats], w: np.ndarray, side: str) -> tuple[np.ndarray, np.ndarray]:
    """Σ_d w_d² MS_residual,d / n_d of one side (or of the paired difference), and its Satterthwaite df."""
    terms = []
    for wd, p in zip(w, parts):
        k = (p.seed_a if side == "a" else p.seed_b).shape[-1]
        if wd and k >= 2 and p.n >= 2:
            terms.append((wd ** 2 * (p.churn_a if side == "a" else p.churn_b), (p.n - 1.0) * (k - 1.0)))
    if not terms:
        return np.float64(0.0), np.float64(np.inf)
    return _satterthwaite(terms)


def estimate(parts: list[DatasetStats], weights, *, paired: bool = False, trained_a: bool = True,
             trained_b: bool = True, alpha: float = ALPHA) -> Estimate:
    """The weighted sum over datasets of the per-dataset difference (A alone when the parts have no B)."""
    w = np.asarray(weights, dtype=np.float64)
    single = parts[0].seed_b is None
    seed_a = sum(wd * p.seed_a for wd, p in zip(w, parts))  # (..., k_a): Δ̄ per seed of side A
    if single:
        delta = seed_a.mean(axis=-1)
        runs = [_run_part(seed_a, trained_a, *_churn(parts, w, "a"))]
        k = seed_a.shape[-1]
    else:
        seed_b = sum(wd * p.seed_b for wd, p in zip(w, parts))
        if paired:
            per_seed = seed_a - seed_b  # Δ̄_s
            delta = per_seed.mean(axis=-1)
            runs = [_run_part(per_seed, trained_a or trained_b, *_churn(parts, w, "a"))]
            k = per_seed.shape[-1]
        else:
            delta = seed_a.mean(axis=-1) - seed_b.mean(axis=-1)
            runs = [_run_part(seed_a, trained_a, *_churn(parts, w, "a")),
                    _run_part(seed_b, trained_b, *_churn(parts, w, "b"))]
            k = min(x.shape[-1] for x, t in ((seed_a, trained_a), (seed_b, trained_b)) if t) \
                if (trained_a or trained_b) else 1
    components: list[tuple[np.ndarray, np.ndarray | float]] = [(r.var, r.df) for r in runs]
    example_var = np.zeros(np.shape(delta))
    for wd, part in zip(w, parts):
        if wd == 0 or not part.example_terms:
            continue
        total = sum(v for v, _ in part.example_terms)
        keep = total > 0  # a negative estimate of σ²_α counts as 0, and so do its terms
        scale = wd ** 2 / part.n
        for value, dof in part.example_terms:
            term = np.where(keep, value * scale, 0.0)
            components.append((term, dof))
            example_var = example_var + term
    var, df = _satterthwaite(components)
    raw_var, raw_df = _satterthwaite([(r.raw_var, r.raw_df) for r in runs])
    se, raw_se = np.sqrt(var), np.sqrt(raw_var)
    ci_low, ci_high, p = t_interval(delta, se, df, alpha)
    # Never narrower than the seeds' own t interval on k - 1 df: the run is the unit, and a
    # well-estimated example part must not lend its degrees of freedom to two seeds.
    run_low, run_high, run_p = t_interval(delta, raw_se, raw_df, alpha)
    ci_low, ci_high, p = np.fmin(ci_low, run_low), np.fmax(ci_high, run_high), np.fmax(p, run_p)
    mde = np.fmax(se * power_shift(df, alpha), raw_se * power_shift(raw_df, alpha))
    sigma2 = sum(r.per_run for r in runs)
    return Estimate(delta, se, df, ci_low, ci_high, p, np.sqrt(sigma2), np.sqrt(example_var), mde, int(k))


def _satterthwaite(components: list[tuple[np.ndarray, float]]) -> tuple[np.ndarray, np.ndarray]:
    """The sum of (value, df) variance terms and its Satterthwaite df (at least 1).

    A NaN value (a run part that cannot be estimated) makes both NaN; terms with infinite df
    (exactly known, e.g. an untrained side's 0) add nothing to the df's denominator.
    """
    var = sum(v for v, _ in components)
    with np.errstate(divide="ignore", invalid="ignore"):
        denom = sum(np.where((v == 0) | ~np.isfinite(d), 0.0, v ** 2 / np.asarray(d, dtype=np.float64))
                    for v, d in components)
        df = np.where(np.asarray(denom) > 0, var ** 2 / denom, np.inf)
    df = np.where(np.isnan(var), np.nan, np.maximum(df, 1.0))  # a subtracted term can pull it below any part's df
    return var, df


def t_interval(delta, se, df, alpha: float = ALPHA):
    """(low, high, two-sided p) of Δ̂ ± t(1 - α/2, ν)·SE; an SE of 0 gives a point and p = 1 (Δ̂ = 0) or 0."""
    delta, se, df = np.broadcast_arrays(*(np.asarray(x, dtype=np.float64) for x in (delta, se, df)))
    q = scipy_stats.t.ppf(1 - alpha / 2, df)
    half = q * se
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.abs(delta) / se
        p = np.where(se > 0, 2 * scipy_stats.t.sf(z, df), np.where(delta == 0, 1.0, 0.0))
    p = np.where(np.isnan(se), np.nan, p)
    return delta - half, delta + half, p


# power_shift's values by (ν to 0.1, alpha, power), for the whole process.
_SHIFTS: dict[tuple[float, float, float], float] = {}


def _shifts(dfs: np.ndarray, alpha: float, power: float) -> np.ndarray:
    """The shift of power_shift for each ν of ``dfs`` (finite, > 0): a bisection run for all at once."""
    crit = scipy_stats.t.ppf(1 - alpha / 2, dfs)

    def reach(ncp):
        # P(T > crit) + P(T < -crit) - power; the lower tail as the upper tail of -T, where nct stays finite
        return scipy_stats.nct.sf(crit, dfs, ncp) + scipy_stats.nct.sf(crit, dfs, -ncp) - power

    low, high = np.zeros_like(dfs), np.full_like(dfs, 4.0)
    while np.any(short := reach(high) < 0):  # bracket each root; nct's tails turn to NaN far past it
        low, high = np.where(short, high, low), np.where(short, 2 * high, high)
    for _ in range(60):  # the bracket shrinks to 2**-60 of its width: exact in float64
        mid = (low + high) / 2
        below = reach(mid) < 0
        low, high = np.where(below, mid, low), np.where(below, high, mid)
    return (low + high) / 2


def power_shift(df, alpha: float = ALPHA, power: float = POWER) -> np.ndarray:
    """The true Δ / SE at which a two-sided t test with ν = df rejects with probability ``power``."""
    df = np.asarray(df, dtype=np.float64)
    rounded = np.where(np.isfinite(df), np.round(df, 1), np.inf)  # ν to 0.1 is plenty; it keeps the cache small
    out = np.full(df.shape, np.nan)
    values = np.unique(rounded[~np.isnan(rounded)])
    todo = np.array([v for v in values if 0 < v < np.inf and (v, alpha, power) not in _SHIFTS])
    if todo.size:
        _SHIFTS.update({(float(v), alpha, power): float(x) for v, x in zip(todo, _shifts(todo, alpha, power))})
    for value in values:
        if value == np.inf:
            out[rounded == value] = scipy_stats.norm.ppf(1 - alpha / 2) + scipy_stats.norm.ppf(power)
        elif value > 0:
            out[rounded == value] = _SHIFTS[(float(value), alpha, power)]
    return out if out.shape else float(out)


def verdict(ci_low, ci_high, margin: float = DEFAULT_MARGIN) -> np.ndarray:
    """``a_better`` / ``b_better`` when the interval excludes 0, ``equivalent`` inside ±margin, else ``inconclusive``."""
    low, high = np.asarray(ci_low, dtype=np.float64), np.asarray(ci_high, dtype=np.float64)
    out = np.full(np.broadcast(low, high).shape, "inconclusive", dtype=object)
    out[(low > -margin) & (high < margin)] = "equivalent"
    out[low > 0] = "a_better"
    out[high < 0] = "b_better"
    return out if out.shape else str(out)


def holm(pvalues) -> np.ndarray:
    """Holm's step-down adjustment: the i-th smallest p times (m - i + 1), kept monotone, capped at 1.

    Works along the last axis; NaN p-values (untestable) stay NaN and do not count in m.
    """
    p = np.asarray(pvalues, dtype=np.float64)
    if p.shape[-1] == 0:
        return p
    m = np.sum(~np.isnan(p), axis=-1, keepdims=True)
    order = np.argsort(np.where(np.isnan(p), np.inf, p), axis=-1, kind="stable")
    ranked = np.take_along_axis(p, order, axis=-1)
    adjusted = np.minimum(1.0, np.fmax.accumulate((m - np.arange(p.shape[-1])) * ranked, axis=-1))
    adjusted = np.where(np.isnan(ranked), np.nan, adjusted)
    out = np.empty_like(p)
    np.put_along_axis(out, order, adjusted, axis=-1)
    return out


def clopper_pearson(successes, n, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Exact binomial interval of a proportion (fractions)."""
    ci = scipy_stats.binomtest(int(successes), int(n)).proportion_ci(confidence_level=confidence, method="exact")
    return float(ci.low), float(ci.high)


# ---------------------------------------------------------------- one method's intervals


@dataclass(frozen=True)
class MethodInterval:
    """A method's report accuracy with its 95% intervals (fractions in [0, 1]).

    ``run_level`` says whether the intervals carry training noise (k ≥ 2 runs, or an untrained
    method); with one trained run they are within-run intervals over examples only.
    """

    method: str
    seeds: tuple[int, ...]
    datasets: pd.DataFrame  # dataset, n, accuracy, ci_low, ci_high
    mean: float
    mean_ci_low: float
    mean_ci_high: float
    run_level: bool = True


def method_interval(predictions: pd.DataFrame | PredictionSet, method: str, *,
                    metric: str = "accuracy") -> MethodInterval | None:
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
    trained = trains(method)
    parts = [dataset_stats(x) for x in a]
    run_level = not trained or len(seeds) >= 2
    lows, highs = [], []
    for i, x in enumerate(a):
        cp_low, cp_high = clopper_pearson(round(float(x.mean()) * len(x)), len(x))
        low, high = cp_low, cp_high
        if trained and len(seeds) >= 2:
            est = estimate([parts[i]], [1.0], trained_a=True)
            low, high = min(low, float(est.ci_low)), max(high, float(est.ci_high))
        lows.append(max(0.0, low)), highs.append(min(1.0, high))
    mean = estimate(parts, np.full(len(parts), 1 / len(parts)), trained_a=trained)
    mean_low, mean_high = float(mean.ci_low), float(mean.ci_high)
    if not np.isfinite(mean.se):  # one trained run: the example part alone, a within-run interval
        half = scipy_stats.norm.ppf(1 - ALPHA / 2) * float(mean.example_se)
        mean_low, mean_high = float(mean.delta) - half, float(mean.delta) + half
    accuracy = np.array([x.mean() for x in a])
    frame = pd.DataFrame({"dataset": datasets, "n": [len(x) for x in a], "accuracy": accuracy,
                          "ci_low": lows, "ci_high": highs})
    return MethodInterval(method, seeds, frame, float(accuracy.mean()), max(0.0, mean_low), min(1.0, mean_high),
                          run_level)


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
    se: float = float("nan")
    df: float = float("nan")
    sigma_seed: float = float("nan")
    mde: float = float("nan")
    verdict: str = "inconclusive"


@dataclass(frozen=True)
class MeanResult:
    a: float
    b: float
    delta: float
    ci_low: float
    ci_high: float
    p: float
    se: float = float("nan")
    df: float = float("nan")
    n_seeds: int = 0
    sigma_seed: float = float("nan")
    mde: float = float("nan")
    verdict: str = "inconclusive"


def _number(x: float) -> float | None:
    """JSON has no NaN: an estimate that cannot be made is null."""
    return None if x is None or not np.isfinite(x) else float(x)


@dataclass(frozen=True)
class Comparison:
    """A paired comparison of methods ``a`` and ``b`` on one study's report examples.

    ``n_seeds`` is the number of runs behind the run part: the shared count when both ran the
    same seeds, otherwise the smaller count among the trained sides (``seeds_a``/``seeds_b`` name
    them; zero-shot has one deterministic run and no run part).
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
    margin: float = DEFAULT_MARGIN
    paired_seeds: bool = False
    unpaired_datasets: tuple[str, ...] = field(default=())  # scored by only one side; left out

    def to_json(self) -> dict:
        """The documented shape: {"a", "b", "study", "n_seeds", "datasets": [...], "mean": {...}} (NaN -> null)."""
        def clean(d: dict) -> dict:
            return {k: (_number(v) if isinstance(v, float) else v) for k, v in d.items()}

        return {"a": self.a, "b": self.b, "study": self.study, "n_seeds": self.n_seeds,
                "datasets": [clean(asdict(d)) for d in self.datasets], "mean": clean(asdict(self.mean))}

    def dumps(self) -> str:
        return json.dumps(self.to_json())

    def significant(self) -> list[DatasetResult]:
        """Datasets whose Holm-adjusted p is below ALPHA."""
        return [d for d in self.datasets if d.p_holm < ALPHA]

    def verdict(self) -> str:
        """One line: the mean's verdict, why when it is inconclusive, and the per-dataset count."""
        m, n = self.mean, len(self.datasets)
        over = f"the mean over {n} dataset{'s' if n != 1 else ''}"
        better = sum(d.delta > 0 for d in self.significant())
        worse = sum(d.delta < 0 for d in self.significant())
        per_dataset = (f"{self.a} significantly better on {better} and worse on {worse} of {n} dataset"
                       f"{'s' if n != 1 else ''} (Holm, p < {ALPHA})")
        if not np.isfinite(m.se):
            return (f"verdict: inconclusive on {over} (Δ {_pts(m.delta)} points): {self._one_run()} has a single "
                    f"trained run, so training noise can't be estimated; run at least 2 (better 3 or more) final seeds")
        detail = (f"Δ {_pts(m.delta)} points, 95% CI {_pts(m.ci_low)} to {_pts(m.ci_high)}, p = {fmt_p(m.p)}, "
                  f"{self.n_seeds} run{'s' if self.n_seeds != 1 else ''} per method, mde {100 * m.mde:.1f} points")
        if m.verdict in ("a_better", "b_better"):
            winner, loser = (self.a, self.b) if m.verdict == "a_better" else (self.b, self.a)
            return f"verdict: {winner} beats {loser} on {over} ({detail}); {per_dataset}"
        if m.verdict == "equivalent":
            return (f"verdict: {self.a} and {self.b} are equivalent within ±{100 * self.margin:g} points on {over} "
                    f"({detail}); {per_dataset}")
        runs = f"{self.n_seeds} run{'s' if self.n_seeds != 1 else ''} per method"
        return (f"verdict: inconclusive on {over}: {runs}: differences under {100 * m.mde:.0f} points can't be told "
                f"from training noise ({detail}); {per_dataset}")

    def _one_run(self) -> str:
        singles = [name for name, seeds in ((self.a, self.seeds_a), (self.b, self.seeds_b))
                   if len(seeds) == 1 and trains(name)]
        return " and ".join(singles) or self.a

    def format_text(self) -> str:
        def seeds(name, s):
            return f"{name} {len(s)} seed{'s' if len(s) != 1 else ''}"

        pairing = "paired by seed" if self.paired_seeds else "seeds unpaired"
        lines = [
            f"{self.a} vs {self.b}, study {self.study}: report split, {self.metric} %, "
            f"{seeds(self.a, self.seeds_a)}, {seeds(self.b, self.seeds_b)} ({pairing})",
            f"Δ = {self.a} − {self.b}; 95% CI and p: t over runs (the run is the unit; SE = run part + example "
            f"part, Satterthwaite df), Holm across datasets (* = p (Holm) < {ALPHA}); mde: detectable with "
            f"{POWER:.0%} power",
            f"| dataset | n | {self.a} | {self.b} | Δ | 95% CI | p | p (Holm) |",
            "|---|---:|---:|---:|---:|---|---:|---:|",
        ]
        for d in self.datasets:
            mark = " *" if d.p_holm < ALPHA else ""
            lines.append(f"| {d.dataset} | {d.n} | {100 * d.a:.1f} | {100 * d.b:.1f} | {_pts(d.delta)} | "
                         f"{_ci(d.ci_low, d.ci_high)} | {fmt_p(d.p)} | {fmt_p(d.p_holm)}{mark} |")
        m = self.mean
        lines.append(f"| mean | {sum(d.n for d in self.datasets)} | {100 * m.a:.1f} | {100 * m.b:.1f} | "
                     f"{_pts(m.delta)} | {_ci(m.ci_low, m.ci_high)} | {fmt_p(m.p)} | |")
        lines.append(f"mean: SE {_pts_abs(m.se)} points (df {m.df:.1f}), σ_seed {_pts_abs(m.sigma_seed)} points, "
                     f"mde {_pts_abs(m.mde)} points; conditions on one hyperparameter search per method")
        if self.unpaired_datasets:
            lines.append(f"left out (scored by one side only): {', '.join(self.unpaired_datasets)}")
        lines.append(self.verdict())
        return "\n".join(lines)


def _pts(x: float) -> str:
    """A difference of fractions as signed percentage points."""
    return f"{100 * x:+.1f}" if np.isfinite(x) else "?"


def _pts_abs(x: float) -> str:
    return f"{100 * x:.1f}" if np.isfinite(x) else "?"


def _ci(low: float, high: float) -> str:
    return f"[{_pts(low)}, {_pts(high)}]" if np.isfinite(low) else "- (one run)"


def fmt_p(p: float) -> str:
    if p is None or not np.isfinite(p):
        return "-"
    return f"{p:.2g}" if p >= 0.001 else f"{p:.1e}"


def compare(predictions: pd.DataFrame | PredictionSet, a: str, b: str, *, study: str, metric: str = "accuracy",
            margin: float = DEFAULT_MARGIN) -> Comparison:
    """Paired comparison of methods ``a`` and ``b`` in ``predictions`` (one study's rows)."""
    if not margin > 0:
        raise StatsError(f"margin must be a positive number of points, got {100 * margin:g}")
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
    if not common:
        raise StatsError(f"{a} and {b} have no datasets in common in study {study!r} "
                         f"({a}: {', '.join(sorted(sides[a]))}; {b}: {', '.join(sorted(sides[b]))})")
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
    trained_a, trained_b = trains(a), trains(b)
    paired = seeds_a == seeds_b and trained_a and trained_b
    parts = [dataset_stats(ma, mb, paired=paired) for ma, mb in zip(mats_a, mats_b)]
    kw = dict(paired=paired, trained_a=trained_a, trained_b=trained_b)
    per_dataset = [estimate([part], [1.0], **kw) for part in parts]
    p_holm = holm([float(e.p) for e in per_dataset])
    results = []
    for i, (name, e) in enumerate(zip(names, per_dataset)):
        acc_a, acc_b = float(mats_a[i].mean()), float(mats_b[i].mean())
        results.append(DatasetResult(
            name, len(mats_a[i]), acc_a, acc_b, float(e.delta), float(e.ci_low), float(e.ci_high), float(e.p),
            float(p_holm[i]), float(e.se), float(e.df), float(e.sigma_seed), float(e.mde),
            str(verdict(e.ci_low, e.ci_high, margin))))
    m = estimate(parts, np.full(len(parts), 1 / len(parts)), **kw)
    mean = MeanResult(float(np.mean([r.a for r in results])), float(np.mean([r.b for r in results])),
                      float(m.delta), float(m.ci_low), float(m.ci_high), float(m.p), float(m.se), float(m.df),
                      m.n_seeds, float(m.sigma_seed), float(m.mde), str(verdict(m.ci_low, m.ci_high, margin)))
    return Comparison(a, b, study, m.n_seeds, results, mean, seeds_a, seeds_b, metric, margin, paired, unpaired)


# ---------------------------------------------------------------- planning: the mde a study will have


@dataclass(frozen=True)
class Prior:
    """What a comparison's variance is made of, before a study has run (fractions).

    ``sigma_seed``: SD over seeds of Δ̄_s, the per-seed difference of the mean over datasets
    (one run of each method, paired by seed). ``example_sd``: SD over examples of the persistent
    per-example difference σ_α (within a dataset). ``source`` says where they come from.
    """

    sigma_seed: float
    example_sd: float
    source: str


def planned(n_seeds: int, report_sizes: list[int], prior: Prior, alpha: float = ALPHA) -> dict:
    """SE, df and mde of the mean-over-datasets comparison of a study with these seeds and report sizes.

    Mirrors :func:`estimate`: the Satterthwaite mde, but never below the run part's own on k - 1 df.
    """
    d = len(report_sizes)
    if n_seeds < 2:
        return {"n_seeds": n_seeds, "se": float("nan"), "df": float("nan"), "mde": float("nan")}
    run = prior.sigma_seed ** 2 / n_seeds
    examples = [prior.example_sd ** 2 / (d ** 2 * n) for n in report_sizes]
    var, df = _satterthwaite([(np.float64(run), n_seeds - 1.0)]
                             + [(np.float64(e), n - 1.0) for e, n in zip(examples, report_sizes) if n > 1])
    mde = max(float(np.sqrt(var) * power_shift(df, alpha)), float(np.sqrt(run) * power_shift(n_seeds - 1.0, alpha)))
    return {"n_seeds": n_seeds, "se": float(np.sqrt(var)), "df": float(df), "mde": mde}


def seeds_for(target_mde: float, report_sizes: list[int], prior: Prior, most: int = 1000) -> int | None:
    """The fewest seeds (≥ 2) whose planned mde is at most ``target_mde``; None if even ``most`` don't reach it."""
    for k in range(2, most + 1):
        if planned(k, report_sizes, prior)["mde"] <= target_mde:
            return k
    return None


# ---------------------------------------------------------------- calibration by simulation


@dataclass(frozen=True)
class Setting:
    """One simulated design: per-run effects with SD ``sigma_run`` (accuracy points, per dataset and run),
    ``n`` report examples per dataset, ``k`` seeds per method, and a planted run-level difference ``effect``
    (points, added to method A's every run)."""

    sigma_run: float
    n: int
    k: int
    effect: float = 0.0


CALIBRATION_GRID = tuple(Setting(s, n, k) for s in (0.0, 5.0, 15.0) for n in (16, 500) for k in (2, 3, 5))


# Simulated outcomes drawn at once per method (studies x datasets x examples x seeds): large enough
# that numpy's per-call overhead vanishes for small designs, small enough to stay a few tens of MB.
SIMULATION_BATCH = 9_000_000


def simulate(setting: Setting, *, studies: int = 2000, datasets: int = 14, seed: int = 0, margin: float = DEFAULT_MARGIN,
             chunk: int | None = None) -> dict:
    """A/A (or planted-effect) studies of two methods, scored exactly as :func:`compare` scores a real one.

    Example i of a dataset has a difficulty q_i ~ 0.1 + 0.8 Beta(2, 1.5), shared by both methods and every
    run; run r of a method shifts every example of a dataset by u_r ~ N(0, sigma_run) points; an example is
    right with probability clip(q_i + u_r [+ effect], 0, 1), drawn afresh per run (example-level churn).
    Both methods run the same seed list (paired by seed, as a study's final runs are).
    Returns the verdict's rejection rate, the 95% interval's coverage of the planted Δ, the rate at
    which Holm flags any dataset, and the reported mde (mean and root mean square), all over ``studies``.
    ``chunk``: studies drawn at once (default: as many as ``SIMULATION_BATCH`` outcomes allow).
    """
    if chunk is None:
        chunk = max(1, SIMULATION_BATCH // (datasets * setting.n * setting.k))
    rng = np.random.default_rng([seed, int(setting.sigma_run * 10), setting.n, setting.k, int(setting.effect * 1000)])
    s_run, effect = setting.sigma_run / 100, setting.effect / 100
    reject = covered = any_dataset = 0
    mdes = []
    w = np.full(datasets, 1 / datasets)
    for start in range(0, studies, chunk):
        m = min(chunk, studies - start)
        q = 0.1 + 0.8 * rng.beta(2.0, 1.5, size=(m, datasets, setting.n, 1)).astype(np.float32)

        def runs(shift):
            u = rng.normal(shift, s_run, size=(m, datasets, 1, setting.k)).astype(np.float32)
            # right with probability clip(q + u, 0, 1): a uniform draw below q + u (no clip needed)
            return (rng.random((m, datasets, setting.n, setting.k), dtype=np.float32) < q + u).astype(np.float32)

        a, b = runs(effect), runs(0.0)
        batch = dataset_stats(a, b, paired=True)  # every dataset of every study at once: batch (m, datasets)
        parts = [batch[:, d] for d in range(datasets)]
        mean = estimate(parts, w, paired=True)
        v = verdict(mean.ci_low, mean.ci_high, margin)
        reject += int(np.sum((v == "a_better") | (v == "b_better")))
        covered += int(np.sum((mean.ci_low <= effect) & (effect <= mean.ci_high)))
        per_dataset = estimate([batch], [1.0], paired=True).p  # each dataset on its own: (m, datasets)
        any_dataset += int(np.sum((holm(per_dataset) < ALPHA).any(axis=-1)))
        mdes.append(mean.mde)
    mde = np.concatenate(mdes)
    return {"sigma_run": setting.sigma_run, "n": setting.n, "k": setting.k, "effect": setting.effect,
            "studies": studies, "reject": reject / studies, "coverage": covered / studies,
            "any_dataset_holm": any_dataset / studies, "mde_mean": float(np.nanmean(mde) * 100),
            "mde_rms": float(np.sqrt(np.nanmean(mde ** 2)) * 100)}


def calibrate(grid=CALIBRATION_GRID, *, studies: int = 2000, seed: int = 0, power_k_min: int = 3) -> pd.DataFrame:
    """Each setting under the null, then, for k ≥ ``power_k_min`` and sigma_run > 0, the same design with A
    ahead by the null studies' root-mean-square reported mde: its rejection rate is the verdict's power."""
    rows = []
    for s in grid:
        null = simulate(s, studies=studies, seed=seed)
        row = {k: null[k] for k in ("sigma_run", "n", "k", "studies", "mde_rms")}
        row.update(false_positive=null["reject"], coverage=null["coverage"], any_dataset_holm=null["any_dataset_holm"],
                   power_at_mde=np.nan)
        if s.k >= power_k_min and s.sigma_run > 0:
            alt = simulate(Setting(s.sigma_run, s.n, s.k, effect=null["mde_rms"]), studies=studies, seed=seed + 1)
            row["power_at_mde"] = alt["reject"]
        rows.append(row)
    return pd.DataFrame(rows)


def format_calibration(table: pd.DataFrame) -> str:
    lines = ["| run SD (points) | examples | seeds | false positives | CI coverage | any dataset (Holm) | "
             "mde (points, rms) | power at mde |", "|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in table.itertuples():
        power = "-" if np.isnan(r.power_at_mde) else f"{r.power_at_mde:.1%}"
        lines.append(f"| {r.sigma_run:g} | {r.n} | {r.k} | {r.false_positive:.1%} | {r.coverage:.1%} | "
                     f"{r.any_dataset_holm:.1%} | {r.mde_rms:.1f} | {power} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m harness.stats",
        description="Prove the comparison's level by simulation: A/A studies scored as --compare scores a real one.",
        epilog="examples:\n  python -m harness.stats calibrate\n  python -m harness.stats calibrate --studies 500",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    cal = sub.add_parser("calibrate", help="print the calibration table (14 datasets per simulated study)")
    cal.add_argument("--studies", type=int, default=2000, help="simulated studies per setting (default: 2000)")
    cal.add_argument("--seed", type=int, default=0, help="the simulation's seed (default: 0)")
    args = ap.parse_args(argv)
    if args.studies < 1:
        print("--studies must be a positive integer", file=sys.stderr)
        return 2
    print(format_calibration(calibrate(studies=args.studies, seed=args.seed)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
