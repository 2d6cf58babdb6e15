"""Adapter layers: MoR1E (mixture of rank-1 experts) and MoLoRA (mixture of LoRA experts).

Both wrap a frozen ``base_layer`` (``nn.Linear`` or GPT-2's ``Conv1D``) and
return ``base_layer(x) + update``, where the update is exactly zero at
initialisation because its output factor B starts at zero.

Every trainable parameter lives under a name containing ``ADAPTER_MARKER``
("mor1e_"); freezing, saving and optimiser groups all select by that marker.
"""

from __future__ import annotations

import contextlib
import math
import weakref

import torch
import torch.nn.functional as F
from torch import nn
from transformers.pytorch_utils import Conv1D

from mor1e.config import MoLoRAConfig, MoR1EConfig
from mor1e.fused import ProjectionGroup, param, partitioned
from mor1e.routing import (  # noqa: F401  (re-exported: the layers' public helpers)
    MissingIntuitionError,
    Routing,
    load_balancing_loss,
    notify,
    token_routing,
    token_weights,
)

ADAPTER_MARKER = "mor1e_"


HALF_DTYPES = (torch.float16, torch.bfloat16)


def adapter_dtype(config, base_dtype: torch.dtype) -> torch.dtype:
    """The dtype of an adapter's parameters on a base weight of ``base_dtype``
    (``config.adapter_dtype``: "fp32" lifts a half-precision base's adapter to fp32)."""
    if config.adapter_dtype == "fp32" and base_dtype in HALF_DTYPES:
        return torch.float32
    return base_dtype


def adapter_precision(config, x: torch.Tensor):
    """The context the update is computed in: autocast off when the adapter keeps its own precision
    (``adapter_dtype: fp32``), so its matmuls and softmax run in the parameters' dtype; else nothing."""
    if config.adapter_dtype == "fp32" and torch.is_autocast_enabled(x.device.type):
        return torch.autocast(x.device.type, enabled=False)
    return contextlib.nullcontext()


def linear_features(layer: nn.Module) -> tuple[int, int]:
    """(d_in, d_out) of an nn.Linear or a GPT-2 Conv1D (whose weight is stored transposed, d_in×d_out)."""
    if isinstance(layer, nn.Linear):
        return layer.in_features, layer.out_features
    if isinstance(layer, Conv1D):
        d_in, d_out = layer.weight.shape
        return d_in, d_out
    raise TypeError(f"cannot wrap {type(layer).__name__}: expected nn.Linear or Conv1D")


class MoR1ERouter(nn.Module):
    """Produces the two terms of G for one input x (arXiv 2404.08985, §3, routing with intuition).

    G = token_coef·ω·softmax(W_r x / τ) + intuition_coef·(1−ω)·M(s), ω = sigmoid(gate_sharpness·w_ω).
    ``token_router`` is W_r (bias-free), ``prior`` is M (nn.Identity, a bias-free nn.Linear k→E, or
    for the softmax map a biased nn.Linear whose output is softmaxed), ``gate_logit`` is w_ω.

    Per-batch inputs are plain attributes, never buffers, so they are never saved and never cross
    processes: ``intuition_scores`` (batch, k), set by ``mor1e.intuition``, and ``token_mask``
    (the batch's attention mask), set by ``mor1e.token_mask``.
    """

    def __init__(self, d_in: int, config: MoR1EConfig, *, dtype=None, device=None):
        super().__init__()
        self.config = config
        self.experts = config.r1 * config.r2
        self.uses_intuition = config.use_intuition
        kw = dict(dtype=dtype, device=device)
        self.token_router = None
        if config.use_token_router:
            self.token_router = nn.Linear(d_in, self.experts, bias=False, **kw)
            if config.router_init == "zeros":
                nn.init.zeros_(self.token_router.weight)  # the authors': routing starts uniform
        self.prior: nn.Module | None = None
        if config.use_intuition:
            if config.intuition_is_identity:
                self.prior = nn.Identity()  # the authors' raw cluster scores, k == E
            else:
                bias = config.intuition_map == "softmax"
                self.prior = nn.Linear(config.num_clusters, self.experts, bias=bias, **kw)
        if config.use_token_router and config.use_intuition:
            # Shape (1,), not (): DeepSpeed broadcasts parameters as byte views, which 0-dim tensors refuse.
            self.gate_logit = nn.Parameter(torch.full((1,), float(config.gate_init), **kw))
        else:
            self.gate_logit = None
        self.intuition_scores: torch.Tensor | None = None
        self.token_mask: torch.Tensor | None = None
        self.last_aux_loss: torch.Tensor | None = None
        self.routing_observers: list = []  # see mor1e.routing.RoutingObserver (router telemetry)
        self.shared = False  # set by wrap when several projections use this router
        self._cache: tuple | None = None

    def __getstate__(self):
        return {**self.__dict__, "_cache": None}  # the cache holds a weak reference

    @property
    def aux_loss_coef(self) -> float:
        return self.config.aux_loss_coef

    def route(self, x: torch.Tensor) -> Routing:
        """The routing for input x.  Projections sharing this router and reading the very same x
        (q/k/v, gate/up) reuse one computation; ``forward`` (and so its hooks) runs once per
        actual computation."""
        key = self._cache_key(x)
        cache = self._cache
        if cache is not None and cache[0]() is x and cache[1] == key:
            return cache[2]
        routing = self(x)
        self._cache = (weakref.ref(x), key, routing) if self.shared else None
        return routing

    def _cache_key(self, x: torch.Tensor) -> tuple:
        # Any in-place change to x or to a router parameter (optimizer step), a different grad
        # mode, new intuition scores or a new token mask invalidates the cached routing.
        version = -1 if x.is_inference() else x._version
        params = tuple(-1 if p.is_inference() else p._version for p in self.parameters())
        return (version, params, torch.is_grad_enabled(), id(self.intuition_scores), id(self.token_mask))

    def forward(self, x: torch.Tensor) -> Routing:
        """Token term T = softmax(W_r x / τ) (top-k), prior = intuition_coef·(1−ω)·M(s), token scale
        token_coef·ω.  The scale is returned apart from T so that it multiplies the r1 values of A x
        rather than every one of the E routing weights."""
        cfg = self.config
        token = token_scale = prior = omega = None
        if self.token_router is not None:
            logits = self.token_router(x)  # (..., E)
            token = token_routing(logits, cfg.router_temperature, cfg.top_k)
            token_scale = cfg.token_coef
            if cfg.aux_loss_coef > 0:
                self.last_aux_loss = load_balancing_loss(logits, cfg.router_temperature, self.token_mask)
        if self.prior is not None:
            if self.intuition_scores is None:
                raise MissingIntuitionError()
            mapped = self.prior(self.intuition_scores.to(device=x.device, dtype=x.dtype))  # (batch, E)
            if cfg.intuition_map == "softmax":
                mapped = torch.softmax(mapped, dim=-1)
            prior = mapped * cfg.intuition_coef
        if token is not None and prior is not None:
            omega = torch.sigmoid(self.gate_logit * cfg.gate_sharpness)
            token_scale = omega * cfg.token_coef
            prior = prior * (1 - omega)
        if token is not None and self.routing_observers:
            notify(self, token, omega)
        return Routing(token, token_scale, prior, omega)


class MoR1ELinear(nn.Module):
    """y = W x + g · B (Gᵀ (A x)): a frozen linear plus a mixture of r1·r2 rank-1 experts.

    Expert (i, j) is B[:, j] A[i, :] (arXiv 2404.08985, §3, mix-and-match rank-1 experts).  The grid
    is contracted densely: A x (r1 values per token), then z_j = Σ_i (A x)_i G_ij (r2 values), then
    B z; no per-expert loop and no E×d tensor.  g is the output gate (``config.output_gate``).

    ``forward`` computes the update through the layer's ``ProjectionGroup`` (``mor1e/fused.py``:
    the projections reading the same input together, the coefficients of G once per model
    forward); ``update`` and ``routing_matrix`` compute it module by module, through the router,
    as the reference and for DeepSpeed ZeRO-3's partitioned parameters.
    """

    def __init__(self, base_layer: nn.Module, config: MoR1EConfig, router: MoR1ERouter | None = None):
        super().__init__()
        d_in, d_out = linear_features(base_layer)
        weight = base_layer.weight
        kw = dict(dtype=adapter_dtype(config, weight.dtype), device=weight.device)
        self.base_layer = base_layer
        self.config = config
        self.in_features, self.out_features = d_in, d_out
        self.mor1e_A = nn.Parameter(torch.empty(config.r1, d_in, **kw))
        self.mor1e_B = nn.Parameter(torch.zeros(d_out, config.r2, **kw))
        # Same init as LoRA's A; B = 0 makes the wrapped layer equal the base exactly.
        nn.init.kaiming_uniform_(self.mor1e_A, a=math.sqrt(5))
        # "sigmoid": w_o = 0 (g = 0.5, the authors'); "scalar": g itself, starting at 1.
        gate_start = {"sigmoid": 0.0, "scalar": 1.0}.get(config.output_gate)
        self.mor1e_output_gate = None if gate_start is None else nn.Parameter(torch.full((1,), gate_start, **kw))
        if router is None:
            self.mor1e_router = MoR1ERouter(d_in, config, **kw)
        else:
            # A shared router is registered once, on the parent module; holding it outside
            # _modules keeps state_dict, parameters() and save/load free of duplicates.
            self.mor1e_router = None
            self.__dict__["_shared_router"] = router
        self.group = ProjectionGroup([self])  # wrap puts projections that read one input together

    @property
    def router(self) -> MoR1ERouter:
        return self.mor1e_router if self.mor1e_router is not None else self.__dict__["_shared_router"]

    def output_scale(self) -> torch.Tensor | None:
        """g, or None when there is no output gate."""
        if self.mor1e_output_gate is None:
            return None
        if self.config.output_gate == "sigmoid":
            return torch.sigmoid(self.mor1e_output_gate * self.config.gate_sharpness)
        return self.mor1e_output_gate

    def routing_matrix(self, x: torch.Tensor) -> torch.Tensor:
        """G for every token, shape (..., r1, r2); for inspection and tests (forward never builds it)."""
        x = x.to(self.mor1e_A.dtype)
        routing = self.router.route(x)
        r1, r2 = self.config.r1, self.config.r2
        g = torch.zeros(x.shape[:-1] + (r1, r2), dtype=x.dtype, device=x.device)
        if routing.token is not None:
            g = g + (routing.token * routing.token_scale).unflatten(-1, (r1, r2))
        if routing.prior is not None:
            g = g + _broadcast_prior(routing.prior, x).unflatten(-1, (r1, r2))
        return g

    def update(self, x: torch.Tensor, G: torch.Tensor | None = None) -> torch.Tensor:
        """g · B (Gᵀ (A x)) in the adapter's dtype; G (..., r1, r2) may be given explicitly, otherwise
        the router computes it."""
        r1, r2 = self.config.r1, self.config.r2
        x = x.to(self.mor1e_A.dtype)
        ax = F.linear(x, self.mor1e_A)  # (..., r1)
        if G is not None:
            z = torch.einsum("...i,...ij->...j", ax, G)
        else:
            routing = self.router.route(x)
            z = None
            if routing.token is not None:
                scaled = ax * routing.token_scale if _scales(routing.token_scale) else ax
                # per-token grid: (..., 1, r1) @ (..., r1, r2) -> (..., r2)
                z = torch.matmul(scaled.unsqueeze(-2), routing.token.unflatten(-1, (r1, r2))).squeeze(-2)
            if routing.prior is not None:
                # M(s) is per example, so contract it as (batch, tokens, r1) @ (batch, r1, r2)
                # instead of expanding it over tokens.
                zp = _prior_contract(ax, routing.prior.unflatten(-1, (r1, r2)))
                z = zp if z is None else z + zp
        scale = self.output_scale()
        if scale is not None:
            z = z * scale  # g·B z = B (g·z): scale the r2 values, not the d_out outputs
        return F.linear(z, self.mor1e_B)  # (..., d_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        base = self._modules["base_layer"](x)  # registry reads: this runs for every projection
        with adapter_precision(self.config, x):
            if partitioned(param(self, "mor1e_A")):  # ZeRO-3: only this module's own parameters are gathered
                update = self.update(x)
            else:
                update = self.group.update(self, x)
        return base + update.to(base.dtype)


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


class MoLoRARouter(nn.Module):
    """The token router of one MoLoRA layer: ``forward`` returns softmax(W_r x / τ) (top-k), (..., E).

    Holds ``weight`` (E×d_in) directly, so its state_dict key stays ``mor1e_router.weight``; the
    batch's ``token_mask`` is set by ``mor1e.token_mask`` for the load-balancing loss.
    """

    def __init__(self, d_in: int, config: MoLoRAConfig, *, dtype=None, device=None):
        super().__init__()
        self.config = config
        self.experts = config.num_experts
        self.weight = nn.Parameter(torch.empty(config.num_experts, d_in, dtype=dtype, device=device))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))  # nn.Linear's default
        self.token_mask: torch.Tensor | None = None
        self.last_aux_loss: torch.Tensor | None = None
        self.routing_observers: list = []  # see mor1e.routing.RoutingObserver (router telemetry)

    @property
    def aux_loss_coef(self) -> float:
        return self.config.aux_loss_coef

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        logits = F.linear(x, self.weight)  # (..., E)
        if cfg.aux_loss_coef > 0:
            self.last_aux_loss = load_balancing_loss(logits, cfg.router_temperature, self.token_mask)
        weights = token_routing(logits, cfg.router_temperature, cfg.top_k)
        if self.routing_observers:
            notify(self, weights, None)
        return weights


class MoLoRALinear(nn.Module):
    """y = W x + (α/r) Σ_e g_e(x) B_e A_e x: E LoRA experts of rank r, softmax token router.

    The E experts are stacked (A: E·r×d_in, B: d_out×E·r), so the mixture is two matmuls and an
    elementwise scale by the router weights, with no loop over experts.
    """

    def __init__(self, base_layer: nn.Module, config: MoLoRAConfig):
        super().__init__()
        d_in, d_out = linear_features(base_layer)
        weight = base_layer.weight
        kw = dict(dtype=adapter_dtype(config, weight.dtype), device=weight.device)
        self.base_layer = base_layer
        self.config = config
        self.in_features, self.out_features = d_in, d_out
        experts, rank = config.num_experts, config.rank
        self.mor1e_A = nn.Parameter(torch.empty(experts * rank, d_in, **kw))
        self.mor1e_B = nn.Parameter(torch.zeros(d_out, experts * rank, **kw))
        for e in range(experts):  # init only: each expert gets LoRA's A init over its own fan-in
            nn.init.kaiming_uniform_(self.mor1e_A.data[e * rank : (e + 1) * rank], a=math.sqrt(5))
        self.mor1e_router = MoLoRARouter(d_in, config, **kw)
        self.scaling = config.alpha / rank

    def router_weights(self, x: torch.Tensor) -> torch.Tensor:
        return self.mor1e_router(x.to(self.mor1e_A.dtype))

    def update(self, x: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        x = x.to(self.mor1e_A.dtype)
        weights = self.mor1e_router(x)  # (..., E)
        ax = F.linear(x, self.mor1e_A).unflatten(-1, (cfg.num_experts, cfg.rank))  # (..., E, r)
        z = (ax * weights.unsqueeze(-1)).flatten(-2)  # (..., E·r)
        return F.linear(z, self.mor1e_B) * self.scaling

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        base = self.base_layer(x)
        with adapter_precision(self.config, x):
            update = self.update(x)
        return base + update.to(base.dtype)
