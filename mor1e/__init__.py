"""mor1e: Mixture-of-Rank-1-Experts adapters (T-REX, arXiv 2404.08985) and baselines.

    model = mor1e.wrap(model, mor1e.MoR1EConfig.authors())   # the published layer: 4×8 experts, k = E = 32
    with mor1e.intuition(model, scores), mor1e.token_mask(model, batch["attention_mask"]):
        loss = model(**batch).loss + mor1e.aux_loss(model)
    mor1e.save_adapter(model, "out/adapter")

- ``mor1e.intuition(model, scores)``: this batch's (batch, k) intuition scores.  A model wrapped
  with intuition raises ``MissingIntuitionError`` when it runs without them; only the
  ``use_intuition=False`` ablation runs without scores.  ``mor1e.intuition`` is also the module
  with ``embed_texts``, ``kmeans`` and ``cluster_scores``.
- ``mor1e.token_mask(model, attention_mask)``: which positions are real tokens, for the
  load-balancing loss and the router telemetry (padding excluded).
- ``mor1e.router_telemetry(model)``: router statistics observed on every routing (``mor1e/telemetry.py``).
"""

from mor1e import intuition
from mor1e.checkpoint import FORMAT_VERSION, load_adapter, read_adapter_config, save_adapter
from mor1e.config import MoLoRAConfig, MoR1EConfig
from mor1e.layers import (
    ADAPTER_MARKER,
    MissingIntuitionError,
    MoLoRALinear,
    MoLoRARouter,
    MoR1ELinear,
    MoR1ERouter,
)
from mor1e.telemetry import TELEMETRY_KEYS, RouterTelemetry, TelemetryCounts, router_telemetry
from mor1e.wrap import (  # noqa: I001 (peft_method below needs these)
    GPT2_TARGETS,
    LLAMA_TARGETS,
    adapter_config,
    adapter_parameters,
    aux_loss,
    count_trainable,
    is_adapter_param,
    needs_intuition,
    set_intuition,
    set_token_mask,
    token_mask,
    using_intuition,
    wrap,
)
from mor1e import peft_method  # registers MoR1E with peft: PeftModel.from_pretrained loads MoR1E adapters

__all__ = [
    "ADAPTER_MARKER",
    "FORMAT_VERSION",
    "GPT2_TARGETS",
    "LLAMA_TARGETS",
    "MissingIntuitionError",
    "MoLoRAConfig",
    "MoLoRALinear",
    "MoLoRARouter",
    "MoR1EConfig",
    "MoR1ELinear",
    "MoR1ERouter",
    "RouterTelemetry",
    "TELEMETRY_KEYS",
    "TelemetryCounts",
    "adapter_config",
    "adapter_parameters",
    "aux_loss",
    "count_trainable",
    "intuition",
    "is_adapter_param",
    "load_adapter",
    "needs_intuition",
    "read_adapter_config",
    "router_telemetry",
    "save_adapter",
    "set_intuition",
    "set_token_mask",
    "token_mask",
    "using_intuition",
    "peft_method",
    "wrap",
]
