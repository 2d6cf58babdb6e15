"""Counting trainable parameters without weights: the meta-device count, its config sources, and
`python -m harness.methods params`."""

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

import mor1e
from harness import methods
from harness.methods import apply_method, count_trainable_params
from harness.models import (
    SMOLLM2_GGUF,
    SMOLLM2_PACKAGE,
    gguf_config,
    load_model,
    load_model_config,
    package_dir,
    read_gguf_header,
)
from harness.searchspace import SPACES_DIR

REPO = Path(__file__).resolve().parent.parent
LLAMA2_7B = SPACES_DIR / "model_configs" / "Llama-2-7b-hf"

CASES = [
    ("mor1e", {"r1": 4, "r2": 8, "num_clusters": 8}),
    ("mor1e", {"r1": 2, "r2": 4, "num_clusters": 4, "share_routers": False}),
    ("lora", {"rank": 8}),
    ("molora", {"num_experts": 8, "rank": 1}),
    ("dense", {}),
    ("zeroshot", {}),
]


@pytest.mark.parametrize("method, hparams", CASES, ids=[f"{m}-{i}" for i, (m, _) in enumerate(CASES)])
def test_meta_count_equals_the_count_of_the_real_model(method, hparams):
    """The count without weights is the one a trial's worker reports after loading and wrapping."""
    model, _ = load_model("tiny-random-llama")
    apply_method(model, method, hparams)
    assert count_trainable_params("tiny-random-llama", method, hparams) == mor1e.count_trainable(model)


def test_smollm2_counts_in_well_under_a_second_and_matches_the_loaded_model():
    count_trainable_params("tiny-random-llama", "mor1e", {"num_clusters": 4})  # one-time lazy imports
    hparams = {"r1": 4, "r2": 8, "num_clusters": 8}
    started = time.perf_counter()
    n = count_trainable_params("smollm2-135m", "mor1e", hparams)
    elapsed = time.perf_counter() - started
    assert elapsed < 1.0, f"{elapsed:.2f}s"
    model, _ = load_model("smollm2-135m")
    apply_method(model, "mor1e", hparams)
    assert n == mor1e.count_trainable(model)
    print(f"\nsmollm2-135m mor1e 4x8 count on the meta device: {elapsed:.3f}s")


def test_gguf_header_gives_the_cached_config():
    """Without the fp32 cache, SmolLM2's config comes from the GGUF header alone; it agrees with the cache."""
    path = package_dir(SMOLLM2_PACKAGE) / SMOLLM2_GGUF
    metadata, tensors = read_gguf_header(path)
    assert metadata["general.architecture"] == "llama" and metadata["llama.block_count"] == 30
    assert "token_embd.weight" in tensors and "output.weight" not in tensors  # tied embeddings
    assert metadata["tokenizer.ggml.tokens"].length == 49152
    from_header = gguf_config(path)
    cached = load_model_config("smollm2-135m")
    keys = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
            "num_key_value_heads", "head_dim", "tie_word_embeddings")
    assert {k: getattr(from_header, k) for k in keys} == {k: getattr(cached, k) for k in keys}
    for method, hparams in CASES[:4]:
        assert count_trainable_params(from_header, method, hparams) == count_trainable_params(cached, method, hparams)


@pytest.mark.parametrize("path", [LLAMA2_7B, LLAMA2_7B / "config.json"], ids=["dir", "file"])
def test_llama2_7b_from_a_local_config(path):
    started = time.perf_counter()
    assert count_trainable_params(str(path), "dense", {}) == 6_738_415_616  # Llama-2-7B's published size
    # LoRA r on all 7 projections of 32 layers: r * (d_in + d_out) each (q,k,v,o 4096->4096; gate, up
    # 4096->11008; down 11008->4096), computed by hand.
    expected = 8 * 32 * (4 * (4096 + 4096) + 3 * (4096 + 11008))
    assert count_trainable_params(str(path), "lora", {"rank": 8}) == expected
    assert count_trainable_params(str(path), "zeroshot", {}) == 0
    assert time.perf_counter() - started < 5


def test_cli_prints_the_count(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "harness.methods", "params", "--model", str(LLAMA2_7B / "config.json"),
         "--method", "molora", "--hparams", json.dumps({"num_experts": 8, "rank": 1})],
        capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(count_trainable_params(str(LLAMA2_7B), "molora", {"num_experts": 8, "rank": 1}))


BAD = [
    (["--model", "smollm2-135m", "--method", "adalora"], "unknown method 'adalora'"),
    (["--model", "smollm2-135m", "--method", "lora", "--hparams", "{rank: 8}"], "not valid JSON"),
    (["--model", "smollm2-135m", "--method", "lora", "--hparams", "[8]"], "must be a JSON object"),
    (["--model", "smollm2-135m", "--method", "lora", "--hparams", '{"r1": 4}'], "unknown hparam(s) for method 'lora'"),
    (["--model", "smollm2-135m", "--method", "mor1e", "--hparams", '{"r1": 0}'], "r1 must be an integer >= 1"),
    (["--model", "smollm", "--method", "lora"], "unknown model 'smollm'"),
    (["--model", "meta-llama/Llama-2-7b-hf", "--method", "lora"], "hub is unreachable"),
    (["--method", "lora"], "required: --model"),
]


@pytest.mark.parametrize("argv, message", BAD, ids=[m for _, m in BAD])
def test_bad_input_is_one_line_and_exit_2(argv, message, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the hub id case must fail at once, not retry
    with pytest.raises(SystemExit) as info:
        sys.exit(methods.main(["params", *argv]))
    assert info.value.code == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert message in err and len(err.splitlines()) == 1, err
    assert captured.out == ""


def test_a_directory_without_a_config_is_refused(tmp_path, capsys):
    assert methods.main(["params", "--model", str(tmp_path), "--method", "lora"]) == 2
    assert "no config.json" in capsys.readouterr().err
    (tmp_path / "config.json").write_text(json.dumps({"hidden_size": 8}))
    assert methods.main(["params", "--model", str(tmp_path), "--method", "lora"]) == 2
    assert "no model_type" in capsys.readouterr().err
