"""Precision served: each backend and precision a server runs gives the scores the same backend gives
in-process (the in-process side: tests/test_precision.py).

Tolerances, and why:
- bf16 keeps 8 significant bits (a relative step of 2^-8). Batching changes the padded shape, so oneDNN picks
  other blockings and sums in another order, and an activation can round to the neighbouring bf16 value. On
  the MiniLM-shaped model a logit moved by at most 5e-4 between "alone" and "in a batch of 16"; 2e-3 allows
  for other pairs without letting an fp32-vs-bf16 mix-up (differences of 1e-2 and more) pass.
- int8 (dynamic quantisation) computes each activation's scale from the whole batch, so a score depends on
  its batch-mates (up to 1.2e-2 measured). Exactness is therefore checked on calls that run alone, where
  served must equal in-process to 1e-5; under concurrency the drift is reported, not hidden.
"""

from __future__ import annotations

import os
import random
from concurrent.futures import ThreadPoolExecutor

import pytest

from tandem.v1 import rerank_pb2, rerank_pb2_grpc
from tests.support.precision import cranfield_texts, needs_bf16, reference


@pytest.fixture(scope="module")
def cranfield():
    return cranfield_texts()


@pytest.fixture(scope="session")
def ov_cache():
    """The suite's cache (tests/conftest.py): the served and in-process backends run the same converted files,
    and what one server measured (the reference's outputs, each option's loss) is not measured again."""
    return os.environ["TANDEM_CACHE_DIR"]


@pytest.fixture(scope="module", params=[pytest.param(("torch", "bf16"), marks=needs_bf16), ("torch", "int8"),
                                        pytest.param(("openvino", "bf16"), marks=needs_bf16), ("openvino", "fp32"),
                                        ("onnxruntime", "fp32"), ("onnxruntime", "int8")],
                ids=lambda p: "-".join(p))
def served(make_module_server, request, minilm_ce, tmp_path_factory, ov_cache):
    backend, prec = request.param
    d = tmp_path_factory.mktemp(f"prec-{backend}-{prec}")
    s = make_module_server("--reranker", minilm_ce, "--milvus-uri", str(d / "m.db"), "--precision", prec,
                      "--backend", backend, "--cache-dir", ov_cache, "--max-batch-pairs", "16", dir=d)
    yield backend, prec, s
    s.terminate()


def test_served_scores_equal_the_same_backend_alone(served, minilm_ce, cranfield, ov_cache):
    backend, prec, s = served
    queries, docs = cranfield
    rng = random.Random(7)
    reqs = [rerank_pb2.RerankRequest(query=rng.choice(queries),
                                     documents=[d[: rng.randint(30, 900)] for d in rng.sample(docs, 4)])
            for _ in range(16)]
    ref = reference(minilm_ce, prec, backend, ov_cache)
    with s.channel() as ch:
        stub = rerank_pb2_grpc.RerankServiceStub(ch)
        from tandem.v1 import info_pb2, info_pb2_grpc

        info = info_pb2_grpc.InfoServiceStub(ch).Info(info_pb2.InfoRequest(), timeout=10)
        assert {m.kind: (m.backend, m.precision) for m in info.models}["reranker"] == (backend, prec)
        # Each call alone: served equals in-process exactly, whatever the precision.
        for req in reqs[:4]:
            for doc in req.documents[:2]:
                got = stub.Rerank(rerank_pb2.RerankRequest(query=req.query, documents=[doc], raw_scores=True),
                                  timeout=60).results[0].relevance_score
                assert got == pytest.approx(ref.run([(req.query, doc)])[0], abs=1e-5)
        # 16 concurrent calls share batches.
        with ThreadPoolExecutor(16) as pool:
            out = list(pool.map(lambda r: stub.Rerank(rerank_pb2.RerankRequest(
                query=r.query, documents=r.documents, raw_scores=True), timeout=120), reqs))
    drift = max(abs(x.relevance_score - ref.run([(req.query, req.documents[x.index])])[0])
                for req, resp in zip(reqs, out) for x in resp.results)
    if prec == "fp32":
        assert drift < 1e-4
    elif prec == "bf16":
        assert drift < 2e-3
    else:
        assert drift < 5e-2  # batch-dependent scales: see the module docstring
