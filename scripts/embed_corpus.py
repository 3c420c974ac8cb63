"""Compute the shipped vectors of the lab's corpus with the real all-MiniLM-L6-v2 model.

Run after editing labkit/data/support_questions.json (needs the `embeddings` extra):
    .venv/bin/python scripts/embed_corpus.py
"""

from pathlib import Path

import numpy as np

from labkit.vectors import Embedder, corpus_texts

OUT = Path(__file__).resolve().parents[1] / "labkit" / "data" / "support_vectors.npy"

if __name__ == "__main__":
    embedder = Embedder(precomputed=False)
    vectors = embedder.embed(corpus_texts())
    np.save(OUT, vectors.astype(np.float32))
    print(f"{vectors.shape[0]} vectors of {vectors.shape[1]} dimensions -> {OUT}")
