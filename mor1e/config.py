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


# The authors' parameterisation (T-REX, arXiv 2404.08985; their peft ``lora.py``, ``rank1_flex``):
# G = 32·ω·softmax(W_r x / τ) + 4·(1−ω)·M(s), ω = sigmoid(100·w_ω), out = sigmoid(100·w_o)·B(Gᵀ(A x)).
AUTHORS = dict(
    token_coef=32.0, intuition_coef=4.0, gate_sharpness=100.0, intuition_map="linear",
    router_init="zeros", output_gate="sigmoid", share_routers=False, intuition_score="dot",
)
# This project's earlier variant: a convex mixture of two distributions, G = ω·softmax(W_r x / τ) +
# (1−ω)·softmax(W_p s + b_p), ω = sigmoid(w), a randomly initialised token router and no output gate.
NORMALISED = dict(
    token_coef=1.0, intuition_coef=1.0, gate_sharpness=1.0, intuition_map="softmax",
    router_init="random", output_gate="none", share_routers=False, intuition_score="cosine",
)
INTUITION_MAPS = ("linear", "softmax")
INTUITION_SCORES = ("dot", "cosine")
ADAPTER_DTYPES = ("fp32", "base")
ROUTER_INITS = ("zeros", "random")
OUTPUT_GATES = ("sigmoid", "scalar", "none")


def _check_choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(repr(c) for c in choices)}, got {value!r}")


def _check_bool(name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be true or false, got {value!r}")


@dataclass
class MoR1EConfig(_Serialisable):
    """Mixture of rank-1 experts (T-REX, arXiv 2404.08985).

    A wrapped linear computes ``y = W x + g · B (Gᵀ (A x))`` with ``A: r1×d_in``,
    ``B: d_out×r2`` and a per-token routing matrix ``G: r1×r2``; expert (i, j)
    is the rank-1 matrix ``B[:, j] A[i, :]``, so E = r1·r2 experts cost r1 + r2
    vectors.  ``G = token_coef·ω·softmax(W_r x / τ) + intuition_coef·(1−ω)·M(s)``
    with ``ω = sigmoid(gate_sharpness·w_ω)``; ``g`` is the output gate.

    The defaults are the authors' layer (``MoR1EConfig.authors()``); with τ = 1 and no
    top-k it is their ``rank1_flex`` exactly.  ``MoR1EConfig.normalised()`` is the convex
    variant.  Every field where the two differ is named here, so any mix is expressible.
    """

    r1: int = 4
    """Rows of A: the first factor of the expert grid."""
    r2: int = 8
    """Columns of B: the second factor of the expert grid."""
    num_experts: int | None = None
    """Optional E; when given it must equal r1·r2 (a guard for search spaces)."""
    num_clusters: int | None = None
    """k: number of intuition clusters, the input size of the intuition map M.  None (the authors'):
    k = E = r1·r2, so M is the identity and each expert reads one cluster's score (they ran 32
    clusters for 4×8).  Any other k is a named option: a bias-free linear map k → E, trained here
    (their mapper was frozen and never saved, so their k ≠ E path cannot be reproduced as they ran it)."""
    router_temperature: float = 1.0
    """τ in softmax(W_r x / τ); lower is sharper.  The authors' layer has τ = 1."""
    top_k: int | None = None
    """Keep only the k largest token-router weights per token (renormalised); None keeps all E (the authors')."""
    target_modules: tuple[str, ...] | None = None
    """Module names to wrap; None = every attention and MLP projection of the architecture."""
    use_token_router: bool = True
    """Ablation switch for the token term of G (without it G = intuition_coef·M(s), no ω)."""
    use_intuition: bool = True
    """Ablation switch for the intuition term of G (without it G = token_coef·softmax(W_r x / τ), no ω).
    With it, every forward needs intuition scores (``with mor1e.intuition(model, scores):``)."""
    token_coef: float = AUTHORS["token_coef"]
    """Scale of the token term: the authors' 32; 1 (normalised) keeps G a convex mixture."""
    intuition_coef: float = AUTHORS["intuition_coef"]
    """Scale of the intuition term: the authors' 4; 1 in the normalised variant."""
    gate_sharpness: float = AUTHORS["gate_sharpness"]
    """c in ω = sigmoid(c·w_ω) and in the sigmoid output gate sigmoid(c·w_o): the authors' 100; 1 normalised.
    A sharp gate moves at ordinary learning rates; with c = 1 and lr 5e-5 ω stays at 0.5."""
    gate_init: float = 0.0
    """Initial w_ω; 0 starts at ω = 0.5 (the authors')."""
    intuition_map: str = AUTHORS["intuition_map"]
    """M, from k cluster scores to E expert weights.  "linear" (the authors'): the identity when
    k == E, else a bias-free linear map k → E, trained here.  (The authors' k ≠ E mapper,
    ``rank1_flex_mapper``, lacks the ``lora_`` prefix and is not in ``modules_to_save``: it stays
    at its random init, is not saved, and is drawn afresh when their evaluation builds the model.)
    "softmax" (normalised): softmax(W_p s + b_p)."""
    intuition_score: str = AUTHORS["intuition_score"]
    """How s is computed from an example's embedding (``mor1e.intuition.cluster_scores``): "dot" (the
    authors': ``centroids @ emb``, centroids as k-means returns them, so a loose cluster scores lower)
    or "cosine" (centroids renormalised; the normalised variant's).  The layer reads s as given;
    this field tells whoever computes s (``harness.trial.driver.intuition_scores``) how, and is saved with
    the adapter so scores for it can be made again."""
    router_init: str = AUTHORS["router_init"]
    """Token router W_r at init: "zeros" (the authors': routing starts uniform) or "random"
    (nn.Linear's default init)."""
    output_gate: str = AUTHORS["output_gate"]
    """Scale g of the update: "sigmoid" (the authors': sigmoid(gate_sharpness·w_o), w_o = 0, so 0.5 at
    init), "scalar" (a raw learned scalar starting at 1) or "none" (g = 1)."""
    share_routers: bool = AUTHORS["share_routers"]
    """False (the authors'): one router per projection.  True: q/k/v share one router, gate/up another."""
    aux_loss_coef: float = 0.0
    """Weight of the Switch-style load-balancing loss on the token router (``mor1e.aux_loss``:
    coef × the mean over routers of each router's loss on its own real tokens); 0 disables it."""
    adapter_dtype: str = "fp32"
    """Precision of the adapter.  "fp32" (the authors' and peft's): on a half-precision base (fp16,
    bf16) A, B, routers, gates and the map are fp32 parameters, and the update is computed in fp32
    with autocast off (x cast to fp32, the update cast back to the base output's dtype); fp32 and
    fp64 bases keep their own dtype.  "base": everything in the base weight's dtype, under autocast."""

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
        if self.num_clusters is None:
            self.num_clusters = experts  # k = E: the authors' identity map
        _check_int("num_clusters", self.num_clusters)
        _check_positive("router_temperature", self.router_temperature)
        _check_bool("use_token_router", self.use_token_router)
        _check_bool("use_intuition", self.use_intuition)
        _check_bool("share_routers", self.share_routers)
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
        _check_positive("gate_sharpness", self.gate_sharpness)
        if isinstance(self.gate_init, bool) or not (
            isinstance(self.gate_init, (int, float)) and math.isfinite(self.gate_init)
        ):
            raise ValueError(f"gate_init must be a finite number, got {self.gate_init!r}")
        _check_choice("intuition_map", self.intuition_map, INTUITION_MAPS)
        _check_choice("intuition_score", self.intuition_score, INTUITION_SCORES)
        _check_choice("router_init", self.router_init, ROUTER_INITS)
        _check_choice("output_gate", self.output_gate, OUTPUT_GATES)
        _check_positive("aux_loss_coef", self.aux_loss_coef, allow_zero=True)
        _check_choice("adapter_dtype", self.adapter_dtype, ADAPTER_DTYPES)
        self.target_modules = _check_targets(self.target_modules)

    @classmethod
    def authors(cls, **overrides: Any) -> "MoR1EConfig":
        """The authors' layer (DESIGN.md, "The authors' parameterisation"), with ``overrides`` on top."""
        return cls(**{**AUTHORS, **overrides})

    @classmethod
    def normalised(cls, **overrides: Any) -> "MoR1EConfig":
        """The normalised variant: coefficients 1, M(s) = softmax(W_p s + b_p), ω = sigmoid(w_ω), a
        randomly initialised token router and no output gate; ``overrides`` on top."""
        return cls(**{**NORMALISED, **overrides})

    @property
    def experts(self) -> int:
        return self.r1 * self.r2

    @property
    def intuition_is_identity(self) -> bool:
        """M is the identity: the linear map with k == E (the authors' raw cluster scores)."""
        return self.intuition_map == "linear" and self.num_clusters == self.experts


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
    adapter_dtype: str = "fp32"
    """As ``MoR1EConfig.adapter_dtype``: "fp32" keeps A, B and the router in fp32 on a half-precision
    base and computes the update in fp32 with autocast off; "base" uses the base weight's dtype."""

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
        _check_choice("adapter_dtype", self.adapter_dtype, ADAPTER_DTYPES)
        self.target_modules = _check_targets(self.target_modules)
