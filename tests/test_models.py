import pytest
import torch

from harness.models import PRESETS, check_model_name, load_model


def test_tiny_preset_is_seeded_and_small():
    a, tok = load_model("tiny-random-llama", seed=3)
    b, _ = load_model("tiny-random-llama", seed=3)
    c, _ = load_model("tiny-random-llama", seed=4)
    ids = tok("hello world", return_tensors="pt").input_ids
    with torch.no_grad():
        la, lb, lc = (m(ids).logits for m in (a, b, c))
    assert torch.equal(la, lb)
    assert not torch.equal(la, lc)
    assert sum(p.numel() for p in a.parameters()) < 5_000_000
    assert tok.pad_token is not None


def test_smollm2_preset_loads_the_packaged_model():
    model, tok = load_model("smollm2-135m")
    assert model.config.model_type == "llama"
    assert 130e6 < sum(p.numel() for p in model.parameters()) < 140e6
    ids = tok("The capital of France is", return_tensors="pt").input_ids
    with torch.no_grad():
        nxt = model(ids).logits[0, -1].argmax().item()
    assert tok.decode([nxt]).strip() == "Paris"


@pytest.mark.parametrize("name", ["smollm", "nope/", "a/b/c", ""])
def test_unknown_model_names_are_rejected(name):
    with pytest.raises(ValueError, match="unknown model"):
        check_model_name(name)


def test_presets_and_hub_ids_pass_the_name_check():
    for name in PRESETS + ("HuggingFaceTB/SmolLM2-135M",):
        check_model_name(name)
