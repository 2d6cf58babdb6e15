"""Reading raw splits (local files first, then the HF hub) and carving roles out of them.

Roles: ``train`` and ``selection`` both come from the adapter's train split; the
selection rows are a fixed, seeded subset made of whole units of meaning (rows that
share a passage, paragraph, text or premise; see ``harness.data.groups``), and the
train role returns every other row. ``report`` is the dataset's evaluation split
(``validation``; ``dev_r1`` for ANLI, ``test`` for ARC), never used to choose anything.
BIG-bench tasks (``bigbench_*``) are read from their fetched task files (harness.data.bigbench).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable
from urllib.parse import urlparse

from harness.data.adapters import ROLES, DataError, Example, RowError, convert_row, get_adapter
from harness.data.groups import group_key, group_rows

log = logging.getLogger("harness.data")

# The selection split is a fifth of train, capped: enough to rank trials, small
# enough that scoring it during training stays cheap.
SELECTION_FRACTION = 0.2
SELECTION_CAP = 500
HUB_PROBE_TIMEOUT_S = 2.0


@dataclass
class LoadStats:
    """What one load read: where from, how many rows, how many bad rows were skipped."""

    source: str = ""
    n_rows: int = 0
    n_examples: int = 0
    n_skipped: int = 0


def split_name(dataset: str, role: str) -> str:
    """The dataset's own split name for a role, e.g. ``validation``, ``dev_r1``, ``train[selection]``."""
    adapter = get_adapter(dataset)
    if role == "train":
        return adapter.train_split
    if role == "selection":
        return f"{adapter.train_split}[selection]"
    if role == "report":
        return adapter.report_split
    raise DataError(f"unknown role {role!r}; expected one of: {' '.join(ROLES)}")


def selection_size(n_rows: int) -> int:
    """The selection carve's target size for a train split of ``n_rows`` rows.

    The carve moves whole groups, so it may end a little short of this (never
    over it): the train role always keeps at least ``min_train_size(n_rows)`` rows.
    """
    return min(SELECTION_CAP, int(n_rows * SELECTION_FRACTION))


def min_train_size(n_rows: int) -> int:
    """A lower bound on the train role's rows for a train split of ``n_rows`` rows."""
    return n_rows - selection_size(n_rows)


def selection_rows(dataset: str, rows: list[object], seed: int = 0) -> set[int]:
    """Positions (0-based) of the train split's rows that form the selection split.

    Rows are grouped into units of meaning (``harness.data.groups``); groups are
    ranked by a hash of (seed, dataset, group key) and taken in that order while
    they fit, until the selection holds ``selection_size(len(rows))`` rows. A group
    that would overflow is skipped, so no unit ever straddles the carve and every
    row lands on exactly one side. Hashing the key (not the position) keeps the
    carve the same across processes, machines and a reordering of the file.
    """
    target = selection_size(len(rows))

    def rank(group: list[int]) -> bytes:
        key = group_key(dataset, rows[group[0]])
        name = key if key is not None else f"\x00row{group[0]}"
        return hashlib.sha256(f"{seed}:{dataset}:{name}".encode()).digest()

    chosen: set[int] = set()
    for group in sorted(group_rows(dataset, rows), key=rank):
        if len(chosen) == target:
            break
        if len(chosen) + len(group) <= target:
            chosen.update(group)
    return chosen


def carve_sizes(dataset: str, rows: list[object], seed: int = 0) -> tuple[int, int]:
    """``(train rows, selection rows)`` the carve makes of one train split's raw rows."""
    n_selection = len(selection_rows(dataset, rows, seed))
    return len(rows) - n_selection, n_selection


# ------------------------------------------------------------- raw sources

def _local_file(data_dir: str | os.PathLike, dataset: str, split: str) -> Path | None:
    for ext in ("jsonl", "parquet"):
        path = Path(data_dir) / dataset / f"{split}.{ext}"
        if path.is_file():
            return path
    return None


def _read_local(path: Path) -> list[tuple[int, object]]:
    """(1-based row number, raw record) pairs; a line that is not JSON stays as an error marker."""
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(path)
        except Exception as exc:  # pyarrow raises several types for corrupt files
            raise DataError(f"{path}: cannot read Parquet: {' '.join(str(exc).split())}") from None
        return list(enumerate(table.to_pylist(), start=1))
    rows: list[tuple[int, object]] = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                rows.append((lineno, json.loads(line)))
            except json.JSONDecodeError as exc:
                rows.append((lineno, RowError(f"not valid JSON ({exc.msg})")))
    return rows


def _env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


_probe_result: bool | None = None


def hub_reachable() -> bool:
    """A quick (≤ ~2 s) check that the hub answers, so offline runs never sit in retries.

    HF_DATASETS_OFFLINE / HF_HUB_OFFLINE turn the hub off outright.
    """
    global _probe_result
    if _env_true("HF_DATASETS_OFFLINE") or _env_true("HF_HUB_OFFLINE"):
        return False
    if _probe_result is None:
        url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
        host, port = url.hostname or "huggingface.co", url.port or (80 if url.scheme == "http" else 443)
        ok = []

        def probe() -> None:
            try:
                socket.create_connection((host, port), timeout=HUB_PROBE_TIMEOUT_S).close()
                ok.append(True)
            except OSError:
                pass

        # DNS lookups ignore socket timeouts, hence the thread with a bounded join.
        thread = threading.Thread(target=probe, daemon=True)
        thread.start()
        thread.join(HUB_PROBE_TIMEOUT_S + 0.5)
        _probe_result = bool(ok)
    return _probe_result


def _read_hub(dataset: str, split: str) -> list[tuple[int, object]] | None:
    adapter = get_adapter(dataset)
    if not hub_reachable():
        return None
    try:
        import datasets

        try:
            ds = datasets.load_dataset(adapter.hub_id, adapter.config, split=split)
        except RuntimeError as exc:
            if "script" not in str(exc).lower():
                raise
            # datasets>=3 refuses loading scripts; the hub's Parquet export of the same data loads instead.
            ds = datasets.load_dataset(adapter.hub_id, adapter.config, split=split, revision="refs/convert/parquet")
    except Exception as exc:  # offline, gated, renamed: report and fall through to the clear error
        log.warning("hub load of %s %s %s failed: %s", adapter.hub_id, adapter.config or "", split,
                    " ".join(str(exc).split())[:200])
        return None
    return list(enumerate(ds, start=1))


def read_raw_rows(dataset: str, split: str, *, data_dir: str | os.PathLike | None = None
                  ) -> tuple[str, list[tuple[int, object]]]:
    """(source name, [(row number, raw record)]) for one split; local files win over the hub."""
    adapter = get_adapter(dataset)
    if split not in adapter.splits:
        raise DataError(f"{dataset} has no split {split!r}; expected one of: {' '.join(adapter.splits)}")
    if data_dir is not None:
        path = _local_file(data_dir, dataset, split)
        if path is not None:
            return str(path), _read_local(path)
    if dataset.startswith("bigbench_"):  # the fetched task file (harness.data.bigbench), never the hub
        from harness.data.bigbench import read_split, task_file

        rows = read_split(dataset, split)
        return f"{task_file(dataset)}:{split}", rows
    rows = _read_hub(dataset, split)
    if rows is not None:
        return f"{adapter.hub_id}:{adapter.config or 'default'}:{split}", rows
    where = f"{data_dir}/{dataset}/{split}.jsonl|.parquet not found; " if data_dir is not None else ""
    hub = f"{adapter.hub_id}" + (f" ({adapter.config})" if adapter.config else "")
    raise DataError(
        f"cannot load {dataset} split {split}: {where}provide it with --data-dir DIR holding "
        f"DIR/{dataset}/{split}.jsonl (or .parquet; `python -m harness.data synth --out DIR` writes "
        f"synthetic twins), or give network access to the HF hub dataset {hub}"
    )


def _convert_rows(dataset: str, split: str, source: str, rows: Iterable[tuple[int, object]], *,
                  fmt: str, skip_bad_rows: bool, stats: LoadStats) -> list[Example]:
    out = []
    for rowno, raw in rows:
        stats.n_rows += 1
        try:
            if isinstance(raw, RowError):
                raise raw
            out.append(convert_row(dataset, raw, id=f"{dataset}-{split}-{rowno}", fmt=fmt))
        except RowError as exc:
            if not skip_bad_rows:
                raise DataError(f"{source}: row {rowno}: {exc} (use --skip-bad-rows to skip such rows)") from None
            stats.n_skipped += 1
    stats.n_examples = len(out)
    if stats.n_skipped:
        log.warning("%s: skipped %d bad row(s) of %d", source, stats.n_skipped, stats.n_rows)
    return out


def load_split(dataset: str, split: str, *, data_dir: str | os.PathLike | None = None, fmt: str = "letter",
               limit: int | None = None, seed: int = 0, skip_bad_rows: bool = False,
               stats: LoadStats | None = None) -> list[Example]:
    """Examples of one named split. ``NAME[selection]`` / ``NAME[train]`` name the two
    parts of a carved train split (see :func:`split_name`)."""
    stats = stats if stats is not None else LoadStats()
    part = None
    if split.endswith("]") and "[" in split:
        split, part = split[:-1].split("[", 1)
        if part not in ("selection", "train"):
            raise DataError(f"unknown split part [{part}]; expected [selection] or [train]")
    if fmt not in ("letter", "cloze"):
        raise DataError(f"unknown format {fmt!r}; expected one of: letter cloze")
    if limit is not None and limit < 0:
        raise DataError(f"limit must be >= 0, got {limit}")
    source, rows = read_raw_rows(dataset, split, data_dir=data_dir)
    stats.source = source
    if part is not None:
        chosen = selection_rows(dataset, [raw for _, raw in rows], seed)
        keep = (lambda i: i in chosen) if part == "selection" else (lambda i: i not in chosen)
        rows = [r for i, r in enumerate(rows) if keep(i)]
    examples = _convert_rows(dataset, split, source, rows, fmt=fmt, skip_bad_rows=skip_bad_rows, stats=stats)
    return examples if limit is None else examples[:limit]


def load_examples(dataset: str, role: str, *, data_dir: str | os.PathLike | None = None, fmt: str = "letter",
                  limit: int | None = None, seed: int = 0, skip_bad_rows: bool = False,
                  stats: LoadStats | None = None) -> list[Example]:
    """Examples of one dataset in one role (``train``, ``selection`` or ``report``).

    ``seed`` fixes the selection carve; ``train`` and ``selection`` with the same seed
    are disjoint and together cover the train split. ``limit`` keeps the first N in
    file order. ``stats`` (optional) receives the source and skipped-row count.
    """
    name = split_name(dataset, role)
    if role == "train":
        name = f"{name}[train]"
    return load_split(dataset, name, data_dir=data_dir, fmt=fmt, limit=limit, seed=seed,
                      skip_bad_rows=skip_bad_rows, stats=stats)
