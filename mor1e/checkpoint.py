"""Saving and loading adapters: ``adapter_config.json`` + ``adapter_model.safetensors``.

Only adapter parameters (``is_adapter_param``) are written.  Each file is written to a
temporary file in the target directory and renamed, so a crash never leaves a torn file.

Format versions of ``adapter_config.json``:

- 1: MoR1E meant the normalised variant; ``output_gate`` was a bool (a raw scalar or none), and
  there were no ``gate_sharpness``, ``intuition_map`` or ``router_init`` fields.
- 2: the MoR1E fields of ``MoR1EConfig`` whose defaults are the authors' layer, before
  ``intuition_score``.  A version 1 config loads with the values version 1 meant (``V1_MOR1E``)
  for the fields it lacks.
- 3: MoR1E's ``intuition_score`` (the authors' "dot" by default) and, for MoR1E and MoLoRA,
  ``adapter_dtype`` ("fp32" by default).  Versions 1 and 2 were trained on cosine scores with
  adapters in the base's dtype, so they load with ``intuition_score: cosine`` and
  ``adapter_dtype: base`` (``V2_MOR1E``, ``V2_MOLORA``).
"""

from __future__ import annotations

import dataclasses
import enum
import json
import os
import tempfile
from pathlib import Path

import torch
from peft import LoraConfig
from safetensors.torch import load_file, save_file
from torch import nn

from mor1e.config import MoLoRAConfig, MoR1EConfig
from mor1e.wrap import _lora_fields, adapter_config, adapter_parameters, wrap

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
FORMAT_VERSION = 3
_METHODS = {"mor1e": MoR1EConfig, "molora": MoLoRAConfig}
# What a version 1 MoR1E config meant for the fields it did not have.
V1_MOR1E = {"gate_sharpness": 1.0, "intuition_map": "softmax", "router_init": "random"}
# What a version 1 or 2 MoR1E config meant for the fields version 3 added.
V2_MOR1E = {"intuition_score": "cosine", "adapter_dtype": "base"}
V2_MOLORA = {"adapter_dtype": "base"}


def _upgrade_mor1e_v1(fields: dict) -> dict:
    """A version 1 MoR1E config in today's fields (``output_gate`` true/false -> "scalar"/"none")."""
    out = {**V1_MOR1E, **fields}
    gate = out.get("output_gate", False)
    if isinstance(gate, bool):
        out["output_gate"] = "scalar" if gate else "none"
    # Version 1's defaults for fields a hand-written config may have left out.
    out.setdefault("token_coef", 1.0)
    out.setdefault("intuition_coef", 1.0)
    out.setdefault("share_routers", True)
    return out


def _json_default(value):
    if isinstance(value, (set, frozenset, tuple)):
        return sorted(value) if isinstance(value, (set, frozenset)) else list(value)
    if isinstance(value, enum.Enum):
        return value.value
    if dataclasses.is_dataclass(value):
        return dataclasses.asdict(value)
    raise TypeError(f"cannot serialise {type(value).__name__}")


def _config_record(config) -> dict:
    if isinstance(config, MoR1EConfig):
        return {"method": "mor1e", "config": config.to_dict()}
    if isinstance(config, MoLoRAConfig):
        return {"method": "molora", "config": config.to_dict()}
    if isinstance(config, LoraConfig):
        # runtime_config holds per-process settings that peft itself never saves.
        fields = {k: v for k, v in _lora_fields(config).items() if k != "runtime_config"}
        return {"method": "lora", "config": fields}
    raise ValueError("model has no adapter to save (was it wrapped with mor1e.wrap?)")


def _atomic_write(path: Path, write) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save_adapter(model: nn.Module, directory, **intuition) -> Path:
    """Write the adapter's config and weights to ``directory`` (created if missing).

    A MoR1E adapter's config is peft's too (mor1e/peft_method.py): ``PeftModel.from_pretrained`` loads it.
    ``intuition``: ``centroids``, ``embedder`` and ``tokenizer`` for computing intuition from the input."""
    config = adapter_config(model)
    record = _config_record(config)
    if record["method"] == "mor1e":
        from mor1e.peft_method import peft_record

        record = {**peft_record(config, **intuition), **record}
    record["format_version"] = FORMAT_VERSION
    text = json.dumps(record, indent=2, sort_keys=True, default=_json_default) + "\n"
    tensors = {n: p.detach().to("cpu").contiguous().clone() for n, p in adapter_parameters(model)}
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    _atomic_write(directory / WEIGHTS_NAME, lambda tmp: save_file(tensors, tmp, metadata={"format": "pt"}))

    def write_json(tmp):
        with open(tmp, "w") as fh:
            fh.write(text)

    _atomic_write(directory / CONFIG_NAME, write_json)
    return directory


def read_adapter_config(directory):
    """The config object stored in ``directory`` (MoR1EConfig, MoLoRAConfig or LoraConfig)."""
    path = Path(directory) / CONFIG_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found")
    record = json.loads(path.read_text())
    method, fields = record.get("method"), record.get("config")
    version = record.get("format_version", 1)
    if not isinstance(version, int) or not 1 <= version <= FORMAT_VERSION:
        raise ValueError(f"{path}: format_version {version!r} is not one this library reads (1..{FORMAT_VERSION})")
    if not isinstance(fields, dict):
        raise ValueError(f"{path}: no adapter config")
    if method == "mor1e" and version == 1:
        fields = _upgrade_mor1e_v1(fields)
    if version <= 2 and method in ("mor1e", "molora"):
        fields = {**(V2_MOR1E if method == "mor1e" else V2_MOLORA), **fields}
    if method in _METHODS:
        return _METHODS[method].from_dict(fields)
    if method == "lora":
        known = set(_lora_fields(LoraConfig()))
        return LoraConfig(**{k: v for k, v in fields.items() if k in known})
    raise ValueError(f"{path}: unknown adapter method {method!r}")


def load_adapter(model: nn.Module, directory) -> nn.Module:
    """Wrap a base ``model`` per the saved config and load the saved adapter weights into it."""
    config = read_adapter_config(directory)
    # A directory PeftModel.save_pretrained wrote names parameters below PeftModel's root.
    weights = {k.removeprefix("base_model.model."): v for k, v in load_file(str(Path(directory) / WEIGHTS_NAME)).items()}
    wrap(model, config)
    params = dict(adapter_parameters(model))
    missing = sorted(set(params) - set(weights))
    unexpected = sorted(set(weights) - set(params))
    if missing or unexpected:
        raise ValueError(
            f"{directory}: adapter does not match the model: missing={missing[:3]} unexpected={unexpected[:3]}"
        )
    with torch.no_grad():
        for name, param in params.items():
            if weights[name].shape != param.shape:
                raise ValueError(f"{directory}: {name} has shape {tuple(weights[name].shape)}, model expects {tuple(param.shape)}")
            param.copy_(weights[name])
    return model
