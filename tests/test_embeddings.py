"""With the `embeddings` extra installed (`make test-embeddings`): the real model is used, and the vectors
shipped for machines without it are the ones it computes."""

import numpy as np
import pytest

from labkit.vectors import Embedder, corpus_texts

pytestmark = pytest.mark.embeddings


@pytest.fixture(scope="module")
def model():
    return Embedder(precomputed=False)


def test_the_real_model_is_used_when_installed(model):
    assert model.model is not None and "computed now" in model.source and "computed now" in Embedder().source


def test_the_shipped_vectors_match_the_model(model):
    texts = corpus_texts()
    fresh, shipped = model.embed(texts), Embedder(precomputed=True).embed(texts)
    assert fresh.shape == shipped.shape == (len(texts), 384)
    assert np.min(np.sum(fresh * shipped, axis=1)) > 0.999


def test_the_model_embeds_new_text(model):
    vectors = model.embed(["How do I reset my password?", "My password is forgotten, help me set a new one."])
    assert float(vectors[0] @ vectors[1]) > 0.6
