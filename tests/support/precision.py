"""What the precision tests share (tests/test_precision.py in-process, tests/test_precision_served.py served)."""

from __future__ import annotations

import pytest

from tandem.server.precision import Precision, cpu_bf16_flag
from tests.support.data import load_beir

needs_bf16 = pytest.mark.skipif(not cpu_bf16_flag(), reason="this CPU has no native bf16 (avx512_bf16/amx_bf16)")


def cranfield_texts() -> tuple[list[str], list[str]]:
    """(queries, documents) of the first 300 Cranfield abstracts."""
    corpus, queries = load_beir("cranfield", limit=300)
    return [q["text"] for q in queries], [f"{d['title']} {d['text']}".strip() for d in corpus if d["text"].strip()]


def reference(path: str, prec: str, backend: str = "torch", cache_dir: str = ""):
    """The reranker at `prec` on `backend`, loaded in this process the way the server loads it."""
    from tandem.server.models import load_reranker

    return load_reranker(path, "cpu", False, Precision(prec, "test"), backend, cache_dir)
