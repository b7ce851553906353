"""Embed: texts in, L2-normalised vectors out, through the batched bi-encoder."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tandem.server import tracing, validation
from tandem.server.runtime import Runtime
from tandem.workers import BatchStats


@dataclass(frozen=True)
class Embeddings:
    vectors: list[np.ndarray]  # float32, unit length, one per text in order
    model: str
    dimension: int
    stats: BatchStats
    seconds: float


class Embedder:
    def __init__(self, rt: Runtime):
        self.rt = rt

    async def embed(self, texts: list[str], *, model: str = "", deadline: float | None = None) -> Embeddings:
        rt = self.rt
        start = rt.clock()
        with tracing.stage("validate"):
            batcher = rt.embedder_batcher(model)
            validation.count("texts", len(texts), rt.config.max_documents_per_request)
            for i, t in enumerate(texts):
                validation.text(f"texts[{i}]", t, rt.config.max_text_bytes)
        with tracing.stage("embed", {"tandem.model": batcher.backend.name, "tandem.texts": len(texts)}) as span:
            vectors, stats = await batcher.submit(list(texts), deadline=deadline)
            if span.is_recording():
                span.set_attribute("tandem.tokens", stats.tokens)
        return Embeddings(vectors, batcher.backend.name, batcher.backend.dimension, stats, rt.clock() - start)
