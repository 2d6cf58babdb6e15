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


def tiny_profile(**changes) -> dict:
    """A small profile on tiny-random-llama and two twins (what the study tests run), with ``changes``."""
    data = {
        "kind": "profile", "study": "tiny", "model": "tiny-random-llama", "datasets": ["boolq", "copa"],
        "data": {"synthetic": True, "seed": 0, "n_train": 40, "n_validation": 8},
        "methods": ["mor1e", "lora", "molora", "dense"], "reference": ["zeroshot"], "trials_per_method": 2,
        "search": {"algorithm": "tpe", "quasi_random_trials": 1, "seed": 0},
        "final": {"seeds": [0]},
        "resources": {"num_workers": 1, "zero_stage": 0, "ray_num_cpus": 8},
        "training": {"steps": 4, "batch_size": 4, "eval_every": 2, "warmup_steps": 1, "train_limit": 32,
                     "selection_limit": 8, "report_limit": 8},
        "overrides": {"mor1e": {"num_clusters": {"role": "scientific", "type": "int", "low": 2, "high": 4}}},
    }
    data.update(changes)
    return data


def write_profile(path, data: dict) -> str:
    path.write_text(yaml.safe_dump(data))
    return str(path)
