"""The authors' MoR1E layer (T-REX, arXiv 2404.08985): reference maths, initial state, required
intuition, which parameters train, load balancing over real tokens, and adapter format upgrades."""

import copy
import dataclasses
import json
import math

import pytest
import torch
from torch import nn

import mor1e
from harness.methods import method_config
from harness.models import load_model
from mor1e.layers import MoLoRALinear, MoR1ELinear, load_balancing_loss

torch.set_num_threads(2)


@pytest.fixture(scope="module")
def tiny():
    model, tok = load_model("tiny-random-llama", seed=0)
    ids = tok(["The quick brown fox jumps", "Hello"], return_tensors="pt", padding=True)
    return model, ids


def fresh(tiny):
    model, ids = tiny
    return copy.deepcopy(model), ids


# ---------------------------------------------------------------- constructors


def test_plain_constructor_is_the_authors_layer():
    authors = mor1e.MoR1EConfig.authors()
    assert mor1e.MoR1EConfig() == authors
    assert (authors.token_coef, authors.intuition_coef, authors.gate_sharpness) == (32.0, 4.0, 100.0)
    assert (authors.intuition_map, authors.router_init, authors.output_gate) == ("linear", "zeros", "sigmoid")
    assert authors.share_routers is False and authors.router_temperature == 1.0 and authors.top_k is None
    normalised = mor1e.MoR1EConfig.normalised()
    assert (normalised.token_coef, normalised.intuition_coef, normalised.gate_sharpness) == (1.0, 1.0, 1.0)
    assert (normalised.intuition_map, normalised.router_init, normalised.output_gate) == ("softmax", "random", "none")
    # overrides go on top, and any mix is expressible
    mixed = mor1e.MoR1EConfig.normalised(gate_sharpness=100.0, r1=2, num_clusters=5)
    assert (mixed.gate_sharpness, mixed.r1, mixed.num_clusters, mixed.token_coef) == (100.0, 2, 5, 1.0)


def test_harness_parameterization_hparam_selects_the_constructor():
    assert method_config("mor1e", {}) == mor1e.MoR1EConfig.authors()
    assert method_config("mor1e", {"parameterization": "authors", "r1": 2}) == mor1e.MoR1EConfig.authors(r1=2)
    got = method_config("mor1e", {"parameterization": "normalised", "num_clusters": 5, "token_coef": 2.0})
    assert got == mor1e.MoR1EConfig.normalised(num_clusters=5, token_coef=2.0)
    with pytest.raises(ValueError, match="parameterization"):
        method_config("mor1e", {"parameterization": "published"})


def test_authors_cluster_count_is_the_expert_count_with_the_identity_map():
    # trex_train.sh: a 32-cluster centroid file and rank allocation 4 8, no router mapping.
    for config in (mor1e.MoR1EConfig.authors(), method_config("mor1e", {})):
        assert (config.r1, config.r2, config.num_clusters) == (4, 8, 32) and config.intuition_is_identity
        assert isinstance(mor1e.MoR1ERouter(6, config).prior, nn.Identity)
    # k follows E when only the grid changes; any other k is asked for by name and maps k -> E
    assert mor1e.MoR1EConfig.authors(r1=2, r2=4).num_clusters == 8
    assert method_config("mor1e", {"r1": 8, "r2": 8}).num_clusters == 64
    other = mor1e.MoR1EConfig.authors(num_clusters=8)
    assert not other.intuition_is_identity
    prior = mor1e.MoR1ERouter(6, other).prior
    assert isinstance(prior, nn.Linear) and tuple(prior.weight.shape) == (32, 8) and prior.bias is None


# ---------------------------------------------------------------- reference maths


def _sigmoid(v):
    return 1.0 / (1.0 + math.exp(-v))


def reference_update(x, s, A, B, W_r, M, w_omega, w_o, r1, r2):
    """The authors' layer for one token x given its example's scores s, from the equations alone.

    G = 32·ω·softmax(W_r x) + 4·(1−ω)·M(s), ω = sigmoid(100·w_ω),
    out = sigmoid(100·w_o) Σ_ij G_ij B[:, j] (A[i]·x); M None is the identity (k == E).  Expert e = i·r2 + j.  Returns (G as r1 lists of r2, out).
    """
    E = r1 * r2
    logits = [sum(W_r[e][c] * x[c] for c in range(len(x))) for e in range(E)]
    top = max(logits)
    exps = [math.exp(v - top) for v in logits]
    soft = [v / sum(exps) for v in exps]
    mapped = list(s) if M is None else [sum(M[e][c] * s[c] for c in range(len(s))) for e in range(E)]
    omega = _sigmoid(100 * w_omega)
    G = [[32 * omega * soft[i * r2 + j] + 4 * (1 - omega) * mapped[i * r2 + j] for j in range(r2)] for i in range(r1)]
    gate = _sigmoid(100 * w_o)
    out = [0.0] * len(B)
    for i in range(r1):
        a_dot_x = sum(A[i][c] * x[c] for c in range(len(x)))
        for j in range(r2):  # one rank-1 expert (i, j) at a time
            for o in range(len(B)):
                out[o] += gate * G[i][j] * B[o][j] * a_dot_x
    return G, out


@pytest.mark.parametrize("num_clusters", [6, 4], ids=["k-equals-E", "k-not-E"])
def test_update_and_routing_matrix_match_an_independent_reference(num_clusters):
    r1, r2, d_in, d_out = 2, 3, 5, 4
    torch.manual_seed(0)
    layer = MoR1ELinear(nn.Linear(d_in, d_out), mor1e.MoR1EConfig.authors(r1=r1, r2=r2, num_clusters=num_clusters))
    layer = layer.double()
    router = layer.router
    assert isinstance(router.prior, nn.Identity) == (num_clusters == r1 * r2)
    with torch.no_grad():  # random values everywhere, gates small enough that 100·w is O(1)
        for p in (layer.mor1e_A, layer.mor1e_B, router.token_router.weight):
            p.normal_()
        if isinstance(router.prior, nn.Linear):
            router.prior.weight.normal_()
        router.gate_logit.fill_(0.013)
        layer.mor1e_output_gate.fill_(-0.007)
    x = torch.randn(2, 3, d_in, dtype=torch.float64)
    s = torch.rand(2, num_clusters, dtype=torch.float64)
    A, B = layer.mor1e_A.tolist(), layer.mor1e_B.tolist()
    W_r = router.token_router.weight.tolist()
    M = router.prior.weight.tolist() if isinstance(router.prior, nn.Linear) else None
    with mor1e.intuition(layer, s):
        got_update, got_G = layer.update(x), layer.routing_matrix(x)
    for b in range(2):
        for t in range(3):
            G, out = reference_update(x[b, t].tolist(), s[b].tolist(), A, B, W_r, M, 0.013, -0.007, r1, r2)
            assert got_G[b, t].flatten().tolist() == pytest.approx(sum(G, []), abs=1e-5)
            assert got_update[b, t].tolist() == pytest.approx(out, abs=1e-5)


def test_initial_state_router_zero_gates_half_B_zero(tiny):
    model, _ = fresh(tiny)
    mor1e.wrap(model, mor1e.MoR1EConfig.authors(r1=2, r2=2, num_clusters=4))
    layers = [m for m in model.modules() if isinstance(m, MoR1ELinear)]
    assert len(layers) == 2 * 7 and len({id(m.router) for m in layers}) == len(layers)  # a router each
    for layer in layers:
        assert torch.count_nonzero(layer.router.token_router.weight) == 0
        assert torch.count_nonzero(layer.mor1e_B) == 0
        omega = torch.sigmoid(layer.router.config.gate_sharpness * layer.router.gate_logit)
        assert omega.item() == 0.5 and layer.output_scale().item() == 0.5
        assert isinstance(layer.router.prior, nn.Identity)
    # so G starts as 32·0.5·(1/E) + 4·0.5·s for every token
    layer = layers[0]
    s = torch.rand(2, 4)
    with mor1e.intuition(model, s):
        G = layer.routing_matrix(torch.randn(2, 3, layer.in_features))
    expected = (16 / 4 + 2 * s).reshape(2, 1, 2, 2).expand(2, 3, 2, 2)
    assert torch.allclose(G, expected, atol=1e-6)


# ---------------------------------------------------------------- intuition is required


def test_missing_scores_raise_everywhere_a_router_runs(tiny):
    layer = MoR1ELinear(nn.Linear(6, 5), mor1e.MoR1EConfig(r1=2, r2=2, num_clusters=3))
    x = torch.randn(2, 4, 6)
    for call in (layer, layer.update, layer.routing_matrix):
        with pytest.raises(mor1e.MissingIntuitionError, match=r"with mor1e\.intuition\(model, scores\)"):
            call(x)
    with mor1e.intuition(layer, torch.rand(2, 3)):
        layer(x)
    with pytest.raises(mor1e.MissingIntuitionError):  # cleared again on exit
        layer(x)
    model, ids = fresh(tiny)
    mor1e.wrap(model, mor1e.MoR1EConfig(num_clusters=3))
    assert mor1e.needs_intuition(model)
    model.train()
    with pytest.raises(mor1e.MissingIntuitionError):
        model(**ids, labels=ids["input_ids"])
    # only the ablation runs without scores
    ablation, _ = fresh(tiny)
    mor1e.wrap(ablation, mor1e.MoR1EConfig(use_intuition=False))
    assert not mor1e.needs_intuition(ablation)
    ablation(**ids)


# ---------------------------------------------------------------- what trains


@pytest.mark.parametrize("num_clusters", [3, 32], ids=["M-linear", "M-identity"])
def test_which_parameters_train(tiny, num_clusters):
    model, ids = fresh(tiny)
    mor1e.wrap(model, mor1e.MoR1EConfig.authors(num_clusters=num_clusters))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {n for n, _ in mor1e.adapter_parameters(model)}
    assert all("mor1e_" in n for n in trainable)
    kinds = {n.rsplit(".", 2)[-2] + "." + n.rsplit(".", 1)[-1] if ".prior." in n or ".token_router." in n
             else n.rsplit(".", 1)[-1] for n in trainable}
    expected = {"mor1e_A", "mor1e_B", "mor1e_output_gate", "token_router.weight", "gate_logit"}
    if num_clusters != 32:
        expected.add("prior.weight")  # M is a bias-free Linear k -> E and trains (the authors' never did)
    assert kinds == expected
    # a step moves M: give B and the router values, then every adapter parameter gets a gradient
    with torch.no_grad():
        for _, p in mor1e.adapter_parameters(model):
            p.normal_(0, 0.02)
    model.train()
    with mor1e.intuition(model, torch.rand(2, num_clusters)):
        model(**ids, labels=ids["input_ids"]).loss.backward()
    for name, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and p.grad.abs().sum() > 0, name
        else:
            assert p.grad is None, name


# ---------------------------------------------------------------- load balancing over real tokens


def test_load_balancing_loss_ignores_padding():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 8)
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    real_only = load_balancing_loss(logits[mask.bool()], 1.0)
    masked = load_balancing_loss(logits, 1.0, mask)
    assert masked.item() == pytest.approx(real_only.item(), rel=1e-6)
    garbage = logits.clone()
    garbage[0, :2] = 50 * torch.randn(2, 8)  # padded positions may hold anything
    assert load_balancing_loss(garbage, 1.0, mask).item() == pytest.approx(masked.item(), rel=1e-6)
    assert load_balancing_loss(garbage, 1.0).item() != pytest.approx(masked.item(), rel=1e-3)
    with pytest.raises(ValueError, match="token mask has shape"):
        load_balancing_loss(logits, 1.0, mask[:, :4])


@pytest.mark.parametrize("config", [
    mor1e.MoR1EConfig(use_intuition=False, router_init="random", aux_loss_coef=0.3),
    mor1e.MoLoRAConfig(num_experts=4, rank=2, aux_loss_coef=0.3),
], ids=["mor1e", "molora"])
def test_aux_loss_is_the_mean_per_router_loss_over_real_tokens(tiny, config):
    model, _ = fresh(tiny)
    mor1e.wrap(model, config)
    ids = torch.tensor([[0, 0, 11, 12, 13], [21, 22, 23, 24, 25]])
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    positions = (mask.cumsum(-1) - 1).clamp(min=0)

    def loss_with(pad_id):
        batch = ids.clone()
        batch[0, :2] = pad_id
        with mor1e.token_mask(model, mask):
            model(input_ids=batch, attention_mask=mask, position_ids=positions)
        routers = [m for m in model.modules() if getattr(m, "last_aux_loss", None) is not None]
        per_router = torch.stack([m.last_aux_loss for m in routers])
        return mor1e.aux_loss(model), per_router

    total, per_router = loss_with(0)
    assert per_router.shape[0] == 2 * 7  # one loss per router, never concatenated across layers
    assert total.item() == pytest.approx(0.3 * per_router.mean().item(), rel=1e-6)
    other, _ = loss_with(7)  # different tokens in the padded positions: the same loss
    assert other.item() == pytest.approx(total.item(), rel=1e-5)
    # the mask was cleared on exit
    assert all(getattr(m, "token_mask", None) is None for m in model.modules())


def test_token_mask_is_checked():
    layer = MoLoRALinear(nn.Linear(6, 4), mor1e.MoLoRAConfig(aux_loss_coef=0.1))
    with pytest.raises(ValueError, match="token mask must be a"):
        mor1e.set_token_mask(layer, torch.ones(3))
    with mor1e.token_mask(layer, torch.ones(2, 5)):
        with pytest.raises(ValueError, match="token mask has shape"):
            layer(torch.randn(2, 4, 6))


# ---------------------------------------------------------------- saved adapters


def _as_format_1(directory, config_fields):
    path = directory / "adapter_config.json"
    record = json.loads(path.read_text())
    record["format_version"] = 1
    record["config"] = config_fields
    path.write_text(json.dumps(record))


def test_format_1_adapter_loads_as_the_normalised_layer_it_was(tiny, tmp_path):
    model, ids = fresh(tiny)
    base = copy.deepcopy(model)
    config = mor1e.MoR1EConfig.normalised(num_clusters=3, output_gate="scalar", share_routers=True)
    mor1e.wrap(model, config)
    with torch.no_grad():
        for _, p in mor1e.adapter_parameters(model):
            p.normal_(0, 0.05)
    scores = torch.rand(2, 3)
    with torch.no_grad(), mor1e.intuition(model, scores):
        trained = model(**ids).logits
    mor1e.save_adapter(model, tmp_path)
    assert json.loads((tmp_path / "adapter_config.json").read_text())["format_version"] == mor1e.FORMAT_VERSION == 3
    # what format 1 wrote for this layer: its own fields only, output_gate a bool
    old = {k: v for k, v in config.to_dict().items()
           if k not in ("gate_sharpness", "intuition_map", "router_init", "intuition_score", "adapter_dtype")}
    old["output_gate"] = True
    _as_format_1(tmp_path, old)
    assert mor1e.read_adapter_config(tmp_path) == dataclasses.replace(config, adapter_dtype="base")
    loaded = mor1e.load_adapter(base, tmp_path)
    with torch.no_grad(), mor1e.intuition(loaded, scores):
        assert torch.equal(loaded(**ids).logits, trained)
    _as_format_1(tmp_path, {**old, "output_gate": False})
    assert mor1e.read_adapter_config(tmp_path).output_gate == "none"


def test_format_2_adapter_loads_with_the_cosine_scores_it_was_trained_on(tiny, tmp_path):
    model, _ = fresh(tiny)
    config = mor1e.MoR1EConfig.authors(num_clusters=8, target_modules=["q_proj"])
    mor1e.wrap(model, config)
    mor1e.save_adapter(model, tmp_path)
    path = tmp_path / "adapter_config.json"
    record = json.loads(path.read_text())
    assert (record["config"]["intuition_score"], record["config"]["adapter_dtype"]) == ("dot", "fp32")
    for field in ("intuition_score", "adapter_dtype"):  # what format 2 wrote
        del record["config"][field]
    path.write_text(json.dumps({**record, "format_version": 2}))
    assert mor1e.read_adapter_config(tmp_path) == mor1e.MoR1EConfig.authors(
        num_clusters=8, target_modules=["q_proj"], intuition_score="cosine", adapter_dtype="base")


def test_unknown_format_version_is_refused(tiny, tmp_path):
    model, _ = fresh(tiny)
    mor1e.wrap(model, mor1e.MoR1EConfig(target_modules=["q_proj"]))
    mor1e.save_adapter(model, tmp_path)
    record = json.loads((tmp_path / "adapter_config.json").read_text())
    newer = mor1e.FORMAT_VERSION + 1
    (tmp_path / "adapter_config.json").write_text(json.dumps({**record, "format_version": newer}))
    with pytest.raises(ValueError, match=f"format_version {newer}"):
        mor1e.read_adapter_config(tmp_path)


# ---------------------------------------------------------------- the harness method `mor1e`


@pytest.mark.parametrize("profile", ["default", "paper"])
def test_both_shipped_profiles_run_the_authors_layer(profile):
    from harness.searchspace import expand_params, load_profile

    space = load_profile(profile).spaces["mor1e"]
    assert space.params["parameterization"].role == "fixed"
    picks = {name: p.choices[0] if p.type == "categorical" else p.low for name, p in space.searched().items()}
    _, hparams = expand_params("mor1e", picks, space)
    config = method_config("mor1e", hparams)
    assert config == mor1e.MoR1EConfig.authors(**{k: getattr(config, k) for k in (
        "r1", "r2", "num_clusters", "router_temperature", "top_k")})


def test_a_profile_can_search_the_parameterisation_and_bad_values_are_named():
    from profiles import default_profile_with

    from harness.searchspace import ConfigError, expand_params, parse_profile

    def parse(override):
        data = default_profile_with(overrides__mor1e=override)
        return parse_profile(data, "default.yaml", count_train_examples=lambda raw: 64 * len(raw["datasets"]))

    space = parse({"parameterization": {"role": "scientific", "type": "categorical",
                                        "choices": ["authors", "normalised"]}}).spaces["mor1e"]
    _, hparams = expand_params("mor1e", {"learning_rate": 1e-3, "expert_shape": "2x4", "num_clusters": 4,
                                         "router_temperature": 1.0, "parameterization": "normalised"}, space)
    assert method_config("mor1e", hparams) == mor1e.MoR1EConfig.normalised(r1=2, r2=4, num_clusters=4)
    for override, message in [
        ({"parameterization": {"role": "fixed", "value": "published"}}, "parameterization: must be one of"),
        ({"output_gate": {"role": "fixed", "value": True}}, "output_gate: must be one of"),
        ({"intuition_map": {"role": "fixed", "value": "cubic"}}, "intuition_map: must be one of"),
        ({"gate_sharpness": {"role": "fixed", "value": 0}}, "gate_sharpness must be > 0"),
    ]:
        with pytest.raises(ConfigError, match=message):
            parse(override)
