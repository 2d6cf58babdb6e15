"""MoR1E / MoLoRA / LoRA adapters: exactness at init, reference maths, routing, gradients, configs."""

import copy
import math

import pytest
import torch
from peft import LoraConfig
from torch import nn
from transformers import GPT2Config, GPT2LMHeadModel

import mor1e
from harness.methods import METHODS, apply_method
from harness.models import load_model
from mor1e.layers import MoLoRALinear, MoR1ELinear, MoR1ERouter, load_balancing_loss, token_routing

torch.set_num_threads(2)

METHOD_HPARAMS = {
    "mor1e": {"r1": 4, "r2": 8, "num_clusters": 3},
    "molora": {"num_experts": 4, "rank": 2},
    "lora": {"rank": 4},
    "dense": {},
}
# (method, hparams) of every adapter variant the exactness tests cover.
VARIANTS = {
    "mor1e": ("mor1e", METHOD_HPARAMS["mor1e"]),
    "mor1e-normalised": ("mor1e", {**METHOD_HPARAMS["mor1e"], "parameterization": "normalised"}),
    "mor1e-k-equals-E": ("mor1e", {"r1": 2, "r2": 2, "num_clusters": 4}),
    "molora": ("molora", METHOD_HPARAMS["molora"]),
    "lora": ("lora", METHOD_HPARAMS["lora"]),
    "dense": ("dense", {}),
}


def scores_for(model, batch=2):
    """Random intuition scores of the right k when the model needs them, else None."""
    config = mor1e.adapter_config(model)
    if isinstance(config, mor1e.MoR1EConfig) and config.use_intuition:
        return torch.rand(batch, config.num_clusters)
    return None


@pytest.fixture(scope="module")
def tiny():
    model, tok = load_model("tiny-random-llama", seed=0)
    ids = tok(["The quick brown fox jumps", "Hello"], return_tensors="pt", padding=True)
    return model, ids


def fresh(tiny):
    model, ids = tiny
    return copy.deepcopy(model), ids


def logits(model, ids, scores=None):
    with torch.no_grad(), mor1e.intuition(model, scores):
        return model(**ids).logits


def randomise_adapters(model, seed=1):
    """Give every adapter parameter a nonzero value, as if after training."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in mor1e.adapter_parameters(model):
            p.copy_(torch.randn(p.shape, generator=g) * 0.05)


# ---------------------------------------------------------------- exact at init


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_wrapped_tiny_model_equals_base_exactly(tiny, variant):
    model, ids = fresh(tiny)
    base = logits(model, ids)
    method, hparams = VARIANTS[variant]
    apply_method(model, method, hparams)
    assert torch.equal(logits(model, ids, scores_for(model)), base)


def test_wrapped_model_with_random_adapters_differs(tiny):
    """The equality above is not vacuous: a nonzero B changes the output."""
    model, ids = fresh(tiny)
    base = logits(model, ids)
    mor1e.wrap(model, mor1e.MoR1EConfig(num_clusters=3))
    randomise_adapters(model)
    assert not torch.allclose(logits(model, ids, torch.rand(2, 3)), base)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["mor1e", "molora", "lora", "dense"])
def test_wrapped_smollm2_equals_base_exactly(method):
    torch.manual_seed(0)
    model, tok = load_model("smollm2-135m")
    ids = tok(["The capital of France is", "Hi"], return_tensors="pt", padding=True)
    base = logits(model, ids)
    apply_method(model, method, {} if method == "dense" else {**METHOD_HPARAMS[method]})
    assert torch.equal(logits(model, ids, scores_for(model)), base)
    if method == "mor1e":
        # and a train step moves it: backward reaches the adapter only
        model.train()
        randomise_adapters(model)
        with mor1e.intuition(model, torch.rand(2, 3)):
            out = model(**ids, labels=ids["input_ids"])
        out.loss.backward()
        grads = {n for n, p in model.named_parameters() if p.grad is not None}
        assert grads and all(mor1e.is_adapter_param(n) for n in grads)


# ---------------------------------------------------------------- reference maths


def make_layer(d_in=6, d_out=5, seed=0, parameterization="authors", **cfg):
    torch.manual_seed(seed)
    base = nn.Linear(d_in, d_out)
    make = mor1e.MoR1EConfig.authors if parameterization == "authors" else mor1e.MoR1EConfig.normalised
    layer = MoR1ELinear(base, make(**{"r1": 3, "r2": 4, "num_clusters": 2, **cfg}))
    with torch.no_grad():
        layer.mor1e_B.normal_()
    return layer


def test_one_hot_routing_picks_one_rank1_expert():
    layer = make_layer(output_gate="none")
    x = torch.randn(7, 6)
    A = layer.mor1e_A.detach().tolist()
    B = layer.mor1e_B.detach().tolist()
    for i in range(3):
        for j in range(4):
            G = torch.zeros(7, 3, 4)
            G[:, i, j] = 1.0
            got = layer.update(x, G)
            # independent reference in plain Python: B[:, j] * (A[i, :] · x)
            for t in range(7):
                a_dot_x = sum(A[i][c] * x[t, c].item() for c in range(6))
                expected = [B[o][j] * a_dot_x for o in range(5)]
                assert got[t].tolist() == pytest.approx(expected, rel=1e-5, abs=1e-6)


def test_update_is_the_mixture_of_rank1_experts():
    """B Gᵀ A x equals Σ_ij G_ij B[:, j] A[i, :] x for an arbitrary G."""
    layer = make_layer(output_gate="none")
    x = torch.randn(4, 6, dtype=torch.float64)
    layer = layer.double()
    G = torch.rand(4, 3, 4, dtype=torch.float64)
    A, B = layer.mor1e_A.detach(), layer.mor1e_B.detach()
    expected = torch.zeros(4, 5, dtype=torch.float64)
    for i in range(3):
        for j in range(4):
            expected += G[:, i, j, None] * torch.outer(A[i] @ x.T, B[:, j])
    assert torch.allclose(layer.update(x, G), expected)


def test_normalised_routing_matrix_follows_its_formula():
    """The normalised variant (mixed with other coefficients): G = c_t·ω·T + c_i·(1−ω)·softmax(W_p s + b_p)."""
    layer = make_layer(parameterization="normalised", router_temperature=0.7, token_coef=3.0,
                       intuition_coef=2.0, gate_init=0.4)
    r = layer.router
    x = torch.randn(2, 5, 6)
    s = torch.rand(2, 2)
    mor1e.set_intuition(layer, s)
    omega = 1 / (1 + math.exp(-0.4))
    tok = torch.softmax(x @ r.token_router.weight.T / 0.7, -1)
    prior = torch.softmax(s @ r.prior.weight.T + r.prior.bias, -1)[:, None, :]
    expected = 3.0 * omega * tok + 2.0 * (1 - omega) * prior
    G = layer.routing_matrix(x)
    assert G.shape == (2, 5, 3, 4)
    assert torch.allclose(G.reshape(2, 5, 12), expected, atol=1e-6)
    # the fast path (never builds G) agrees with the explicit one
    assert torch.allclose(layer.update(x), layer.update(x, G), atol=1e-5)


def test_token_only_ablation_runs_without_scores():
    layer = make_layer(parameterization="normalised", use_intuition=False, token_coef=2.0)
    x = torch.randn(3, 6)
    tok = torch.softmax(x @ layer.router.token_router.weight.T, -1)
    assert torch.allclose(layer.routing_matrix(x).reshape(3, 12), 2.0 * tok, atol=1e-6)


def test_intuition_scores_broadcast_per_example_over_tokens():
    layer = make_layer()
    x = torch.randn(3, 5, 6)
    s = torch.rand(3, 2)
    with mor1e.intuition(layer, s):
        batched = layer(x)
    for b in range(3):
        with mor1e.intuition(layer, s[b : b + 1]):
            assert torch.allclose(layer(x[b]), batched[b], atol=1e-6)
    with pytest.raises(ValueError, match="batch size"):
        with mor1e.intuition(layer, torch.rand(2, 2)):
            layer(x)
    with pytest.raises(ValueError, match="k=2"):
        mor1e.set_intuition(layer, torch.rand(3, 5))


def test_context_manager_restores_previous_scores():
    layer = make_layer()
    outer = torch.rand(1, 2)
    mor1e.set_intuition(layer, outer)
    with mor1e.intuition(layer, torch.rand(1, 2)):
        assert not torch.equal(layer.router.intuition_scores, outer)
    assert torch.equal(layer.router.intuition_scores, outer)
    mor1e.set_intuition(layer, None)
    assert layer.router.intuition_scores is None


def test_top_k_keeps_exactly_k_weights():
    logits = torch.randn(4, 9, 32)
    w = token_routing(logits, 1.0, 3)
    assert ((w != 0).sum(-1) == 3).all()
    assert torch.allclose(w.sum(-1), torch.ones(4, 9))
    top = logits.topk(3, -1).indices
    assert torch.equal(w.gather(-1, top) > 0, torch.ones_like(top, dtype=torch.bool))


def test_top_k_in_a_wrapped_model(tiny):
    model, ids = fresh(tiny)
    mor1e.wrap(model, mor1e.MoR1EConfig(top_k=5, use_intuition=False))
    layer = model.model.layers[0].mlp.down_proj
    x = torch.randn(2, 7, layer.in_features)
    G = layer.routing_matrix(x).flatten(-2)
    assert ((G != 0).sum(-1) == 5).all()
    molora = MoLoRALinear(nn.Linear(6, 4), mor1e.MoLoRAConfig(num_experts=8, top_k=2))
    assert ((molora.router_weights(torch.randn(10, 6)) != 0).sum(-1) == 2).all()


def test_ablations_drop_their_parameters():
    only_token = MoR1ERouter(6, mor1e.MoR1EConfig(use_intuition=False))
    assert only_token.prior is None and only_token.gate_logit is None
    only_prior = MoR1ERouter(6, mor1e.MoR1EConfig(use_token_router=False, num_clusters=3))
    assert only_prior.token_router is None and only_prior.gate_logit is None
    # intuition alone: G = intuition_coef·M(s), the same for every token of an example
    only_prior.intuition_scores = torch.rand(2, 3)
    routing = only_prior(torch.randn(2, 4, 6))
    assert routing.token is None and routing.omega is None
    assert torch.allclose(routing.prior, 4.0 * only_prior.intuition_scores @ only_prior.prior.weight.T)
    # and never without scores
    only_prior.intuition_scores = None
    with pytest.raises(mor1e.MissingIntuitionError, match="mor1e.intuition"):
        only_prior(torch.randn(2, 4, 6))


def test_molora_matches_reference():
    torch.manual_seed(0)
    cfg = mor1e.MoLoRAConfig(num_experts=3, rank=2, alpha=4.0, router_temperature=0.5)
    layer = MoLoRALinear(nn.Linear(6, 5), cfg)
    with torch.no_grad():
        layer.mor1e_B.normal_()
    x = torch.randn(4, 6)
    g = torch.softmax(x @ layer.mor1e_router.weight.T / 0.5, -1)
    expected = layer.base_layer(x)
    for e in range(3):
        A_e = layer.mor1e_A[e * 2 : (e + 1) * 2]
        B_e = layer.mor1e_B[:, e * 2 : (e + 1) * 2]
        expected = expected + 2.0 * g[:, e : e + 1] * (x @ A_e.T @ B_e.T)
    assert torch.allclose(layer(x), expected, atol=1e-6)


# ---------------------------------------------------------------- gradients


@pytest.mark.parametrize("method", ["mor1e", "molora", "lora", "dense"])
def test_gradients_reach_only_adapter_parameters(tiny, method):
    model, ids = fresh(tiny)
    apply_method(model, method, METHOD_HPARAMS[method])
    model.train()
    with mor1e.intuition(model, scores_for(model)):
        model(**ids, labels=ids["input_ids"]).loss.backward()
    params = dict(model.named_parameters())
    with_grad = {n for n, p in params.items() if p.grad is not None}
    if method == "dense":
        assert with_grad == set(params)
        assert mor1e.count_trainable(model) == sum(p.numel() for p in model.parameters())
    else:
        assert with_grad and with_grad == {n for n in params if mor1e.is_adapter_param(n)}
        assert all(not p.requires_grad for n, p in params.items() if not mor1e.is_adapter_param(n))
        assert mor1e.count_trainable(model) == sum(params[n].numel() for n in with_grad)


@pytest.mark.parametrize(
    "cfg",
    [
        dict(num_clusters=3),
        dict(num_clusters=3, output_gate="scalar", share_routers=True, top_k=4),
        dict(num_clusters=3, use_token_router=False),
        dict(use_intuition=False, aux_loss_coef=0.1),
        dict(num_clusters=3, intuition_map="softmax", router_init="random", output_gate="none"),
        dict(r1=2, r2=2, num_clusters=4),  # k == E: M is the identity, nothing to train
    ],
)
def test_every_mor1e_parameter_trains(tiny, cfg):
    """Every adapter parameter, the intuition map M and the gates included, gets a nonzero gradient."""
    model, ids = fresh(tiny)
    config = mor1e.MoR1EConfig(**cfg)
    mor1e.wrap(model, config)
    randomise_adapters(model)
    model.train()
    with mor1e.intuition(model, scores_for(model)):
        loss = model(**ids, labels=ids["input_ids"]).loss + mor1e.aux_loss(model)
    loss.backward()
    names = [n for n, _ in mor1e.adapter_parameters(model)]
    assert any(".prior." in n for n in names) == (config.use_intuition and not config.intuition_is_identity)
    assert any("output_gate" in n for n in names) == (config.output_gate != "none")
    for name, p in mor1e.adapter_parameters(model):
        assert p.requires_grad and p.grad is not None and p.grad.abs().sum() > 0, name


def test_aux_loss():
    torch.manual_seed(0)
    cfg = mor1e.MoR1EConfig(use_intuition=False, aux_loss_coef=0.5)
    layer = MoR1ELinear(nn.Linear(6, 5), cfg)
    with torch.no_grad():
        layer.router.token_router.weight.zero_()
    layer(torch.randn(10, 6))
    # uniform probabilities, every token's argmax on expert 0: E · (1 · 1/E) = 1
    assert mor1e.aux_loss(layer).item() == pytest.approx(0.5)
    logits = torch.randn(50, 8, requires_grad=True)
    loss = load_balancing_loss(logits, 1.0)
    loss.backward()
    assert logits.grad.abs().sum() > 0
    off = MoR1ELinear(nn.Linear(6, 5), mor1e.MoR1EConfig(use_intuition=False))
    off(torch.randn(3, 6))
    assert mor1e.aux_loss(off).item() == 0.0


# ---------------------------------------------------------------- sharing and counts


def test_routers_are_shared_and_registered_once(tiny):
    model, _ = fresh(tiny)
    mor1e.wrap(model, mor1e.MoR1EConfig(share_routers=True))
    attn, mlp = model.model.layers[0].self_attn, model.model.layers[0].mlp
    assert attn.q_proj.router is attn.k_proj.router is attn.v_proj.router
    assert mlp.gate_proj.router is mlp.up_proj.router
    assert attn.o_proj.router is not attn.q_proj.router and mlp.down_proj.router is not mlp.up_proj.router
    keys = [k for k in model.state_dict() if "token_router" in k]
    assert len(keys) == len(set(keys)) == 2 * 4  # per layer: qkv, o, gate/up, down
    unshared, _ = fresh(tiny)
    mor1e.wrap(unshared, mor1e.MoR1EConfig())  # the authors': one router per projection
    assert mor1e.count_trainable(unshared) > mor1e.count_trainable(model)
    assert len([k for k in unshared.state_dict() if "token_router" in k]) == 2 * 7


def test_shared_router_computes_once_per_input_and_stays_correct(tiny):
    model, ids = fresh(tiny)
    mor1e.wrap(model, mor1e.MoR1EConfig(num_clusters=3, share_routers=True))
    randomise_adapters(model)
    mor1e.set_intuition(model, torch.rand(2, 3))
    attn = model.model.layers[0].self_attn
    calls = []  # every routing the shared router computes is shown to its observers (router telemetry)
    attn.q_proj.router.routing_observers.append(lambda *a: calls.append(1))
    x = torch.randn(2, 5, 64)
    x2 = x.clone()  # equal values, another tensor: the reference below cannot hit the cache for x
    expected = [layer.base_layer(x2) + layer.update(x2, layer.routing_matrix(x2)) for layer in (attn.q_proj, attn.k_proj)]
    calls.clear()
    outs = [attn.q_proj(x), attn.k_proj(x), attn.v_proj(x)]
    assert len(calls) == 1  # q computed the routing, k and v reused it
    assert all(torch.allclose(o, e, atol=1e-6) for o, e in zip(outs, expected))
    attn.v_proj(x.clone())  # a different tensor is routed afresh
    assert len(calls) == 2
    with torch.no_grad():  # an optimizer-style in-place update invalidates the cached routing
        attn.q_proj.router.token_router.weight.mul_(2)
    before = attn.k_proj(x)
    assert len(calls) == 3
    x3 = x.clone()
    assert torch.allclose(before, attn.k_proj.base_layer(x3) + attn.k_proj.update(x3, attn.k_proj.routing_matrix(x3)), atol=1e-6)
    calls.clear()
    with mor1e.intuition(model, torch.rand(2, 3)):  # new scores: new routing
        attn.k_proj(x)
    assert len(calls) == 1


def test_mor1e_parameter_count_is_pinned(tiny):
    d, f, kv = 64, 128, 32  # hidden, intermediate, k/v width of the tiny preset
    E, k = 32, 8
    ab = lambda d_in, d_out: 4 * d_in + d_out * 8  # noqa: E731
    ab_per_layer = ab(d, d) + 2 * ab(d, kv) + ab(d, d) + 2 * ab(d, f) + ab(f, d)
    # The authors': a router per projection (W_r, bias-free M, ω) and an output gate per projection.
    model, _ = fresh(tiny)
    mor1e.wrap(model, mor1e.MoR1EConfig.authors(r1=4, r2=8, num_clusters=8))
    router = lambda d_in: d_in * E + k * E + 1  # noqa: E731
    assert mor1e.count_trainable(model) == 2 * (ab_per_layer + 6 * router(d) + router(f) + 7)
    # k == E: M is the identity and has no parameters.
    model, _ = fresh(tiny)
    mor1e.wrap(model, mor1e.MoR1EConfig.authors(r1=4, r2=8, num_clusters=32))
    assert mor1e.count_trainable(model) == 2 * (ab_per_layer + 6 * (d * E + 1) + (f * E + 1) + 7)
    # Normalised with shared routers: qkv, o, gate/up, down; P has a bias; no output gate.
    model, _ = fresh(tiny)
    mor1e.wrap(model, mor1e.MoR1EConfig.normalised(r1=4, r2=8, num_clusters=8, share_routers=True))
    router = lambda d_in: d_in * E + (k * E + E) + 1  # noqa: E731
    assert mor1e.count_trainable(model) == 2 * (ab_per_layer + router(d) * 3 + router(f))


def test_mor1e_has_fewer_parameters_than_molora_at_32_experts(tiny):
    a, _ = fresh(tiny)
    b, _ = fresh(tiny)
    mor1e.wrap(a, mor1e.MoR1EConfig(r1=4, r2=8))
    mor1e.wrap(b, mor1e.MoLoRAConfig(num_experts=32, rank=1))  # the smallest MoLoRA with 32 experts
    assert mor1e.count_trainable(a) < mor1e.count_trainable(b)


# ---------------------------------------------------------------- model families and errors


def tiny_gpt2():
    torch.manual_seed(0)
    cfg = GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=101, n_positions=32)
    return GPT2LMHeadModel(cfg).eval()


@pytest.mark.parametrize("method", ["mor1e", "molora", "lora"])
def test_gpt2_conv1d_is_wrapped(method):
    model = tiny_gpt2()
    ids = {"input_ids": torch.randint(0, 101, (2, 9))}
    base = logits(model, ids)
    with pytest.warns(UserWarning) if method == "lora" else _nothing():
        apply_method(model, method, METHOD_HPARAMS[method])
    scores = scores_for(model)
    assert torch.equal(logits(model, ids, scores), base)
    wrapped = {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, (MoR1ELinear, MoLoRALinear))}
    if method != "lora":
        assert wrapped == {"c_attn", "c_proj", "c_fc"}
    randomise_adapters(model)
    assert not torch.allclose(logits(model, ids, scores), base)


def test_gpt2_conv1d_update_uses_the_right_orientation():
    model = tiny_gpt2()
    conv = model.transformer.h[0].mlp.c_fc  # Conv1D 32 -> 128, weight stored (32, 128)
    layer = MoR1ELinear(conv, mor1e.MoR1EConfig(r1=2, r2=3, use_intuition=False))
    assert (layer.in_features, layer.out_features) == (32, 128)
    with torch.no_grad():
        layer.mor1e_B.normal_()
    x = torch.randn(4, 32)
    G = torch.rand(4, 2, 3)
    gate = 0.5  # the authors' output gate at init: sigmoid(100 · 0)
    expected = x @ conv.weight + conv.bias + gate * torch.einsum("oj,tij,ic,tc->to", layer.mor1e_B, G, layer.mor1e_A, x)
    assert torch.allclose(layer.base_layer(x) + layer.update(x, G), expected, atol=1e-5)


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


@pytest.mark.parametrize(
    "make, field",
    [
        (lambda: mor1e.MoR1EConfig(r1=4, r2=8, num_experts=30), "num_experts"),
        (lambda: mor1e.MoR1EConfig(router_temperature=0.0), "router_temperature"),
        (lambda: mor1e.MoR1EConfig(router_temperature=-1.0), "router_temperature"),
        (lambda: mor1e.MoR1EConfig(top_k=33), "top_k"),
        (lambda: mor1e.MoR1EConfig(top_k=0), "top_k"),
        (lambda: mor1e.MoR1EConfig(num_clusters=0), "num_clusters"),
        (lambda: mor1e.MoR1EConfig(r1=0), "r1"),
        (lambda: mor1e.MoR1EConfig(token_coef=0), "token_coef"),
        (lambda: mor1e.MoR1EConfig(aux_loss_coef=-1), "aux_loss_coef"),
        (lambda: mor1e.MoR1EConfig(use_token_router=False, use_intuition=False), "use_token_router"),
        (lambda: mor1e.MoR1EConfig(gate_sharpness=0), "gate_sharpness"),
        (lambda: mor1e.MoR1EConfig(gate_sharpness=float("inf")), "gate_sharpness"),
        (lambda: mor1e.MoR1EConfig(intuition_map="cubic"), "intuition_map"),
        (lambda: mor1e.MoR1EConfig(router_init="ones"), "router_init"),
        (lambda: mor1e.MoR1EConfig(output_gate=True), "output_gate"),
        (lambda: mor1e.MoR1EConfig.normalised(output_gate="relu"), "output_gate"),
        (lambda: mor1e.MoR1EConfig(share_routers="yes"), "share_routers"),
        (lambda: mor1e.MoR1EConfig(gate_init=float("nan")), "gate_init"),
        (lambda: mor1e.MoLoRAConfig(router_temperature=0), "router_temperature"),
        (lambda: mor1e.MoLoRAConfig(num_experts=4, top_k=5), "top_k"),
        (lambda: mor1e.MoLoRAConfig(top_k=0), "top_k"),
        (lambda: mor1e.MoLoRAConfig(rank=0), "rank"),
    ],
)
def test_bad_configs_name_the_field(make, field):
    with pytest.raises(ValueError, match=field):
        make()


@pytest.mark.parametrize(
    "config",
    [
        mor1e.MoR1EConfig(target_modules=("q_proj", "qq_proj")),
        mor1e.MoLoRAConfig(target_modules=["qq_proj"]),
        LoraConfig(r=4, target_modules=["qq_proj"]),
    ],
)
def test_unknown_target_module_is_named(tiny, config):
    model, _ = fresh(tiny)
    with pytest.raises(ValueError, match="qq_proj"):
        mor1e.wrap(model, config)


def test_wrap_refuses_twice_and_non_linear_targets(tiny):
    model, _ = fresh(tiny)
    with pytest.raises(ValueError, match="embed_tokens"):
        mor1e.wrap(model, mor1e.MoR1EConfig(target_modules=["embed_tokens"]))
    mor1e.wrap(model, mor1e.MoR1EConfig(target_modules=["q_proj"]))
    with pytest.raises(ValueError, match="already wrapped"):
        mor1e.wrap(model, mor1e.MoLoRAConfig())


def test_set_intuition_reaches_a_wrapped_inner_module(tiny):
    """Training engines hold the model as a child (e.g. DeepSpeed's engine.module)."""
    model, ids = fresh(tiny)
    mor1e.wrap(model, mor1e.MoR1EConfig(num_clusters=3))
    holder = nn.ModuleDict({"module": model})
    s = torch.rand(2, 3)
    mor1e.set_intuition(holder, s)
    routers = [m for m in model.modules() if isinstance(m, MoR1ERouter)]
    assert routers and all(torch.equal(r.intuition_scores, s) for r in routers)


def test_methods_cover_the_contract():
    assert set(METHODS) >= {"mor1e", "lora", "dora", "molora", "peft", "dense", "zeroshot"}


# ---------------------------------------------------------------- save / load


@pytest.mark.parametrize(
    "config",
    [
        mor1e.MoR1EConfig(num_clusters=3, top_k=6),
        mor1e.MoR1EConfig(r1=2, r2=2, num_clusters=4),
        mor1e.MoR1EConfig.normalised(num_clusters=3, output_gate="scalar", share_routers=True),
        mor1e.MoLoRAConfig(num_experts=4, rank=2),
        LoraConfig(r=4, lora_alpha=8),
    ],
    ids=["mor1e", "mor1e-k-equals-E", "mor1e-normalised-shared", "molora", "lora"],
)
def test_save_load_roundtrip_gives_identical_logits(tiny, tmp_path, config):
    from safetensors.torch import load_file

    model, ids = fresh(tiny)
    base = copy.deepcopy(model)
    mor1e.wrap(model, config)
    randomise_adapters(model)
    scores = scores_for(model)
    trained = logits(model, ids, scores)
    mor1e.save_adapter(model, tmp_path / "adapter")
    assert sorted(p.name for p in (tmp_path / "adapter").iterdir()) == [
        "adapter_config.json",
        "adapter_model.safetensors",
    ]
    saved = load_file(tmp_path / "adapter" / "adapter_model.safetensors")
    assert set(saved) == {n for n, _ in mor1e.adapter_parameters(model)}
    assert sum(t.numel() for t in saved.values()) == mor1e.count_trainable(model)
    loaded = mor1e.load_adapter(base, tmp_path / "adapter")
    assert type(mor1e.adapter_config(loaded)) is type(config)
    if isinstance(config, mor1e.MoR1EConfig):
        assert mor1e.adapter_config(loaded) == config
    assert torch.equal(logits(loaded, ids, scores), trained)
    assert mor1e.count_trainable(loaded) == mor1e.count_trainable(model)


def test_save_refuses_an_unwrapped_model_and_load_checks_shapes(tiny, tmp_path):
    model, _ = fresh(tiny)
    with pytest.raises(ValueError, match="no adapter"):
        mor1e.save_adapter(model, tmp_path / "a")
    assert not (tmp_path / "a").exists()
    mor1e.wrap(model, mor1e.MoR1EConfig(target_modules=["q_proj"]))
    mor1e.save_adapter(model, tmp_path / "a")
    gpt2 = tiny_gpt2()
    with pytest.raises(ValueError, match="q_proj"):
        mor1e.load_adapter(gpt2, tmp_path / "a")
