"""Router telemetry: how the token routers of a MoR1E or MoLoRA model spread tokens over experts.

    with mor1e.token_mask(model, attention_mask), mor1e.intuition(model, scores):
        with mor1e.router_telemetry(model) as telemetry:
            model(**batch)                     # any number of forwards; no extra pass is run
    telemetry.summary()  # {"router_gate_mean": 0.5, "router_load_entropy": 0.98, ...}

Collection uses forward hooks on every MoR1E router with a token router (``MoR1ERouter``) and on
every MoLoRA router (``MoLoRARouter``).  A router shared by q/k/v (``share_routers``) computes its
routing once per input and the hook fires once per actual computation, so shared routings are
counted once.  Only real tokens count: the hook weighs each position by the batch's token mask
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

from mor1e.layers import MoLoRARouter, MoR1ERouter, Routing, token_weights

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


class _RouterCounts:
    """One router's running sums, allocated on its device at the first computation."""

    def __init__(self, experts: int):
        self.experts = experts
        self.sums: tuple[torch.Tensor, ...] | None = None  # load (E,), entropy, tokens, gate, gate_calls

    def add(self, probs: torch.Tensor, mask: torch.Tensor | None, omega: torch.Tensor | None) -> None:
        flat = probs.detach().reshape(-1, self.experts).float()  # (N, E)
        if self.sums is None:
            # Normal tensors even under inference_mode, so later forwards in any mode can add to them.
            with torch.inference_mode(False):
                zeros = [torch.zeros((), device=flat.device) for _ in range(4)]
                self.sums = (torch.zeros(self.experts, device=flat.device), *zeros)
        load, entropy, tokens, gate, gate_calls = self.sums
        weights = token_weights(mask, probs.shape[:-1], flat)  # (N,) or None
        per_token = -torch.special.xlogy(flat, flat).sum(-1)  # H(p_t), 0·log 0 = 0 (top-k zeros)
        if weights is None:
            load += flat.sum(0)
            entropy += per_token.sum()
            tokens += flat.shape[0]
        else:
            load += weights @ flat
            entropy += weights @ per_token
            tokens += weights.sum()
        if omega is not None:
            gate += omega.detach().float().reshape(())
            gate_calls += 1

    def rows(self, device: torch.device) -> tuple[torch.Tensor, ...]:
        if self.sums is None:
            zero = torch.zeros((), dtype=torch.float64, device=device)
            return (torch.zeros(self.experts, dtype=torch.float64, device=device), zero, zero, zero, zero)
        return tuple(t.to(device=device, dtype=torch.float64) for t in self.sums)


class RouterTelemetry:
    """Collects router statistics from forward hooks; see the module docstring."""

    def __init__(self, model: nn.Module):
        self.routers = [m for m in model.modules() if _has_token_routing(m)]
        experts = {m.experts for m in self.routers}
        if len(experts) > 1:
            raise ValueError(f"router telemetry needs one expert count per model, found {sorted(experts)}")
        self._counts = [_RouterCounts(m.experts) for m in self.routers]
        self._handles: list = []

    def start(self) -> "RouterTelemetry":
        if not self._handles:
            for router, counts in zip(self.routers, self._counts):
                self._handles.append(router.register_forward_hook(_hook(counts)))
        return self

    def stop(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

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


def _hook(counts: _RouterCounts):
    def observe(module: nn.Module, args, output) -> None:
        if isinstance(output, Routing):
            counts.add(output.token, module.token_mask, output.omega)
        else:  # MoLoRARouter: the routing weights themselves
            counts.add(output, module.token_mask, None)

    return observe


@contextlib.contextmanager
def router_telemetry(model: nn.Module) -> Iterator[RouterTelemetry]:
    """``with mor1e.router_telemetry(model) as t:`` hooks every router for the block; ``t.summary()``."""
    telemetry = RouterTelemetry(model).start()
    try:
        yield telemetry
    finally:
        telemetry.stop()
