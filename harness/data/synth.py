"""Synthetic twins of the datasets: the offline default data and the test data.

Each twin writes rows in exactly its dataset's HF schema and label conventions, so
the real adapter reads them unchanged. The content comes from ``harness.data.twins``:
option-balanced groups of rows whose golds follow invented conventions (see
``TWIN_RULES``), so option-only rules and an untrained model sit at chance while a
trained one can learn the convention.

No report item repeats a training item: every group has a partition key computed
from its prompt text and options (``twins.PARTITION_KEYS``), report splits take only
groups whose key falls in one hash partition (one key in ``REPORT_PARTITION``) and
train splits only the others. The partition ignores the seed and the sizes, so this
holds between any two twin sets. Groups are written consecutively, so a prefix of a
split (``report_limit``) holds whole groups.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import tempfile
from pathlib import Path

from harness.data.adapters import DATASETS, KNOWN_DATASETS, convert_row, get_adapter
from harness.data.twins import CONFLICTS, GENERATORS, PARTITION_KEYS, TWIN_RULES

__all__ = ["CONFLICTS", "DEFAULT_N_TRAIN", "DEFAULT_N_VALIDATION", "REPORT_PARTITION", "TWIN_RULES",
           "in_report_partition", "item_identity", "synthetic_rows", "write_synthetic"]

DEFAULT_N_TRAIN = 400
DEFAULT_N_VALIDATION = 100
REPORT_PARTITION = 4  # one partition key in four is reserved for report splits
# Consecutive duplicate groups after which a twin's item space counts as used up (repeats allowed).
_MAX_DUPLICATE_DRAWS = 100

assert set(GENERATORS) == set(PARTITION_KEYS) == set(TWIN_RULES) == set(KNOWN_DATASETS)


def in_report_partition(dataset: str, key: str) -> bool:
    digest = hashlib.sha256(f"mor1e-twin-partition:{dataset}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % REPORT_PARTITION == 0


def item_identity(dataset: str, row: dict) -> tuple[str, tuple[str, ...]]:
    """What makes two items the same: the prompt (cloze format) and the set of answer texts."""
    ex = convert_row(dataset, row, id="-", fmt="cloze")
    return ex.prompt, tuple(sorted(ex.choices))


def _number_rows(dataset: str, split: str, rows: list[dict], first: int, group_no: int) -> None:
    """Fill the index fields real rows carry (``idx``, ``id``, ``uid``, ``ind``, ``source_id``)."""
    for j, row in enumerate(rows):
        i = first + j
        if dataset == "multirc":
            row["idx"] = {"paragraph": group_no, "question": 0, "answer": row["idx"]["answer"]}
        elif "idx" in row:
            row["idx"] = i
        if dataset in ("openbookqa", "commonsense_qa", "arc_easy", "arc_challenge"):
            row["id"] = f"twin-{split}-{i:06d}"
        elif dataset == "anli":
            row["uid"] = f"twin-{split}-{i:06d}"
        elif dataset == "hellaswag":
            row["ind"] = i
            # rows of one group share a context, as contexts cut from one source do
            row["source_id"] = f"twin~{hashlib.sha256(PARTITION_KEYS[dataset](row).encode()).hexdigest()[:12]}"
            row["split"] = "train" if split == "train" else "val"


def synthetic_rows(dataset: str, split: str, n: int, *, seed: int = 0) -> list[dict]:
    """``n`` rows of ``dataset``'s twin for ``split`` (its report split, or any other: train).

    Whole groups, each balanced over its options; the last one is cut to make ``n``.
    Items do not repeat within the split while the twin's item space allows it.
    """
    adapter = get_adapter(dataset)
    if split not in adapter.splits:
        raise ValueError(f"{dataset} has no split {split!r}")
    report = split == adapter.report_split
    # A string seed is hashed with SHA-512 by random.Random: stable across runs and machines.
    rng = random.Random(f"mor1e-synth:{seed}:{dataset}:{split}")
    generate, partition_key = GENERATORS[dataset], PARTITION_KEYS[dataset]
    rows: list[dict] = []
    seen: set = set()
    misses, groups = 0, 0
    while len(rows) < n:
        group = generate(rng)
        keys = {partition_key(row) for row in group}
        assert len(keys) == 1, f"{dataset}: a group spans partition keys {keys}"
        if in_report_partition(dataset, keys.pop()) != report:
            continue
        identities = [item_identity(dataset, row) for row in group]
        # Repeats within a split are allowed only once the twin's item space runs dry.
        if misses < _MAX_DUPLICATE_DRAWS and any(i in seen for i in identities):
            misses += 1
            continue
        misses = 0
        seen.update(identities)
        group = group[: n - len(rows)]
        _number_rows(dataset, split, group, len(rows), groups)
        rows += group
        groups += 1
    return rows


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_synthetic(out_dir: str | os.PathLike, *, seed: int = 0, n_train: int = DEFAULT_N_TRAIN,
                    n_validation: int = DEFAULT_N_VALIDATION, datasets: tuple[str, ...] = DATASETS
                    ) -> dict[str, dict[str, int]]:
    """Write ``OUT/<dataset>/<split>.jsonl`` for each twin: its train split (``train_r1``
    for anli, ``auxiliary_train`` for mmlu) with ``n_train`` rows and its report split
    (``validation``; ``dev_r1`` for anli, ``test`` for ARC) with ``n_validation`` rows.
    Returns the counts."""
    if n_train < 0 or n_validation < 0:
        raise ValueError(f"row counts must be >= 0, got train={n_train} validation={n_validation}")
    for name in datasets:
        get_adapter(name)
    written: dict[str, dict[str, int]] = {}
    for name in datasets:
        adapter = get_adapter(name)
        written[name] = {}
        for split, n in ((adapter.train_split, n_train), (adapter.report_split, n_validation)):
            _write_jsonl(Path(out_dir) / name / f"{split}.jsonl", synthetic_rows(name, split, n, seed=seed))
            written[name][split] = n
    return written
