"""Adapter precision (``adapter_dtype``): fp32 adapters on half-precision bases, as the authors and
peft keep them, and the update computed in fp32 inside autocast too."""

import copy

import pytest
import torch
from torch import nn

import mor1e
from harness.models import load_model
from mor1e.layers import MoLoRALinear, MoR1ELinear

torch.set_num_threads(2)

CONFIGS = {
    "mor1e": lambda **kw: mor1e.MoR1EConfig.authors(r1=2, r2=4, **kw),
    "mor1e-k-not-E": lambda **kw: mor1e.MoR1EConfig.authors(r1=2, r2=4, num_clusters=3, **kw),
    "molora": lambda **kw: mor1e.MoLoRAConfig(num_experts=4, rank=2, **kw),
}


@pytest.fixture(scope="module")
def tiny():
    model, tok = load_model("tiny-random-llama", seed=0)
    ids = tok(["The quick brown fox jumps", "Hello"], return_tensors="pt", padding=True)
    return model, ids


def _scores(config, batch=2):
    if isinstance(config, mor1e.MoR1EConfig):
        return torch.rand(batch, config.num_clusters, generator=torch.Generator().manual_seed(1))
    return None


def _bf16_spacing(t: torch.Tensor) -> torch.Tensor:
    """bf16's resolution at t: |t| = m·2^e with m in [0.5, 1), and bf16 keeps 8 significant bits."""
    _, exponent = torch.frexp(t.float())
    return torch.ldexp(torch.ones_like(t, dtype=torch.float32), exponent - 8)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_bf16_base_trains_fp32_adapters_by_steps_below_bf16_resolution(tiny, name):
    model, ids = tiny
    results = {}
    for dtype in ("fp32", "base"):
        base = copy.deepcopy(model).to(torch.bfloat16)
        config = CONFIGS[name](adapter_dtype=dtype)
        mor1e.wrap(base, config)
        trainable = {n: p for n, p in base.named_parameters() if p.requires_grad}
        want = torch.float32 if dtype == "fp32" else torch.bfloat16
        assert trainable and all(p.dtype == want for p in trainable.values()), {n: p.dtype for n, p in trainable.items()}
        assert all(p.dtype == torch.bfloat16 for n, p in base.named_parameters() if not p.requires_grad)
        with torch.no_grad():  # B = 0 would leave A without a gradient
            for n, p in trainable.items():
                if n.endswith("mor1e_B"):
                    p.normal_(0, 0.05)
        before = {n: p.detach().clone() for n, p in trainable.items()}
        optimizer = torch.optim.AdamW(trainable.values(), lr=1e-4, weight_decay=0.0)
        with mor1e.intuition(base, _scores(config)):
            logits = base(**ids).logits
        assert logits.dtype == torch.bfloat16  # the update went back to the base's dtype
        logits.float().logsumexp(-1).mean().backward()
        optimizer.step()
        results[dtype] = {n: (before[n], trainable[n].detach().clone()) for n in trainable if n.endswith("mor1e_A")}
    # AdamW's first step moves every element by lr = 1e-4 (less where its gradient is 0). Where bf16's
    # spacing is over 4e-4 such a step is below half of it: an fp32 adapter keeps it...
    moved = coarse = total = 0
    for old, new in results["fp32"].values():
        mask = _bf16_spacing(old) > 4e-4
        moved += int(((new != old) & ((new - old).abs() < _bf16_spacing(old) / 2) & mask).sum())
        coarse += int(mask.sum())
        total += old.numel()
    assert coarse > 0.3 * total and moved > 0.9 * coarse
    # ...and a bf16 adapter loses it: the same step leaves those elements where they were
    unchanged = sum(int(((new == old) & (_bf16_spacing(old) > 4e-4)).sum()) for old, new in results["base"].values())
    assert unchanged > 0.9 * coarse


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_update_runs_in_fp32_inside_autocast(name):
    torch.manual_seed(0)
    config = CONFIGS[name]()
    base = nn.Linear(16, 12)
    layer = MoR1ELinear(base, config) if isinstance(config, mor1e.MoR1EConfig) else MoLoRALinear(base, config)
    with torch.no_grad():
        for n, p in layer.named_parameters():
            if "base_layer" not in n:
                p.normal_(0, 0.3)
    x = torch.randn(2, 5, 16)
    scores = _scores(config)
    with mor1e.intuition(layer, scores) if scores is not None else torch.no_grad(), torch.no_grad():
        reference = layer.update(x)  # fp32, no autocast
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got = layer(x)
            base_out = base(x)
        assert got.dtype == base_out.dtype == torch.bfloat16
        assert torch.equal(got, base_out + reference.to(torch.bfloat16))
        # the base-dtype adapter computes its update under autocast, in bf16: not the same numbers
        layer.config = CONFIGS[name](adapter_dtype="base")
        if isinstance(layer, MoR1ELinear):
            for member in layer.group.members:
                member.config = layer.config
            layer.group.config = layer.config
        with torch.autocast("cpu", dtype=torch.bfloat16):
            autocast = layer(x)
        assert not torch.equal(autocast, got)


def test_peft_lora_on_a_bf16_base_is_fp32_as_get_peft_model_makes_it(tiny):
    from harness.methods import method_config

    model, ids = tiny
    base = copy.deepcopy(model).to(torch.bfloat16)
    mor1e.wrap(base, method_config("lora", {"rank": 4}))
    trainable = [p for p in base.parameters() if p.requires_grad]
    assert trainable and all(p.dtype == torch.float32 for p in trainable)
    logits = base(**ids).logits
    assert logits.dtype == torch.bfloat16
    logits.float().mean().backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in trainable)


def test_fp64_and_fp32_bases_keep_their_dtype():
    for dtype in (torch.float32, torch.float64):
        layer = MoR1ELinear(nn.Linear(6, 4).to(dtype), mor1e.MoR1EConfig.authors(r1=2, r2=2))
        assert all(p.dtype == dtype for p in layer.parameters())
    with pytest.raises(ValueError, match="adapter_dtype"):
        mor1e.MoR1EConfig(adapter_dtype="fp16")
    with pytest.raises(ValueError, match="adapter_dtype"):
        mor1e.MoLoRAConfig(adapter_dtype="half")


def test_saved_fp32_adapter_of_a_bf16_base_loads_exactly(tiny, tmp_path):
    model, ids = tiny
    base = copy.deepcopy(model).to(torch.bfloat16)
    config = mor1e.MoR1EConfig.authors(r1=2, r2=4)
    mor1e.wrap(base, config)
    with torch.no_grad():
        for _, p in mor1e.adapter_parameters(base):
            p.normal_(0, 0.05)
    scores = _scores(config)
    with torch.no_grad(), mor1e.intuition(base, scores):
        trained = base(**ids).logits
    mor1e.save_adapter(base, tmp_path)
    loaded = mor1e.load_adapter(copy.deepcopy(model).to(torch.bfloat16), tmp_path)
    assert all(p.dtype == torch.float32 for _, p in mor1e.adapter_parameters(loaded))
    with torch.no_grad(), mor1e.intuition(loaded, scores):
        assert torch.equal(loaded(**ids).logits, trained)
