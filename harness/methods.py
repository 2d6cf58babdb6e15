"""The five methods the harness compares, as one function from (model, method, hparams) to a model.

- ``mor1e``: MoR1E adapters; hparams are MoR1EConfig fields (r1, r2, num_clusters, router_temperature, top_k, ...)
  plus ``parameterization``: "authors" (the default: ``MoR1EConfig.authors``, the published layer) or
  "normalised" (``MoR1EConfig.normalised``); the other hparams apply on top of it.
- ``lora``: PEFT LoRA; hparams rank (8), alpha (16), dropout (0.0).
- ``molora``: mixture of LoRA experts; hparams are MoLoRAConfig fields (num_experts, rank, router_temperature, top_k, ...).
- ``dense``: full finetuning, every parameter trainable; no hparams.
- ``zeroshot``: the base model, every parameter frozen; no hparams.

``count_trainable_params`` counts what a configuration trains without loading weights: the
model is built on the meta device and prepared by ``apply_method``, exactly as a trial's
worker prepares it, so the count is the one the worker reports. From the shell:

    python -m harness.methods params --model smollm2-135m --method mor1e --hparams '{"r1": 4, "r2": 8}'
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import fields
from typing import Any

from peft import LoraConfig
from torch import nn

import mor1e

METHODS = ("mor1e", "lora", "molora", "dense", "zeroshot")

LORA_DEFAULTS = {"rank": 8, "alpha": 16.0, "dropout": 0.0}
# MoR1E's parameterisations: the constructor each name selects.
PARAMETERIZATIONS = {"authors": mor1e.MoR1EConfig.authors, "normalised": mor1e.MoR1EConfig.normalised}
_HPARAMS = {
    "mor1e": {f.name for f in fields(mor1e.MoR1EConfig)} | {"parameterization"},
    "molora": {f.name for f in fields(mor1e.MoLoRAConfig)},
    "lora": set(LORA_DEFAULTS) | {"target_modules"},
    "dense": set(),
    "zeroshot": set(),
}


def check_method(method: str) -> None:
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}: expected one of {', '.join(METHODS)}")


def method_config(method: str, hparams: dict[str, Any] | None = None):
    """The adapter config for ``method`` (None for dense and zeroshot); ValueError on unknown keys."""
    check_method(method)
    hparams = dict(hparams or {})
    unknown = sorted(set(hparams) - _HPARAMS[method])
    if unknown:
        allowed = ", ".join(sorted(_HPARAMS[method])) or "none"
        raise ValueError(f"unknown hparam(s) for method {method!r}: {', '.join(unknown)} (allowed: {allowed})")
    if method == "mor1e":
        name = hparams.pop("parameterization", "authors")
        if name not in PARAMETERIZATIONS:
            raise ValueError(f"parameterization must be one of {', '.join(PARAMETERIZATIONS)}, got {name!r}")
        return PARAMETERIZATIONS[name](**hparams)
    if method == "molora":
        return mor1e.MoLoRAConfig(**hparams)
    if method == "lora":
        h = {**LORA_DEFAULTS, **hparams}
        rank, alpha, dropout = h["rank"], h["alpha"], h["dropout"]
        if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
            raise ValueError(f"rank must be an integer >= 1, got {rank!r}")
        if not isinstance(alpha, (int, float)) or alpha <= 0:
            raise ValueError(f"alpha must be > 0, got {alpha!r}")
        if not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
        return LoraConfig(
            r=rank,
            lora_alpha=alpha,
            lora_dropout=float(dropout),
            target_modules=h.get("target_modules"),
            bias="none",
        )
    return None


def apply_method(model: nn.Module, method: str, hparams: dict[str, Any] | None = None) -> nn.Module:
    """Prepare ``model`` in place for ``method`` and return it (see the module docstring)."""
    config = method_config(method, hparams)
    if config is not None:
        return mor1e.wrap(model, config)
    trainable = method == "dense"
    for param in model.parameters():
        param.requires_grad_(trainable)
    return model


def uses_intuition(method: str, hparams: dict[str, Any] | None = None) -> bool:
    """Whether the method consumes intuition scores (so the trainer must compute them)."""
    check_method(method)
    config = method_config(method, hparams) if method == "mor1e" else None
    return config is not None and config.use_intuition


def num_experts(method: str, hparams: dict[str, Any] | None = None) -> int | None:
    """Expert count for the leaderboard's num_experts column (None where it means nothing)."""
    config = method_config(method, hparams)
    if isinstance(config, mor1e.MoR1EConfig):
        return config.r1 * config.r2
    if isinstance(config, mor1e.MoLoRAConfig):
        return config.num_experts
    return None


def count_trainable_params(model, method: str, hparams: dict[str, Any] | None = None) -> int:
    """Trainable parameters of ``method`` with ``hparams`` on ``model`` (a name for
    harness.models.load_model_config, or a ``PretrainedConfig``), built on the meta device.

    While the adapters are built, torch's initialisers are no-ops process-wide (transformers'
    ``no_init_weights``): do not count while another thread initialises a real model."""
    import torch

    from harness.models import empty_model, load_model_config

    from transformers.initialization import no_init_weights

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
    return mor1e.count_trainable(module)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2
        print(f"error: {message}", file=sys.stderr)
        raise SystemExit(2)


def main(argv: list[str] | None = None) -> int:
    ap = _Parser(prog="python -m harness.methods", description="Facts about a method's configuration.")
    sub = ap.add_subparsers(dest="command", required=True)
    params = sub.add_parser("params", help="print the trainable-parameter count (meta device, no weights loaded)")
    params.add_argument("--model", required=True,
                        help="preset (tiny-random-llama, smollm2-135m), a config.json or a dir holding one, or a hub id")
    params.add_argument("--method", required=True, help=", ".join(METHODS))
    params.add_argument("--hparams", default="{}", help='method hyperparameters as JSON, e.g. \'{"rank": 8}\'')
    params.add_argument("--trust-remote-code", action="store_true", help="let a hub config run its own code")
    args = ap.parse_args(argv)
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
        method_config(args.method, hparams)
        config = load_model_config(args.model, trust_remote_code=args.trust_remote_code)
        count = count_trainable_params(config, args.method, hparams)
    except (ValueError, TypeError, FileNotFoundError) as exc:
        print(f"error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    print(count)
    return 0


if __name__ == "__main__":
    sys.exit(main())
