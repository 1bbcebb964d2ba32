"""Sentence embeddings of responses: mean pooling by hand, and the packaged all-MiniLM-L6-v2 loaded offline."""

from __future__ import annotations

import pytest
import torch

from uqmerge.core.errors import DataError
from uqmerge.evaluate.embeddings import SentenceEmbedder, cosine_distances, default_embedding_model, mean_pool


def test_mean_pool_averages_only_the_unmasked_tokens():
    hidden = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]], [[5.0, 6.0], [0.0, 0.0], [0.0, 0.0]]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    torch.testing.assert_close(mean_pool(hidden, mask), torch.tensor([[2.0, 3.0], [5.0, 6.0]]))


def test_cosine_distance_is_zero_for_parallel_one_for_orthogonal_and_two_for_opposite_rows():
    a = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 3.0]])
    b = torch.tensor([[2.0, 0.0], [0.0, 1.0], [0.0, -1.0]])
    torch.testing.assert_close(cosine_distances(a, b), torch.tensor([0.0, 1.0, 2.0]))


def test_a_directory_without_config_json_is_refused(tmp_path):
    with pytest.raises(DataError, match="not a sentence-embedding model directory"):
        SentenceEmbedder(tmp_path)


def test_the_packaged_minilm_embeds_offline_with_unit_rows_and_ranks_paraphrases_closer(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    embedder = SentenceEmbedder(default_embedding_model())
    texts = ["The cat is red.", "the cat is red", "A red cat.", "Seventeen trains left the station."]
    e = embedder.embed(texts)
    assert e.shape == (4, 384)
    torch.testing.assert_close(e.norm(dim=1), torch.ones(4))
    d = cosine_distances(e[:1].expand(3, -1), e[1:])
    assert float(d[0]) < 0.05 and float(d[1]) < float(d[2])  # same words < paraphrase < unrelated
    # Batching does not change an embedding beyond float rounding.
    one_by_one = SentenceEmbedder(default_embedding_model(), batch_size=1).embed(texts)
    torch.testing.assert_close(one_by_one, e, atol=1e-5, rtol=0)
