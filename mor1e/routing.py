"""Token routing shared by the adapter layers and the fast MoR1E forward: softmax with temperature
and top-k, the padding mask as weights, the load-balancing loss, and what a router reports."""

from __future__ import annotations

from typing import Callable, NamedTuple

import torch


def token_routing(logits: torch.Tensor, temperature: float, top_k: int | None) -> torch.Tensor:
    """softmax(logits / τ) over the last dim; with top_k, only the k largest survive, renormalised.

    All other weights are exactly zero (scatter into zeros), not merely small.
    """
    if temperature != 1.0:
        logits = logits / temperature
    if top_k is None or top_k >= logits.shape[-1]:
        return torch.softmax(logits, dim=-1)
    values, index = logits.topk(top_k, dim=-1)
    return torch.zeros_like(logits).scatter(-1, index, torch.softmax(values, dim=-1))


def token_weights(token_mask: torch.Tensor | None, token_shape: torch.Size, like: torch.Tensor) -> torch.Tensor | None:
    """The padding mask as per-token weights (N,) in ``like``'s dtype: 1 for a real token, 0 for padding.

    ``token_mask`` (usually the batch's attention mask, (B, T)) must have the router input's token
    shape: a left-padded batch still reaches every layer as (B, T, d).  None (no mask set) -> None.
    """
    if token_mask is None:
        return None
    if tuple(token_mask.shape) != tuple(token_shape):
        raise ValueError(
            f"token mask has shape {tuple(token_mask.shape)} but the router's input has token shape "
            f"{tuple(token_shape)}; set it with mor1e.token_mask(model, attention_mask) for this very batch"
        )
    return token_mask.reshape(-1).to(device=like.device, dtype=like.dtype)


def load_balancing_loss(
    logits: torch.Tensor, temperature: float, token_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Switch-Transformer balance loss E·Σ_e f_e·p_e of one router over its own real tokens (1.0 if balanced).

    f_e: fraction of real tokens whose top-1 expert is e; p_e: mean router probability of e over
    them.  Padding (``token_mask`` 0) counts for neither.  Sums are weighted, not indexed, so no
    host sync is needed.
    """
    num_experts = logits.shape[-1]
    probs = torch.softmax(logits.reshape(-1, num_experts).float() / temperature, dim=-1)  # (N, E)
    weights = token_weights(token_mask, logits.shape[:-1], probs)
    if weights is None:
        weights = probs.new_ones(probs.shape[0])
    real = weights.sum().clamp(min=1.0)
    fraction = probs.new_zeros(num_experts).index_add(0, probs.argmax(dim=-1), weights) / real
    mean_prob = (weights @ probs) / real
    return num_experts * (fraction * mean_prob).sum()


class MissingIntuitionError(RuntimeError):
    """A MoR1E router built with use_intuition=True ran without intuition scores."""

    def __init__(self, detail: str = ""):
        super().__init__(
            (detail + ": " if detail else "")
            + "a MoR1E router built with use_intuition=True runs without intuition scores; wrap the call in "
            "`with mor1e.intuition(model, scores):` (scores: (batch, k) cluster similarities). "
            "Only the use_intuition=False ablation runs without them."
        )


class Routing(NamedTuple):
    """The parts of G for a batch: G = token_scale · token + prior (prior broadcast over tokens)."""

    token: torch.Tensor | None  # (..., E) token-router weights softmax(W_r x / τ) after top-k, or None (ablation)
    token_scale: torch.Tensor | float | None  # token_coef·ω (token_coef without intuition)
    prior: torch.Tensor | None  # (batch, E) intuition term intuition_coef·(1−ω)·M(s), or None (ablation)
    omega: torch.Tensor | None  # the gate ω between the two terms, or None when there is only one


# ``observer(router, token, omega)``, one of a router's ``routing_observers`` (router telemetry):
# called once per routing the router computes, on whichever path computed it, with the token
# routing weights (..., E) (softmax(W_r x / τ) after top-k, without any scale) and the gate ω
# (a (1,) tensor, or None for routers without one).
RoutingObserver = Callable[[torch.nn.Module, torch.Tensor, "torch.Tensor | None"], None]


def notify(router: torch.nn.Module, token: torch.Tensor, omega: torch.Tensor | None) -> None:
    """Show a routing to the router's observers, if it has any."""
    for observer in router.routing_observers:
        observer(router, token, omega)
