"""The five methods the harness compares, as one function from (model, method, hparams) to a model.

- ``mor1e``: MoR1E adapters; hparams are MoR1EConfig fields (r1, r2, num_clusters, router_temperature, top_k, ...)
  plus ``parameterization``: "authors" (the default: ``MoR1EConfig.authors``, the published layer) or
  "normalised" (``MoR1EConfig.normalised``); the other hparams apply on top of it.
- ``lora``: PEFT LoRA; hparams rank (8), alpha (16), dropout (0.0).
- ``molora``: mixture of LoRA experts; hparams are MoLoRAConfig fields (num_experts, rank, router_temperature, top_k, ...).
- ``dense``: full finetuning, every parameter trainable; no hparams.
- ``zeroshot``: the base model, every parameter frozen; no hparams.
"""

from __future__ import annotations

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
