"""Router telemetry: how the token routers of a MoR1E or MoLoRA model spread tokens over experts.

    with mor1e.token_mask(model, attention_mask), mor1e.intuition(model, scores):
        with mor1e.router_telemetry(model) as telemetry:
            model(**batch)                     # any number of forwards; no extra pass is run
    telemetry.summary()  # {"router_gate_mean": 0.5, "router_load_entropy": 0.98, ...}

Collection adds an observer (``routing_observers``, see ``mor1e.routing``) to every MoR1E router
with a token router (``MoR1ERouter``) and to every MoLoRA router (``MoLoRARouter``); a router shows
each routing it computes to its observers, whichever path computed it (the fused group forward of
``mor1e/fused.py`` or the module-by-module one).  A router shared by q/k/v (``share_routers``)
computes its routing once per input and is observed once per actual computation, so shared
routings are counted once.  Only real tokens count: the observer weighs each position by the batch's token mask
(``mor1e.token_mask``; without one every position counts).  Accumulation stays on the router's
device, weighted rather than indexed, with no ``.item()`` or other host sync per batch.

Definitions.  For a router with E experts, let p_t be its **token routing distribution** at a real
token t: softmax(W_r x_t / τ) after top-k (renormalised), the token term of G without its scale
token_coef·ω.  The intuition term is not included: M(s) is per example, not per token, and in the
authors' map it is not a distribution.  The router's **load** is L = mean_t p_t over its real
tokens (a distribution over the E experts).  Per router:

- load entropy      H(L) / log E            (1 = uniform load, 0 = one expert takes everything)
- max share         max_e L_e               (the busiest expert's share of the load)
- dead fraction     #{e : L_e < 1/(10E)} / E
- token entropy     mean_t H(p_t) / log E   (how spread each token's own routing is)

and for MoR1E the **gate** ω = sigmoid(gate_sharpness·w_ω) of each router that mixes both terms.
``summary()`` averages each statistic over routers (each router counts once, whatever its token
count).  Every value lies in [0, 1]; a value is None when no router contributes to it: all five
for a model without routers, ``router_gate_mean`` for MoLoRA and for MoR1E ablations without ω.
With E = 1 both entropies are defined as 1.

Merging across ranks: ``counts()`` returns ``TelemetryCounts``, whose tensors are plain sums over
tokens and computations; sum each across ranks (e.g. ``torch.distributed.all_reduce`` on every
tensor of ``counts.tensors()``, in place) and call ``summary()`` on the result.  Routers are listed
in ``model.modules()`` order, identical on every rank of one model.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn

from mor1e.layers import MoLoRARouter, MoR1ERouter, token_weights

TELEMETRY_KEYS = (
    "router_gate_mean",
    "router_load_entropy",
    "router_max_share",
    "router_dead_fraction",
    "router_token_entropy",
)


@dataclass
class TelemetryCounts:
    """Sum-able router counts, one row per router: add them across ranks, then ``summary()``."""

    load: torch.Tensor  # (R, E): Σ over real tokens of the routing distribution p_t
    entropy: torch.Tensor  # (R,): Σ over real tokens of H(p_t), in nats
    tokens: torch.Tensor  # (R,): number of real tokens routed
    gate: torch.Tensor  # (R,): Σ over computations of ω (0 for routers without a gate)
    gate_calls: torch.Tensor  # (R,): computations that had an ω

    def tensors(self) -> tuple[torch.Tensor, ...]:
        return (self.load, self.entropy, self.tokens, self.gate, self.gate_calls)

    def __add__(self, other: "TelemetryCounts") -> "TelemetryCounts":
        return TelemetryCounts(*(a + b.to(a.device) for a, b in zip(self.tensors(), other.tensors())))

    def summary(self) -> dict[str, float | None]:
        """The five statistics (module docstring), each a float in [0, 1] or None."""
        out: dict[str, float | None] = dict.fromkeys(TELEMETRY_KEYS)
        gated = self.gate_calls > 0
        if bool(gated.any()):
            out["router_gate_mean"] = _unit((self.gate[gated] / self.gate_calls[gated]).mean())
        seen = self.tokens > 0
        if not bool(seen.any()):
            return out
        load = self.load[seen].double()
        load = load / load.sum(-1, keepdim=True)  # (R', E), each row a distribution
        experts = load.shape[-1]
        log_e = math.log(experts) if experts > 1 else None
        token_entropy = self.entropy[seen].double() / self.tokens[seen].double()
        if log_e is None:
            out["router_load_entropy"] = out["router_token_entropy"] = 1.0
        else:
            load_entropy = -torch.special.xlogy(load, load).sum(-1)
            out["router_load_entropy"] = _unit((load_entropy / log_e).mean())
            out["router_token_entropy"] = _unit((token_entropy / log_e).mean())
        out["router_max_share"] = _unit(load.max(-1).values.mean())
        out["router_dead_fraction"] = _unit((load < 1.0 / (10 * experts)).double().mean(-1).mean())
        return out


def _unit(value: torch.Tensor) -> float:
    """A statistic as a float, clipped to [0, 1] against rounding (entropies can overshoot by 1e-16)."""
    return min(max(float(value), 0.0), 1.0)


class _MaskWeights:
    """The current batch's token mask as float weights and its real-token count, computed once per
    batch and device and shared by every router (they all hold the same mask tensor)."""

    def __init__(self):
        self._last: tuple | None = None  # (mask, dtype, weights (N,), count ())

    def get(self, mask: torch.Tensor, token_shape: torch.Size, like: torch.Tensor):
        last = self._last
        if last is not None and last[0] is mask and last[1] == like.dtype and last[2].device == like.device:
            return last[2], last[3]
        weights = token_weights(mask, token_shape, like)
        self._last = (mask, like.dtype, weights, weights.sum())
        return self._last[2], self._last[3]


class _RouterCounts:
    """One router's running sums, allocated on its device at the first computation.

    Per computation a handful of device ops and no host sync: the load and the per-expert entropy
    contributions -p·log p are each one (masked) reduction over tokens; counts the host knows
    anyway (computations, unmasked token counts) stay Python numbers.
    """

    def __init__(self, experts: int, masks: _MaskWeights):
        self.experts = experts
        self.masks = masks
        self.load: torch.Tensor | None = None  # (E,) Σ_t p_t
        self.entropy: torch.Tensor | None = None  # (E,) Σ_t -p_t·log p_t, per expert
        self.tokens: torch.Tensor | float = 0.0  # real tokens (a device scalar once a mask is used)
        self.gate: torch.Tensor | None = None  # Σ ω over computations
        self.gate_calls = 0

    def add(self, probs: torch.Tensor, mask: torch.Tensor | None, omega: torch.Tensor | None) -> None:
        flat = probs.detach().reshape(-1, self.experts).float()  # (N, E)
        if self.load is None:
            # Normal tensors even under inference_mode, so later forwards in any mode can add to them.
            with torch.inference_mode(False):
                self.load = torch.zeros(self.experts, device=flat.device)
                self.entropy = torch.zeros(self.experts, device=flat.device)
                self.gate = torch.zeros((), device=flat.device)
        per_expert_entropy = torch.special.entr(flat)  # -p log p, 0 at p = 0 (top-k zeros)
        if mask is None:
            self.load += flat.sum(0)
            self.entropy += per_expert_entropy.sum(0)
            self.tokens = self.tokens + flat.shape[0]
        else:
            weights, count = self.masks.get(mask, probs.shape[:-1], flat)
            self.load.addmv_(flat.T, weights)
            self.entropy.addmv_(per_expert_entropy.T, weights)
            self.tokens = self.tokens + count
        if omega is not None:
            self.gate += omega.detach().float().reshape(())
            self.gate_calls += 1

    def rows(self, device: torch.device) -> tuple[torch.Tensor, ...]:
        def scalar(value) -> torch.Tensor:
            return torch.as_tensor(value, dtype=torch.float64).to(device).reshape(())

        if self.load is None:
            zero = scalar(0.0)
            return (torch.zeros(self.experts, dtype=torch.float64, device=device), zero, zero, zero, zero)
        return (self.load.to(device=device, dtype=torch.float64), scalar(self.entropy.sum()),
                scalar(self.tokens), scalar(self.gate), scalar(self.gate_calls))


class RouterTelemetry:
    """Collects router statistics from routing observers; see the module docstring."""

    def __init__(self, model: nn.Module):
        self.routers = [m for m in model.modules() if _has_token_routing(m)]
        experts = {m.experts for m in self.routers}
        if len(experts) > 1:
            raise ValueError(f"router telemetry needs one expert count per model, found {sorted(experts)}")
        masks = _MaskWeights()
        self._counts = [_RouterCounts(m.experts, masks) for m in self.routers]
        self._observers: list = []  # (router, observer) while collecting

    def start(self) -> "RouterTelemetry":
        if not self._observers:
            for router, counts in zip(self.routers, self._counts):
                observer = _observer(counts)
                router.routing_observers.append(observer)
                self._observers.append((router, observer))
        return self

    def stop(self) -> None:
        for router, observer in self._observers:
            router.routing_observers.remove(observer)
        self._observers = []

    def counts(self, device: torch.device | str = "cpu") -> TelemetryCounts:
        """The sums so far, float64 on ``device`` (one host copy here, none during the forwards)."""
        experts = self.routers[0].experts if self.routers else 1
        rows = [c.rows(torch.device(device)) for c in self._counts]
        if not rows:
            empty = torch.zeros(0, dtype=torch.float64, device=device)
            return TelemetryCounts(torch.zeros(0, experts, dtype=torch.float64, device=device),
                                   empty, empty, empty, empty)
        columns = list(zip(*rows))
        return TelemetryCounts(*(torch.stack(c) for c in columns))

    def summary(self) -> dict[str, float | None]:
        return self.counts().summary()


def _has_token_routing(module: nn.Module) -> bool:
    if isinstance(module, MoLoRARouter):
        return True
    return isinstance(module, MoR1ERouter) and module.token_router is not None


def _observer(counts: _RouterCounts):
    def observe(router: nn.Module, token: torch.Tensor, omega: torch.Tensor | None) -> None:
        counts.add(token, router.token_mask, omega)

    return observe


@contextlib.contextmanager
def router_telemetry(model: nn.Module) -> Iterator[RouterTelemetry]:
    """``with mor1e.router_telemetry(model) as t:`` observes every router for the block; ``t.summary()``."""
    telemetry = RouterTelemetry(model).start()
    try:
        yield telemetry
    finally:
        telemetry.stop()
