"""mor1e: Mixture-of-Rank-1-Experts adapters (T-REX, arXiv 2404.08985) and baselines.

    model = mor1e.wrap(model, mor1e.MoR1EConfig(r1=4, r2=8, num_clusters=8))
    with mor1e.intuition(model, scores):      # scores: (batch, k) cluster similarities
        loss = model(**batch).loss + mor1e.aux_loss(model)
    mor1e.save_adapter(model, "out/adapter")

``mor1e.intuition`` is both the context manager above and the module with
``embed_texts``, ``kmeans`` and ``cluster_scores``.
"""

from mor1e import intuition
from mor1e.checkpoint import load_adapter, read_adapter_config, save_adapter
from mor1e.config import MoLoRAConfig, MoR1EConfig
from mor1e.layers import ADAPTER_MARKER, MoLoRALinear, MoR1ELinear, MoR1ERouter
from mor1e.wrap import (
    GPT2_TARGETS,
    LLAMA_TARGETS,
    adapter_config,
    adapter_parameters,
    aux_loss,
    count_trainable,
    is_adapter_param,
    set_intuition,
    using_intuition,
    wrap,
)

__all__ = [
    "ADAPTER_MARKER",
    "GPT2_TARGETS",
    "LLAMA_TARGETS",
    "MoLoRAConfig",
    "MoLoRALinear",
    "MoR1EConfig",
    "MoR1ELinear",
    "MoR1ERouter",
    "adapter_config",
    "adapter_parameters",
    "aux_loss",
    "count_trainable",
    "intuition",
    "is_adapter_param",
    "load_adapter",
    "read_adapter_config",
    "save_adapter",
    "set_intuition",
    "using_intuition",
    "wrap",
]
