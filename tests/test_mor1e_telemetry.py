"""Router telemetry: the five statistics on hand-built routings, real tokens only, shared routers
counted once, sum-able counts, and None where a model has no routers."""

import copy
import math

import numpy as np
import pytest
import torch
from peft import LoraConfig
from torch import nn

import mor1e
from harness.models import load_model
from mor1e.layers import MoLoRALinear, MoR1ELinear

torch.set_num_threads(2)
E = 8  # r1 = 2, r2 = 4


def token_only_layer(**cfg):
    """A MoR1E layer routed on tokens alone, so the test needs no scores (d_in 6)."""
    return MoR1ELinear(nn.Linear(6, 5), mor1e.MoR1EConfig(r1=2, r2=4, use_intuition=False, **cfg))


def make_one_hot(layer, expert=0):
    """Every token with positive inputs goes to ``expert`` with probability 1 (up to exp(-300))."""
    with torch.no_grad():
        layer.router.token_router.weight.zero_()
        layer.router.token_router.weight[expert] = 100.0


def summary_of(layer, *inputs, mask=None):
    with mor1e.router_telemetry(layer) as telemetry, mor1e.token_mask(layer, mask):
        for x in inputs:
            layer(x)
    return telemetry.summary()


def test_uniform_routing():
    layer = token_only_layer()  # the authors' zero-initialised router: every token uniform
    out = summary_of(layer, torch.randn(3, 5, 6))
    assert out["router_load_entropy"] == pytest.approx(1.0)
    assert out["router_token_entropy"] == pytest.approx(1.0)
    assert out["router_dead_fraction"] == 0.0
    assert out["router_max_share"] == pytest.approx(1 / E)
    assert out["router_gate_mean"] is None  # no ω without the intuition term


def test_one_hot_routing():
    layer = token_only_layer()
    make_one_hot(layer, expert=3)
    out = summary_of(layer, torch.rand(3, 5, 6) + 0.5)
    assert out["router_load_entropy"] == pytest.approx(0.0, abs=1e-9)
    assert out["router_token_entropy"] == pytest.approx(0.0, abs=1e-9)
    assert out["router_dead_fraction"] == pytest.approx((E - 1) / E)
    assert out["router_max_share"] == pytest.approx(1.0)


def test_statistics_match_a_direct_computation():
    torch.manual_seed(0)
    layer = token_only_layer(router_init="random", router_temperature=0.5)
    with torch.no_grad():
        layer.router.token_router.weight.mul_(20)  # spread the load so some experts are nearly dead
    x = torch.randn(4, 7, 6)
    out = summary_of(layer, x)
    logits = (x @ layer.router.token_router.weight.detach().T / 0.5).reshape(-1, E).double().numpy()
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    load = p.mean(0)

    def entropy(q):
        q = q[q > 0]
        return float(-(q * np.log(q)).sum())

    assert out["router_load_entropy"] == pytest.approx(entropy(load) / math.log(E), abs=1e-5)
    assert out["router_token_entropy"] == pytest.approx(np.mean([entropy(r) for r in p]) / math.log(E), abs=1e-5)
    assert out["router_max_share"] == pytest.approx(load.max(), abs=1e-5)
    assert out["router_dead_fraction"] == pytest.approx(np.mean(load < 1 / (10 * E)))
    assert 0 < out["router_dead_fraction"] < 1


def test_only_real_tokens_count():
    layer = token_only_layer()
    make_one_hot(layer, expert=0)
    x = torch.rand(2, 5, 6) + 0.5
    x[0, :3] = -x[0, :3]  # left padding: these positions would route away from expert 0
    mask = torch.tensor([[0, 0, 0, 1, 1], [1, 1, 1, 1, 1]])
    masked = summary_of(layer, x, mask=mask)
    assert masked["router_max_share"] == pytest.approx(1.0)
    assert masked["router_dead_fraction"] == pytest.approx((E - 1) / E)
    unmasked = summary_of(layer, x)
    assert unmasked["router_max_share"] < 0.9 and unmasked["router_dead_fraction"] == 0.0


def test_statistics_are_averaged_over_routers_and_the_gate_is_read():
    """One uniform and one one-hot router: load entropy 1/2; ω = sigmoid(100·w) per router, averaged."""
    torch.manual_seed(0)
    config = mor1e.MoR1EConfig(r1=2, r2=4, num_clusters=3)
    model = nn.Sequential(MoR1ELinear(nn.Linear(6, 6), config), MoR1ELinear(nn.Linear(6, 6), config))
    make_one_hot(model[1], expert=5)
    with torch.no_grad():
        model[0].router.gate_logit.fill_(0.01)  # ω = sigmoid(1)
        model[1].router.gate_logit.fill_(-0.02)  # ω = sigmoid(-2)
    x = torch.rand(2, 4, 6) + 0.5
    with mor1e.intuition(model, torch.rand(2, 3)), mor1e.router_telemetry(model) as telemetry:
        model[0].update(x)
        model[1].update(x)
    out = telemetry.summary()
    assert out["router_load_entropy"] == pytest.approx(0.5, abs=1e-6)
    assert out["router_max_share"] == pytest.approx((1 / E + 1) / 2, abs=1e-6)
    sigmoid = lambda v: 1 / (1 + math.exp(-v))  # noqa: E731
    assert out["router_gate_mean"] == pytest.approx((sigmoid(1) + sigmoid(-2)) / 2, abs=1e-6)


def test_counts_are_sumable_across_parts():
    """Two ranks' counts, added, summarise like one collector that saw every batch."""
    torch.manual_seed(0)
    layer = token_only_layer(router_init="random")
    a, b = torch.randn(2, 5, 6), torch.randn(3, 5, 6)
    with mor1e.router_telemetry(layer) as whole:
        layer(a)
        layer(b)
    with mor1e.router_telemetry(layer) as first:
        layer(a)
    with mor1e.router_telemetry(layer) as second:
        layer(b)
    merged = first.counts() + second.counts()
    assert merged.tokens.tolist() == [25.0]
    expected, got = whole.summary(), merged.summary()
    assert expected["router_gate_mean"] is None and got["router_gate_mean"] is None
    for key in mor1e.TELEMETRY_KEYS[1:]:
        assert got[key] == pytest.approx(expected[key], abs=1e-6), key  # float32 sums, other order


def test_shared_routers_are_counted_once_per_computation():
    model, tok = load_model("tiny-random-llama", seed=0)
    mor1e.wrap(model, mor1e.MoR1EConfig(num_clusters=3, share_routers=True))
    ids = tok(["The quick brown fox jumps", "Hello"], return_tensors="pt", padding=True)
    with torch.no_grad(), mor1e.intuition(model, torch.rand(2, 3)), \
            mor1e.token_mask(model, ids["attention_mask"]), mor1e.router_telemetry(model) as telemetry:
        logits = model(**ids).logits
    counts = telemetry.counts()
    assert len(telemetry.routers) == 2 * 4  # per layer: q/k/v, o, gate/up, down
    real = float(ids["attention_mask"].sum())
    assert counts.tokens.tolist() == [real] * 8  # not 3x for q/k/v
    assert counts.gate_calls.tolist() == [1.0] * 8
    out = telemetry.summary()
    assert out["router_gate_mean"] == 0.5 and out["router_load_entropy"] == pytest.approx(1.0)
    # the hooks change nothing and leave nothing behind
    with torch.no_grad(), mor1e.intuition(model, torch.rand(2, 3)):
        again = model(**ids).logits
    assert torch.equal(logits, again)
    assert all(not r._forward_hooks for r in telemetry.routers)


def test_molora_has_no_gate_and_models_without_routers_give_none():
    layer = MoLoRALinear(nn.Linear(6, 5), mor1e.MoLoRAConfig(num_experts=4, top_k=2))
    with mor1e.router_telemetry(layer) as telemetry:
        layer(torch.randn(3, 6))
    out = telemetry.summary()
    assert out["router_gate_mean"] is None
    assert all(0.0 <= out[k] <= 1.0 for k in mor1e.TELEMETRY_KEYS if k != "router_gate_mean")
    assert out["router_token_entropy"] <= math.log(2) / math.log(4) + 1e-6  # top-2 of 4
    model, _ = load_model("tiny-random-llama", seed=0)
    mor1e.wrap(model, LoraConfig(r=2))
    with mor1e.router_telemetry(model) as telemetry:
        model(input_ids=torch.tensor([[1, 2, 3]]))
    assert telemetry.summary() == dict.fromkeys(mor1e.TELEMETRY_KEYS)
    assert telemetry.counts().load.shape[0] == 0


def test_intuition_only_ablation_has_no_token_routing():
    layer = MoR1ELinear(nn.Linear(6, 5), mor1e.MoR1EConfig(r1=2, r2=4, num_clusters=3, use_token_router=False))
    with mor1e.intuition(layer, torch.rand(1, 3)), mor1e.router_telemetry(layer) as telemetry:
        layer(torch.randn(1, 4, 6))
    assert telemetry.summary() == dict.fromkeys(mor1e.TELEMETRY_KEYS)


def test_collecting_under_inference_mode_then_no_grad():
    layer = token_only_layer()
    with mor1e.router_telemetry(layer) as telemetry:
        with torch.inference_mode():
            layer(torch.randn(2, 3, 6))
        with torch.no_grad():
            layer(torch.randn(2, 3, 6))
    assert telemetry.counts().tokens.tolist() == [12.0]


@pytest.mark.parametrize("wrap_config", [
    mor1e.MoR1EConfig(num_clusters=3),
    mor1e.MoLoRAConfig(num_experts=4, rank=2),
], ids=["mor1e", "molora"])
def test_training_model_still_trains_under_telemetry(wrap_config):
    model, tok = load_model("tiny-random-llama", seed=0)
    mor1e.wrap(model, wrap_config)
    ids = tok(["a b c d", "e"], return_tensors="pt", padding=True)
    scores = torch.rand(2, 3) if isinstance(wrap_config, mor1e.MoR1EConfig) else None
    reference = copy.deepcopy(model)
    with mor1e.intuition(reference, scores):
        reference(**ids, labels=ids["input_ids"]).loss.backward()
    with mor1e.intuition(model, scores), mor1e.router_telemetry(model) as telemetry:
        model(**ids, labels=ids["input_ids"]).loss.backward()
    # the same gradients as without telemetry, and counts from the training forward
    for (name, p), (_, q) in zip(mor1e.adapter_parameters(model), mor1e.adapter_parameters(reference)):
        assert torch.equal(p.grad, q.grad), name
    tokens = telemetry.counts().tokens
    assert tokens.shape == (2 * 7,) and (tokens == ids["input_ids"].numel()).all()  # no mask set: every position
