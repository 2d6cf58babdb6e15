"""Adapter layers: MoR1E (mixture of rank-1 experts) and MoLoRA (mixture of LoRA experts).

Both wrap a frozen ``base_layer`` (``nn.Linear`` or GPT-2's ``Conv1D``) and
return ``base_layer(x) + update``, where the update is exactly zero at
initialisation because its output factor B starts at zero.

Every trainable parameter lives under a name containing ``ADAPTER_MARKER``
("mor1e_"); freezing, saving and optimiser groups all select by that marker.
"""

from __future__ import annotations

import math
import weakref
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from transformers.pytorch_utils import Conv1D

from mor1e.config import MoLoRAConfig, MoR1EConfig

ADAPTER_MARKER = "mor1e_"


def linear_features(layer: nn.Module) -> tuple[int, int]:
    """(d_in, d_out) of an nn.Linear or a GPT-2 Conv1D (whose weight is stored transposed, d_in×d_out)."""
    if isinstance(layer, nn.Linear):
        return layer.in_features, layer.out_features
    if isinstance(layer, Conv1D):
        d_in, d_out = layer.weight.shape
        return d_in, d_out
    raise TypeError(f"cannot wrap {type(layer).__name__}: expected nn.Linear or Conv1D")


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


def load_balancing_loss(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Switch-Transformer style balance loss E·Σ_e f_e·p_e (1.0 when perfectly balanced).

    f_e: fraction of tokens whose top-1 expert is e; p_e: mean router probability of e.
    """
    num_experts = logits.shape[-1]
    flat = logits.reshape(-1, num_experts)
    probs = torch.softmax(flat / temperature, dim=-1)
    counts = torch.bincount(flat.argmax(dim=-1), minlength=num_experts)
    fraction = counts.to(probs.dtype) / flat.shape[0]
    return num_experts * (fraction * probs.mean(dim=0)).sum()


class Routing(NamedTuple):
    """The parts of G for a batch: G = token_scale · token + prior (broadcast over tokens)."""

    token: torch.Tensor | None  # (..., E) token-router weights, or None (ablation)
    token_scale: torch.Tensor | float | None  # token_coef·ω (or token_coef without intuition)
    prior: torch.Tensor | None  # (batch or 1, E) intuition term, coefficients applied, or None


class MoR1ERouter(nn.Module):
    """Produces the two terms of G for one input x (arXiv 2404.08985, routing with intuition).

    G = token_coef·ω·softmax(W_r x / τ) + intuition_coef·(1−ω)·P(s), with P(s) = softmax(W_p s + b_p),
    a learned map from k cluster scores to E = r1·r2 experts (any k, E), and ω = sigmoid(gate logit).
    The router holds W_r, P and ω, so projections reading the same x can share one instance.

    Intuition scores are set per batch by ``mor1e.set_intuition``; they are plain attributes, not
    buffers, so they are never saved and never cross processes.
    """

    def __init__(self, d_in: int, config: MoR1EConfig, *, dtype=None, device=None):
        super().__init__()
        self.config = config
        self.experts = config.r1 * config.r2
        kw = dict(dtype=dtype, device=device)
        self.token_router = nn.Linear(d_in, self.experts, bias=False, **kw) if config.use_token_router else None
        self.prior = nn.Linear(config.num_clusters, self.experts, **kw) if config.use_intuition else None
        if config.use_token_router and config.use_intuition:
            # Shape (1,), not (): DeepSpeed broadcasts parameters as byte views, which 0-dim tensors refuse.
            self.gate_logit = nn.Parameter(torch.full((1,), float(config.gate_init), **kw))
        else:
            self.gate_logit = None
        self.intuition_scores: torch.Tensor | None = None
        self.last_aux_loss: torch.Tensor | None = None
        self.shared = False  # set by wrap when several projections use this router
        self._cache: tuple | None = None

    @property
    def aux_loss_coef(self) -> float:
        return self.config.aux_loss_coef

    def forward(self, x: torch.Tensor) -> Routing:
        """The routing for input x; projections sharing this router and reading the very same x
        (q/k/v, gate/up) reuse one computation instead of repeating the E-way softmax."""
        key = self._cache_key(x)
        cache = self._cache
        if cache is not None and cache[0]() is x and cache[1] == key:
            return cache[2]
        routing = self._route(x)
        self._cache = (weakref.ref(x), key, routing) if self.shared else None
        return routing

    def _cache_key(self, x: torch.Tensor) -> tuple:
        # Any in-place change to x or to a router parameter (optimizer step), a different grad
        # mode or new intuition scores invalidates the cached routing.
        version = -1 if x.is_inference() else x._version
        params = tuple(-1 if p.is_inference() else p._version for p in self.parameters())
        return (version, params, torch.is_grad_enabled(), id(self.intuition_scores))

    def _route(self, x: torch.Tensor) -> Routing:
        """G = token_scale·T + prior, T = softmax(W_r x / τ) (top-k), prior = intuition_coef·(1−ω)·P(s).

        Without intuition scores the token term is used alone (scale token_coef, no ω); with the
        token router off and no scores, P is evaluated at s = 0 (its learned bias), so the model
        still runs.  The token scale is returned apart from T so that it multiplies the r1 values
        of A x rather than every one of the E routing weights.
        """
        cfg = self.config
        scores = self.intuition_scores if self.prior is not None else None
        token = token_scale = prior = None
        if self.token_router is not None:
            logits = self.token_router(x)
            token = token_routing(logits, cfg.router_temperature, cfg.top_k)
            token_scale = cfg.token_coef
            if cfg.aux_loss_coef > 0:
                self.last_aux_loss = load_balancing_loss(logits, cfg.router_temperature)
        if self.prior is not None and (scores is not None or token is None):
            if scores is None:
                scores = x.new_zeros(1, cfg.num_clusters)
            prior = torch.softmax(self.prior(scores.to(x.dtype)), dim=-1) * cfg.intuition_coef
        if token is not None and prior is not None:
            omega = torch.sigmoid(self.gate_logit)
            token_scale = omega * cfg.token_coef
            prior = prior * (1 - omega)
        return Routing(token, token_scale, prior)


class MoR1ELinear(nn.Module):
    """y = W x + g · B (Gᵀ (A x)): a frozen linear plus a mixture of r1·r2 rank-1 experts.

    Expert (i, j) is B[:, j] A[i, :] (arXiv 2404.08985, mix-and-match rank-1 experts).  The grid is
    contracted densely: A x (r1 values per token), then z_j = Σ_i (A x)_i G_ij (r2 values), then B z;
    no per-expert loop and no E×d tensor.
    """

    def __init__(self, base_layer: nn.Module, config: MoR1EConfig, router: MoR1ERouter | None = None):
        super().__init__()
        d_in, d_out = linear_features(base_layer)
        weight = base_layer.weight
        kw = dict(dtype=weight.dtype, device=weight.device)
        self.base_layer = base_layer
        self.config = config
        self.in_features, self.out_features = d_in, d_out
        self.mor1e_A = nn.Parameter(torch.empty(config.r1, d_in, **kw))
        self.mor1e_B = nn.Parameter(torch.zeros(d_out, config.r2, **kw))
        # Same init as LoRA's A; B = 0 makes the wrapped layer equal the base exactly.
        nn.init.kaiming_uniform_(self.mor1e_A, a=math.sqrt(5))
        self.mor1e_output_gate = nn.Parameter(torch.ones(1, **kw)) if config.output_gate else None
        if router is None:
            self.mor1e_router = MoR1ERouter(d_in, config, **kw)
        else:
            # A shared router is registered once, on the parent module; holding it outside
            # _modules keeps state_dict, parameters() and save/load free of duplicates.
            self.mor1e_router = None
            self.__dict__["_shared_router"] = router

    @property
    def router(self) -> MoR1ERouter:
        return self.mor1e_router if self.mor1e_router is not None else self.__dict__["_shared_router"]

    def routing_matrix(self, x: torch.Tensor) -> torch.Tensor:
        """G for every token, shape (..., r1, r2); for inspection and tests (forward never builds it)."""
        routing = self.router(x)
        r1, r2 = self.config.r1, self.config.r2
        g = torch.zeros(x.shape[:-1] + (r1, r2), dtype=x.dtype, device=x.device)
        if routing.token is not None:
            g = g + (routing.token * routing.token_scale).unflatten(-1, (r1, r2))
        if routing.prior is not None:
            g = g + _broadcast_prior(routing.prior, x).unflatten(-1, (r1, r2))
        return g

    def update(self, x: torch.Tensor, G: torch.Tensor | None = None) -> torch.Tensor:
        """B (Gᵀ (A x)); G (..., r1, r2) may be given explicitly, otherwise the router computes it."""
        r1, r2 = self.config.r1, self.config.r2
        ax = F.linear(x, self.mor1e_A)  # (..., r1)
        if G is not None:
            z = torch.einsum("...i,...ij->...j", ax, G)
        else:
            routing = self.router(x)
            z = None
            if routing.token is not None:
                scaled = ax * routing.token_scale if _scales(routing.token_scale) else ax
                # per-token grid: (..., 1, r1) @ (..., r1, r2) -> (..., r2)
                z = torch.matmul(scaled.unsqueeze(-2), routing.token.unflatten(-1, (r1, r2))).squeeze(-2)
            if routing.prior is not None:
                # P(s) is per example, so contract it as (batch, tokens, r1) @ (batch, r1, r2)
                # instead of expanding it over tokens.
                zp = _prior_contract(ax, routing.prior.unflatten(-1, (r1, r2)))
                z = zp if z is None else z + zp
        out = F.linear(z, self.mor1e_B)  # (..., d_out)
        if self.mor1e_output_gate is not None:
            out = out * self.mor1e_output_gate
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base_layer(x) + self.update(x)


def _scales(scale) -> bool:
    return isinstance(scale, torch.Tensor) or scale != 1.0


def _batch_of(prior: torch.Tensor, x: torch.Tensor) -> int:
    batch = x.shape[0] if x.dim() >= 2 else 1
    if prior.shape[0] not in (1, batch):
        raise ValueError(
            f"intuition scores have batch size {prior.shape[0]} but the layer input has batch size {batch}"
        )
    return batch


def _prior_contract(ax: torch.Tensor, prior: torch.Tensor) -> torch.Tensor:
    """Σ_i ax[b, ..., i] · prior[b, i, j] for ax (batch, ..., r1) and prior (batch or 1, r1, r2)."""
    if ax.dim() == 1:
        return ax @ prior[0]
    batch = _batch_of(prior, ax)
    flat = ax.reshape(batch, -1, ax.shape[-1])
    return torch.matmul(flat, prior).reshape(*ax.shape[:-1], prior.shape[-1])


def _broadcast_prior(prior: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """(batch, E) -> (batch, 1, ..., 1, E) matching x's token dims."""
    if x.dim() == 1:
        return prior[0]
    _batch_of(prior, x)
    return prior.reshape(prior.shape[0], *([1] * (x.dim() - 2)), prior.shape[-1])


class MoLoRALinear(nn.Module):
    """y = W x + (α/r) Σ_e g_e(x) B_e A_e x: E LoRA experts of rank r, softmax token router.

    The E experts are stacked (A: E·r×d_in, B: d_out×E·r), so the mixture is two matmuls and an
    elementwise scale by the router weights, with no loop over experts.
    """

    def __init__(self, base_layer: nn.Module, config: MoLoRAConfig):
        super().__init__()
        d_in, d_out = linear_features(base_layer)
        weight = base_layer.weight
        kw = dict(dtype=weight.dtype, device=weight.device)
        self.base_layer = base_layer
        self.config = config
        self.in_features, self.out_features = d_in, d_out
        experts, rank = config.num_experts, config.rank
        self.mor1e_A = nn.Parameter(torch.empty(experts * rank, d_in, **kw))
        self.mor1e_B = nn.Parameter(torch.zeros(d_out, experts * rank, **kw))
        for e in range(experts):  # init only: each expert gets LoRA's A init over its own fan-in
            nn.init.kaiming_uniform_(self.mor1e_A.data[e * rank : (e + 1) * rank], a=math.sqrt(5))
        self.mor1e_router = nn.Linear(d_in, experts, bias=False, **kw)
        self.scaling = config.alpha / rank
        self.last_aux_loss: torch.Tensor | None = None

    @property
    def aux_loss_coef(self) -> float:
        return self.config.aux_loss_coef

    def router_weights(self, x: torch.Tensor) -> torch.Tensor:
        return token_routing(self.mor1e_router(x), self.config.router_temperature, self.config.top_k)

    def update(self, x: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        logits = self.mor1e_router(x)
        weights = token_routing(logits, cfg.router_temperature, cfg.top_k)  # (..., E)
        if cfg.aux_loss_coef > 0:
            self.last_aux_loss = load_balancing_loss(logits, cfg.router_temperature)
        ax = F.linear(x, self.mor1e_A).unflatten(-1, (cfg.num_experts, cfg.rank))  # (..., E, r)
        z = (ax * weights.unsqueeze(-1)).flatten(-2)  # (..., E·r)
        return F.linear(z, self.mor1e_B) * self.scaling

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base_layer(x) + self.update(x)
