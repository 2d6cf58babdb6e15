"""The method registry: every method the harness compares is declared here once, as a ``Method``.

A ``Method`` says how hparams become a config (``config``), how a config prepares a model
(``apply``), which search-space file it reads, what a space may name, whether it consumes
intuition scores or has routers, how its trainable parameters are counted, whether it is a
parameter-matched adapter, and its place in the leaderboard. The plan checks, the parameter
band (``harness.study.budget``), the search spaces (``harness.searchspace``), the worker and the
leaderboard's ordering ask this registry; none of them spells a method's name.

The built-in methods:

- ``mor1e``: MoR1E adapters; hparams are MoR1EConfig fields (r1, r2, num_clusters, router_temperature, top_k, ...)
  plus ``parameterization``: "authors" (the default: ``MoR1EConfig.authors``, the published layer) or
  "normalised" (``MoR1EConfig.normalised``); the other hparams apply on top of it.
- ``lora``: PEFT LoRA; hparams rank (8), alpha (16), dropout (0.0), target_modules.
- ``dora``: LoRA with weight decomposition (peft's ``use_dora=True``); LoRA's hparams.
- ``molora``: mixture of LoRA experts; hparams are MoLoRAConfig fields (num_experts, rank, router_temperature, top_k, ...).
- ``peft``: any method of the peft library: hparam ``peft_type`` (LORA, IA3, VERA, LOHA, LOKR, OFT, BOFT, HRA,
  FOURIERFT, ...) and that config class's own fields (e.g. ``r``, ``target_modules``, ``feedforward_modules``).
- ``dense``: full finetuning, every parameter trainable; no hparams.
- ``zeroshot``: the base model, every parameter frozen; no hparams.

A method of your own is a ``Method`` passed to ``register`` from your own module; a profile lists that
module under ``plugins:`` and every process of a study (the driver, each trial's workers) imports it
before it looks a method up (docs/adding-a-method.md).

``count_trainable_params`` counts what a configuration trains without loading weights: the
model is built on the meta device and prepared by ``apply_method``, exactly as a trial's
worker prepares it, so the count is the one the worker reports. From the shell:

    python -m harness.methods params --model smollm2-135m --method mor1e --hparams '{"r1": 4, "r2": 8}'

This module imports neither torch nor peft at import time (the search-space checks and the
leaderboard read the registry); a method's functions import what they need when called.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import sys
from collections.abc import Callable, Iterable
from typing import Any

ROLES = ("adapter", "full", "reference")


def _never(config) -> bool:
    return False


def _nothing(config) -> None:
    return None


@dataclasses.dataclass(frozen=True)
class Method:
    """One method, declared once."""

    name: str
    """What profiles, trial configs and leaderboard rows call it."""
    config: Callable[[dict[str, Any]], Any]
    """hparams -> the method's config object (None if it has none); ValueError naming a bad hparam."""
    apply: Callable[[Any, Any], Any]
    """(model, config) -> the model prepared for training in place: adapters injected, what trains marked."""
    role: str = "adapter"
    """``adapter``: parameter-matched (a profile's param_budget restricts its sizes) and exported as an adapter;
    ``full``: searched, trains the whole model, outside any band; ``reference``: not trained, a reference row."""
    space: str | None = None
    """Its search-space file: a name in search_spaces/ (``<space>.yaml``) or a path; None for a reference."""
    space_params: frozenset[str] | Callable[[dict[str, Any]], Iterable[str]] = frozenset()
    """What its space may name besides learning_rate: a set, or a function of the space's fixed values
    (for methods whose fields depend on a fixed parameter, as ``peft`` on ``peft_type``); ValueError if bad."""
    choices: dict[str, tuple] = dataclasses.field(default_factory=dict)
    """Space parameters whose values are one of a few names (checked when a profile is read)."""
    uses_intuition: Callable[[Any], bool] = _never
    """config -> whether the trainer must compute intuition scores (then ``config.num_clusters`` is k)."""
    has_routers: bool = False
    """Whether its rows carry router telemetry."""
    num_experts: Callable[[Any], int | None] = _nothing
    """config -> the leaderboard's num_experts column."""
    num_clusters: Callable[[Any], int | None] = _nothing
    """config -> the leaderboard's num_clusters column."""
    count_trainable: Callable[[Any], int] | None = None
    """prepared model -> trainable parameters; None: every parameter with requires_grad, shared tensors once."""
    save_adapter: Callable[..., Any] | None = None
    """(prepared model, directory, **intuition) -> writes the trained adapter a final run exports (``intuition``:
    ``centroids`` for methods that read intuition, else empty); None: nothing exported."""
    order: int = 100
    """Place in the leaderboard's tables (ascending; ties by name)."""
    baseline: bool = False
    """One of the methods MoR1E must beat: the leaderboard compares every method with the best of these."""
    in_default_study: bool = False
    """Searched by a profile that lists no ``methods:`` (the harness's four original methods); others are opt-in."""

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name or not all(c.isalnum() or c in "-_" for c in self.name):
            raise ValueError(f"method name {self.name!r}: use letters, digits, '-' and '_'")
        if self.role not in ROLES:
            raise ValueError(f"method {self.name!r}: role must be one of {', '.join(ROLES)}, got {self.role!r}")
        if self.role != "reference" and self.space is None:
            raise ValueError(f"method {self.name!r}: a trained method needs a search space")

    @property
    def trains(self) -> bool:
        return self.role != "reference"

    @property
    def searched(self) -> bool:
        return self.role != "reference"

    def allowed_space_params(self, fixed: dict[str, Any]) -> set[str]:
        """Names its space may hold, given the space's fixed values; ValueError if they are wrong."""
        names = self.space_params(fixed) if callable(self.space_params) else self.space_params
        return {"learning_rate", *names}


_REGISTRY: dict[str, Method] = {}
METHODS: tuple[str, ...] = ()  # the registered names, in registration order (kept in step by register)


def register(method: Method) -> Method:
    """Add ``method`` to the registry; ValueError if its name is taken."""
    global METHODS
    if not isinstance(method, Method):
        raise TypeError(f"register expects a harness.methods.Method, got {type(method).__name__}")
    if method.name in _REGISTRY:
        if _REGISTRY[method.name] is method:  # the same declaration imported twice
            return method
        raise ValueError(f"method {method.name!r} is already registered; choose another name")
    _REGISTRY[method.name] = method
    METHODS = tuple(_REGISTRY)
    return method


def get(name: str) -> Method:
    """The registered method ``name``; ValueError naming it otherwise."""
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown method {name!r}: expected one of {', '.join(_REGISTRY)}") from None


def registered(role: str | None = None) -> tuple[str, ...]:
    """Registered names (of one role), in registration order."""
    return tuple(n for n, m in _REGISTRY.items() if role is None or m.role == role)


def leaderboard_order() -> tuple[str, ...]:
    return tuple(sorted(_REGISTRY, key=lambda n: (_REGISTRY[n].order, n)))


def baselines() -> tuple[str, ...]:
    return tuple(n for n in leaderboard_order() if _REGISTRY[n].baseline)


def load_plugins(modules: Iterable[str]) -> None:
    """Import each module (each registers its methods when imported); ValueError naming one that fails."""
    for name in modules:
        if not isinstance(name, str) or not name:
            raise ValueError(f"plugins: expected module names, got {name!r}")
        try:
            importlib.import_module(name)
        except ImportError as exc:
            raise ValueError(f"plugin module {name!r} cannot be imported: {exc}") from None
        except ValueError as exc:  # a registration clashing with an existing name
            raise ValueError(f"plugin module {name!r}: {exc}") from None


def check_method(method: str) -> None:
    get(method)


def _check_keys(name: str, hparams: dict, allowed: set[str]) -> None:
    unknown = sorted(set(hparams) - allowed)
    if unknown:
        shown = ", ".join(sorted(allowed)) or "none"
        raise ValueError(f"unknown hparam(s) for method {name!r}: {', '.join(unknown)} (allowed: {shown})")


def method_config(method: str, hparams: dict[str, Any] | None = None):
    """The config object for ``method`` (None for dense and zeroshot); ValueError on unknown keys or bad values."""
    return get(method).config(dict(hparams or {}))


def apply_method(model, method: str, hparams: dict[str, Any] | None = None):
    """Prepare ``model`` in place for ``method`` and return it (see the module docstring)."""
    spec = get(method)
    return spec.apply(model, spec.config(dict(hparams or {})))


def uses_intuition(method: str, hparams: dict[str, Any] | None = None) -> bool:
    """Whether the method consumes intuition scores (so the trainer must compute them)."""
    spec = get(method)
    return bool(spec.uses_intuition(spec.config(dict(hparams or {}))))


def reads_intuition(method: str) -> bool:
    """Whether ``method`` at its default hparams consumes intuition scores (False if it has no defaults)."""
    spec = get(method)
    try:
        return bool(spec.uses_intuition(spec.config({})))
    except (ValueError, TypeError):
        return False


def num_experts(method: str, hparams: dict[str, Any] | None = None) -> int | None:
    """Expert count for the leaderboard's num_experts column (None where it means nothing)."""
    spec = get(method)
    return spec.num_experts(spec.config(dict(hparams or {})))


def num_clusters(method: str, hparams: dict[str, Any] | None = None) -> int | None:
    """Intuition cluster count for the leaderboard's num_clusters column (None where it means nothing)."""
    spec = get(method)
    return spec.num_clusters(spec.config(dict(hparams or {})))


def count_prepared(model, method: str) -> int:
    """Trainable parameters of a model ``apply_method`` prepared for ``method``."""
    import mor1e

    counter = get(method).count_trainable
    return counter(model) if counter is not None else mor1e.count_trainable(model)


def count_trainable_params(model, method: str, hparams: dict[str, Any] | None = None) -> int:
    """Trainable parameters of ``method`` with ``hparams`` on ``model`` (a name for
    harness.models.load_model_config, or a ``PretrainedConfig``), built on the meta device.

    While the adapters are built, torch's initialisers are no-ops process-wide (transformers'
    ``no_init_weights``): do not count while another thread initialises a real model."""
    import torch
    from transformers.initialization import no_init_weights

    from harness.models import empty_model, load_model_config

    method_config(method, hparams)  # bad method or hparams: ValueError before any building
    config = load_model_config(model) if isinstance(model, str) else model
    module = empty_model(config)
    # Adapter tensors created inside the context land on the meta device too (peft makes its own
    # nn.Linear layers before moving them next to their base layer); their initialisers, which only
    # cost time there (torch runs uniform_ on meta tensors through Python), are skipped. Neither
    # changes a shape or what trains. (The base model is built without skipping: its init ties
    # the embeddings.)
    with no_init_weights(), torch.device("meta"):
        apply_method(module, method, hparams)
    return count_prepared(module, method)


# ---------------------------------------------------------------------------------------------
# The built-in methods.

def _mor1e_fields() -> set[str]:
    import mor1e

    return {f.name for f in dataclasses.fields(mor1e.MoR1EConfig)} | {"parameterization"}


MOR1E_CHOICES = {
    "parameterization": ("authors", "normalised"),
    "intuition_map": ("linear", "softmax"),
    "router_init": ("zeros", "random"),
    "intuition_score": ("dot", "cosine"),
    "adapter_dtype": ("fp32", "base"),
    "output_gate": ("sigmoid", "scalar", "none"),
    "share_routers": (True, False),
    "use_intuition": (True, False),
    "use_token_router": (True, False),
}


def _mor1e_config(hparams: dict):
    import mor1e

    _check_keys("mor1e", hparams, _mor1e_fields())
    name = hparams.pop("parameterization", "authors")
    constructors = {"authors": mor1e.MoR1EConfig.authors, "normalised": mor1e.MoR1EConfig.normalised}
    if name not in constructors:
        raise ValueError(f"parameterization must be one of {', '.join(constructors)}, got {name!r}")
    return constructors[name](**hparams)


def _molora_config(hparams: dict):
    import mor1e

    _check_keys("molora", hparams, {f.name for f in dataclasses.fields(mor1e.MoLoRAConfig)})
    return mor1e.MoLoRAConfig(**hparams)


def _wrap(model, config):
    import mor1e

    return mor1e.wrap(model, config)


def _save_wrapped(model, directory, **intuition):
    import mor1e

    return mor1e.save_adapter(model, directory, **intuition)


LORA_DEFAULTS = {"rank": 8, "alpha": 16.0, "dropout": 0.0}


def _lora_config(hparams: dict, *, use_dora: bool = False, name: str = "lora"):
    from peft import LoraConfig

    _check_keys(name, hparams, set(LORA_DEFAULTS) | {"target_modules"})
    h = {**LORA_DEFAULTS, **hparams}
    rank, alpha, dropout = h["rank"], h["alpha"], h["dropout"]
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise ValueError(f"rank must be an integer >= 1, got {rank!r}")
    if not isinstance(alpha, (int, float)) or alpha <= 0:
        raise ValueError(f"alpha must be > 0, got {alpha!r}")
    if not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
        raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
    return LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=float(dropout), target_modules=h.get("target_modules"),
                      bias="none", use_dora=use_dora)


def _freeze_all(trainable: bool):
    def apply(model, config):
        for param in model.parameters():
            param.requires_grad_(trainable)
        return model

    return apply


def _no_hparams(name: str):
    def config(hparams: dict):
        _check_keys(name, hparams, set())
        return None

    return config


# ``peft``: any peft method by its peft_type. Fields of a peft config that describe the run, not the
# method (set by peft itself, or meaningless for an injected adapter), are not hparams.
PEFT_RUN_FIELDS = {"peft_type", "task_type", "base_model_name_or_path", "revision", "inference_mode",
                   "auto_mapping", "runtime_config", "peft_version"}


def _peft_config_class(peft_type):
    from peft import PeftType
    from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING, PEFT_TYPE_TO_TUNER_MAPPING

    if not isinstance(peft_type, str):
        raise ValueError(f"peft_type must be a name such as LORA or IA3, got {peft_type!r}")
    from peft.config import PromptLearningConfig

    # Adapter methods only: a prompt-learning method (prefix tuning, ...) injects no layers.
    known = sorted(t.value for t in PeftType if t in PEFT_TYPE_TO_TUNER_MAPPING and t in PEFT_TYPE_TO_CONFIG_MAPPING
                   and not issubclass(PEFT_TYPE_TO_CONFIG_MAPPING[t], PromptLearningConfig))
    key = peft_type.upper()
    if key not in known:
        raise ValueError(f"unknown peft_type {peft_type!r} (peft's adapter methods: {', '.join(known)})")
    return PEFT_TYPE_TO_CONFIG_MAPPING[PeftType(key)]


def _peft_fields(peft_type) -> set[str]:
    cls = _peft_config_class(peft_type)
    return {f.name for f in dataclasses.fields(cls) if f.init} - PEFT_RUN_FIELDS


def _peft_config(hparams: dict):
    if "peft_type" not in hparams:
        raise ValueError("method 'peft' needs hparam peft_type (e.g. IA3, LOHA, VERA)")
    peft_type = hparams.pop("peft_type")
    fields = _peft_fields(peft_type)
    unknown = sorted(set(hparams) - fields)
    if unknown:
        raise ValueError(f"peft_type {peft_type}: {', '.join(unknown)} is not a field of "
                         f"{_peft_config_class(peft_type).__name__} (fields: {', '.join(sorted(fields))})")
    try:
        return _peft_config_class(peft_type)(task_type="CAUSAL_LM", **hparams)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"peft_type {peft_type}: {' '.join(str(exc).split())}") from None


def _peft_space_params(fixed: dict) -> set[str]:
    if "peft_type" not in fixed:
        raise ValueError("peft_type must be a fixed parameter (one peft method per space), e.g. "
                         "peft_type: {role: fixed, value: IA3}")
    return {"peft_type"} | _peft_fields(fixed["peft_type"])


def _peft_prefix(config) -> str:
    from peft.mapping import PEFT_TYPE_TO_PREFIX_MAPPING

    return PEFT_TYPE_TO_PREFIX_MAPPING[config.peft_type]


def _peft_apply(model, config):
    from peft import inject_adapter_in_model

    inject_adapter_in_model(config, model)
    prefix = _peft_prefix(config)  # peft marks its adapters' parameters by this prefix, so do we
    for name, param in model.named_parameters():
        param.requires_grad_(prefix in name)
    return model


def _peft_save(model, directory, **intuition):
    """peft's own files (adapter_config.json, adapter_model.safetensors) for the injected adapter."""
    from pathlib import Path

    from peft import get_peft_model_state_dict
    from safetensors.torch import save_file

    config = model.peft_config["default"]
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous().clone() for k, v in get_peft_model_state_dict(model).items()}
    save_file(state, str(directory / "adapter_model.safetensors"), metadata={"format": "pt"})
    config.save_pretrained(str(directory))
    return directory


register(Method(
    name="mor1e", config=_mor1e_config, apply=_wrap, role="adapter", space="mor1e",
    space_params=frozenset({"expert_shape", "r1", "r2", "num_clusters", "router_temperature", "top_k",
                            "token_coef", "intuition_coef", "output_gate", "aux_loss_coef", "use_intuition",
                            "use_token_router", "parameterization", "gate_sharpness", "gate_init",
                            "intuition_map", "router_init", "share_routers", "intuition_score",
                            "adapter_dtype"}),
    choices=MOR1E_CHOICES, uses_intuition=lambda c: c.use_intuition, has_routers=True,
    num_experts=lambda c: c.r1 * c.r2, num_clusters=lambda c: c.num_clusters,
    save_adapter=_save_wrapped, order=60, in_default_study=True,
))
register(Method(
    name="lora", config=_lora_config, apply=_wrap, space="lora",
    space_params=frozenset({"rank", "alpha", "alpha_ratio", "dropout"}),
    save_adapter=_save_wrapped, order=20, baseline=True, in_default_study=True,
))
register(Method(
    name="dora", config=lambda h: _lora_config(h, use_dora=True, name="dora"), apply=_wrap, space="dora",
    space_params=frozenset({"rank", "alpha", "alpha_ratio", "dropout"}),
    save_adapter=_save_wrapped, order=30, baseline=True,
))
register(Method(
    name="molora", config=_molora_config, apply=_wrap, space="molora",
    space_params=frozenset({"num_experts", "rank", "alpha", "alpha_ratio", "router_temperature", "top_k",
                            "aux_loss_coef", "adapter_dtype"}),
    choices={"adapter_dtype": ("fp32", "base")}, has_routers=True, num_experts=lambda c: c.num_experts, save_adapter=_save_wrapped, order=50, baseline=True,
    in_default_study=True,
))
register(Method(
    name="peft", config=_peft_config, apply=_peft_apply, space="peft", space_params=_peft_space_params,
    save_adapter=_peft_save, order=40, baseline=True,
))
register(Method(name="dense", config=_no_hparams("dense"), apply=_freeze_all(True), role="full", space="dense",
                order=10, baseline=True, in_default_study=True))
register(Method(name="zeroshot", config=_no_hparams("zeroshot"), apply=_freeze_all(False), role="reference",
                order=0))


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2
        print(f"error: {message}", file=sys.stderr)
        raise SystemExit(2)


def main(argv: list[str] | None = None) -> int:
    ap = _Parser(prog="python -m harness.methods", formatter_class=argparse.RawDescriptionHelpFormatter,
                 description="Facts about the registered methods: their list, and a configuration's trainable "
                             "parameters.",
                 epilog="""examples:
  python -m harness.methods list
  python -m harness.methods params --model smollm2-135m --method mor1e --hparams '{"r1": 4, "r2": 8}'
  python -m harness.methods params --model smollm2-135m --method lora --hparams '{"rank": 16}'

writes nothing; counts on the meta device, so no weights are loaded. Adding a method of your own:
docs/adding-a-method.md.""")
    sub = ap.add_subparsers(dest="command", required=True)
    params = sub.add_parser("params", help="print the trainable-parameter count (meta device, no weights loaded)")
    params.add_argument("--model", required=True,
                        help="preset (tiny-random-llama, smollm2-135m), a config.json or a dir holding one, or a hub id")
    params.add_argument("--method", required=True, help=", ".join(METHODS) + " or one a --plugin registers")
    params.add_argument("--hparams", default="{}", help='method hyperparameters as JSON, e.g. \'{"rank": 8}\'')
    params.add_argument("--plugin", action="append", default=[], help="a module registering methods (repeatable)")
    params.add_argument("--trust-remote-code", action="store_true", help="let a hub config run its own code")
    listing = sub.add_parser("list", help="print the registered methods, one per line: name, role, search space")
    listing.add_argument("--plugin", action="append", default=[], help="a module registering methods (repeatable)")
    args = ap.parse_args(argv)
    if args.command == "list":
        try:
            load_plugins(args.plugin)
        except ValueError as exc:
            print(f"error: {' '.join(str(exc).split())}", file=sys.stderr)
            return 2
        for name in leaderboard_order():
            print(f"{name}\t{_REGISTRY[name].role}\t{_REGISTRY[name].space or '-'}")
        return 0
    try:
        hparams = json.loads(args.hparams)
    except json.JSONDecodeError as exc:
        print(f"error: --hparams is not valid JSON: {exc.msg}", file=sys.stderr)
        return 2
    if not isinstance(hparams, dict):
        print(f"error: --hparams must be a JSON object, got {args.hparams}", file=sys.stderr)
        return 2
    from harness.models import load_model_config

    try:
        load_plugins(args.plugin)
        method_config(args.method, hparams)
        config = load_model_config(args.model, trust_remote_code=args.trust_remote_code)
        count = count_trainable_params(config, args.method, hparams)
    except (ValueError, TypeError, FileNotFoundError) as exc:
        print(f"error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    print(count)
    return 0


if __name__ == "__main__":
    # Run the imported module's main: a plugin registers with harness.methods, not with __main__.
    from harness.methods import main as _main

    sys.exit(_main())
