"""Units of meaning: which raw rows of a dataset share a context and must stay together.

The selection split is carved out of train (``harness.data.loading``). Rows that share
a context (a MultiRC paragraph, a BoolQ passage, a WSC text, an ANLI premise) would
otherwise land on both sides of that carve, so the model would be selected on
paragraphs it trained on, and selection scores would reward memorising. Each dataset
names the field(s) whose value identifies its unit; rows with equal values form one
group, and the carve moves whole groups.

Choices made here (the real datasets, and the twins, which keep their schemas):

| dataset | unit | why |
|---|---|---|
| boolq | passage | several questions per passage |
| multirc | paragraph | many candidate answers (and questions) per paragraph |
| wsc | text | several pronoun/noun rows per text |
| rte, anli | premise | several hypotheses per premise |
| winogrande | the option pair | twin sentences differ by a trigger word and share both options |
| hellaswag | source_id | contexts cut from one video or WikiHow article |
| siqa | context | several questions per context |
| piqa | goal | a goal repeated with other solutions |
| wic, copa, openbookqa, commonsense_qa, mmlu, arc | the row itself | no shared context in the data |
| bigbench_* | the row's ``group`` | set from the task's input by harness.data.bigbench.GROUP_RULES |

A row whose key field is missing or malformed is a group of its own (the converter
reports the row later; the carve never drops it).
"""

from __future__ import annotations

import json
from typing import Callable


def _field(*names: str) -> Callable[[dict], str | None]:
    def key(row: dict) -> str | None:
        if not isinstance(row, dict):
            return None
        values = []
        for name in names:
            value = row.get(name)
            if not isinstance(value, str) or not value.strip():
                return None
            values.append(" ".join(value.split()))
        return "\x1f".join(values)

    return key


def _option_pair(row: dict) -> str | None:
    pair = _field("option1")(row), _field("option2")(row)
    return None if None in pair else "\x1f".join(sorted(pair))


def _whole_row(row: dict) -> str | None:
    if not isinstance(row, dict):
        return None
    try:
        return json.dumps(row, sort_keys=True, ensure_ascii=False, default=str)
    except (TypeError, ValueError):
        return None


GROUP_KEYS: dict[str, Callable[[dict], str | None]] = {
    "boolq": _field("passage"),
    "multirc": _field("paragraph"),
    "wic": _whole_row,
    "wsc": _field("text"),
    "rte": _field("premise"),
    "copa": _whole_row,
    "winogrande": _option_pair,
    "anli": _field("premise"),
    "hellaswag": _field("source_id"),
    "piqa": _field("goal"),
    "siqa": _field("context"),
    "openbookqa": _whole_row,
    "mmlu": _whole_row,
    "commonsense_qa": _whole_row,
    "arc_easy": _whole_row,
    "arc_challenge": _whole_row,
}


def group_key(dataset: str, row: object) -> str | None:
    """The unit a raw row belongs to (None: the row is a unit of its own).

    BIG-bench rows carry their unit in ``group`` (harness.data.bigbench.GROUP_RULES)."""
    if not isinstance(row, dict):
        return None
    if dataset.startswith("bigbench_"):
        return _field("group")(row)
    return GROUP_KEYS[dataset](row)


def group_rows(dataset: str, rows: list[object]) -> list[list[int]]:
    """Row positions (0-based) grouped by unit, groups in order of first appearance."""
    groups: dict[str, list[int]] = {}
    out: list[list[int]] = []
    for i, row in enumerate(rows):
        key = group_key(dataset, row)
        if key is None:
            out.append([i])
            continue
        if key not in groups:
            groups[key] = []
            out.append(groups[key])
        groups[key].append(i)
    return out
