"""harness.methods: the method names, their hparams, and what each makes trainable."""

import pytest
from peft import LoraConfig

import mor1e
from harness.methods import METHODS, apply_method, method_config, num_experts, uses_intuition
from harness.models import load_model


def test_method_names_are_the_contract():
    assert set(METHODS) >= {"mor1e", "lora", "dora", "molora", "peft", "dense", "zeroshot"}


def test_configs_from_hparams():
    cfg = method_config("mor1e", {"r1": 2, "r2": 3, "num_clusters": 5, "router_temperature": 0.5, "top_k": 2})
    assert isinstance(cfg, mor1e.MoR1EConfig) and (cfg.r1, cfg.r2, cfg.num_clusters, cfg.top_k) == (2, 3, 5, 2)
    cfg = method_config("molora", {"num_experts": 6, "rank": 2, "router_temperature": 2.0, "top_k": 1})
    assert isinstance(cfg, mor1e.MoLoRAConfig) and cfg.num_experts == 6
    cfg = method_config("lora", {"rank": 16, "alpha": 32, "dropout": 0.1})
    assert isinstance(cfg, LoraConfig) and (cfg.r, cfg.lora_alpha, cfg.lora_dropout) == (16, 32, 0.1)
    assert method_config("dense") is None and method_config("zeroshot", {}) is None
    assert num_experts("mor1e", {"r1": 2, "r2": 3}) == 6
    assert num_experts("molora", {"num_experts": 5}) == 5
    assert num_experts("lora") is None


@pytest.mark.parametrize(
    "method, hparams, match",
    [
        ("adalora", {}, "unknown method 'adalora'"),
        ("mor1e", {"rank": 4}, "rank"),
        ("lora", {"r1": 4}, "r1"),
        ("molora", {"r2": 4}, "r2"),
        ("dense", {"rank": 4}, "rank"),
        ("zeroshot", {"lr": 1}, "lr"),
        ("mor1e", {"r1": 4, "r2": 8, "num_experts": 16}, "num_experts"),
        ("mor1e", {"router_temperature": 0}, "router_temperature"),
        ("mor1e", {"top_k": 0}, "top_k"),
        ("mor1e", {"num_clusters": 0}, "num_clusters"),
        ("molora", {"num_experts": 4, "top_k": 9}, "top_k"),
        ("lora", {"rank": 0}, "rank"),
        ("lora", {"dropout": 1.5}, "dropout"),
    ],
)
def test_bad_method_or_hparams_raise(method, hparams, match):
    with pytest.raises(ValueError, match=match):
        method_config(method, hparams)


def test_unknown_preset_is_refused_before_any_work():
    with pytest.raises(ValueError, match="unknown model 'tiny-random-lama'"):
        load_model("tiny-random-lama")


def test_unknown_target_module_through_apply_method():
    model, _ = load_model("tiny-random-llama")
    with pytest.raises(ValueError, match="nope_proj"):
        apply_method(model, "mor1e", {"target_modules": ["nope_proj"]})
    with pytest.raises(ValueError, match="nope_proj"):
        apply_method(model, "lora", {"target_modules": ["nope_proj"]})


HPARAMS = {"mor1e": {"num_clusters": 4}, "peft": {"peft_type": "IA3"}}


@pytest.mark.parametrize("method", METHODS)
def test_apply_method_sets_what_trains(method):
    model, _ = load_model("tiny-random-llama")
    total = sum(p.numel() for p in model.parameters())
    apply_method(model, method, HPARAMS.get(method, {}))
    n = mor1e.count_trainable(model)
    if method == "dense":
        assert n == total
    elif method == "zeroshot":
        assert n == 0
    else:
        assert 0 < n < total * 0.1
        # peft's methods mark their parameters by their own prefix (IA3: ia3_), ours by mor1e's
        is_adapter = (lambda name: "ia3_" in name) if method == "peft" else mor1e.is_adapter_param
        assert all(is_adapter(name) == p.requires_grad for name, p in model.named_parameters())
    if method == "dora":  # LoRA with DoRA's magnitude vectors, which train too
        assert any("lora_magnitude_vector" in name and p.requires_grad for name, p in model.named_parameters())


def test_uses_intuition():
    assert uses_intuition("mor1e", {})
    assert not uses_intuition("mor1e", {"use_intuition": False})
    for m in ("lora", "molora", "dense", "zeroshot"):
        assert not uses_intuition(m, {})
    with pytest.raises(ValueError, match="unknown method"):
        uses_intuition("nope", {})
