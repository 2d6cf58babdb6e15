"""MoR1E as a peft method: after ``import mor1e``, peft's own API loads and saves MoR1E adapters.

    import mor1e
    from peft import PeftModel
    model = PeftModel.from_pretrained(base, "path/to/adapter")        # a MoR1E adapter directory
    with mor1e.intuition(model, scores):                               # the scores the study used, or
        logits = model(input_ids=ids, attention_mask=mask).logits
    model(input_ids=ids, attention_mask=mask)                          # none: computed from the input
    model.save_pretrained("out")                                       # a directory mor1e.load_adapter reads too

Registration uses peft's ``register_peft_method`` (name ``mor1e``, prefix ``mor1e_``, the marker of every
MoR1E parameter). peft 0.21 requires the name to be a member of its ``PeftType`` enum and offers no way to
add one, so this module adds the member ``MOR1E`` to that enum (nothing else of peft is changed).

The adapter directory is self-contained. Its ``adapter_config.json`` is both peft's config (``peft_type:
MOR1E``) and this library's record (``method``, ``config``, ``format_version``: ``mor1e.read_adapter_config``
reads it), and may carry what intuition needs when no scores are given:

- ``centroids``: the k-means centroids (k, d) of the training embeddings;
- ``embedder``: the sentence embedder (a local path or hub id; null: the packaged all-MiniLM-L6-v2);
- ``tokenizer``: what decodes the input ids back to text (a path or hub id), unless ``set_tokenizer`` gave one.

Which text is embedded when no scores are given: each row's input ids, padding excluded (by the attention
mask), decoded with the tokenizer and special tokens skipped -- the prompt as the model sees it, every token of
it. The harness's studies embed each example's ``text`` (question and choices, without the prompt's
template), so for the study's own numbers give the study's scores with ``mor1e.intuition``; the computed
scores are for tools (generation, lm-evaluation-harness's ``hf`` model with ``peft=``) that only pass ids.

Directories written before this format (no ``peft_type``) load with ``mor1e.load_adapter`` as before, or with
``PeftModel.from_pretrained(base, path, config=MoR1EPeftConfig.from_adapter_dir(path))``.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import torch
from peft import PeftConfig, PeftType
from peft.tuners.tuners_utils import BaseTuner
from peft.utils import register_peft_method

from mor1e.checkpoint import CONFIG_NAME, FORMAT_VERSION, read_adapter_config
from mor1e.config import MoR1EConfig
from mor1e.wrap import is_adapter_param, needs_intuition, using_intuition, wrap

PEFT_NAME = "mor1e"
PEFT_PREFIX = "mor1e_"  # mor1e.layers.ADAPTER_MARKER: every MoR1E parameter's name carries it
PEFT_ROOT = "base_model.model."  # what PeftModel puts before the base model's parameter names


def _peft_type() -> PeftType:
    """peft's enum member MOR1E, added once (peft 0.21 has no API to add a member)."""
    key = PEFT_NAME.upper()
    if key in PeftType.__members__:
        return PeftType[key]
    member = str.__new__(PeftType, key)
    member._name_, member._value_ = key, key
    member.__objclass__ = PeftType
    PeftType._member_names_.append(key)
    PeftType._member_map_[key] = member
    PeftType._value2member_map_[key] = member
    type.__setattr__(PeftType, key, member)
    return member


MOR1E_PEFT_TYPE = _peft_type()


@dataclasses.dataclass
class MoR1EPeftConfig(PeftConfig):
    """peft's config of a MoR1E adapter: the MoR1EConfig record plus what computing intuition needs."""

    method: str = PEFT_NAME
    """This library's method name (mor1e.read_adapter_config reads it)."""
    config: dict = dataclasses.field(default_factory=dict)
    """``MoR1EConfig.to_dict()``: the adapter's layer."""
    format_version: int = FORMAT_VERSION
    """mor1e.checkpoint's format version of ``config``."""
    centroids: list | None = None
    """The k-means centroids (k, d) the intuition scores are computed against; None: scores must be given."""
    embedder: str | None = None
    """The sentence embedder (a local path or hub id); None: the packaged all-MiniLM-L6-v2."""
    tokenizer: str | None = None
    """What decodes input ids to the text that is embedded (a path or hub id); or call ``set_tokenizer``."""

    def __post_init__(self):
        super().__post_init__()
        self.peft_type = MOR1E_PEFT_TYPE
        if self.task_type is None:
            self.task_type = "CAUSAL_LM"

    def mor1e_config(self) -> MoR1EConfig:
        """The layer's MoR1EConfig (a version 1 record upgraded as mor1e.read_adapter_config does)."""
        from mor1e.checkpoint import _upgrade_mor1e_v1

        fields = dict(self.config)
        return MoR1EConfig.from_dict(_upgrade_mor1e_v1(fields) if self.format_version == 1 else fields)

    @classmethod
    def from_mor1e(cls, config: MoR1EConfig, *, centroids=None, embedder: str | None = None,
                   tokenizer: str | None = None, **kwargs) -> "MoR1EPeftConfig":
        rows = None if centroids is None else [[float(v) for v in row] for row in torch.as_tensor(centroids).tolist()]
        return cls(config=config.to_dict(), centroids=rows, embedder=embedder, tokenizer=tokenizer, **kwargs)

    @classmethod
    def from_adapter_dir(cls, directory) -> "MoR1EPeftConfig":
        """The config of any MoR1E adapter directory, this format's or an earlier one (no ``peft_type``)."""
        config = read_adapter_config(directory)
        if not isinstance(config, MoR1EConfig):
            raise ValueError(f"{directory}: not a MoR1E adapter ({type(config).__name__})")
        record = json.loads((Path(directory) / CONFIG_NAME).read_text())
        return cls.from_mor1e(config, centroids=record.get("centroids"), embedder=record.get("embedder"),
                              tokenizer=record.get("tokenizer"))


class MoR1EPeftModel(BaseTuner):
    """peft's tuner for MoR1E: injects with ``mor1e.wrap``; state dicts keep MoR1E's own parameter names."""

    prefix = PEFT_PREFIX

    def inject_adapter(self, model, adapter_name: str, autocast_adapter_dtype: bool = True,
                       low_cpu_mem_usage: bool = False, state_dict=None) -> None:
        if len(self.peft_config) > 1:
            raise ValueError("a model holds one MoR1E adapter")
        config = self.peft_config[adapter_name]
        wrap(model, config.mor1e_config())
        if config.inference_mode:  # PeftModel.from_pretrained without is_trainable: nothing trains
            for param in model.parameters():
                param.requires_grad_(False)
        self.targeted_module_names = [n for n, m in model.named_modules() if hasattr(m, "mor1e_A")]

    def _create_and_replace(self, *args, **kwargs):  # inject_adapter above replaces every target at once
        raise NotImplementedError

    def _prepare_adapter_config(self, peft_config, model_config):
        return peft_config

    @staticmethod
    def _check_target_module_exists(peft_config, key):
        return False

    def _mark_only_adapters_as_trainable(self, model) -> None:
        for name, param in model.named_parameters():
            param.requires_grad_(is_adapter_param(name))

    def _cast_adapter_dtype(self, adapter_name: str, autocast_adapter_dtype: bool = True) -> None:
        pass  # the adapter keeps the dtypes MoR1EConfig chose

    def disable_adapter_layers(self) -> None:
        raise NotImplementedError("MoR1E adapters cannot be disabled in place; load the base model instead")

    def enable_adapter_layers(self) -> None:
        pass

    def set_adapter(self, adapter_name, inference_mode: bool = False) -> None:
        if adapter_name not in (list(self.peft_config), *self.peft_config):
            raise ValueError(f"no adapter {adapter_name!r}")

    @classmethod
    def _get_adapter_state_dict(cls, model, config, adapter_name, state_dict, unwanted_adapter_names):
        names = {n for n, _ in model.named_parameters() if is_adapter_param(n)}
        return {k: v for k, v in state_dict.items() if k in names}

    @classmethod
    def _remove_adapter_name_from_key(cls, key: str, adapter_name: str) -> str:
        return key  # MoR1E's parameter names carry no adapter name

    @classmethod
    def _remap_adapter_state_dict_for_load(cls, model, config, adapter_name, state_dict):
        # A directory mor1e.save_adapter wrote names parameters as the bare model does; under PeftModel
        # they sit below PEFT_ROOT.
        rooted = any(n.startswith(PEFT_ROOT) for n, _ in model.named_parameters())
        if not rooted:
            return {k.removeprefix(PEFT_ROOT): v for k, v in state_dict.items()}
        return {k if k.startswith(PEFT_ROOT) else PEFT_ROOT + k: v for k, v in state_dict.items()}

    def forward(self, *args: Any, **kwargs: Any):
        if not self._scores_missing():
            return self.model(*args, **kwargs)
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids is None:
            raise ValueError("MoR1E needs intuition scores: give them with mor1e.intuition(model, scores), or "
                             "pass input_ids so they can be computed from the input")
        with using_intuition(self.model, self.intuition_from_ids(ids, kwargs.get("attention_mask"))):
            return self.model(*args, **kwargs)

    def generate(self, *args: Any, **kwargs: Any):
        if not self._scores_missing():
            return self.model.generate(*args, **kwargs)
        ids = kwargs.get("input_ids", args[0] if args else None)
        # One set of scores per sequence, from its prompt: every generated token keeps its prompt's intuition.
        with using_intuition(self.model, self.intuition_from_ids(ids, kwargs.get("attention_mask"))):
            return self.model.generate(*args, **kwargs)

    def _scores_missing(self) -> bool:
        from mor1e.wrap import _routers

        routers = _routers(self.model)
        return bool(routers) and needs_intuition(self.model) and any(
            r.intuition_scores is None and getattr(r.config, "use_intuition", True) for r in routers)

    def intuition_from_ids(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """(batch, k) scores: each row's real tokens decoded to text, embedded, scored against the centroids."""
        texts = self.texts_from_ids(input_ids, attention_mask)
        return self.intuition_from_texts(texts)

    def texts_from_ids(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> list[str]:
        tokenizer = self._tokenizer()
        rows = []
        for i, row in enumerate(input_ids):
            keep = row if attention_mask is None else row[attention_mask[i].bool()]
            rows.append(tokenizer.decode(keep.tolist(), skip_special_tokens=True))
        return rows

    def intuition_from_texts(self, texts: list[str]) -> torch.Tensor:
        from mor1e.intuition import cluster_scores, embed_texts

        config = next(iter(self.peft_config.values()))
        if config.centroids is None:
            raise ValueError("this MoR1E adapter carries no centroids: give intuition scores with "
                             "mor1e.intuition(model, scores)")
        embeddings = embed_texts(texts, embedder=config.embedder)
        import numpy as np

        return torch.from_numpy(cluster_scores(embeddings, np.asarray(config.centroids, dtype=np.float32)))

    def _tokenizer(self):
        tokenizer = getattr(self, "_mor1e_tokenizer", None)
        if tokenizer is None:
            config = next(iter(self.peft_config.values()))
            if config.tokenizer is None:
                raise ValueError("computing intuition needs a tokenizer: call mor1e.peft_method.set_tokenizer(model, "
                                 "tokenizer), or save the adapter with tokenizer set")
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(config.tokenizer)
            object.__setattr__(self, "_mor1e_tokenizer", tokenizer)
        return tokenizer


def set_tokenizer(peft_model, tokenizer) -> None:
    """The tokenizer that decodes input ids for computed intuition (when the adapter names none)."""
    tuner = peft_model.base_model if not isinstance(peft_model, MoR1EPeftModel) else peft_model
    object.__setattr__(tuner, "_mor1e_tokenizer", tokenizer)


def peft_record(config: MoR1EConfig, *, centroids=None, embedder: str | None = None,
                tokenizer: str | None = None) -> dict:
    """peft's fields of a MoR1E ``adapter_config.json`` (mor1e.save_adapter adds them to its record)."""
    cfg = MoR1EPeftConfig.from_mor1e(config, centroids=centroids, embedder=embedder, tokenizer=tokenizer)
    return cfg.to_dict()


if MOR1E_PEFT_TYPE not in __import__("peft.mapping", fromlist=["x"]).PEFT_TYPE_TO_TUNER_MAPPING:
    register_peft_method(name=PEFT_NAME, config_cls=MoR1EPeftConfig, model_cls=MoR1EPeftModel, prefix=PEFT_PREFIX)
