"""The fast MoR1E forward: the projections that read one input run as one group, and every
layer's coefficients of G come from one batched computation per model forward.

The maths is the layer's (arXiv 2404.08985, §3; DESIGN.md), rearranged so that a training step
launches few and large operators.  For the projections of one group (q/k/v or gate/up, which
read the same x; any other projection alone), each with its router (or one router shared by all),

    [A_1 x; …; A_M x; W_1 x; …; W_R x]  = x · cat(A_1, …, A_M, W_1, …, W_R)ᵀ     one matmul
    T_r      = softmax(W_r x / τ)  (top-k)                                       one softmax, (…, R, E)
    G_m      = c_m · T_r(m) + P_m                                                one addcmul, (…, M, E)
    z_m      = Σ_i (A_m x)_i · G_m[i, :]                                         (…, M, r2)
    update_m = B_m z_m                   one matmul with block-diag(B_1, …, B_M), split by d_out

with the per-projection coefficients, which depend on the parameters and the example only:

    c_m = token_coef · ω_r(m) · g_m,    P_m = intuition_coef · (1 − ω_r(m)) · g_m · M_r(m)(s)   (batch, E)

ω = sigmoid(gate_sharpness · w_ω) and g the output gate (1 when there is none).  Folding g into
c and P scales the update exactly as g · B (Gᵀ (A x)) does.  Within one forward of the wrapped
model (``ForwardTable``, opened and closed by hooks that ``wrap`` puts on it) c and P of every
projection are computed together, once: their concatenated gates, one matmul of s with the
stacked maps M, one product.  Outside such a forward (a layer called on its own) a group
computes its own.  Parameters stay where they are (the state_dict is unchanged); the
concatenated weights are built from them on every forward, so autograd reaches each one.

The first member called computes the whole group's updates and keeps the others' for their own
calls with the very same input tensor (same object, unchanged, same grad and autocast mode, same
parameters and scores).  A group whose members turn out to read different inputs stops fusing.
Under DeepSpeed ZeRO-3 a parameter is gathered only inside its own module's forward, so a layer
whose parameters are partitioned computes module by module (``MoR1ELinear.update``).
"""

from __future__ import annotations

import weakref
from typing import NamedTuple

import torch
import torch.nn.functional as F

from mor1e.routing import MissingIntuitionError, load_balancing_loss, notify, token_routing

# Discarded (never claimed) group results after which a group stops fusing: its members do not
# read one input tensor (e.g. cross-attention), so each computes alone.
_MAX_WASTED = 3


class Coefficients(NamedTuple):
    """Per-projection coefficients of G for M projections sharing R routers (R = M, or R = 1)."""

    scale: torch.Tensor | float | None  # (M, 1) c_m = token_coef·ω·g, or a float; None without a token router
    prior: torch.Tensor | None  # (batch, 1, …, M, E) P_m = intuition_coef·(1−ω)·g·M(s); None without intuition
    omega: torch.Tensor | None  # (R,) ω of each router; None when G has one term


def partitioned(param: torch.Tensor) -> bool:
    """A DeepSpeed ZeRO-3 parameter: gathered only inside its own module's forward."""
    return hasattr(param, "ds_status")


def _autocast_state(device: torch.device) -> tuple:
    if not torch.is_autocast_enabled(device.type):
        return (False,)
    return (True, torch.get_autocast_dtype(device.type))


def _product(const: float, *factors: torch.Tensor | None) -> torch.Tensor | float:
    out = None
    for f in factors:
        if f is not None:
            out = f if out is None else out * f
    return const if out is None else out * const


def _per_member(values: torch.Tensor, router_of: tuple[int, ...] | None, dim: int) -> torch.Tensor:
    """Router values along ``dim`` -> member values (a single router's broadcast as it is)."""
    if router_of is None or values.shape[dim] == 1:
        return values
    index = torch.as_tensor(router_of, device=values.device)
    return values.index_select(dim, index)


def coefficients(members, routers, router_of: tuple[int, ...] | None, scores: torch.Tensor | None,
                 like: torch.Tensor, token_dims: int = 1) -> Coefficients:
    """c, P and ω for ``members`` (MoR1ELinear) whose routers are ``routers``, in batched operations.

    ``router_of[m]`` is member m's router index (None: member m has router m, or one router for
    all).  ``scores`` (batch, k) are converted to ``like``'s device and dtype.  P comes shaped
    (batch, 1 × token_dims, M, E), ready to broadcast over an input (batch, tokens..., d).
    """
    cfg = members[0].config
    gates = None  # (M,) the output gates g
    if cfg.output_gate != "none":
        gates = torch.stack([m.mor1e_output_gate for m in members]).view(-1)
        if cfg.output_gate == "sigmoid":
            gates = torch.sigmoid(gates * cfg.gate_sharpness)
    omega = None
    if routers[0].gate_logit is not None:
        omega = torch.sigmoid(torch.stack([r.gate_logit for r in routers]).view(-1) * cfg.gate_sharpness)  # (R,)
    member_omega = None if omega is None else _per_member(omega, router_of, 0)
    scale = None
    if cfg.use_token_router:
        scale = _product(cfg.token_coef, member_omega, gates)
        if isinstance(scale, torch.Tensor):
            scale = scale.unsqueeze(-1)  # (M, 1): broadcasts over the E experts
    prior = None
    if cfg.use_intuition:
        if scores is None:
            raise MissingIntuitionError()
        s = scores.to(device=like.device, dtype=like.dtype)  # (batch, k)
        if cfg.intuition_is_identity:
            mapped = s.unsqueeze(1)  # (batch, 1, E): the same raw scores for every projection
        else:
            # One matmul for every router: s · cat(M_1, …, M_R)ᵀ -> (batch, R·E).
            weight = torch.stack([r.prior.weight for r in routers]).flatten(0, 1)
            bias = torch.cat([r.prior.bias for r in routers]) if cfg.intuition_map == "softmax" else None
            mapped = F.linear(s, weight, bias).unflatten(-1, (len(routers), -1))  # (batch, R, E)
            if cfg.intuition_map == "softmax":
                mapped = torch.softmax(mapped, dim=-1)
            mapped = _per_member(mapped, router_of, 1)
        coef = _product(cfg.intuition_coef, None if member_omega is None else 1 - member_omega, gates)
        prior = mapped * (coef.unsqueeze(-1) if isinstance(coef, torch.Tensor) else coef)
        prior = prior.view(prior.shape[0], *([1] * token_dims), *prior.shape[1:])
    return Coefficients(scale, prior, omega)


def _split(coeffs: Coefficients, sizes: list[int], router_sizes: list[int]) -> list[Coefficients]:
    """One Coefficients per group, by one split per tensor (its backward is one concatenation,
    where a slice per group would add a full-size zero gradient per group)."""
    count = len(sizes)
    scale = coeffs.scale.split_with_sizes(sizes) if isinstance(coeffs.scale, torch.Tensor) else [coeffs.scale] * count
    prior = [None] * count if coeffs.prior is None else coeffs.prior.split_with_sizes(sizes, dim=-2)
    omega = [None] * count if coeffs.omega is None else coeffs.omega.split_with_sizes(router_sizes)
    return [Coefficients(*parts) for parts in zip(scale, prior, omega)]


def _narrow(coeffs: Coefficients, lo: int, hi: int, router_lo: int, router_hi: int) -> Coefficients:
    scale = coeffs.scale[lo:hi] if isinstance(coeffs.scale, torch.Tensor) else coeffs.scale
    prior = None if coeffs.prior is None else coeffs.prior.narrow(-2, lo, hi - lo)
    omega = None if coeffs.omega is None else coeffs.omega[router_lo:router_hi]
    return Coefficients(scale, prior, omega)


class ForwardTable:
    """The coefficients of every projection of a wrapped model, computed once per model forward.

    ``enter`` and ``exit`` are the wrapped model's forward pre-hook and (always called) forward
    hook: a table lives exactly as long as one forward, so its autograd graph is never reused
    after a backward.  It is computed at the first group that asks, in that group's parameter
    device and dtype and grad and autocast mode; a group that differs from those, or whose routers
    hold other scores, computes its own coefficients.
    """

    def __init__(self, groups: list["ProjectionGroup"]):
        self.groups = groups
        self.members, self.routers, router_of = [], [], []
        for position, group in enumerate(groups):
            group.table, group.position = self, position
            for member in group.members:
                router_of.append(len(self.routers) + (0 if group.shared else group.index(member)))
            self.members += group.members
            self.routers += group.routers
        identity = tuple(range(len(self.members)))
        self.router_of = None if tuple(router_of) == identity else tuple(router_of)
        self._depth = 0
        self._built: tuple | None = None  # (key, Coefficients or None)

    def enter(self, module, args) -> None:
        self._depth += 1
        if self._depth == 1:
            self._built = None

    def exit(self, module, args, output) -> None:
        self._depth = max(self._depth - 1, 0)
        if self._depth == 0:
            self._built = None
            for group in self.groups:
                group.forget()

    def lookup(self, group: "ProjectionGroup", lo: int, hi: int, scores, like: torch.Tensor,
               x_dims: int) -> Coefficients | None:
        """The coefficients of ``group.members[lo:hi]`` from this forward's table, or None.

        ``like`` is a parameter of the group (device and dtype); ``x_dims`` the input's dimensions.
        """
        if self._depth == 0:
            return None
        key = (id(scores), torch.is_grad_enabled(), _autocast_state(like.device))
        if self._built is None or self._built[0] != key:
            coeffs = None
            places = {(m.mor1e_A.device, m.mor1e_A.dtype) for m in self.members}
            if places == {(like.device, like.dtype)} and all(r.intuition_scores is scores for r in self.routers):
                coeffs = coefficients(self.members, self.routers, self.router_of, scores, like, max(x_dims - 2, 0))
            if coeffs is not None:
                coeffs = _split(coeffs, [len(g.members) for g in self.groups], [len(g.routers) for g in self.groups])
            self._built = (key, coeffs, like.device, like.dtype)
        _, coeffs, device, dtype = self._built
        if coeffs is None or (like.device, like.dtype) != (device, dtype):
            return None
        mine = coeffs[group.position]
        if (lo, hi) == (0, len(group.members)):
            return mine
        return _narrow(mine, lo, hi, *((0, 1) if group.shared else (lo, hi)))

    def __getstate__(self):
        return {**self.__dict__, "_depth": 0, "_built": None}


def param(module: torch.nn.Module, name: str) -> torch.Tensor:
    """``module.<name>`` for a parameter, read from its registry: ``nn.Module.__getattr__`` costs a
    few microseconds, and the fast path reads parameters hundreds of times per model forward."""
    return module._parameters[name]


class ProjectionGroup:
    """MoR1E projections that read the same input, computed together (module docstring).

    ``members`` are MoR1ELinear layers with one config and one d_in; each has its own router, or
    all share one.  A layer outside any multi-member group is a group of one.
    """

    def __init__(self, members: list):
        self.members = list(members)
        self.routers = list({id(m.router): m.router for m in self.members}.values())
        self.shared = len(self.routers) == 1 and len(self.members) > 1
        if len(self.routers) not in (1, len(self.members)):
            raise ValueError("a projection group has one router per projection or one shared router")
        config = self.members[0].config
        if any(m.config != config for m in self.members) or len({m.in_features for m in self.members}) != 1:
            raise ValueError("the projections of one group need one config and one input width")
        self.config = config
        self.out_sizes = [m.out_features for m in self.members]
        self.table: ForwardTable | None = None
        self.position = 0  # this group's index in its table
        self.fusing = True
        self._wasted = 0
        self._pending: dict[int, torch.Tensor] = {}
        self._pending_key: tuple | None = None
        self._pending_input = None  # weakref to the input the pending updates belong to
        self._params: list[torch.Tensor] | None = None  # the adapter parameters a result depends on

    def index(self, member) -> int:
        # By identity, not id(): a deep copy of the model copies this group with new members.
        for i, m in enumerate(self.members):
            if m is member:
                return i
        raise ValueError("not a member of this projection group")

    def forget(self) -> None:
        """Drop results nobody claimed (the end of a model forward)."""
        self._pending, self._pending_key, self._pending_input = {}, None, None

    def __getstate__(self):
        return {**self.__dict__, "_pending": {}, "_pending_key": None, "_pending_input": None, "_params": None}

    def _key(self, x: torch.Tensor) -> tuple:
        # What would change a kept result: x changed in place, an adapter parameter updated in place
        # (an optimizer step), grad or autocast mode, the scores or the token mask.  (Each member
        # computes its frozen base layer itself.)  Inference tensors have no version counter.
        if self._params is None:
            found = {id(p): p for module in self.members + self.routers
                     for name, p in module.named_parameters() if not name.startswith("base_layer.")}
            self._params = [p for p in found.values() if not p.is_inference()]
        router = self.routers[0]
        return (-1 if x.is_inference() else x._version, tuple(p._version for p in self._params),
                torch.is_grad_enabled(), _autocast_state(x.device), id(router.intuition_scores),
                id(router.token_mask))

    def update(self, member, x: torch.Tensor) -> torch.Tensor:
        """``member``'s update g·B(Gᵀ(A x)) for input x, (..., d_out)."""
        i = self.index(member)
        if len(self.members) == 1 or not self.fusing:
            return self._compute(x, i, i + 1)[0]
        key = self._key(x)
        if self._pending_input is not None and self._pending_input() is x and self._pending_key == key:
            if i in self._pending:
                return self._pending.pop(i)
        if self._pending:
            self._wasted += 1
            if self._wasted >= _MAX_WASTED:
                self.fusing = False
                self.forget()
                return self._compute(x, i, i + 1)[0]
        updates = self._compute(x, 0, len(self.members))
        self._pending = {j: u for j, u in enumerate(updates) if j != i}
        self._pending_key, self._pending_input = key, weakref.ref(x)
        return updates[i]

    def _compute(self, x: torch.Tensor, lo: int, hi: int) -> list[torch.Tensor]:
        """The updates of members[lo:hi] for input x, in few batched operations."""
        cfg = self.config
        members = self.members[lo:hi]
        routers = self.routers if self.shared else self.routers[lo:hi]
        count, r1, r2 = hi - lo, cfg.r1, cfg.r2
        scores = routers[0].intuition_scores
        if count > 1 and any(r.intuition_scores is not scores for r in routers):
            return [self._compute(x, j, j + 1)[0] for j in range(lo, hi)]  # mixed scores: one by one
        if cfg.use_intuition and scores is None:
            raise MissingIntuitionError()
        like = param(members[0], "mor1e_A")
        x = x.to(like.dtype)  # the adapter's own precision (adapter_dtype); a no-op when they agree
        coeffs = None if self.table is None else self.table.lookup(self, lo, hi, scores, like, x.dim())
        if coeffs is None:
            coeffs = coefficients(members, routers, None, scores, like, max(x.dim() - 2, 0))

        # One matmul for every A and every token router: (..., M·r1 + R·E).
        weights = [param(m, "mor1e_A") for m in members]
        if cfg.use_token_router:
            weights += [param(r._modules["token_router"], "weight") for r in routers]
        h = F.linear(x, weights[0] if len(weights) == 1 else torch.cat(weights))
        if cfg.use_token_router:  # one split: its backward is one concatenation
            ax, logits = h.split_with_sizes([count * r1, h.shape[-1] - count * r1], dim=-1)
            logits = logits.unflatten(-1, (len(routers), -1))  # (..., R, E)
            token = token_routing(logits, cfg.router_temperature, cfg.top_k)
            if cfg.aux_loss_coef > 0 or any(r.routing_observers for r in routers):
                self._report(routers, logits, token, coeffs)
            if coeffs.prior is not None:
                grid = torch.addcmul(self._broadcast_prior(coeffs.prior, x), token, coeffs.scale)  # G, (..., M, E)
            else:
                grid = token * coeffs.scale
        else:
            ax = h
            grid = self._broadcast_prior(coeffs.prior, x)
        ax = ax.unflatten(-1, (count, r1, 1))  # (..., M, r1, 1)
        z = (ax * grid.unflatten(-1, (r1, r2))).sum(-2)  # (..., M, r2): Σ_i (A x)_i G_ij
        if count == 1:
            return [F.linear(z.squeeze(-2), param(members[0], "mor1e_B"))]
        # Every B z in one matmul with block-diag(B_1, …, B_M), (Σ d_out, M·r2), split by d_out.
        blocks = torch.block_diag(*[param(m, "mor1e_B") for m in members])
        return list(F.linear(z.flatten(-2), blocks).split_with_sizes(self.out_sizes[lo:hi], dim=-1))

    @staticmethod
    def _broadcast_prior(prior: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """P (batch, 1, …, M, E) as x's token dims need it: (batch, 1, …, 1, M, E), or (M, E) for a 1-d x."""
        batch = x.shape[0] if x.dim() > 1 else 1
        if prior.shape[0] not in (1, batch):
            raise ValueError(
                f"intuition scores have batch size {prior.shape[0]} but the layer input has batch size {batch}"
            )
        if x.dim() == 1:
            return prior.reshape(prior.shape[-2:])
        if prior.dim() == x.dim() + 1:
            return prior
        return prior.reshape(prior.shape[0], *([1] * (x.dim() - 2)), *prior.shape[-2:])

    def _report(self, routers, logits: torch.Tensor, token: torch.Tensor, coeffs: Coefficients) -> None:
        """Per router: the load-balancing loss when asked for, and the routing to its observers."""
        cfg = self.config
        for j, router in enumerate(routers):
            if cfg.aux_loss_coef > 0:
                router.last_aux_loss = load_balancing_loss(logits[..., j, :], cfg.router_temperature, router.token_mask)
            if router.routing_observers:
                notify(router, token[..., j, :], None if coeffs.omega is None else coeffs.omega[j:j + 1])
