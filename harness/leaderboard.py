"""The leaderboard: tables, paired comparisons, a summary and plots computed from the trial records.

    python harness/leaderboard.py [--results-dir DIR] [--study NAME] [--sql QUERY] [--plot FILE.png]
    python harness/leaderboard.py --compare A B [--study NAME] [--json] [--results-dir DIR]

Published numbers come only from ``role == 'report'`` rows of completed
``final`` runs (one per seed) and the ``reference`` (zero-shot) evaluation;
hyperparameters were chosen on ``selection`` rows. Intervals and tests come
from the per-example predictions (``predictions.parquet``, see
harness/predictions.py and harness/stats.py). Nothing here is stored by hand:
``summary.parquet`` is recomputed from the records.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):  # `python harness/leaderboard.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
import pandas as pd
import pyarrow as pa

from harness import methods as registry
from harness import stats
from harness.predictions import PREDICTIONS_FILE, read_predictions
from harness.predictions import studies as prediction_studies
from harness.records import read_rows, read_timings, write_table_atomic

LEADERBOARD_FILE = "leaderboard.parquet"
SUMMARY_FILE = "summary.parquet"
# Table order and baselines come from the method registry (Method.order, Method.baseline); a method
# registered by a plugin this process has not imported sorts after them, by name.
METHOD_ORDER = registry.leaderboard_order()
PUBLISHED_PHASES = ("final", "reference")
# The methods MoR1E must beat. The best baseline of a study is the one with the
# highest mean *selection* accuracy (its final runs' selection rows, else its best
# search trial's; ties: METHOD_ORDER), so the report split it is tested on never
# chose it. Every other method is compared with it by harness/stats.py's run-level
# test, Holm-adjusted across the comparisons a table prints.
BASELINES = registry.baselines()
ROUTER_COLUMNS = ("router_gate_mean", "router_load_entropy", "router_max_share", "router_dead_fraction",
                  "router_token_entropy")

SUMMARY_SCHEMA = pa.schema(
    [
        pa.field("study", pa.string()),
        pa.field("method", pa.string()),
        pa.field("best_trial_id", pa.string()),  # the search trial whose config won on selection
        pa.field("selection_accuracy", pa.float64()),  # its mean selection accuracy
        pa.field("hparams_json", pa.string()),
        pa.field("learning_rate", pa.float64()),
        pa.field("dataset", pa.string()),
        pa.field("split", pa.string()),
        pa.field("accuracy_mean", pa.float64()),  # over final seeds
        pa.field("accuracy_std", pa.float64()),  # sample std over seeds; 0 with one seed
        pa.field("n_seeds", pa.int64()),
        pa.field("n_examples", pa.int64()),  # report examples per seed
        # 95% interval of accuracy_mean: run-level t over seeds widened to Clopper-Pearson's (one run:
        pa.field("ci_low", pa.float64()),  # Clopper-Pearson alone); null without predictions
        pa.field("ci_high", pa.float64()),
        pa.field("mean_accuracy", pa.float64()),  # method's unweighted mean over datasets
        pa.field("mean_ci_low", pa.float64()),  # 95% run-level interval of that mean (harness/stats.py)
        pa.field("mean_ci_high", pa.float64()),
        pa.field("trainable_params", pa.int64()),
        pa.field("model", pa.string()),
        pa.field("scoring", pa.string()),
        pa.field("best_baseline", pa.string()),  # the study's best baseline (BASELINES), chosen on selection
        pa.field("best_baseline_chosen_on", pa.string()),  # "selection", or "report" when no selection rows exist
        pa.field("delta_vs_best_baseline", pa.float64()),  # mean_accuracy difference, paired examples
        # the run-level comparison with the best baseline (harness/stats.py); null without predictions
        pa.field("ci_low_vs_best_baseline", pa.float64()),
        pa.field("ci_high_vs_best_baseline", pa.float64()),
        pa.field("p_vs_best_baseline", pa.float64()),
        pa.field("p_holm_vs_best_baseline", pa.float64()),  # Holm across the study's methods
        pa.field("se_vs_best_baseline", pa.float64()),
        pa.field("df_vs_best_baseline", pa.float64()),
        pa.field("sigma_seed_vs_best_baseline", pa.float64()),
        pa.field("mde_vs_best_baseline", pa.float64()),
        pa.field("verdict_vs_best_baseline", pa.string()),  # a_better (this method) b_better equivalent inconclusive
        pa.field("search_trials", pa.int64()),  # the method's search trials, pruned and failed included
        pa.field("search_trials_costed", pa.int64()),  # how many of them recorded device_s
        pa.field("search_cost_s", pa.float64()),  # sum of their device_s (wall x workers x devices)
        pa.field("search_train_tokens", pa.int64()),  # sum of their train_tokens
        # the study's own time (harness/study/timing.py): seconds, the unit step timed just before it, and
        # their ratio; timing_json adds the CPU, threads and what a first run added (null if not timed)
        pa.field("study_s", pa.float64()),
        pa.field("unit_s", pa.float64()),
        pa.field("study_units", pa.float64()),
        pa.field("timing_json", pa.string()),
    ]
)


def load(results_dir: str | Path) -> pd.DataFrame:
    return read_rows(Path(results_dir) / LEADERBOARD_FILE).to_pandas()


def load_predictions(results_dir: str | Path, study: str | None = None) -> pd.DataFrame | None:
    """The published report predictions (final and reference phases), or None when there are none."""
    path = Path(results_dir) / PREDICTIONS_FILE
    if not path.exists():
        return None
    preds = read_predictions(path, study=study, roles=["report"], phases=PUBLISHED_PHASES,
                             columns=stats.PREDICTION_COLUMNS)
    return None if preds.empty else preds


def _method_key(method: str) -> tuple:
    return (METHOD_ORDER.index(method) if method in METHOD_ORDER else len(METHOD_ORDER), method)


def studies(df: pd.DataFrame) -> list[str]:
    """Study names, oldest first."""
    if df.empty:
        return []
    first = df.groupby("study")["created_at"].min().sort_values()
    return list(first.index)


def best_trials(df: pd.DataFrame, study: str) -> pd.DataFrame:
    """Per method, the completed search trial with the highest mean selection accuracy."""
    sel = df[(df.study == study) & (df.phase == "search") & (df.status == "completed") & (df.role == "selection")]
    if sel.empty:
        return pd.DataFrame(columns=["method", "trial_id", "selection_accuracy", "hparams_json", "learning_rate"])
    per_trial = (
        sel.groupby(["method", "trial_id"])
        .agg(selection_accuracy=("accuracy", "mean"), hparams_json=("hparams_json", "first"),
             learning_rate=("learning_rate", "first"), created_at=("created_at", "min"))
        .reset_index()
        # ties go to the earlier trial, so the choice is stable under resume
        .sort_values(["method", "selection_accuracy", "created_at"], ascending=[True, False, True])
    )
    return per_trial.groupby("method").head(1).drop(columns="created_at").reset_index(drop=True)


def published(df: pd.DataFrame, study: str) -> pd.DataFrame:
    """Per (method, dataset): report accuracy mean/std over seeds, from final and reference rows."""
    rep = df[
        (df.study == study) & (df.status == "completed") & (df.role == "report")
        & (df.phase.isin(PUBLISHED_PHASES))
    ]
    if rep.empty:
        return pd.DataFrame(columns=["method", "dataset", "split", "accuracy_mean", "accuracy_std", "n_seeds",
                                     "n_examples", "trainable_params", "model", "scoring"])
    # Dedupe by seed: one number per (method, dataset, seed), the latest record.
    rep = rep.sort_values("created_at").groupby(["method", "dataset", "seed"]).tail(1)
    out = (
        rep.groupby(["method", "dataset"])
        .agg(split=("split", "first"), accuracy_mean=("accuracy", "mean"),
             accuracy_std=("accuracy", lambda s: float(s.std(ddof=1)) if len(s) > 1 else 0.0),
             n_seeds=("seed", "nunique"), n_examples=("n_examples", "max"),
             trainable_params=("trainable_params", "max"), model=("model", "first"), scoring=("scoring", "first"))
        .reset_index()
    )
    return out


def search_costs(df: pd.DataFrame, study: str) -> pd.DataFrame:
    """Per method: its search trials (every status) and the device-seconds and tokens they spent."""
    trials = df[(df.study == study) & (df.phase == "search")]
    per_trial = trials.groupby(["method", "trial_id"]).agg(device_s=("device_s", "max"),
                                                           train_tokens=("train_tokens", "max")).reset_index()
    out = per_trial.groupby("method").agg(
        search_trials=("trial_id", "size"), search_trials_costed=("device_s", "count"),
        search_cost_s=("device_s", lambda s: float(s.sum()) if s.notna().any() else np.nan),
        search_train_tokens=("train_tokens", lambda s: float(s.sum()) if s.notna().any() else np.nan),
    )
    return out


# ---------------------------------------------------------------- one study's statistics


@dataclass
class StudyStats:
    """Everything the table, the summary and the plot show for one study."""

    study: str
    cells: pd.DataFrame  # per (method, dataset): published() plus ci_low, ci_high
    methods: pd.DataFrame  # per method (index): mean, mean_ci_*, params, vs best baseline, search cost
    best_baseline: str | None
    has_predictions: bool
    best_baseline_chosen_on: str | None = None  # "selection", or "report" when no baseline has selection rows


def best_baseline(df: pd.DataFrame, study: str, baselines: list[str],
                  report_means: pd.Series) -> tuple[str | None, str | None]:
    """The baseline with the highest mean selection accuracy, and what it was chosen on.

    A baseline's selection accuracy is the mean of its final runs' selection rows (over datasets,
    then seeds), else its best search trial's. Only when no baseline has any selection row does
    the report mean decide, and the choice says so ("report").
    """
    if not baselines:
        return None, None
    rows = df[(df.study == study) & (df.role == "selection") & (df.status == "completed")
              & df.method.isin(baselines)]
    final = rows[rows.phase == "final"]
    on_selection = final.groupby(["method", "seed"]).accuracy.mean().groupby("method").mean().to_dict()
    search = best_trials(df, study).set_index("method").selection_accuracy
    for method in baselines:
        if method not in on_selection and method in search.index:
            on_selection[method] = float(search[method])
    ordered = sorted(baselines, key=_method_key)
    if on_selection:
        return max((m for m in ordered if m in on_selection), key=lambda m: on_selection[m]), "selection"
    return max(ordered, key=lambda m: report_means[m]), "report"


def study_stats(df: pd.DataFrame, study: str, predictions: pd.DataFrame | None = None, *,
                margin: float = stats.DEFAULT_MARGIN) -> StudyStats:
    """Means, 95% intervals (from ``predictions``, this study's report rows) and the best-baseline tests."""
    pub = published(df, study)
    preds = None if predictions is None else predictions[predictions.study == study]
    preds = None if preds is None or preds.empty else stats.PredictionSet(preds)
    pub = pub.assign(ci_low=np.nan, ci_high=np.nan)
    rows = []
    for method in sorted(pub.method.unique(), key=_method_key):
        cells = pub[pub.method == method]
        row = {"method": method, "mean_accuracy": float(cells.accuracy_mean.mean()),
               "mean_ci_low": np.nan, "mean_ci_high": np.nan,
               "trainable_params": cells.trainable_params.max(), "n_seeds": int(cells.n_seeds.max())}
        try:
            interval = None if preds is None else stats.method_interval(preds, method)
        except stats.StatsError:
            interval = None  # e.g. a seed that skipped a dataset: no interval rather than a wrong one
        if interval is not None:
            ci = interval.datasets.set_index("dataset")
            mask = (pub.method == method) & pub.dataset.isin(ci.index)
            pub.loc[mask, "ci_low"] = pub.loc[mask, "dataset"].map(ci.ci_low)
            pub.loc[mask, "ci_high"] = pub.loc[mask, "dataset"].map(ci.ci_high)
            row.update(mean_ci_low=interval.mean_ci_low, mean_ci_high=interval.mean_ci_high)
        rows.append(row)
    methods = pd.DataFrame(rows, columns=["method", "mean_accuracy", "mean_ci_low", "mean_ci_high",
                                          "trainable_params", "n_seeds"]).set_index("method")
    best, chosen_on = best_baseline(df, study, [m for m in BASELINES if m in methods.index], methods.mean_accuracy)
    for column in ("delta", "ci_low", "ci_high", "p", "p_holm", "se", "df", "sigma_seed", "mde"):
        methods[f"{column}_vs_best_baseline"] = np.nan
    methods["verdict_vs_best_baseline"] = None
    methods["significant_vs_best_baseline"] = False
    tested = []
    for method in methods.index:
        if best is None or method == best:
            continue
        methods.loc[method, "delta_vs_best_baseline"] = methods.mean_accuracy[method] - methods.mean_accuracy[best]
        if preds is None:
            continue
        try:
            comparison = stats.compare(preds, method, best, study=study, margin=margin)
        except stats.StatsError:
            continue  # one side has no predictions: the difference stays, untested
        m = comparison.mean
        for column in ("delta", "ci_low", "ci_high", "p", "se", "df", "sigma_seed", "mde"):
            methods.loc[method, f"{column}_vs_best_baseline"] = getattr(m, column)
        methods.loc[method, "verdict_vs_best_baseline"] = m.verdict
        tested.append(method)
    if tested:
        # Holm across every comparison the table prints; an untestable one (one run) stays NaN
        adjusted = stats.holm(methods.loc[tested, "p_vs_best_baseline"].to_numpy(dtype=np.float64))
        methods.loc[tested, "p_holm_vs_best_baseline"] = adjusted
        methods.loc[tested, "significant_vs_best_baseline"] = adjusted < stats.ALPHA
    costs = search_costs(df, study)
    methods = methods.join(costs, how="left")
    methods["search_trials"] = methods.search_trials.fillna(0).astype(int)
    methods["search_trials_costed"] = methods.search_trials_costed.fillna(0).astype(int)
    return StudyStats(study, pub, methods, best, preds is not None, chosen_on)


def compute_summary(df: pd.DataFrame, predictions: pd.DataFrame | None = None,
                    timings: dict[str, dict] | None = None) -> pd.DataFrame:
    """One row per (study, method, dataset); see SUMMARY_SCHEMA for the columns."""
    frames = []
    for study in studies(df):
        t = (timings or {}).get(study, {})
        st = study_stats(df, study, predictions)
        if st.cells.empty:
            continue
        best = best_trials(df, study).set_index("method")
        for _, r in st.cells.iterrows():
            b = best.loc[r.method] if r.method in best.index else None
            m = st.methods.loc[r.method]
            frames.append(dict(
                study=study, method=r.method,
                best_trial_id=None if b is None else b.trial_id,
                selection_accuracy=None if b is None else float(b.selection_accuracy),
                hparams_json=None if b is None else b.hparams_json,
                learning_rate=_num(None if b is None else b.learning_rate),
                dataset=r.dataset, split=r.split, accuracy_mean=float(r.accuracy_mean),
                accuracy_std=float(r.accuracy_std), n_seeds=int(r.n_seeds), n_examples=_int(r.n_examples),
                ci_low=_num(r.ci_low), ci_high=_num(r.ci_high),
                mean_accuracy=float(m.mean_accuracy), mean_ci_low=_num(m.mean_ci_low),
                mean_ci_high=_num(m.mean_ci_high), trainable_params=_int(r.trainable_params),
                model=r.model, scoring=r.scoring, best_baseline=st.best_baseline,
                best_baseline_chosen_on=st.best_baseline_chosen_on,
                **{f"{c}_vs_best_baseline": _num(m[f"{c}_vs_best_baseline"])
                   for c in ("delta", "ci_low", "ci_high", "p", "p_holm", "se", "df", "sigma_seed", "mde")},
                verdict_vs_best_baseline=m.verdict_vs_best_baseline,
                search_trials=int(m.search_trials), search_trials_costed=int(m.search_trials_costed),
                search_cost_s=_num(m.search_cost_s), search_train_tokens=_int(m.search_train_tokens),
                study_s=_num(t.get("study_s")), unit_s=_num(t.get("unit_s")), study_units=_num(t.get("study_units")),
                timing_json=json.dumps(t, sort_keys=True) if t else None,
            ))
    return pd.DataFrame(frames, columns=SUMMARY_SCHEMA.names)


def _num(x) -> float | None:
    return None if x is None or pd.isna(x) else float(x)


def _int(x) -> int | None:
    return None if x is None or pd.isna(x) else int(x)


def write_summary(results_dir: str | Path) -> pd.DataFrame:
    """Recompute ``summary.parquet`` from the leaderboard and prediction records (atomic write)."""
    results_dir = Path(results_dir)
    summary = compute_summary(load(results_dir), load_predictions(results_dir), read_timings(results_dir))
    table = pa.Table.from_pandas(summary, schema=SUMMARY_SCHEMA, preserve_index=False)
    write_table_atomic(table, results_dir / SUMMARY_FILE)
    return summary


# ---------------------------------------------------------------- the table


def _fmt_acc(mean: float, std: float, n: int) -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "-"
    return f"{100 * mean:.1f}" if n <= 1 else f"{100 * mean:.1f}±{100 * std:.1f}"


def _fmt_params(n) -> str:
    if n is None or (isinstance(n, float) and math.isnan(n)):
        return "-"
    n = int(n)
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f}{unit}"
    return str(n)


def _fmt_duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def _fmt_cost(m) -> str:
    """Device time of the search trials, e.g. ``12.3 min (8 trials)``; ``≥`` when some did not record it."""
    trials = int(m.search_trials)
    if trials == 0:
        return "-"
    plural = f"{trials} trial{'s' if trials != 1 else ''}"
    if m.search_trials_costed == 0:
        return f"? ({plural})"
    partial = "≥" if m.search_trials_costed < trials else ""
    return f"{partial}{_fmt_duration(m.search_cost_s)} ({plural})"


def _fmt_vs_best(method: str, st: StudyStats) -> str:
    if st.best_baseline is None:
        return "-"
    if method == st.best_baseline:
        return "best baseline"
    m = st.methods.loc[method]
    if pd.isna(m.delta_vs_best_baseline):
        return "-"
    cell = f"{100 * m.delta_vs_best_baseline:+.1f}"
    if pd.notna(m.p_holm_vs_best_baseline):
        cell += f" (p={stats.fmt_p(m.p_holm_vs_best_baseline)})" + (" *" if m.significant_vs_best_baseline else "")
    elif m.verdict_vs_best_baseline is not None:
        cell += " (one run: untested)"
    return cell


def format_table(df: pd.DataFrame, study: str, predictions: pd.DataFrame | None = None) -> str:
    """Markdown methods x datasets table of report accuracy (%) for one study.

    With ``predictions`` (see :func:`load_predictions`) it adds each method's
    95% interval and the paired test against the best baseline.
    """
    st = study_stats(df, study, predictions)
    pub = st.cells
    sub = df[df.study == study]
    counts = sub.drop_duplicates(["method", "trial_id", "phase"])
    search = counts[counts.phase == "search"]
    status = ", ".join(f"{s} {int((search.status == s).sum())}" for s in ("completed", "pruned", "failed"))
    header = f"study {study}: {search.trial_id.nunique()} search trials ({status})"
    if pub.empty:
        return header + "\n(no report-split results yet)"
    datasets = stats.dataset_order(pub.dataset.unique())
    methods = list(st.methods.index)
    n_seeds = int(pub.n_seeds.max())
    vs = f"vs {st.best_baseline}" if st.best_baseline else "vs best baseline"
    cols = ["method", *datasets, "mean", "95% CI", vs, "params", "search cost"]
    notes = ["report split, accuracy %" + (f", mean±std over {n_seeds} seeds" if n_seeds > 1 else "")]
    if st.has_predictions:
        chosen = "" if st.best_baseline_chosen_on == "selection" else " (chosen on report: no selection rows)"
        notes.append(f"95% CI of the mean over datasets: t over runs, run + example parts (harness/stats.py); "
                     f"{vs}{chosen}: Δ points and run-level p, Holm-adjusted across the methods, "
                     f"* = p (Holm) < {stats.ALPHA}")
    else:
        notes.append("no predictions recorded: no intervals or tests")
    lines = [f"{header}; " + "; ".join(notes), "| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for m in methods:
        rows = pub[pub.method == m].set_index("dataset")
        cells = [m]
        for d in datasets:
            cells.append(_fmt_acc(rows.accuracy_mean.get(d), rows.accuracy_std.get(d, 0.0), int(rows.n_seeds.get(d, 1)))
                         if d in rows.index else "-")
        summary = st.methods.loc[m]
        cells.append(f"{100 * summary.mean_accuracy:.1f}")
        cells.append("-" if pd.isna(summary.mean_ci_low)
                     else f"[{100 * summary.mean_ci_low:.1f}, {100 * summary.mean_ci_high:.1f}]")
        cells.append(_fmt_vs_best(m, st))
        cells.append(_fmt_params(rows.trainable_params.max()))
        cells.append(_fmt_cost(summary))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# Above this mde (points) a study can only tell large differences from training noise; its
# end-of-study summary says it is a run of the pipeline, not a measurement.
PIPELINE_RUN_MDE = 5.0


def format_verdicts(predictions: pd.DataFrame | None, study: str, *,
                    margin: float = stats.DEFAULT_MARGIN) -> str:
    """One line per (candidate, baseline): Δ, 95% CI, verdict and mde, then what the study can claim.

    The candidates are the study's trained methods that are not baselines (MoR1E, a plugin's method).
    """
    if predictions is None:
        return ""
    preds = stats.PredictionSet(predictions[predictions.study == study])
    published = preds.published_methods()
    candidates = [m for m in sorted(published, key=_method_key) if m not in BASELINES and stats.trains(m)]
    lines, mdes = [], []
    for candidate in candidates:
        for baseline in BASELINES:
            if baseline not in published:
                continue
            try:
                c = stats.compare(preds, candidate, baseline, study=study, margin=margin)
            except stats.StatsError:
                continue
            m = c.mean
            ci = "no interval (one run)" if not np.isfinite(m.ci_low) else \
                f"95% CI {100 * m.ci_low:+.1f} to {100 * m.ci_high:+.1f}"
            mde = "mde ?" if not np.isfinite(m.mde) else f"mde {100 * m.mde:.1f}"
            lines.append(f"{candidate} vs {baseline}: Δ {100 * m.delta:+.1f} points, {ci}, {m.verdict}, {mde} "
                         f"points ({c.n_seeds} run{'s' if c.n_seeds != 1 else ''} per method)")
            mdes.append(m.mde)
    if not lines:
        return ""
    worst = max((x for x in mdes if np.isfinite(x)), default=float("nan"))
    if not np.isfinite(worst):
        lines.append("this study cannot estimate training noise (one run per method): its verdicts are inconclusive")
    elif 100 * worst > PIPELINE_RUN_MDE:
        lines.append(f"this study is a run of the pipeline, not a measurement: differences under {100 * worst:.0f} "
                     f"points can't be told from training noise at its seeds and report sizes "
                     f"(python harness/search.py --show-plan --target-mde N says what a measurement needs)")
    return "\n".join(lines)


def run_sql(results_dir: Path, query: str) -> pd.DataFrame:
    """Run DuckDB over the Parquet files, with views ``leaderboard``, ``summary`` and ``predictions``."""
    import duckdb

    con = duckdb.connect()
    for view, name in (("leaderboard", LEADERBOARD_FILE), ("summary", SUMMARY_FILE),
                       ("predictions", PREDICTIONS_FILE)):
        path = results_dir / name
        if path.exists():
            # CREATE VIEW takes no bound parameters; quote the path as an SQL literal.
            con.execute(f"CREATE VIEW {view} AS SELECT * FROM read_parquet('{_sql_quote(str(path))}')")
    return con.execute(query).df()


def _sql_quote(s: str) -> str:
    return s.replace("'", "''")


# ---------------------------------------------------------------- the plot


def _param_band(df: pd.DataFrame, study: str) -> tuple[float, float] | None:
    """The study's trainable-parameter band, ``budget_json["param_band"]``, if any row records one."""
    for text in df.loc[df.study == study, "budget_json"].dropna().unique():
        try:
            band = json.loads(text).get("param_band")
        except (ValueError, AttributeError):
            continue
        if isinstance(band, (list, tuple)) and len(band) == 2 and all(isinstance(x, (int, float)) for x in band):
            return float(band[0]), float(band[1])
    return None


def _router_telemetry(df: pd.DataFrame, study: str) -> pd.DataFrame:
    """Per method with routers: each telemetry column's mean over its completed final report rows."""
    rows = df[(df.study == study) & (df.phase == "final") & (df.role == "report") & (df.status == "completed")]
    means = rows.groupby("method")[list(ROUTER_COLUMNS)].mean()
    return means.dropna(how="all")


def _yerr(mean: pd.Series, low: pd.Series, high: pd.Series, std: pd.Series) -> np.ndarray:
    """(2, n) error bars: the 95% interval where there is one, else ±1 std over seeds."""
    below = np.where(low.notna(), mean - low, std.fillna(0))
    above = np.where(high.notna(), high - mean, std.fillna(0))
    return 100 * np.vstack([below, above])


def plot(df: pd.DataFrame, study: str, out: Path, predictions: pd.DataFrame | None = None) -> None:
    """Per-dataset report accuracy by method, mean accuracy vs trainable params, and router telemetry."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    st = study_stats(df, study, predictions)
    pub = st.cells
    if pub.empty:
        raise ValueError(f"study {study!r} has no report-split results to plot")
    datasets = stats.dataset_order(pub.dataset.unique())
    methods = list(st.methods.index)
    telemetry = _router_telemetry(df, study)
    ratios = [3, 1] + ([1] if not telemetry.empty else [])
    fig, axes = plt.subplots(1, len(ratios), figsize=(15 + 4 * (len(ratios) - 2), 5),
                             gridspec_kw={"width_ratios": ratios})
    ax1, ax2 = axes[0], axes[1]
    width = 0.8 / len(methods)
    colors = plt.get_cmap("tab10")
    for i, m in enumerate(methods):
        rows = pub[pub.method == m].set_index("dataset").reindex(datasets)
        xs = [j + (i - (len(methods) - 1) / 2) * width for j in range(len(datasets))]
        ax1.bar(xs, 100 * rows.accuracy_mean, width, label=m, color=colors(i), capsize=2,
                yerr=_yerr(rows.accuracy_mean, rows.ci_low, rows.ci_high, rows.accuracy_std))
    ax1.set_xticks(range(len(datasets)), datasets, rotation=45, ha="right")
    ax1.set_ylabel("report accuracy (%)")
    bars = "95% CI" if st.has_predictions else "±1 std over seeds"
    ax1.set_title(f"{study}: accuracy per dataset (report split; bars: {bars})")
    ax1.legend(ncol=len(methods), fontsize=8, loc="upper left")
    ax1.set_ylim(0, 105)
    band = _param_band(df, study)
    if band is not None:
        ax2.axvspan(*band, color="0.85", label="parameter band")
    for i, m in enumerate(methods):
        s = st.methods.loc[m]
        mean = 100 * s.mean_accuracy
        params = s.trainable_params
        if pd.isna(params) or params <= 0:
            # zero-shot trains nothing: a reference line, not a point on the log axis
            ax2.axhline(mean, color=colors(i), linestyle="--", linewidth=1, label=f"{m} (no training)")
            continue
        yerr = None
        if pd.notna(s.mean_ci_low):
            yerr = [[mean - 100 * s.mean_ci_low], [100 * s.mean_ci_high - mean]]
        ax2.errorbar([params], [mean], yerr=yerr, fmt="o", color=colors(i), capsize=3, label=m)
        ax2.annotate(m, (params, mean), textcoords="offset points", xytext=(5, 5 + 7 * (i % 2)), fontsize=8)
    ax2.legend(fontsize=7, loc="lower right")
    ax2.set_xscale("log")
    ax2.set_xlabel("trainable parameters (log)")
    ax2.set_ylabel("mean report accuracy (%)")
    ax2.set_title("accuracy vs trainable parameters" + (" (95% CI)" if st.has_predictions else ""))
    ax2.grid(True, alpha=0.3)
    if not telemetry.empty:
        ax3 = axes[2]
        names = [c.removeprefix("router_") for c in ROUTER_COLUMNS]
        w = 0.8 / len(telemetry)
        for i, (m, row) in enumerate(telemetry.iterrows()):
            xs = [j + (i - (len(telemetry) - 1) / 2) * w for j in range(len(names))]
            ax3.bar(xs, row.to_numpy(dtype=float), w, label=m, color=colors(methods.index(m) if m in methods else i))
        ax3.set_xticks(range(len(names)), names, rotation=45, ha="right")
        ax3.set_ylim(0, 1)
        ax3.set_title("router telemetry (final runs, report split)")
        ax3.legend(fontsize=7)
    fig.tight_layout()
    tmp = out.with_name(f".{out.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, out)


# ---------------------------------------------------------------- the CLI


def _fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def _compare_main(args, results_dir: Path) -> int:
    """``--compare A B``: checks, then the paired comparison as text or one JSON object."""
    path = results_dir / PREDICTIONS_FILE
    if not path.exists():
        return _fail(f"no predictions at {path} (studies record them as they score; nothing to compare)")
    try:
        have = prediction_studies(path)
        lb_path = results_dir / LEADERBOARD_FILE
        # The latest study is the latest run, as in the leaderboard; without one, the latest with predictions.
        latest = studies(load(results_dir)) if lb_path.exists() else have
    except (ValueError, OSError, pa.ArrowInvalid) as exc:
        return _fail(f"cannot read {results_dir}: {exc}")
    study = args.study or (latest[-1] if latest else None)
    if study is None or study not in have:
        return _fail(f"no study {study!r} in {path} (studies with predictions: {', '.join(have) or 'none'})")
    a, b = args.compare
    try:
        preds = load_predictions(results_dir, study)
        if preds is None:
            return _fail(f"study {study!r} has no final or reference report predictions in {path}")
        comparison = stats.compare(preds, a, b, study=study, margin=args.margin / 100)
    except stats.StatsError as exc:
        return _fail(str(exc))
    print(comparison.dumps() if args.json else comparison.format_text())
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description="Print, compare, query or plot the study leaderboard (computed from the trial records).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="""examples:
  python harness/leaderboard.py                         every study's table, oldest first
  python harness/leaderboard.py --compare mor1e lora    the run-level comparison and its verdict
  python harness/leaderboard.py --compare mor1e lora --json --margin 2
  python harness/leaderboard.py --sql "SELECT method, AVG(accuracy) FROM leaderboard WHERE role = 'report' GROUP BY 1"

reads <results-dir>/leaderboard.parquet and predictions.parquet; writes nothing, except --plot's PNG.
--compare's verdict: a_better / b_better when the 95% interval excludes 0, equivalent when it lies
inside ±margin, else inconclusive; intervals treat the training run as the unit (docs/statistics.md).""")
    ap.add_argument("--results-dir", default="results", help="directory holding leaderboard.parquet (default: results)")
    ap.add_argument("--study", help="only this study (default: every study, oldest first; --compare, --plot: the latest)")
    ap.add_argument("--sql", help="run a DuckDB query over views `leaderboard`, `summary` and `predictions`")
    ap.add_argument("--plot", metavar="FILE.png", help="write accuracy plots for the study (default: the latest)")
    ap.add_argument("--compare", nargs=2, metavar=("A", "B"), help="paired comparison of methods A and B")
    ap.add_argument("--json", action="store_true", help="with --compare: print one JSON object")
    ap.add_argument("--margin", type=float, default=100 * stats.DEFAULT_MARGIN, metavar="POINTS",
                    help="with --compare: a 95%% interval inside ±POINTS reads `equivalent` (default: %(default)g)")
    args = ap.parse_args(argv)
    if not (np.isfinite(args.margin) and args.margin > 0):
        return _fail(f"--margin must be a positive number of points, got {args.margin:g}")

    results_dir = Path(args.results_dir)
    if args.json and not args.compare:
        return _fail("--json goes with --compare A B")
    if args.compare and (args.sql or args.plot):
        return _fail("--compare cannot be combined with --sql or --plot")
    if args.plot and not args.plot.endswith(".png"):
        return _fail(f"--plot wants a .png file, got {args.plot}")
    if args.compare:
        return _compare_main(args, results_dir)

    path = results_dir / LEADERBOARD_FILE
    if not path.exists():
        return _fail(f"no leaderboard at {path} (run harness/search.py first)")
    try:
        df = load(results_dir)
        all_studies = studies(df)
        if args.study and args.study not in all_studies:
            return _fail(f"no study {args.study!r} in {path} (studies: {', '.join(all_studies) or 'none'})")
        predictions = None if args.sql else load_predictions(results_dir, args.study)
    except (ValueError, OSError, pa.ArrowInvalid) as exc:
        return _fail(f"cannot read {results_dir}: {exc}")

    if args.sql:
        import duckdb

        try:
            result = run_sql(results_dir, args.sql)
        except duckdb.Error as exc:
            return _fail(f"SQL: {str(exc).splitlines()[0]}")
        with pd.option_context("display.max_rows", 200, "display.max_columns", 50, "display.width", 200):
            print(result.to_string(index=False))
        return 0

    chosen = [args.study] if args.study else all_studies
    for study in chosen:
        print(format_table(df, study, predictions))
        best = best_trials(df, study)
        for _, b in best.iterrows():
            hp = json.loads(b.hparams_json) if isinstance(b.hparams_json, str) else {}
            shown = ", ".join(f"{k}={_short(v)}" for k, v in hp.items() if k != "learning_rate")
            print(f"  best {b.method}: trial {b.trial_id}, selection {100 * b.selection_accuracy:.1f}%"
                  + (f", lr={b.learning_rate:.2e}" if pd.notna(b.learning_rate) else "") + (f", {shown}" if shown else ""))
        print()
    if args.plot:
        study = args.study or all_studies[-1]
        try:
            plot(df, study, Path(args.plot), predictions)
        except (ValueError, OSError) as exc:
            return _fail(str(exc))
        print(f"wrote {args.plot}")
    return 0


def _short(v):
    return f"{v:.3g}" if isinstance(v, float) else v


if __name__ == "__main__":
    sys.exit(main())
