"""Typed, validated configurations for the adapter methods.

Constructors only receive values: they never read files, the environment or the
working directory, so two trials in one process cannot interfere.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any


def _check_int(name: str, value: Any, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def _check_positive(name: str, value: Any, allow_zero: bool = False) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value >= 0 if allow_zero else value > 0)
    if not ok:
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be a finite number {bound}, got {value!r}")


def _check_targets(value: Any) -> tuple[str, ...] | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = (value,)
    value = tuple(value)
    if not value or not all(isinstance(v, str) and v for v in value):
        raise ValueError(f"target_modules must be None or a non-empty list of module names, got {value!r}")
    return value


class _Serialisable:
    """JSON round trip shared by both configs (adapter_config.json)."""

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)  # type: ignore[call-overload]
        if d.get("target_modules") is not None:
            d["target_modules"] = list(d["target_modules"])
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]):
        known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown {cls.__name__} field(s): {', '.join(unknown)}")
        return cls(**d)


@dataclass
class MoR1EConfig(_Serialisable):
    """Mixture of rank-1 experts (T-REX, arXiv 2404.08985).

    A wrapped linear computes ``y = W x + B (Gᵀ (A x))`` with ``A: r1×d_in``,
    ``B: d_out×r2`` and a per-token routing matrix ``G: r1×r2``; expert (i, j)
    is the rank-1 matrix ``B[:, j] A[i, :]``, so E = r1·r2 experts cost r1 + r2
    vectors.  ``G = token_coef·ω·softmax(W_r x / τ) + intuition_coef·(1−ω)·P(s)``.
    """

    r1: int = 4
    """Rows of A: the first factor of the expert grid."""
    r2: int = 8
    """Columns of B: the second factor of the expert grid."""
    num_experts: int | None = None
    """Optional E; when given it must equal r1·r2 (a guard for search spaces)."""
    num_clusters: int = 8
    """k: number of intuition clusters, the input size of the prior P."""
    router_temperature: float = 1.0
    """τ in softmax(W_r x / τ); lower is sharper."""
    top_k: int | None = None
    """Keep only the k largest token-router weights per token (renormalised); None keeps all E."""
    target_modules: tuple[str, ...] | None = None
    """Module names to wrap; None = every attention and MLP projection of the architecture."""
    use_token_router: bool = True
    """Ablation switch for the token term of G."""
    use_intuition: bool = True
    """Ablation switch for the intuition term P(s) of G."""
    token_coef: float = 1.0
    """Scale of the token term.  1.0 keeps G a convex mixture; the authors' code uses 32."""
    intuition_coef: float = 1.0
    """Scale of the intuition term.  The authors' code uses 4."""
    gate_init: float = 0.0
    """Initial logit of the learned gate ω = sigmoid(logit); 0 starts at ω = 0.5."""
    output_gate: bool = False
    """Multiply the update by a learned scalar (initialised to 1), as the authors' code does."""
    share_routers: bool = True
    """One router (W_r, P, ω) per input: q/k/v share one, gate/up share one."""
    aux_loss_coef: float = 0.0
    """Weight of the Switch-style load-balancing loss on the token router; 0 disables it."""

    def __post_init__(self) -> None:
        _check_int("r1", self.r1)
        _check_int("r2", self.r2)
        experts = self.r1 * self.r2
        if self.num_experts is not None:
            _check_int("num_experts", self.num_experts)
            if self.num_experts != experts:
                raise ValueError(
                    f"num_experts must equal r1*r2 = {self.r1}*{self.r2} = {experts}, got {self.num_experts}"
                )
        _check_int("num_clusters", self.num_clusters)
        _check_positive("router_temperature", self.router_temperature)
        if self.top_k is not None:
            _check_int("top_k", self.top_k)
            if self.top_k > experts:
                raise ValueError(f"top_k must be <= number of experts r1*r2 = {experts}, got {self.top_k}")
            if not self.use_token_router:
                raise ValueError("top_k needs use_token_router=True (it restricts the token router)")
        if not (self.use_token_router or self.use_intuition):
            raise ValueError("use_token_router and use_intuition cannot both be False: G would have no source")
        _check_positive("token_coef", self.token_coef)
        _check_positive("intuition_coef", self.intuition_coef)
        if not (isinstance(self.gate_init, (int, float)) and math.isfinite(self.gate_init)):
            raise ValueError(f"gate_init must be a finite number, got {self.gate_init!r}")
        _check_positive("aux_loss_coef", self.aux_loss_coef, allow_zero=True)
        self.target_modules = _check_targets(self.target_modules)

    @property
    def experts(self) -> int:
        return self.r1 * self.r2


@dataclass
class MoLoRAConfig(_Serialisable):
    """Mixture of LoRA experts: E full LoRA experts of rank r and a softmax token router."""

    num_experts: int = 8
    """E: number of LoRA experts per wrapped linear."""
    rank: int = 4
    """r: rank of each expert."""
    alpha: float = 8.0
    """LoRA scaling numerator: the update is multiplied by alpha / rank."""
    router_temperature: float = 1.0
    """τ in softmax(W_r x / τ)."""
    top_k: int | None = None
    """Keep only the k largest router weights per token (renormalised); None keeps all."""
    target_modules: tuple[str, ...] | None = None
    """Module names to wrap; None = every attention and MLP projection of the architecture."""
    aux_loss_coef: float = 0.0
    """Weight of the Switch-style load-balancing loss; 0 disables it."""

    def __post_init__(self) -> None:
        _check_int("num_experts", self.num_experts)
        _check_int("rank", self.rank)
        _check_positive("alpha", self.alpha)
        _check_positive("router_temperature", self.router_temperature)
        if self.top_k is not None:
            _check_int("top_k", self.top_k)
            if self.top_k > self.num_experts:
                raise ValueError(f"top_k must be <= num_experts = {self.num_experts}, got {self.top_k}")
        _check_positive("aux_loss_coef", self.aux_loss_coef, allow_zero=True)
        self.target_modules = _check_targets(self.target_modules)
