"""The shipped default profile with some fields changed, for tests of profile validation."""

import yaml

from harness.searchspace import SPACES_DIR


def default_profile_with(**changes) -> dict:
    """``a__b=v`` sets data["a"]["b"] = v in a fresh copy of search_spaces/default.yaml."""
    data = yaml.safe_load((SPACES_DIR / "default.yaml").read_text())
    for dotted, value in changes.items():
        node = data
        *parents, last = dotted.split("__")
        for k in parents:
            node = node.setdefault(k, {})
        node[last] = value
    return data
