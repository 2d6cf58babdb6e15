"""MoR1E registered with peft: PeftModel.from_pretrained loads a MoR1E adapter, save_pretrained writes one,
the earlier format keeps loading, and a loaded model computes its intuition from its input."""

import copy
import json

import numpy as np
import pytest
import torch
from peft import PeftModel, PeftType

import mor1e
from harness.models import load_model
from mor1e.intuition import cluster_scores, embed_texts
from mor1e.peft_method import MoR1EPeftConfig, set_tokenizer


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A wrapped tiny model with non-zero adapter weights, saved by mor1e.save_adapter with its centroids."""
    base, tokenizer = load_model("tiny-random-llama")
    model = mor1e.wrap(copy.deepcopy(base), mor1e.MoR1EConfig.authors(num_clusters=4))
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for _, p in mor1e.adapter_parameters(model):
            p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
    centroids = embed_texts(["a cat sat", "stock prices fell", "the river froze", "a quick proof"])
    directory = tmp_path_factory.mktemp("adapter")
    mor1e.save_adapter(model, directory, centroids=centroids)
    ids = torch.randint(5, 500, (2, 9), generator=gen)
    scores = torch.rand(2, 4, generator=gen)
    with mor1e.intuition(model, scores):
        reference = model(input_ids=ids).logits
    return base, tokenizer, directory, ids, scores, reference, centroids


def test_registered_with_peft():
    from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING, PEFT_TYPE_TO_PREFIX_MAPPING

    assert PeftType("MOR1E") is PeftType.MOR1E
    assert PEFT_TYPE_TO_CONFIG_MAPPING[PeftType.MOR1E] is MoR1EPeftConfig
    assert PEFT_TYPE_TO_PREFIX_MAPPING[PeftType.MOR1E] == mor1e.ADAPTER_MARKER


def test_from_pretrained_and_save_pretrained_round_trip(trained, tmp_path):
    base, _, directory, ids, scores, reference, _ = trained
    record = json.loads((directory / "adapter_config.json").read_text())
    assert record["peft_type"] == "MOR1E" and record["method"] == "mor1e" and len(record["centroids"]) == 4
    model = PeftModel.from_pretrained(copy.deepcopy(base), str(directory))
    assert isinstance(model.base_model, mor1e.peft_method.MoR1EPeftModel)
    assert not any(p.requires_grad for p in model.parameters())  # loaded for inference
    with mor1e.intuition(model, scores):
        assert torch.equal(model(input_ids=ids).logits, reference)
    model.save_pretrained(str(tmp_path / "again"))
    # what peft wrote loads with this library's loader and with peft again
    again = mor1e.load_adapter(copy.deepcopy(base), tmp_path / "again")
    with mor1e.intuition(again, scores):
        assert torch.equal(again(input_ids=ids).logits, reference)
    peft_again = PeftModel.from_pretrained(copy.deepcopy(base), str(tmp_path / "again"))
    with mor1e.intuition(peft_again, scores):
        assert torch.equal(peft_again(input_ids=ids).logits, reference)


def test_earlier_format_keeps_loading(trained, tmp_path):
    base, _, directory, ids, scores, reference, _ = trained
    old = tmp_path / "old"
    old.mkdir()
    record = json.loads((directory / "adapter_config.json").read_text())
    legacy = {k: record[k] for k in ("method", "config", "format_version")}  # what save_adapter wrote before
    (old / "adapter_config.json").write_text(json.dumps(legacy))
    (old / "adapter_model.safetensors").write_bytes((directory / "adapter_model.safetensors").read_bytes())
    loaded = mor1e.load_adapter(copy.deepcopy(base), old)
    with mor1e.intuition(loaded, scores):
        assert torch.equal(loaded(input_ids=ids).logits, reference)
    model = PeftModel.from_pretrained(copy.deepcopy(base), str(old), config=MoR1EPeftConfig.from_adapter_dir(old))
    with mor1e.intuition(model, scores):
        assert torch.equal(model(input_ids=ids).logits, reference)


def test_intuition_computed_from_the_decoded_input(trained):
    base, tokenizer, directory, *_ , centroids = trained
    model = PeftModel.from_pretrained(copy.deepcopy(base), str(directory))
    batch = tokenizer(["Is the sky blue? yes or no", "Pick the cause: the glass broke."], return_tensors="pt",
                      padding=True)
    with pytest.raises(ValueError, match="tokenizer"):
        model(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
    set_tokenizer(model, tokenizer)
    # the text embedded is each row's real tokens decoded, special tokens skipped
    texts = [tokenizer.decode(row[mask.bool()].tolist(), skip_special_tokens=True)
             for row, mask in zip(batch.input_ids, batch.attention_mask)]
    expected = torch.from_numpy(cluster_scores(embed_texts(texts), np.asarray(centroids)))
    assert torch.allclose(model.base_model.intuition_from_ids(batch.input_ids, batch.attention_mask), expected)
    computed = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    with mor1e.intuition(model, expected):
        given = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    assert torch.allclose(computed, given)
    # scores given explicitly win over computed ones
    other = torch.rand(2, 4)
    with mor1e.intuition(model, other):
        assert not torch.allclose(model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits, given)
