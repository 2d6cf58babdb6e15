"""Injecting adapters into a causal LM, freezing, per-batch router inputs and the auxiliary loss.

``wrap(model, config)`` replaces target linears in place.  Supported naming:
Llama family (Llama, Mistral, Qwen2: q/k/v/o_proj, gate/up/down_proj) and
GPT-2 style (c_attn, c_proj, c_fc as transformers' Conv1D).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np
import torch
from peft import LoraConfig, inject_adapter_in_model
from torch import nn
from transformers.pytorch_utils import Conv1D

from mor1e.config import MoLoRAConfig, MoR1EConfig
from mor1e.fused import ForwardTable, ProjectionGroup
from mor1e.layers import (
    ADAPTER_MARKER,
    MoLoRALinear,
    MoLoRARouter,
    MoR1ELinear,
    MoR1ERouter,
    HALF_DTYPES,
    adapter_dtype,
    linear_features,
)

LLAMA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
GPT2_TARGETS = ("c_attn", "c_proj", "c_fc")
# Projections that read the same input inside one parent module: their MoR1E updates are computed
# together (mor1e/fused.py), and with share_routers they share one MoR1ERouter (the authors'
# layer has one router per projection).  GPT-2 fuses q/k/v into c_attn, so it has nothing to group.
SHARE_GROUPS = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))
# peft names its LoRA parameters lora_A / lora_B; ours carry ADAPTER_MARKER.
_PEFT_MARKER = "lora_"
_CONFIG_ATTR = "_mor1e_adapter_config"


def is_adapter_param(name: str) -> bool:
    """The single rule for what an adapter parameter is: used for freezing, saving and optimiser groups."""
    return ADAPTER_MARKER in name or _PEFT_MARKER in name


def adapter_parameters(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    return [(n, p) for n, p in model.named_parameters() if is_adapter_param(n)]


def count_trainable(model: nn.Module) -> int:
    """Number of trainable parameters (shared tensors counted once)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def adapter_config(model: nn.Module):
    """The config ``wrap`` applied to this model, or None if it was never wrapped."""
    return getattr(model, _CONFIG_ATTR, None)


def _is_linear(module: nn.Module) -> bool:
    return isinstance(module, (nn.Linear, Conv1D))


def resolve_targets(model: nn.Module, target_modules) -> list[str]:
    """Full names of the modules to wrap; ValueError naming any target that matches nothing."""
    leaves: dict[str, list[str]] = {}
    for name, module in model.named_modules():
        if name:
            leaves.setdefault(name.rsplit(".", 1)[-1], []).append(name)
    if target_modules is None:
        wanted = [t for t in LLAMA_TARGETS + GPT2_TARGETS if t in leaves]
        if not wanted:
            raise ValueError(
                "target_modules: no default projection names (Llama or GPT-2 style) found in "
                f"{type(model).__name__}; pass target_modules explicitly"
            )
    else:
        wanted = list(target_modules)
        for t in wanted:
            if t not in leaves:
                raise ValueError(f"target_modules: unknown target module {t!r}: no module of that name in the model")
    names = []
    modules = dict(model.named_modules())
    for t in wanted:
        for full in leaves[t]:
            if not _is_linear(modules[full]):
                raise ValueError(
                    f"target_modules: target module {t!r} ({full}) is a {type(modules[full]).__name__}, "
                    "not nn.Linear or Conv1D"
                )
            names.append(full)
    return names


def _parent(model: nn.Module, full_name: str) -> tuple[nn.Module, str]:
    parent_name, _, child = full_name.rpartition(".")
    return (model.get_submodule(parent_name) if parent_name else model), child


def wrap(model: nn.Module, config) -> nn.Module:
    """Inject the adapter described by ``config`` in place, freeze everything else, return the model.

    ``config`` is a MoR1EConfig, a MoLoRAConfig or a ``peft.LoraConfig`` (injected with
    ``peft.inject_adapter_in_model``).
    """
    if adapter_config(model) is not None:
        raise ValueError("model is already wrapped with an adapter")
    if isinstance(config, LoraConfig):
        targets = resolve_targets(model, config.target_modules)
        short = sorted({n.rsplit(".", 1)[-1] for n in targets})
        config = LoraConfig(**{**_lora_fields(config), "target_modules": short})
        inject_adapter_in_model(config, model)
        # peft's get_peft_model upcasts a half-precision base's LoRA weights to fp32
        # (autocast_adapter_dtype); inject_adapter_in_model leaves them in the base's dtype.
        for name, param in model.named_parameters():
            if _PEFT_MARKER in name and param.dtype in HALF_DTYPES:
                param.data = param.data.float()
    elif isinstance(config, MoR1EConfig):
        _wrap_mor1e(model, config)
    elif isinstance(config, MoLoRAConfig):
        for full in resolve_targets(model, config.target_modules):
            parent, child = _parent(model, full)
            setattr(parent, child, MoLoRALinear(getattr(parent, child), config))
    else:
        raise ValueError(
            f"config must be MoR1EConfig, MoLoRAConfig or peft.LoraConfig, got {type(config).__name__}"
        )
    for name, param in model.named_parameters():
        param.requires_grad_(is_adapter_param(name))
    setattr(model, _CONFIG_ATTR, config)
    return model


def _lora_fields(config: LoraConfig) -> dict:
    from dataclasses import fields

    return {f.name: getattr(config, f.name) for f in fields(config) if f.init}


def _same_input_groups(model: nn.Module, targets: list[str]) -> list[list[str]]:
    """Full names of the targets that read one input (SHARE_GROUPS members of one parent with one
    input width), two or more per group."""
    by_parent: dict[str, list[str]] = {}
    for full in targets:
        by_parent.setdefault(full.rpartition(".")[0], []).append(full.rsplit(".", 1)[-1])
    groups = []
    for parent_name, children in by_parent.items():
        parent = model.get_submodule(parent_name) if parent_name else model
        for group in SHARE_GROUPS:
            members = [c for c in group if c in children]
            if len(members) >= 2 and len({linear_features(getattr(parent, c))[0] for c in members}) == 1:
                groups.append([f"{parent_name}.{c}" if parent_name else c for c in members])
    return groups


def _wrap_mor1e(model: nn.Module, config: MoR1EConfig) -> None:
    targets = resolve_targets(model, config.target_modules)
    same_input = _same_input_groups(model, targets)
    routers: dict[str, MoR1ERouter] = {}  # full target name -> shared router
    if config.share_routers:
        for names in same_input:
            parent_name, _, first = names[0].rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            weight = getattr(parent, first).weight
            router = MoR1ERouter(linear_features(getattr(parent, first))[0], config,
                                 dtype=adapter_dtype(config, weight.dtype), device=weight.device)
            router.shared = True
            # Registered once, on the module that owns the projections.
            parent.add_module(f"{ADAPTER_MARKER}router_" + "_".join(n.rsplit(".", 1)[-1] for n in names), router)
            for name in names:
                routers[name] = router
    layers: dict[str, MoR1ELinear] = {}
    for full in targets:
        parent, child = _parent(model, full)
        layers[full] = MoR1ELinear(getattr(parent, child), config, router=routers.get(full))
        setattr(parent, child, layers[full])
    for names in same_input:
        group = ProjectionGroup([layers[n] for n in names])
        for name in names:
            layers[name].group = group
    # Every projection's coefficients of G once per forward of the wrapped model: the table opens
    # when the model's forward starts and closes when it ends, even by an exception.
    groups = list({id(layer.group): layer.group for layer in layers.values()}.values())
    table = ForwardTable(groups)
    model.register_forward_pre_hook(table.enter)
    model.register_forward_hook(table.exit, always_call=True)
    model._mor1e_forward_table = table


def _routers(model: nn.Module) -> list[MoR1ERouter]:
    """The MoR1E routers that take intuition scores."""
    return [m for m in model.modules() if isinstance(m, MoR1ERouter) and m.uses_intuition]


def needs_intuition(model: nn.Module) -> bool:
    """Whether ``model`` holds MoR1E routers that refuse to run without intuition scores."""
    return bool(_routers(model))


def _reference_param(router: MoR1ERouter) -> torch.Tensor | None:
    """A parameter whose device and dtype the router computes in (None for a parameter-free router)."""
    return next(iter(router.parameters()), None)


def set_intuition(model: nn.Module, scores) -> None:
    """Give every MoR1E router this batch's intuition scores, shape (batch, k); None clears them.

    Scores broadcast over the token dimensions of each layer's input.  Works on the bare model
    or on anything whose ``modules()`` reaches it (e.g. a DeepSpeed engine).  Models without
    intuition layers (LoRA, MoLoRA, ablations) ignore the call.  A router built with intuition
    raises ``MissingIntuitionError`` when it runs while its scores are cleared.
    """
    routers = _routers(model)
    if scores is not None:
        if isinstance(scores, np.ndarray):
            scores = torch.from_numpy(scores)
        if not isinstance(scores, torch.Tensor):
            raise ValueError(f"intuition scores must be a tensor or ndarray, got {type(scores).__name__}")
        if scores.dim() != 2:
            raise ValueError(f"intuition scores must have shape (batch, k), got {tuple(scores.shape)}")
        converted: dict[tuple, torch.Tensor] = {}
        for router in routers:
            k = router.config.num_clusters
            if scores.shape[1] != k:
                raise ValueError(f"intuition scores have {scores.shape[1]} clusters but the adapter expects k={k}")
            ref = _reference_param(router)
            key = (scores.device, scores.dtype) if ref is None else (ref.device, ref.dtype)
            if key not in converted:
                converted[key] = scores.detach().to(device=key[0], dtype=key[1])
            router.intuition_scores = converted[key]
        return
    for router in routers:
        router.intuition_scores = None


@contextlib.contextmanager
def using_intuition(model: nn.Module, scores) -> Iterator[nn.Module]:
    """``with using_intuition(model, scores):`` sets scores for the block and restores the previous ones.

    The same context manager is ``mor1e.intuition(model, scores)``.
    """
    routers = _routers(model)
    previous = [r.intuition_scores for r in routers]
    set_intuition(model, scores)
    try:
        yield model
    finally:
        for router, old in zip(routers, previous):
            router.intuition_scores = old


def _masked_routers(model: nn.Module) -> list[nn.Module]:
    """Every module that reads the batch's token mask: MoR1E routers and MoLoRA routers."""
    return [m for m in model.modules() if isinstance(m, (MoR1ERouter, MoLoRARouter))]


def set_token_mask(model: nn.Module, attention_mask) -> None:
    """Tell every router which positions of this batch are real tokens; None clears the mask.

    ``attention_mask`` is the batch's (B, T) mask, 1 for a real token and 0 for padding.  Every
    wrapped projection sees its input as (B, T, d) (a left-padded batch too), so the mask applies
    to every router's tokens as it is.  The load-balancing loss (``aux_loss``) and router telemetry
    (``router_telemetry``) count real tokens only; without a mask every position counts.  Routing
    itself never reads the mask.
    """
    routers = _masked_routers(model)
    mask = None
    if attention_mask is not None:
        if isinstance(attention_mask, np.ndarray):
            attention_mask = torch.from_numpy(attention_mask)
        if not isinstance(attention_mask, torch.Tensor) or attention_mask.dim() != 2:
            got = tuple(attention_mask.shape) if isinstance(attention_mask, torch.Tensor) else type(attention_mask)
            raise ValueError(f"token mask must be a (batch, tokens) tensor, got {got}")
        mask = attention_mask.detach() != 0
    on_device: dict[torch.device, torch.Tensor] = {}
    for router in routers:
        if mask is None:
            router.token_mask = None
            continue
        ref = _reference_param(router)
        device = mask.device if ref is None else ref.device
        if device not in on_device:
            on_device[device] = mask.to(device)
        router.token_mask = on_device[device]


@contextlib.contextmanager
def token_mask(model: nn.Module, attention_mask) -> Iterator[nn.Module]:
    """``with mor1e.token_mask(model, attention_mask):`` sets the mask for the block, then restores."""
    routers = _masked_routers(model)
    previous = [r.token_mask for r in routers]
    set_token_mask(model, attention_mask)
    try:
        yield model
    finally:
        for router, old in zip(routers, previous):
            router.token_mask = old


def aux_loss(model: nn.Module) -> torch.Tensor:
    """The load-balancing term of the last forward: coef × mean over routers of each router's loss.

    Each MoR1E or MoLoRA router computes its own Switch-style loss E·Σ_e f_e·p_e over its own real
    tokens (padding excluded by ``token_mask``), never over logits concatenated across layers.  The
    mean over routers makes ``aux_loss_coef`` independent of depth and of router sharing: it is the
    weight of the average router's loss, which is 1.0 when that router is perfectly balanced.  (The
    Switch Transformer sums per-layer losses instead; its α equals coef / number of routers here.)
    0 when no router has a coefficient > 0.
    """
    total, count = None, 0
    for module in model.modules():
        loss = getattr(module, "last_aux_loss", None)
        coef = getattr(module, "aux_loss_coef", 0.0)
        if loss is not None and coef > 0:
            term = coef * loss
            total = term if total is None else total + term.to(total.device)
            count += 1
    if total is None:
        return torch.zeros(())
    return total / count
