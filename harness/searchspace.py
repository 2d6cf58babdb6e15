"""Loading and validating study profiles and per-method search spaces (``search_spaces/``).

A *space* file (``kind: space``) declares one method's hyperparameters, each
tagged ``scientific`` (what the study compares), ``nuisance`` (tuned per method
so the comparison is fair) or ``fixed``. A *profile* (``kind: profile``) says
what a study runs: model, datasets, budgets, search algorithm, resources, and
optional per-method range overrides.

A profile may also ask for a parameter-matched search (``param_budget``): the
band of trainable-parameter counts every adapter's searched sizes must fall in.
This module only checks how that is written; ``harness.study.budget`` counts.

Which methods exist, what each one's space may name and which values its named options take come
from the method registry (``harness.methods``); a profile's ``plugins:`` lists modules that register
more methods, imported before its methods are checked.

Everything here is plain data checking: no Ray, no torch. Every problem raises
``ConfigError`` with one line naming the file and the key, so ``search.py`` can
refuse bad input before a trial starts.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
from pathlib import Path
from typing import Any

import yaml

# The dataset registry lives with the adapters (plain data, no torch): DATASETS is the paper's 14
# (`datasets: all`), KNOWN_DATASETS every name a profile may list, SUITES the names a profile may
# give instead of a list (all, commonsense8).
from harness.data.adapters import DATASETS, KNOWN_DATASETS, SUITES, resolve_datasets  # noqa: F401 (re-exported)
from harness import methods as registry

SPACES_DIR = Path(__file__).resolve().parent.parent / "search_spaces"

ROLES = ("scientific", "nuisance", "fixed")
PARAM_TYPES = ("float", "int", "categorical")



def searched_methods() -> tuple[str, ...]:
    """Every registered method a study can search (harness.methods), in registration order."""
    return tuple(n for n in registry.registered() if registry.get(n).searched)


def reference_methods() -> tuple[str, ...]:
    return registry.registered("reference")


def default_methods() -> tuple[str, ...]:
    """What a profile without ``methods:`` searches."""
    return tuple(n for n in searched_methods() if registry.get(n).in_default_study)


# What a space may name comes from its method's declaration (Method.space_params). ``learning_rate``
# goes to the trial config; ``expert_shape`` ("r1xr2") becomes r1 and r2; ``alpha_ratio`` becomes
# alpha = ratio * rank. The rest pass to apply_method as they are.
# The joint categorical a parameter-matched search samples sizes from: each choice is one
# allowed combination of the space's size parameters, as JSON (harness.study.budget).
SIZE_PARAM = "size"
BOOL_PARAMS = ("share_routers", "use_intuition", "use_token_router", "output_gate")

PROFILE_KEYS = {
    "kind", "description", "study", "model", "datasets", "data", "methods", "reference",
    "trials_per_method", "max_concurrent_trials", "search", "final", "training", "resources", "overrides",
    "param_budget", "plugins", "storage", "tracking",
}
TRACKING_KEYS = {"mlflow"}
BUDGET_KEYS = {"match", "params", "tolerance", "at", "model_config"}
DEFAULT_TOLERANCE = 0.25
DATA_KEYS = {"synthetic", "seed", "n_train", "n_validation"}
SEARCH_KEYS = {"algorithm", "quasi_random_trials", "seed", "trial_seed", "scheduler", "grace_period",
               "reduction_factor", "metric"}
FINAL_KEYS = {"seeds", "keep"}
RESOURCE_KEYS = {"num_workers", "use_gpu", "zero_stage", "ray_num_cpus", "trial_timeout_s", "trial_retries",
                 "measure_unit"}
# Keys of `training:` the search itself sets per trial; a profile may not.
SEARCH_OWNED = {"method", "model", "datasets", "hparams", "learning_rate", "seed", "data_dir",
                "num_workers", "use_gpu", "zero_stage", "scored_roles", "plugins", "keep"}  # keep: final.keep


class ConfigError(ValueError):
    """A one-line, user-facing description of what is wrong with a profile or space."""


@dataclasses.dataclass
class Param:
    name: str
    role: str
    type: str | None = None  # None for fixed
    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: list | None = None
    value: Any = None

    def values_to_check(self) -> list:
        """The extreme/possible values a range check must accept."""
        if self.role == "fixed":
            return [self.value]
        if self.type == "categorical":
            return list(self.choices)
        return [self.low, self.high]


@dataclasses.dataclass
class Space:
    method: str
    params: dict[str, Param]
    source: str

    def searched(self) -> dict[str, Param]:
        return {k: p for k, p in self.params.items() if p.role != "fixed"}


@dataclasses.dataclass
class ParamBudget:
    """``param_budget``: the band [ref·(1 − tolerance), ref·(1 + tolerance)] of trainable parameters."""

    tolerance: float
    """Half-width of the band, relative to the reference count; in (0, 1)."""
    match: str | None = None
    """Adapter method whose count at its reference configuration is the band's centre."""
    params: int | None = None
    """Or: the centre as an absolute count."""
    at: dict[str, Any] = dataclasses.field(default_factory=dict)
    """Reference values of the matched method's hyperparameters (space names, e.g. expert_shape);
    the rest come from its space's fixed values, then from its config's defaults."""
    model_config: Path | None = None
    """A config.json (or a dir holding one) the counts are made from instead of the profile's model,
    for a hub model whose config cannot be read offline; resolved against the profile's directory."""
    reference_space: Space | None = None
    """The matched method's space (with the profile's overrides)."""


@dataclasses.dataclass
class Profile:
    name: str
    source: str
    raw: dict
    spaces: dict[str, Space]
    budget: ParamBudget | None = None

    def __getattr__(self, key):
        try:
            return self.__dict__["raw"][key]
        except KeyError:
            raise AttributeError(key) from None


def _read_yaml(path: Path) -> dict:
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        first = str(exc).splitlines()[0] if str(exc) else "syntax error"
        raise ConfigError(f"{path}: invalid YAML ({first})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return data


def _unknown(keys, allowed, where: str) -> None:
    extra = sorted(set(keys) - set(allowed))
    if extra:
        raise ConfigError(f"{where}: unknown key {extra[0]!r} (allowed: {', '.join(sorted(allowed))})")


def _number(value, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    if not math.isfinite(value):
        raise ConfigError(f"{where}: expected a finite number, got {value!r}")
    return value


def parse_param(name: str, spec: Any, where: str) -> Param:
    where = f"{where}: {name}"
    if not isinstance(spec, dict):
        raise ConfigError(f"{where}: expected a mapping with role/type, got {spec!r}")
    role = spec.get("role")
    if role not in ROLES:
        raise ConfigError(f"{where}: role must be one of {', '.join(ROLES)}, got {role!r}")
    if role == "fixed":
        _unknown(spec, {"role", "value"}, where)
        if "value" not in spec:
            raise ConfigError(f"{where}: a fixed parameter needs a value")
        return Param(name, role, value=spec["value"])
    _unknown(spec, {"role", "type", "low", "high", "log", "choices"}, where)
    kind = spec.get("type")
    if kind not in PARAM_TYPES:
        raise ConfigError(f"{where}: type must be one of {', '.join(PARAM_TYPES)}, got {kind!r}")
    if kind == "categorical":
        choices = spec.get("choices")
        if not isinstance(choices, list) or not choices:
            raise ConfigError(f"{where}: categorical needs a non-empty list of choices")
        for c in choices:
            if c is not None and not isinstance(c, (bool, int, float, str)):
                raise ConfigError(f"{where}: choices must be scalars, got {c!r}")
        return Param(name, role, kind, choices=choices)
    if "low" not in spec or "high" not in spec:
        raise ConfigError(f"{where}: {kind} needs low and high")
    low, high = _number(spec["low"], f"{where}.low"), _number(spec["high"], f"{where}.high")
    if kind == "int" and (low != int(low) or high != int(high)):
        raise ConfigError(f"{where}: int bounds must be integers")
    if low > high:
        raise ConfigError(f"{where}: low {low} is above high {high}")
    log = bool(spec.get("log", False))
    if log and low <= 0:
        raise ConfigError(f"{where}: a log-scale range needs low > 0, got {low}")
    if kind == "int":
        low, high = int(low), int(high)
    return Param(name, role, kind, low=low, high=high, log=log)


def parse_shape(value: Any, where: str) -> tuple[int, int]:
    """'4x8' -> (4, 8): r1 rows of A and r2 columns of B, E = r1*r2 experts."""
    try:
        r1, r2 = (int(v) for v in str(value).lower().split("x"))
    except ValueError:
        raise ConfigError(f"{where}: expert_shape must look like '4x8' (r1xr2), got {value!r}") from None
    if r1 < 1 or r2 < 1:
        raise ConfigError(f"{where}: expert count must be >= 1, got shape {value!r}")
    return r1, r2


def _check_values(method: str, p: Param, where: str, max_clusters: int | None) -> None:
    where = f"{where}: {p.name}"
    for v in p.values_to_check():
        if p.name == "expert_shape":
            parse_shape(v, where)
            continue
        if p.name in ("top_k", "num_clusters") and v is None:  # num_clusters None: k = E (the authors')
            continue
        choices = registry.get(method).choices
        if p.name in choices:
            allowed = choices[p.name]
            if not any(v is a or (isinstance(a, str) and v == a) for a in allowed):
                raise ConfigError(f"{where}: must be one of {', '.join(map(str, allowed))}, got {v!r}")
            continue
        if p.name in ("token_coef", "intuition_coef", "gate_sharpness"):
            v = _number(v, where)
            if v <= 0:
                raise ConfigError(f"{where}: {p.name} must be > 0, got {v}")
        if p.name in ("gate_init", "aux_loss_coef"):
            v = _number(v, where)
            if p.name == "aux_loss_coef" and v < 0:
                raise ConfigError(f"{where}: aux_loss_coef must be >= 0, got {v}")
        if p.name in ("learning_rate", "router_temperature", "alpha", "alpha_ratio"):
            v = _number(v, where)
            if v <= 0:
                label = {"learning_rate": "lr", "router_temperature": "router temperature (tau)"}.get(p.name, p.name)
                raise ConfigError(f"{where}: {label} must be > 0, got {v}")
        if p.name in ("num_experts", "r1", "r2", "rank", "num_clusters", "top_k"):
            v = _number(v, where)
            if v != int(v):
                raise ConfigError(f"{where}: must be an integer, got {v}")
            if v < 1:
                label = "expert count" if p.name in ("num_experts", "r1", "r2") else p.name
                raise ConfigError(f"{where}: {label} must be >= 1, got {v}")
            if p.name == "num_clusters" and max_clusters is not None and v > max_clusters:
                raise ConfigError(
                    f"{where}: {int(v)} clusters exceed the {max_clusters} training examples k-means would cluster"
                )
        if p.name == "dropout":
            v = _number(v, where)
            if not 0 <= v < 1:
                raise ConfigError(f"{where}: dropout must be in [0, 1), got {v}")
        if p.name in BOOL_PARAMS and not isinstance(v, bool):
            raise ConfigError(f"{where}: must be true or false, got {v!r}")


def parse_space(data: dict, source: str, *, method: str | None = None) -> Space:
    _unknown(data, {"kind", "method", "params", "description"}, source)
    if data.get("kind") != "space":
        raise ConfigError(f"{source}: not a search space (kind: {data.get('kind')!r}, expected 'space')")
    m = data.get("method")
    if m not in searched_methods():
        raise ConfigError(f"{source}: unknown method {m!r} (searched methods: {', '.join(searched_methods())})")
    if method is not None and m != method:
        raise ConfigError(f"{source}: declares method {m!r}, expected {method!r}")
    params = data.get("params")
    if not isinstance(params, dict) or not params:
        raise ConfigError(f"{source}: params must be a non-empty mapping")
    fixed = {n: spec["value"] for n, spec in params.items() if isinstance(spec, dict) and spec.get("role") == "fixed"}
    _unknown(params, space_params(m, fixed, f"{source}: params"), f"{source}: params")
    if "learning_rate" not in params:
        raise ConfigError(f"{source}: params must include learning_rate")
    parsed = {name: parse_param(name, spec, source) for name, spec in params.items()}
    if "alpha_ratio" in parsed and "rank" not in parsed:
        raise ConfigError(f"{source}: alpha_ratio needs rank in the space (alpha = alpha_ratio * rank)")
    return Space(m, parsed, source)


def space_params(method: str, fixed: dict[str, Any], where: str) -> set[str]:
    """The names ``method``'s space may hold, given its fixed values (Method.space_params)."""
    try:
        return registry.get(method).allowed_space_params(fixed)
    except ValueError as exc:
        raise ConfigError(f"{where}: {' '.join(str(exc).split())}") from None


def load_space(method: str, spaces_dir: Path = SPACES_DIR) -> Space:
    """``method``'s space: its declared file (Method.space: a name in ``spaces_dir`` or a path)."""
    declared = registry.get(method).space or method
    path = Path(declared) if declared.endswith((".yaml", ".yml")) else Path(spaces_dir) / f"{declared}.yaml"
    if not path.exists():
        raise ConfigError(f"no search space for method {method!r} ({path} is missing)")
    return parse_space(_read_yaml(path), str(path), method=method)


def _merge_override(space: Space, override: Any, where: str) -> Space:
    if not isinstance(override, dict):
        raise ConfigError(f"{where}: expected a mapping of parameter -> spec")
    out = copy.deepcopy(space)
    for name, spec in override.items():
        base = {}
        if name in space.params and isinstance(spec, dict) and "role" not in spec:
            # Partial override: keep the file's role/type, replace the given bounds.
            old = space.params[name]
            base = {"role": old.role}
            if old.role == "fixed":
                base["value"] = old.value
            else:
                base["type"] = old.type
                if old.type == "categorical":
                    base["choices"] = old.choices
                else:
                    base.update(low=old.low, high=old.high, log=old.log)
            if "value" in spec and old.role != "fixed":
                base = {"role": "fixed"}
            if old.role == "fixed" and set(spec) & {"low", "high", "choices"}:
                raise ConfigError(f"{where}: {name} is fixed in {space.source}; give role and type to search it")
        out.params[name] = parse_param(name, {**base, **spec} if isinstance(spec, dict) else spec, where)
    fixed = {n: p.value for n, p in out.params.items() if p.role == "fixed"}
    _unknown(override, space_params(space.method, fixed, where), where)
    out.source = f"{space.source} + {where}"
    return out


def resolve_profile_path(config: str | None, spaces_dir: Path = SPACES_DIR) -> Path:
    """``--config`` value -> file: an existing path, or the name of a profile in search_spaces/."""
    config = config or "default"
    path = Path(config)
    if path.suffix in (".yaml", ".yml") or os.sep in config or path.is_file():
        if not path.is_file():
            raise ConfigError(f"config file {config} does not exist")
        return path
    candidate = Path(spaces_dir) / f"{config}.yaml"
    if not candidate.is_file():
        names = sorted(p.stem for p in Path(spaces_dir).glob("*.yaml") if _kind(p) == "profile")
        raise ConfigError(f"unknown profile {config!r} (profiles: {', '.join(names)}; or pass a .yaml file)")
    return candidate


def _kind(path: Path) -> str | None:
    try:
        return (yaml.safe_load(path.read_text()) or {}).get("kind")
    except Exception:
        return None


def _as_list(value, where: str) -> list:
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list):
        raise ConfigError(f"{where}: expected a list, got {value!r}")
    return value


def _positive_int(value, where: str, *, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{where}: expected an integer >= {minimum}, got {value!r}")
    return value


def parse_profile(
    data: dict,
    source: str,
    *,
    spaces_dir: Path = SPACES_DIR,
    training_keys: set[str] | None = None,
    count_train_examples=None,
) -> Profile:
    """Validate a profile and resolve its methods' spaces (with overrides).

    ``training_keys``: the trial config's field names, to refuse unknown keys
    under ``training:``. ``count_train_examples(profile_raw) -> int``: how many
    training examples the intuition k-means will see, to bound num_clusters.
    """
    if data.get("kind") != "profile":
        raise ConfigError(f"{source}: not a profile (kind: {data.get('kind')!r}, expected 'profile')")
    _unknown(data, PROFILE_KEYS, source)
    raw = copy.deepcopy(data)
    for key in ("study", "model"):
        if not isinstance(raw.get(key), str) or not raw[key]:
            raise ConfigError(f"{source}: {key} must be a non-empty string")
    if not all(c.isalnum() or c in "-_." for c in raw["study"]):
        raise ConfigError(f"{source}: study name {raw['study']!r} may use only letters, digits, '-', '_', '.'")

    if "storage" in raw and (not isinstance(raw["storage"], str) or not raw["storage"]):
        raise ConfigError(f"{source}: storage must be a path or URI (e.g. s3://bucket/prefix), got {raw['storage']!r}")
    try:
        raw["datasets"] = list(resolve_datasets(raw.get("datasets", "all")))
    except ValueError as e:
        raise ConfigError(f"{source}: {e}") from None

    plugins = _as_list(raw.get("plugins") or [], f"{source}: plugins")
    try:  # each module registers its methods (harness.methods.register) when imported
        registry.load_plugins(plugins)
    except ValueError as exc:
        raise ConfigError(f"{source}: {' '.join(str(exc).split())}") from None
    if plugins:
        raw["plugins"] = plugins
    else:  # a profile without plugins hashes as it did before plugins existed
        raw.pop("plugins", None)

    searched, references = searched_methods(), reference_methods()
    methods = _as_list(raw.get("methods", list(default_methods())), f"{source}: methods")
    for m in methods:
        if m not in searched:
            hint = f" ({m} is a reference: list it under `reference`)" if m in references else ""
            raise ConfigError(f"{source}: unknown method {m!r} (searched methods: {', '.join(searched)}){hint}")
    if len(set(methods)) != len(methods):
        raise ConfigError(f"{source}: methods lists a method twice")
    reference = _as_list(raw.get("reference", list(references)) or [], f"{source}: reference")
    for m in reference:
        if m not in references:
            raise ConfigError(f"{source}: unknown reference method {m!r} (reference methods: {', '.join(references)})")
    raw["methods"], raw["reference"] = methods, reference

    raw["trials_per_method"] = _positive_int(raw.get("trials_per_method", 4), f"{source}: trials_per_method")
    raw["max_concurrent_trials"] = _positive_int(raw.get("max_concurrent_trials", 1), f"{source}: max_concurrent_trials")

    data_cfg = raw.setdefault("data", {}) or {}
    if not isinstance(data_cfg, dict):
        raise ConfigError(f"{source}: data must be a mapping")
    _unknown(data_cfg, DATA_KEYS, f"{source}: data")
    for key in ("n_train", "n_validation"):
        if key in data_cfg:
            _positive_int(data_cfg[key], f"{source}: data.{key}")
    raw["data"] = data_cfg

    search = raw.setdefault("search", {}) or {}
    _unknown(search, SEARCH_KEYS, f"{source}: search")
    search.setdefault("algorithm", "tpe")
    if search["algorithm"] not in ("tpe", "random"):
        raise ConfigError(f"{source}: search.algorithm must be 'tpe' or 'random', got {search['algorithm']!r}")
    search.setdefault("scheduler", "asha")
    if search["scheduler"] not in ("asha", "none"):
        raise ConfigError(f"{source}: search.scheduler must be 'asha' or 'none', got {search['scheduler']!r}")
    search.setdefault("quasi_random_trials", 0)
    _positive_int(search["quasi_random_trials"], f"{source}: search.quasi_random_trials", minimum=0)
    search.setdefault("seed", 0)
    _positive_int(search["seed"], f"{source}: search.seed", minimum=0)
    search.setdefault("grace_period", 1)
    _positive_int(search["grace_period"], f"{source}: search.grace_period")
    search.setdefault("reduction_factor", 2)
    _positive_int(search["reduction_factor"], f"{source}: search.reduction_factor", minimum=2)
    search.setdefault("metric", "selection_accuracy")
    raw["search"] = search

    final = raw.setdefault("final", {}) or {}
    _unknown(final, FINAL_KEYS, f"{source}: final")
    seeds = _as_list(final.setdefault("seeds", [0]), f"{source}: final.seeds")
    for s in seeds:
        _positive_int(s, f"{source}: final.seeds", minimum=0)
    if len(set(seeds)) != len(seeds) or not seeds:
        raise ConfigError(f"{source}: final.seeds must be a non-empty list without repeats")
    if final.get("keep", "none") not in ("final", "none"):
        raise ConfigError(f"{source}: final.keep must be final or none, got {final['keep']!r}")
    raw["final"] = final
    # Search trials train with a seed no final run uses: a final number never reuses a chosen run.
    search.setdefault("trial_seed", max(seeds) + 1)
    _positive_int(search["trial_seed"], f"{source}: search.trial_seed", minimum=0)
    if search["trial_seed"] in seeds:
        raise ConfigError(f"{source}: search.trial_seed {search['trial_seed']} is one of final.seeds; final runs "
                          "need seeds the search never trained with")

    resources = raw.setdefault("resources", {}) or {}
    _unknown(resources, RESOURCE_KEYS, f"{source}: resources")
    resources.setdefault("num_workers", 1)
    _positive_int(resources["num_workers"], f"{source}: resources.num_workers")
    resources.setdefault("zero_stage", 0)
    if resources["zero_stage"] not in (0, 1, 2, 3):
        raise ConfigError(f"{source}: resources.zero_stage must be 0, 1, 2 or 3, got {resources['zero_stage']!r}")
    resources.setdefault("use_gpu", False)
    if resources.get("ray_num_cpus") is not None:
        _positive_int(resources["ray_num_cpus"], f"{source}: resources.ray_num_cpus")
    resources.setdefault("measure_unit", False)
    if not isinstance(resources["measure_unit"], bool):
        raise ConfigError(f"{source}: resources.measure_unit must be true or false, got {resources['measure_unit']!r}")
    resources.setdefault("trial_retries", 1)
    _positive_int(resources["trial_retries"], f"{source}: resources.trial_retries", minimum=0)
    if resources.get("trial_timeout_s") is not None:
        timeout = _number(resources["trial_timeout_s"], f"{source}: resources.trial_timeout_s")
        if timeout <= 0:
            raise ConfigError(f"{source}: resources.trial_timeout_s must be > 0, got {timeout!r}")
    raw["resources"] = resources

    training = raw.setdefault("training", {}) or {}
    if not isinstance(training, dict):
        raise ConfigError(f"{source}: training must be a mapping")
    owned = sorted(set(training) & SEARCH_OWNED)
    if owned:
        raise ConfigError(f"{source}: training.{owned[0]} is set by the search (use the profile's own keys or a space)")
    if training_keys is not None:
        _unknown(training, set(training_keys) - SEARCH_OWNED, f"{source}: training")
    raw["training"] = training

    tracking = raw.get("tracking") or {}
    if not isinstance(tracking, dict):
        raise ConfigError(f"{source}: tracking must be a mapping, e.g. {{mlflow: sqlite:///mlflow.db}}")
    _unknown(tracking, TRACKING_KEYS, f"{source}: tracking")
    if "mlflow" in tracking and (not isinstance(tracking["mlflow"], str) or not tracking["mlflow"]):
        raise ConfigError(f"{source}: tracking.mlflow must be an MLflow tracking URI, got {tracking['mlflow']!r}")
    raw["tracking"] = tracking

    overrides = raw.setdefault("overrides", {}) or {}
    if not isinstance(overrides, dict):
        raise ConfigError(f"{source}: overrides must be a mapping of method -> params")
    for m in overrides:
        if m not in searched:
            raise ConfigError(f"{source}: overrides: unknown method {m!r}")

    max_clusters = count_train_examples(raw) if count_train_examples else None

    def method_space(m: str) -> Space:
        space = load_space(m, spaces_dir)
        if m in overrides:
            space = _merge_override(space, overrides[m], f"{source}: overrides.{m}")
        for p in space.params.values():
            _check_values(m, p, space.source, max_clusters)
        return space

    spaces = {m: method_space(m) for m in methods}
    budget = None
    if raw.get("param_budget") is not None:
        budget = _parse_budget(raw["param_budget"], source, spaces, method_space)
    name = Path(source).stem
    return Profile(name=name, source=source, raw=raw, spaces=spaces, budget=budget)


def _parse_budget(spec: Any, source: str, spaces: dict[str, Space], method_space) -> ParamBudget:
    where = f"{source}: param_budget"
    if not isinstance(spec, dict):
        raise ConfigError(f"{where}: expected a mapping, e.g. {{match: mor1e, tolerance: 0.25}}")
    _unknown(spec, BUDGET_KEYS, where)
    if ("match" in spec) == ("params" in spec):
        raise ConfigError(f"{where}: give exactly one of match (a method) or params (a count)")
    tolerance = _number(spec.get("tolerance", DEFAULT_TOLERANCE), f"{where}.tolerance")
    if not 0 < tolerance < 1:
        raise ConfigError(f"{where}.tolerance: must be in (0, 1), got {tolerance}")
    budget = ParamBudget(tolerance=float(tolerance))
    if "params" in spec:
        budget.params = _positive_int(spec["params"], f"{where}.params")
        if "at" in spec:
            raise ConfigError(f"{where}.at: only with match (the matched method's reference configuration)")
    else:
        match = spec["match"]
        adapters = registry.registered("adapter")
        if match not in adapters:
            full = match in registry.registered("full")
            hint = f" ({match} is full finetuning, outside any band)" if full else ""
            raise ConfigError(f"{where}.match: expected one of {', '.join(adapters)}, got {match!r}{hint}")
        budget.match = match
        budget.reference_space = spaces.get(match) or method_space(match)
        at = spec.get("at") or {}
        if not isinstance(at, dict):
            raise ConfigError(f"{where}.at: expected a mapping of {match} hyperparameters, got {at!r}")
        fixed = {n: p.value for n, p in budget.reference_space.params.items() if p.role == "fixed"}
        _unknown(at, space_params(match, fixed, f"{where}.at") - {"learning_rate"}, f"{where}.at")
        for key, value in at.items():  # only counted, never trained: no bound from the training examples
            _check_values(match, Param(key, "fixed", value=value), f"{where}.at", None)
        budget.at = dict(at)
    if spec.get("model_config") is not None:
        value = spec["model_config"]
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{where}.model_config: expected a path, got {value!r}")
        path = Path(value) if Path(value).is_absolute() else Path(source).resolve().parent / value
        if not (path.is_file() or (path / "config.json").is_file()):
            raise ConfigError(f"{where}.model_config: {path} is neither a config.json nor a directory holding one")
        budget.model_config = path
    return budget


def load_profile(config: str | None, **kwargs) -> Profile:
    path = resolve_profile_path(config, kwargs.get("spaces_dir", SPACES_DIR))
    return parse_profile(_read_yaml(path), str(path), **kwargs)


def expand_params(method: str, params: dict[str, Any], space: Space | None) -> tuple[float | None, dict[str, Any]]:
    """Sampled + fixed values -> (learning_rate, hparams for harness.methods.apply_method).

    ``space`` None (zeroshot): no parameters; learning_rate None.
    """
    values = {name: p.value for name, p in space.params.items() if p.role == "fixed"} if space else {}
    values.update(params)
    lr = values.pop("learning_rate", None)
    learning_rate = None if lr is None else float(lr)
    if SIZE_PARAM in values:
        values.update(decode_size(values.pop(SIZE_PARAM)))
    if "expert_shape" in values:
        values["r1"], values["r2"] = parse_shape(values.pop("expert_shape"), method)
    if "alpha_ratio" in values:
        ratio = values.pop("alpha_ratio")
        values["alpha"] = float(ratio) * int(values["rank"])
    return learning_rate, values


def encode_size(values: dict[str, Any]) -> str:
    """One choice of the joint size categorical: the size parameters' values as compact JSON."""
    return json.dumps(values, sort_keys=True, separators=(",", ":"))


def decode_size(choice: str) -> dict[str, Any]:
    return json.loads(choice)


def num_experts(method: str, hparams: dict[str, Any]) -> int | None:
    """The leaderboard's expert count (Method.num_experts: r1*r2 rank-1 experts for MoR1E, E for MoLoRA)."""
    return registry.num_experts(method, hparams)
