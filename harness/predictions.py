"""Per-example predictions: the records every accuracy and every paired test is computed from.

``results/predictions.parquet`` holds one row per scored example of a trial:

    study trial_id phase method seed dataset split role example_id gold pred pred_norm
    option_loglikes option_bytes created_at

``option_loglikes`` are the summed log-probabilities of the example's options
(what :func:`harness.evaluate.score_examples` returns for it) and
``option_bytes`` the lengths ``acc_norm`` divides by
(:func:`harness.evaluate.option_bytes`). ``pred`` and ``pred_norm`` are the
argmax of the first and of the first divided by the second, ties going to the
first option, exactly as :func:`harness.evaluate.predictions` decides them, so
every leaderboard ``accuracy`` / ``acc_norm`` can be recomputed from this file,
either from the stored predictions or afresh from the log-likelihoods
(:func:`recompute_accuracies`).

Appends are atomic and locked exactly like the leaderboard's (the same
:mod:`harness.records` helpers): the whole new table goes to a temp file,
is fsynced and replaces the old one. A trial records the one evaluation whose
numbers the leaderboard holds, so (``ROW_KEY``) identifies a row; ``dedupe``
skips rows already recorded, as a resumed study needs.

This module imports neither torch nor the model code at import time, so the
leaderboard CLI can read predictions cheaply.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

# The leaderboard's lock and atomic write, reused so both files follow one protocol.
from harness.records import PHASES, locked, now_utc, write_table_atomic

PREDICTIONS_FILE = "predictions.parquet"
# Predictions are kept for the splits that choose (selection) and that publish (report).
PREDICTION_ROLES = ("selection", "report")

SCHEMA = pa.schema(
    [
        pa.field("study", pa.string(), nullable=False),
        pa.field("trial_id", pa.string(), nullable=False),
        pa.field("phase", pa.string(), nullable=False),
        pa.field("method", pa.string(), nullable=False),
        pa.field("seed", pa.int64(), nullable=False),
        pa.field("dataset", pa.string(), nullable=False),
        pa.field("split", pa.string(), nullable=False),  # the dataset's own split name, as in the leaderboard
        pa.field("role", pa.string(), nullable=False),
        pa.field("example_id", pa.string(), nullable=False),  # Example.id: pairs examples across methods
        pa.field("gold", pa.int64(), nullable=False),
        pa.field("pred", pa.int64(), nullable=False),  # argmax of option_loglikes (accuracy)
        pa.field("pred_norm", pa.int64(), nullable=False),  # argmax of option_loglikes / option_bytes (acc_norm)
        pa.field("option_loglikes", pa.list_(pa.float64()), nullable=False),  # summed log p per option
        pa.field("option_bytes", pa.list_(pa.int64()), nullable=False),  # UTF-8 bytes per option, no leading space
        pa.field("created_at", pa.timestamp("us", tz="UTC"), nullable=False),
    ]
)
COLUMNS = tuple(SCHEMA.names)
# One example of one trial's evaluation; the leaderboard's ROW_KEY plus the example.
ROW_KEY = ("study", "method", "trial_id", "dataset", "split", "seed", "role", "example_id")
# What one leaderboard row summarises.
GROUP_KEY = ("study", "method", "trial_id", "seed", "dataset", "role")


# ---------------------------------------------------------------- building rows


# The per-example part of a row: what a trial's worker knows and leaves in its checkpoint
# (``EXAMPLES_FILE``); the study adds the trial's identity when it records the trial.
EXAMPLE_COLUMNS = ("dataset", "split", "role", "example_id", "gold", "pred", "pred_norm", "option_loglikes",
                   "option_bytes")
IDENTITY_COLUMNS = ("study", "trial_id", "phase", "method", "seed", "created_at")
EXAMPLES_FILE = "predictions.parquet"


def example_predictions(
    examples: Sequence[Any],
    loglikes: Sequence[Sequence[float]],
    *,
    role: str,
    split: str | Mapping[str, str] | None = None,
) -> list[dict[str, Any]]:
    """The per-example columns (``EXAMPLE_COLUMNS``) of each example, from its per-option log-likelihoods.

    ``examples`` are :class:`harness.data.Example` (``id``, ``dataset``,
    ``options``, ``gold``) and ``loglikes`` what
    :func:`harness.evaluate.score_examples` returned for them. ``split`` is the
    split name for every example, or a ``{dataset: split}`` map; by default the
    dataset's own name for ``role`` (:func:`harness.data.loading.split_name`).
    """
    # Imported here: harness.evaluate pulls in torch, which readers of this file don't need.
    from harness.evaluate import option_bytes, predictions

    if role not in PREDICTION_ROLES:
        raise ValueError(f"role {role!r} is not one of {', '.join(PREDICTION_ROLES)}")
    examples, loglikes = list(examples), list(loglikes)
    if len(examples) != len(loglikes):
        raise ValueError(f"{len(examples)} examples but {len(loglikes)} log-likelihood lists")
    preds = predictions(examples, loglikes)  # the tie rule lives in one place
    rows = []
    for ex, ll, (pred, pred_norm) in zip(examples, loglikes, preds):
        if len(ll) != len(ex.options):
            raise ValueError(f"example {ex.id}: {len(ex.options)} options but {len(ll)} log-likelihoods")
        rows.append(dict(
            dataset=ex.dataset, split=_split_for(split, ex.dataset, role), role=role,
            example_id=str(ex.id), gold=int(ex.gold), pred=pred, pred_norm=pred_norm,
            option_loglikes=[float(x) for x in ll], option_bytes=[option_bytes(o) for o in ex.options],
        ))
    return rows


def identified(rows: Iterable[Mapping[str, Any]], *, study: str, trial_id: str, phase: str, method: str, seed: int,
               created_at: dt.datetime | None = None) -> list[dict[str, Any]]:
    """Per-example rows (``example_predictions``) with the trial's identity: full predictions rows."""
    if phase not in PHASES:
        raise ValueError(f"phase {phase!r} is not one of {', '.join(PHASES)}")
    identity = dict(study=study, trial_id=trial_id, phase=phase, method=method, seed=int(seed),
                    created_at=created_at or now_utc())
    return [{**identity, **{c: row[c] for c in EXAMPLE_COLUMNS}} for row in rows]


def prediction_rows(
    examples: Sequence[Any],
    loglikes: Sequence[Sequence[float]],
    *,
    study: str,
    trial_id: str,
    phase: str,
    method: str,
    seed: int,
    role: str,
    split: str | Mapping[str, str] | None = None,
    created_at: dt.datetime | None = None,
) -> list[dict[str, Any]]:
    """One full predictions row per example: ``example_predictions`` plus the trial's identity."""
    rows = example_predictions(examples, loglikes, role=role, split=split)
    return identified(rows, study=study, trial_id=trial_id, phase=phase, method=method, seed=seed,
                      created_at=created_at)


def write_examples(path: str | Path, rows: Sequence[Mapping[str, Any]]) -> None:
    """Write per-example rows (a trial's evaluation) to ``path``: the file a worker leaves in its checkpoint."""
    schema = pa.schema([SCHEMA.field(c) for c in EXAMPLE_COLUMNS])
    table = pa.Table.from_pydict({c: [row[c] for row in rows] for c in EXAMPLE_COLUMNS}, schema=schema)
    write_table_atomic(table, path)


def read_examples(path: str | Path) -> list[dict[str, Any]]:
    """The per-example rows ``write_examples`` wrote; a missing file is an empty list."""
    path = Path(path)
    if not path.exists():
        return []
    return pq.read_table(path, columns=list(EXAMPLE_COLUMNS)).to_pylist()


def _split_for(split: str | Mapping[str, str] | None, dataset: str, role: str) -> str:
    if isinstance(split, str):
        return split
    if split is not None:
        return split[dataset]
    from harness.data.loading import split_name

    return split_name(dataset, role)


# ---------------------------------------------------------------- schema checks and appends


def rows_to_table(rows: Iterable[Mapping[str, Any]]) -> pa.Table:
    """Schema-checked Arrow table; a bad row is a ValueError naming it, before anything is written."""
    rows = list(rows)
    known = set(COLUMNS)
    for i, row in enumerate(rows):
        unknown = sorted(set(row) - known)
        missing = [c for c in COLUMNS if row.get(c) is None]
        if unknown or missing:
            what = "unknown column(s) " + ", ".join(unknown) if unknown else "missing column(s) " + ", ".join(missing)
            raise ValueError(f"prediction {i}: {what}")
        if row["role"] not in PREDICTION_ROLES:
            raise ValueError(f"prediction {i}: role {row['role']!r} is not one of {', '.join(PREDICTION_ROLES)}")
        if row["phase"] not in PHASES:
            raise ValueError(f"prediction {i}: phase {row['phase']!r} is not one of {', '.join(PHASES)}")
        n = len(row["option_loglikes"])
        if n == 0 or len(row["option_bytes"]) != n:
            raise ValueError(f"prediction {i}: {n} log-likelihoods but {len(row['option_bytes'])} byte lengths")
        for name in ("gold", "pred", "pred_norm"):
            if not 0 <= row[name] < n:
                raise ValueError(f"prediction {i}: {name}={row[name]} is not an option index (0..{n - 1})")
    try:
        table = pa.Table.from_pydict({c: [row[c] for row in rows] for c in COLUMNS}, schema=SCHEMA)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise ValueError(f"prediction does not fit the predictions schema: {exc}") from None
    duplicated = _keys(table).duplicated()
    if duplicated.any():
        key = _keys(table)[duplicated][0]
        raise ValueError(f"prediction recorded twice in one append: {dict(zip(ROW_KEY, key))}")
    return table


def _keys(table: pa.Table) -> pd.MultiIndex:
    return pd.MultiIndex.from_arrays([table[c].to_numpy(zero_copy_only=False) for c in ROW_KEY], names=ROW_KEY)


def _conform(table: pa.Table, path: Path) -> pa.Table:
    missing = [c for c in COLUMNS if c not in table.column_names]
    unknown = [c for c in table.column_names if c not in COLUMNS]
    if missing or unknown:
        raise ValueError(f"{path}: not a predictions file (missing: {', '.join(missing) or '-'}; "
                         f"unknown: {', '.join(unknown) or '-'})")
    return table.select(COLUMNS).cast(SCHEMA)


def append_predictions(path: str | Path, rows: Iterable[Mapping[str, Any]], *, dedupe: bool = False) -> int:
    """Append ``rows`` to the predictions file atomically; returns how many were written.

    Bad rows raise ValueError before the file is touched. With ``dedupe``, rows
    whose ROW_KEY is already in the file are skipped (a resumed study records
    each trial once); without it they are appended, as the leaderboard does.
    """
    path = Path(path)
    new = rows_to_table(rows)
    if new.num_rows == 0:
        return 0
    path.parent.mkdir(parents=True, exist_ok=True)
    with locked(path):
        old = _conform(pq.read_table(path), path) if path.exists() else SCHEMA.empty_table()
        if dedupe and old.num_rows:
            new = new.filter(pa.array(~_keys(new).isin(_keys(old)), pa.bool_()))
            if new.num_rows == 0:
                return 0
        write_table_atomic(pa.concat_tables([old, new]), path)
    return new.num_rows


# ---------------------------------------------------------------- reading


def read_predictions(
    path: str | Path,
    *,
    study: str | None = None,
    roles: Sequence[str] | None = None,
    phases: Sequence[str] | None = None,
    columns: Sequence[str] | None = None,
) -> pd.DataFrame:
    """The predictions at ``path`` as a DataFrame, filtered while reading (the file can be large).

    ``columns`` limits what is read (leave out the list columns when only
    ``pred``/``gold`` matter). A missing file is FileNotFoundError.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no predictions at {path}")
    filters = []
    if study is not None:
        filters.append(("study", "=", study))
    if roles is not None:
        filters.append(("role", "in", list(roles)))
    if phases is not None:
        filters.append(("phase", "in", list(phases)))
    names = pq.read_schema(path).names
    missing = [c for c in COLUMNS if c not in names]
    if missing:
        raise ValueError(f"{path}: not a predictions file (missing: {', '.join(missing)})")
    wanted = list(columns) if columns is not None else list(COLUMNS)
    table = pq.read_table(path, columns=wanted, filters=filters or None)
    return table.cast(pa.schema([SCHEMA.field(c) for c in wanted])).to_pandas()


def studies(path: str | Path) -> list[str]:
    """Study names in the predictions file, oldest first."""
    df = read_predictions(path, columns=["study", "created_at"])
    if df.empty:
        return []
    return list(df.groupby("study")["created_at"].min().sort_values().index)


# ---------------------------------------------------------------- recomputing accuracies


def argmax_predictions(loglikes: pa.ChunkedArray | pa.Array, option_bytes: pa.ChunkedArray | pa.Array
                       ) -> tuple[np.ndarray, np.ndarray]:
    """``(pred, pred_norm)`` for every row of two list columns, vectorised.

    Rows have different option counts, so the lists are laid into an
    (n_rows, max_options) matrix padded with -inf; ``np.argmax`` returns the
    first maximum, the tie rule of :func:`harness.evaluate.predictions`.
    """
    loglikes = _combined(loglikes)
    option_bytes = _combined(option_bytes)
    lengths = pc.list_value_length(loglikes).to_numpy(zero_copy_only=False)
    n_rows = len(lengths)
    if n_rows == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    width = int(lengths.max())
    rows = np.repeat(np.arange(n_rows), lengths)
    cols = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    ll = np.full((n_rows, width), -np.inf)
    ll[rows, cols] = pc.list_flatten(loglikes).to_numpy(zero_copy_only=False)
    nb = np.ones((n_rows, width))
    nb[rows, cols] = pc.list_flatten(option_bytes).to_numpy(zero_copy_only=False)
    return ll.argmax(axis=1), (ll / nb).argmax(axis=1)


def _combined(column) -> pa.Array:
    return column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column


def recompute_accuracies(predictions: pd.DataFrame | pa.Table) -> pd.DataFrame:
    """Accuracy and acc_norm per (study, method, trial_id, seed, dataset, role), two ways.

    ``accuracy``/``acc_norm`` come from the stored ``pred``/``pred_norm``;
    ``accuracy_ll``/``acc_norm_ll`` from the stored log-likelihoods and byte
    lengths, argmaxed afresh. Each is hits / n, the float the leaderboard holds.
    """
    table = predictions if isinstance(predictions, pa.Table) else pa.Table.from_pandas(
        predictions, preserve_index=False)
    pred_ll, pred_norm_ll = argmax_predictions(table["option_loglikes"], table["option_bytes"])
    gold = table["gold"].to_numpy()
    df = pd.DataFrame({c: table[c].to_numpy(zero_copy_only=False) for c in GROUP_KEY})
    df["hit"] = table["pred"].to_numpy() == gold
    df["hit_norm"] = table["pred_norm"].to_numpy() == gold
    df["hit_ll"] = pred_ll == gold
    df["hit_norm_ll"] = pred_norm_ll == gold
    out = df.groupby(list(GROUP_KEY), sort=True).agg(
        n_examples=("hit", "size"), hits=("hit", "sum"), hits_norm=("hit_norm", "sum"),
        hits_ll=("hit_ll", "sum"), hits_norm_ll=("hit_norm_ll", "sum"),
    ).reset_index()
    for name, hits in (("accuracy", "hits"), ("acc_norm", "hits_norm"), ("accuracy_ll", "hits_ll"),
                       ("acc_norm_ll", "hits_norm_ll")):
        out[name] = out[hits] / out["n_examples"]
    return out.drop(columns=["hits", "hits_norm", "hits_ll", "hits_norm_ll"])


def mismatches(leaderboard: pd.DataFrame, predictions: pd.DataFrame | pa.Table) -> pd.DataFrame:
    """Leaderboard rows whose accuracy, acc_norm or n_examples the predictions do not reproduce.

    Only rows the predictions cover are checked (selection and report rows of
    trials that recorded predictions); the result is empty when all agree exactly.
    """
    recomputed = recompute_accuracies(predictions)
    lb = leaderboard[leaderboard.role.isin(PREDICTION_ROLES) & leaderboard.dataset.notna()]
    merged = lb[[*GROUP_KEY, "accuracy", "acc_norm", "n_examples"]].merge(
        recomputed, on=list(GROUP_KEY), suffixes=("", "_pred"))
    bad = (
        (merged.accuracy != merged.accuracy_pred) | (merged.accuracy != merged.accuracy_ll)
        | (merged.acc_norm != merged.acc_norm_pred) | (merged.acc_norm != merged.acc_norm_ll)
        | (merged.n_examples != merged.n_examples_pred)
    )
    return merged[bad].reset_index(drop=True)
