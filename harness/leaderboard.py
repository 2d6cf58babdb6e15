"""The leaderboard: tables, a summary and plots computed from the trial records.

    python harness/leaderboard.py [--results-dir DIR] [--study NAME] [--sql QUERY] [--plot FILE.png]

Published numbers come only from ``role == 'report'`` rows of completed
``final`` re-runs (one per seed) and the ``reference`` (zero-shot) evaluation;
hyperparameters were chosen on ``selection`` rows. Nothing here is stored by
hand: ``summary.parquet`` is recomputed from ``leaderboard.parquet``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path

if __package__ in (None, ""):  # `python harness/leaderboard.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import pandas as pd
import pyarrow as pa

from harness.records import read_rows, write_table_atomic

LEADERBOARD_FILE = "leaderboard.parquet"
SUMMARY_FILE = "summary.parquet"
METHOD_ORDER = ("zeroshot", "dense", "lora", "molora", "mor1e")
PUBLISHED_PHASES = ("final", "reference")

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
        pa.field("accuracy_std", pa.float64()),
        pa.field("n_seeds", pa.int64()),
        pa.field("mean_accuracy", pa.float64()),  # method's mean over datasets
        pa.field("trainable_params", pa.int64()),
        pa.field("model", pa.string()),
        pa.field("scoring", pa.string()),
    ]
)


def load(results_dir: str | Path) -> pd.DataFrame:
    return read_rows(Path(results_dir) / LEADERBOARD_FILE).to_pandas()


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
                                     "trainable_params", "model", "scoring"])
    # Dedupe by seed: one number per (method, dataset, seed), the latest record.
    rep = rep.sort_values("created_at").groupby(["method", "dataset", "seed"]).tail(1)
    out = (
        rep.groupby(["method", "dataset"])
        .agg(split=("split", "first"), accuracy_mean=("accuracy", "mean"),
             accuracy_std=("accuracy", lambda s: float(s.std(ddof=1)) if len(s) > 1 else 0.0),
             n_seeds=("seed", "nunique"), trainable_params=("trainable_params", "max"),
             model=("model", "first"), scoring=("scoring", "first"))
        .reset_index()
    )
    return out


def compute_summary(df: pd.DataFrame) -> pd.DataFrame:
    frames = []
    for study in studies(df):
        pub = published(df, study)
        if pub.empty:
            continue
        best = best_trials(df, study).set_index("method")
        means = pub.groupby("method")["accuracy_mean"].mean()
        for _, r in pub.iterrows():
            b = best.loc[r.method] if r.method in best.index else None
            frames.append(
                dict(
                    study=study, method=r.method,
                    best_trial_id=None if b is None else b.trial_id,
                    selection_accuracy=None if b is None else float(b.selection_accuracy),
                    hparams_json=None if b is None else b.hparams_json,
                    learning_rate=None if b is None or pd.isna(b.learning_rate) else float(b.learning_rate),
                    dataset=r.dataset, split=r.split, accuracy_mean=float(r.accuracy_mean),
                    accuracy_std=float(r.accuracy_std), n_seeds=int(r.n_seeds),
                    mean_accuracy=float(means[r.method]),
                    trainable_params=None if pd.isna(r.trainable_params) else int(r.trainable_params),
                    model=r.model, scoring=r.scoring,
                )
            )
    return pd.DataFrame(frames, columns=SUMMARY_SCHEMA.names)


def write_summary(results_dir: str | Path) -> pd.DataFrame:
    """Recompute ``summary.parquet`` from the leaderboard records (atomic write)."""
    results_dir = Path(results_dir)
    summary = compute_summary(load(results_dir))
    table = pa.Table.from_pandas(summary, schema=SUMMARY_SCHEMA, preserve_index=False)
    write_table_atomic(table, results_dir / SUMMARY_FILE)
    return summary


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


def format_table(df: pd.DataFrame, study: str) -> str:
    """Markdown methods x datasets table of report accuracy (%) for one study."""
    pub = published(df, study)
    sub = df[df.study == study]
    counts = sub.drop_duplicates(["method", "trial_id", "phase"])
    search = counts[counts.phase == "search"]
    status = ", ".join(f"{s} {int((search.status == s).sum())}" for s in ("completed", "pruned", "failed"))
    header = f"study {study}: {search.trial_id.nunique()} search trials ({status})"
    if pub.empty:
        return header + "\n(no report-split results yet)"
    datasets = [d for d in _dataset_order(pub.dataset.unique())]
    methods = sorted(pub.method.unique(), key=_method_key)
    n_seeds = int(pub.n_seeds.max())
    cols = ["method", *datasets, "mean", "params"]
    lines = [f"{header}; report split, accuracy %" + (f", mean±std over {n_seeds} seeds" if n_seeds > 1 else ""),
             "| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for m in methods:
        rows = pub[pub.method == m].set_index("dataset")
        cells = [m]
        for d in datasets:
            cells.append(_fmt_acc(rows.accuracy_mean.get(d), rows.accuracy_std.get(d, 0.0), int(rows.n_seeds.get(d, 1)))
                         if d in rows.index else "-")
        cells.append(f"{100 * rows.accuracy_mean.mean():.1f}")
        cells.append(_fmt_params(rows.trainable_params.max()))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _dataset_order(names) -> list[str]:
    from harness.searchspace import DATASETS

    return sorted(names, key=lambda d: (DATASETS.index(d) if d in DATASETS else len(DATASETS), d))


def run_sql(results_dir: Path, query: str) -> pd.DataFrame:
    """Run DuckDB over the Parquet files, with views ``leaderboard`` and ``summary``."""
    import duckdb

    con = duckdb.connect()
    for view, name in (("leaderboard", LEADERBOARD_FILE), ("summary", SUMMARY_FILE)):
        path = results_dir / name
        if path.exists():
            # CREATE VIEW takes no bound parameters; quote the path as an SQL literal.
            con.execute(f"CREATE VIEW {view} AS SELECT * FROM read_parquet('{_sql_quote(str(path))}')")
    return con.execute(query).df()


def _sql_quote(s: str) -> str:
    return s.replace("'", "''")


def plot(df: pd.DataFrame, study: str, out: Path) -> None:
    """Two panels: per-dataset report accuracy by method, and mean accuracy vs trainable params."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pub = published(df, study)
    if pub.empty:
        raise ValueError(f"study {study!r} has no report-split results to plot")
    datasets = _dataset_order(pub.dataset.unique())
    methods = sorted(pub.method.unique(), key=_method_key)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(15, 5), gridspec_kw={"width_ratios": [3, 1]})
    width = 0.8 / len(methods)
    colors = plt.get_cmap("tab10")
    for i, m in enumerate(methods):
        rows = pub[pub.method == m].set_index("dataset").reindex(datasets)
        xs = [j + (i - (len(methods) - 1) / 2) * width for j in range(len(datasets))]
        ax1.bar(xs, 100 * rows.accuracy_mean, width, yerr=100 * rows.accuracy_std.fillna(0), label=m,
                color=colors(i), capsize=2)
    ax1.set_xticks(range(len(datasets)), datasets, rotation=45, ha="right")
    ax1.set_ylabel("report accuracy (%)")
    ax1.set_title(f"{study}: accuracy per dataset (report split)")
    ax1.legend(ncol=len(methods), fontsize=8, loc="upper left")
    ax1.set_ylim(0, 105)
    for i, m in enumerate(methods):
        rows = pub[pub.method == m]
        params = rows.trainable_params.max()
        mean = 100 * rows.accuracy_mean.mean()
        if not params or params <= 0:
            # zero-shot trains nothing: a reference line, not a point on the log axis
            ax2.axhline(mean, color=colors(i), linestyle="--", linewidth=1, label=f"{m} (no training)")
            continue
        ax2.scatter([params], [mean], color=colors(i), s=60, label=m)
        ax2.annotate(m, (params, mean), textcoords="offset points", xytext=(5, 5 + 7 * (i % 2)), fontsize=8)
    ax2.legend(fontsize=7, loc="lower right")
    ax2.set_xscale("log")
    ax2.set_xlabel("trainable parameters (log)")
    ax2.set_ylabel("mean report accuracy (%)")
    ax2.set_title("accuracy vs trainable parameters")
    ax2.grid(True, alpha=0.3)
    fig.tight_layout()
    tmp = out.with_name(f".{out.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Print, query or plot the study leaderboard.")
    ap.add_argument("--results-dir", default="results", help="directory holding leaderboard.parquet (default: results)")
    ap.add_argument("--study", help="only this study (default: every study, oldest first)")
    ap.add_argument("--sql", help="run a DuckDB query over views `leaderboard` and `summary`")
    ap.add_argument("--plot", metavar="FILE.png", help="write accuracy plots for the study (default: the latest)")
    args = ap.parse_args(argv)

    results_dir = Path(args.results_dir)
    path = results_dir / LEADERBOARD_FILE
    if not path.exists():
        print(f"error: no leaderboard at {path} (run harness/search.py first)", file=sys.stderr)
        return 2
    try:
        df = load(results_dir)
    except (ValueError, OSError, pa.ArrowInvalid) as exc:
        print(f"error: cannot read {path}: {exc}", file=sys.stderr)
        return 2
    all_studies = studies(df)
    if args.study and args.study not in all_studies:
        print(f"error: no study {args.study!r} in {path} (studies: {', '.join(all_studies) or 'none'})",
              file=sys.stderr)
        return 2
    if args.plot and not args.plot.endswith(".png"):
        print(f"error: --plot wants a .png file, got {args.plot}", file=sys.stderr)
        return 2

    if args.sql:
        import duckdb

        try:
            result = run_sql(results_dir, args.sql)
        except duckdb.Error as exc:
            print(f"error: SQL: {str(exc).splitlines()[0]}", file=sys.stderr)
            return 2
        with pd.option_context("display.max_rows", 200, "display.max_columns", 50, "display.width", 200):
            print(result.to_string(index=False))
        return 0

    chosen = [args.study] if args.study else all_studies
    for study in chosen:
        print(format_table(df, study))
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
            plot(df, study, Path(args.plot))
        except (ValueError, OSError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        print(f"wrote {args.plot}")
    return 0


def _short(v):
    return f"{v:.3g}" if isinstance(v, float) else v


if __name__ == "__main__":
    sys.exit(main())
