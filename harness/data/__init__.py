"""The datasets: adapters (hub or local files -> :class:`Example`) and their synthetic twins.

``load_examples(dataset, role)`` is the entry point; ``python -m harness.data show|synth|audit|fetch``
is the CLI. ``DATASETS`` is the paper's 14 (``datasets: all``); ``KNOWN_DATASETS`` adds ARC,
and ``SUITES`` names the selections a profile may give (``all``, ``commonsense8``, ``bigbench``).
BIG-bench's multiple-choice tasks, ``bigbench_<task>[__<subtask>]``, are read from task files
fetched into the cache (``harness.data.bigbench``).
"""

from harness.data.adapters import (ADAPTERS, DATASETS, FORMATS, KNOWN_DATASETS, ROLES, SUITES, DataError, Example,
                                   convert_row, resolve_datasets)
from harness.data.loading import (LoadStats, carve_sizes, load_examples, load_split, min_train_size, selection_rows,
                                  selection_size, split_name)
from harness.data.synth import CONFLICTS, TWIN_RULES, write_synthetic

__all__ = ["ADAPTERS", "CONFLICTS", "DATASETS", "DataError", "Example", "FORMATS", "KNOWN_DATASETS", "LoadStats",
           "ROLES", "SUITES", "TWIN_RULES", "carve_sizes", "convert_row", "load_examples", "load_split",
           "min_train_size", "resolve_datasets", "selection_rows", "selection_size", "split_name", "write_synthetic"]
