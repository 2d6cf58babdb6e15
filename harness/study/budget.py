"""Parameter-matched search: the band of trainable-parameter counts, and each adapter's sizes inside it.

A profile's ``param_budget`` sets the band's centre -- the count of a matched method at a
reference configuration (``match``, ``at``), or an absolute count (``params``) -- and its
relative half-width (``tolerance``). At plan time every adapter method's space is restricted
to the sizes whose counts lie inside the band, so a size outside it is never sampled:

- a *size parameter* is a searched categorical whose choices change the count (LoRA ``rank``,
  MoLoRA ``num_experts`` and ``rank``, MoR1E ``expert_shape`` and ``share_routers``). They are
  replaced by one joint categorical, ``size``, whose choices are the combinations inside the band;
- a searched range that changes the count (MoR1E ``num_clusters``: the intuition map is k -> E)
  stays a range; a size is admitted only when its count is inside the band with every such range
  at either end, so the band holds at the ends of the range;
- the methods restricted are those the registry declares as adapters (``Method.role == "adapter"``);
  full finetuning is never restricted: its rows say it is outside the band.

Counts come from building the model on the meta device and preparing it exactly as a trial's
worker does (``harness.methods.count_trainable_params``), never from a formula of a layer, so
they stay right when a layer changes. Which parameters are sizes is found the same way: by
counting each choice, not by name.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
from typing import Any

from harness import methods as registry
from harness.searchspace import SIZE_PARAM, ConfigError, Param, Profile, Space, encode_size, expand_params


def param_matched(method: str) -> bool:
    """Whether the band restricts ``method``: the registry declares it a parameter-matched adapter."""
    return method in registry.registered("adapter")


@dataclasses.dataclass
class MethodSizes:
    """What the band did to one method's space."""

    size_params: list[str]
    """Searched categoricals that change the count, joined into ``size``."""
    range_params: list[str]
    """Searched ranges that change the count; sizes are checked at both ends of each."""
    admitted: list[tuple[dict, list[int]]]
    """(size values, counts at every end of the ranges) inside the band, in the space's order."""
    excluded: list[tuple[dict, list[int] | str]]
    """Sizes outside the band: their counts, or why their configuration is invalid."""


@dataclasses.dataclass
class Band:
    """The band [low, high] of trainable parameters the adapters' searched sizes must fall in."""

    low: int
    high: int
    centre: int
    tolerance: float
    matched: str | None  # the method whose reference count is the centre; None for an absolute count
    reference: dict | None  # the matched method's hparams at the reference configuration
    counted_on: str  # the model name or config file the counts were made from
    methods: dict[str, MethodSizes] = dataclasses.field(default_factory=dict)

    def contains(self, count: int) -> bool:
        return self.low <= count <= self.high

    def to_json(self) -> dict:
        """What the profile hash covers: the band and every method's admitted sizes with their counts."""
        return {
            "low": self.low, "high": self.high, "centre": self.centre, "tolerance": self.tolerance,
            "matched": self.matched, "reference": self.reference,
            "sizes": {m: [[s, c] for s, c in ms.admitted] for m, ms in sorted(self.methods.items())},
        }

    def describe(self) -> list[str]:
        """Human-readable lines: the band, then per method the sizes inside it."""
        centre = (f"{self.matched} at {_show(self.reference)}" if self.matched else "the profile's count")
        lines = [f"parameter band {_n(self.low)}-{_n(self.high)} trainable parameters: "
                 f"{centre} = {_n(self.centre)} ±{100 * self.tolerance:g}% (counted on {self.counted_on})"]
        for method, ms in self.methods.items():
            inside = ", ".join(f"{_show(s)} ({'/'.join(_n(c) for c in sorted(set(counts)))})"
                               for s, counts in ms.admitted) or "the space's one configuration"
            lines.append(f"  {method}: {inside}")
        return lines


def _n(count: int) -> str:
    return f"{count / 1e9:.2f}B" if count >= 1e9 else f"{count / 1e6:.2f}M" if count >= 1e6 else f"{count:,}"


def _show(values: dict | None) -> str:
    return " ".join(f"{k}={v}" for k, v in (values or {}).items()) or "defaults"


# (model config, method, hparams) -> count, for the whole process: a plan counts tens of
# configurations (~0.1-0.5 s each on SmolLM2), and tests build many plans of one profile.
_COUNTS: dict[tuple[str, str, str], int] = {}


class Counter:
    """Trainable-parameter counts on one model's config, memoised for the whole process."""

    def __init__(self, config, name: str):
        self.name = name
        self.config = config
        self._key = json.dumps(config.to_dict(), sort_keys=True, default=str)

    def __call__(self, method: str, hparams: dict[str, Any]) -> int:
        from harness.methods import count_trainable_params

        key = (self._key, method, json.dumps(hparams, sort_keys=True, default=str))
        if key not in _COUNTS:
            _COUNTS[key] = count_trainable_params(self.config, method, hparams)
        return _COUNTS[key]


def counter_for(profile: Profile) -> Counter:
    """A Counter on the model the profile's counts are made from (``param_budget.model_config`` if given)."""
    from harness.models import load_model_config

    budget = profile.budget
    source = str(budget.model_config) if budget.model_config is not None else profile.model
    try:
        config = load_model_config(source)
    except (ValueError, OSError) as exc:
        hint = "" if budget.model_config is not None else "; give param_budget.model_config (a config.json)"
        raise ConfigError(f"{profile.source}: param_budget: cannot read the config of {source}: "
                          f"{' '.join(str(exc).split())}{hint}") from None
    return Counter(config, source)


def resolve_band(profile: Profile, count: Counter) -> Band:
    """The band of ``profile.budget``: centred on the matched method's reference count, or on ``params``."""
    budget = profile.budget
    reference = None
    if budget.match is not None:
        _, reference = expand_params(budget.match, dict(budget.at), budget.reference_space)
        centre = _safe_count(count, budget.match, reference)
        if isinstance(centre, str):
            raise ConfigError(f"{profile.source}: param_budget: {budget.match} at {_show(budget.at)}: {centre}")
    else:
        centre = budget.params
    low, high = round(centre * (1 - budget.tolerance)), round(centre * (1 + budget.tolerance))
    return Band(low, high, centre, budget.tolerance, budget.match, reference, count.name)


def restrict_spaces(profile: Profile, band: Band, count: Counter) -> None:
    """Replace each adapter's space in ``profile.spaces`` by its band-restricted form (see the module doc)."""
    for method, space in list(profile.spaces.items()):
        if not param_matched(method):
            continue
        sizes = find_sizes(method, space, band, count)
        band.methods[method] = sizes
        if not sizes.admitted:
            shown = "; ".join(f"{_show(s)}: {_counts(c)}" for s, c in sizes.excluded) or "none"
            raise ConfigError(f"{profile.source}: {method} has no size inside the parameter band "
                              f"{_n(band.low)}-{_n(band.high)} ({shown})")
        if sizes.size_params:
            profile.spaces[method] = joint_space(space, sizes)


def _counts(c: list[int] | str) -> str:
    return c if isinstance(c, str) else "/".join(_n(n) for n in sorted(set(c)))


def _safe_count(count: Counter, method: str, hparams: dict) -> int | str:
    try:
        return count(method, hparams)
    except (ValueError, TypeError) as exc:
        return " ".join(str(exc).split())


def _ends(p: Param) -> list:
    return list(p.choices) if p.type == "categorical" else [p.low, p.high]


def find_sizes(method: str, space: Space, band: Band, count: Counter) -> MethodSizes:
    """Which searched parameters change the count, and which of their combinations lie inside the band."""
    searched = space.searched()
    reference = {name: _ends(p)[0] for name, p in searched.items()}

    def counted(point: dict) -> int | str:
        _, hparams = expand_params(method, {**reference, **point}, space)
        return _safe_count(count, method, hparams)

    size_params, range_params = [], []
    for name, p in searched.items():
        counts = {c for c in (counted({name: v}) for v in _ends(p)) if not isinstance(c, str)}
        if len(counts) > 1:
            (size_params if p.type == "categorical" else range_params).append(name)

    corners = [dict(zip(range_params, ends)) for ends in itertools.product(
        *(_ends(searched[n]) for n in range_params))]
    admitted, excluded = [], []
    for combo in itertools.product(*(searched[n].choices for n in size_params)):
        size = dict(zip(size_params, combo))
        counts = [counted({**size, **corner}) for corner in corners]
        invalid = next((c for c in counts if isinstance(c, str)), None)
        if invalid is not None:
            excluded.append((size, invalid))
        elif all(band.contains(c) for c in counts):
            admitted.append((size, counts))
        else:
            excluded.append((size, counts))
    return MethodSizes(size_params, range_params, admitted, excluded)


def joint_space(space: Space, sizes: MethodSizes) -> Space:
    """``space`` with its size parameters replaced by one categorical of the admitted combinations."""
    params = {name: p for name, p in space.params.items() if name not in sizes.size_params}
    params[SIZE_PARAM] = Param(SIZE_PARAM, "scientific", "categorical",
                               choices=[encode_size(size) for size, _ in sizes.admitted])
    return Space(space.method, params, f"{space.source} + param_budget")
