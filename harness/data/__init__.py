"""The 14 datasets: adapters (hub or local files -> :class:`Example`) and their synthetic twins.

``load_examples(dataset, role)`` is the entry point; ``python -m harness.data show|synth``
is the CLI.
"""

from harness.data.adapters import DATASETS, FORMATS, ROLES, ADAPTERS, DataError, Example, convert_row
from harness.data.loading import LoadStats, load_examples, load_split, selection_rows, split_name
from harness.data.synth import CONFLICTS, TWIN_RULES, write_synthetic

__all__ = ["ADAPTERS", "CONFLICTS", "DATASETS", "DataError", "Example", "FORMATS", "LoadStats", "ROLES",
           "TWIN_RULES", "convert_row", "load_examples", "load_split", "selection_rows", "split_name",
           "write_synthetic"]
