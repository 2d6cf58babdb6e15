"""What a leaderboard number was measured on: its data, its training budget, its scoring precision.

``harness.records.provenance`` says which code and machine produced a row (git SHA, dirty
flag, package versions, host); this module fills the columns that say what the number itself
means, so that a row trained on the synthetic twins can never pass for one trained on real data:

- ``data_source`` (JSON): the twins' generator, seed and sizes; a local data dir with the sha256
  of every split file the trial read; or the hub ids, configs and revisions;
- ``budget_json`` (JSON): steps or epochs, batch, limits, warmup, scoring format, sequence length,
  how the answer loss is averaged (``loss_reduction``) and, in a parameter-matched study, the band of trainable parameters;
- ``scoring_precision``: the dtype the selection and report scoring ran in.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

_SHA_CACHE: dict[tuple[str, int, int], str] = {}


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 of a file's bytes, remembered per (path, size, mtime) so a study hashes each file once."""
    path = Path(path)
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _SHA_CACHE:
        digest = hashlib.sha256()
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
        _SHA_CACHE[key] = digest.hexdigest()
    return _SHA_CACHE[key]


def _split_files(datasets, data_dir: Path) -> tuple[dict[str, str], list[str]]:
    """{"<dataset>/<split>.<ext>": sha256} of the train and report split files a trial reads, and the
    splits missing there (the loader would then try the hub for them)."""
    from harness.data.adapters import get_adapter

    files, missing = {}, []
    for dataset in datasets:
        adapter = get_adapter(dataset)
        for split in dict.fromkeys((adapter.train_split, adapter.report_split)):
            # The loader's order (harness.data.loading): jsonl first, then parquet.
            found = [data_dir / dataset / f"{split}.{ext}" for ext in ("jsonl", "parquet")]
            found = [p for p in found if p.is_file()]
            if found:
                files[f"{dataset}/{found[0].name}"] = file_sha256(found[0])
            else:
                missing.append(f"{dataset}/{split}")
    return files, missing


def _generator_identity() -> dict[str, str]:
    """The twins' generator: its module, and a sha256 over its package's source files."""
    import inspect

    from harness.data import write_synthetic

    module = inspect.getmodule(write_synthetic)
    package_dir = Path(inspect.getsourcefile(module)).parent
    digest = hashlib.sha256()
    for path in sorted(package_dir.rglob("*.py")):
        digest.update(str(path.relative_to(package_dir)).encode() + b"\0" + path.read_bytes() + b"\0")
    return {"module": module.__name__, "code_sha256": digest.hexdigest()}


_REVISIONS: dict[str, str | None] = {}


def _hub_revision(hub_id: str) -> str | None:
    """The commit the hub serves for a dataset now (what an unpinned load reads), or None offline."""
    if hub_id not in _REVISIONS:
        from harness.data.loading import hub_reachable

        revision = None
        if hub_reachable():
            try:
                from huggingface_hub import HfApi

                revision = HfApi().dataset_info(hub_id, timeout=10).sha
            except Exception:  # gated, renamed, a flaky network: the row says "unknown" rather than fail
                revision = None
        _REVISIONS[hub_id] = revision
    return _REVISIONS[hub_id]


def data_source(datasets, *, data_dir: str | os.PathLike | None, synthetic: dict | None = None) -> dict[str, Any]:
    """Where a trial's examples came from.

    ``synthetic``: the twins' generator settings ({seed, n_train, n_validation}) when ``data_dir``
    holds twins written for this run; their files are hashed like real data. ``data_dir`` None:
    the HF hub.
    """
    datasets = list(datasets)
    if data_dir is None:
        from harness.data.adapters import get_adapter

        hub = {}
        for dataset in datasets:
            if dataset.startswith("bigbench_"):  # a fetched BIG-bench task file, not the hub
                from harness.data.bigbench import provenance

                hub[dataset] = provenance(dataset)
                continue
            adapter = get_adapter(dataset)
            hub[dataset] = {"hub_id": adapter.hub_id, "config": adapter.config,
                            "splits": list(dict.fromkeys((adapter.train_split, adapter.report_split))),
                            "revision": _hub_revision(adapter.hub_id)}
        return {"kind": "hub", "datasets": hub}
    files, missing = _split_files(datasets, Path(data_dir))
    if synthetic is not None:
        out: dict[str, Any] = {"kind": "synthetic", "generator": _generator_identity(),
                               "seed": synthetic.get("seed"), "n_train": synthetic.get("n_train"),
                               "n_validation": synthetic.get("n_validation")}
    else:
        out = {"kind": "local", "data_dir": str(Path(data_dir).resolve())}
    out["files"] = files
    if missing:
        out["missing"] = missing
    return out


def trial_budget(cfg, *, total_steps: int | None = None, band: tuple[int, int] | None = None,
                 param_matched: bool | None = None) -> dict[str, Any]:
    """The training and evaluation budget of a trial (a ``harness.trial.config.TrialConfig``).

    ``total_steps``: the optimizer steps the trial resolved (from ``epochs`` they depend on the
    data). ``band``: the study's parameter band; ``param_matched`` says whether this method's
    sizes were held inside it (False for dense full finetuning and zero-shot).
    """
    budget: dict[str, Any] = {
        "steps": cfg.steps, "epochs": cfg.epochs, "total_steps": total_steps,
        "batch_size": cfg.batch_size, "grad_accum": cfg.grad_accum, "num_workers": cfg.num_workers,
        "effective_batch": cfg.effective_batch(), "warmup_steps": cfg.warmup_steps, "schedule": cfg.schedule,
        "eval_every": cfg.eval_every, "train_limit": cfg.train_limit, "selection_limit": cfg.selection_limit,
        "report_limit": cfg.report_limit, "scoring": cfg.scoring, "max_seq_len": cfg.max_seq_len,
        "dtype": cfg.dtype, "loss_reduction": cfg.loss_reduction,
    }
    if band is not None:
        budget["param_band"] = [int(band[0]), int(band[1])]
        budget["param_matched"] = bool(param_matched)
    return budget


def scoring_precision(metrics: dict | None, *, method: str, use_gpu: bool | None) -> str | None:
    """What the trial's scoring ran in: the worker's own ``scoring_precision`` when it reports one;
    otherwise (metrics of a run that did not report it) as such runs scored -- fp32 on a CPU and for
    zero-shot everywhere, the training dtype on a GPU (DeepSpeed's bf16/fp16 modes hold the model in it)."""
    metrics = metrics or {}
    if metrics.get("scoring_precision"):
        return str(metrics["scoring_precision"])
    from harness.methods import get

    if not get(method).trains or use_gpu is False:
        return "fp32"
    if use_gpu:
        return metrics.get("precision")
    return None


def to_json(value: dict | None) -> str | None:
    return None if value is None else json.dumps(value, sort_keys=True, default=str)
