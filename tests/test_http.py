"""The HTTP side against a live server, through the clients RAG frameworks use: the cohere SDK (v2 and v1),
the openai SDK (base64 and float), LangChain's CohereRerank, and the TEI, Jina, vLLM and Connect wire forms.
Scores and vectors must equal what gRPC gives for the same input."""

from __future__ import annotations

import base64

import numpy as np
import pytest

from tandem.v1 import embed_pb2, info_pb2, rerank_pb2
from tests.support.http import call

QUERY = "how do wings stall at high angles of attack"
DOCS = ["the wing stalls when the flow separates at high incidence", "heat transfer in hypersonic flow",
        "boundary layer transition on a flat plate", "stall of a swept wing", "a note on buckling of shells"]


@pytest.fixture(scope="module")
def url(server):
    return server.http_url


@pytest.fixture(scope="module")
def grpc_scores(stubs):
    r = stubs.rerank.Rerank(rerank_pb2.RerankRequest(query=QUERY, documents=DOCS), timeout=60)
    return {x.index: x.relevance_score for x in r.results}


@pytest.fixture(scope="module")
def model(stubs):
    return stubs.info.Info(info_pb2.InfoRequest(), timeout=30).default_reranker


def test_cohere_v2_client_scores_equal_grpc(url, grpc_scores, model):
    import cohere

    co = cohere.ClientV2(api_key="unused", base_url=url)
    r = co.rerank(model=model, query=QUERY, documents=DOCS, top_n=3)
    assert len(r.results) == 3
    assert [x.index for x in r.results] == sorted(grpc_scores, key=lambda i: -grpc_scores[i])[:3]
    for x in r.results:
        assert x.relevance_score == pytest.approx(grpc_scores[x.index], rel=1e-6, abs=1e-7)
    assert r.id and r.meta.billed_units.search_units == 1


def test_cohere_v1_client_returns_documents(url, grpc_scores):
    import cohere

    co = cohere.Client(api_key="unused", base_url=url)
    r = co.rerank(query=QUERY, documents=DOCS, top_n=2, return_documents=True)
    assert [x.document.text for x in r.results] == [DOCS[x.index] for x in r.results]
    for x in r.results:
        assert x.relevance_score == pytest.approx(grpc_scores[x.index], rel=1e-6, abs=1e-7)


def test_langchain_cohere_rerank(url, grpc_scores, model):
    from langchain_cohere import CohereRerank
    from langchain_core.documents import Document

    ranker = CohereRerank(base_url=url, cohere_api_key="unused", model=model, top_n=2)
    out = ranker.compress_documents([Document(page_content=d) for d in DOCS], QUERY)
    best = sorted(grpc_scores, key=lambda i: -grpc_scores[i])[:2]
    assert [d.page_content for d in out] == [DOCS[i] for i in best]
    assert out[0].metadata["relevance_score"] == pytest.approx(grpc_scores[best[0]], rel=1e-6, abs=1e-7)


@pytest.mark.parametrize("encoding", ["default (base64)", "float"])
def test_openai_embeddings_equal_grpc_embed(url, stubs, encoding):
    import openai

    texts = ["wing stall", "boundary layer"]
    want = stubs.embed.Embed(embed_pb2.EmbedRequest(texts=texts), timeout=60)
    client = openai.OpenAI(api_key="unused", base_url=f"{url}/v1")
    kw = {} if encoding.startswith("default") else {"encoding_format": "float"}
    r = client.embeddings.create(model=want.model, input=texts, **kw)
    assert r.model == want.model and r.usage.prompt_tokens > 0
    for got, exp in zip(r.data, want.embeddings):
        assert np.allclose(got.embedding, exp.values, atol=1e-6)


def test_openai_wire_forms(url, stubs):
    want = stubs.embed.Embed(embed_pb2.EmbedRequest(texts=["wing stall"]), timeout=60)
    r = call(f"{url}/v1/embeddings", {"input": "wing stall", "encoding_format": "base64"})
    assert r.status == 200 and r.body["object"] == "list" and r.body["data"][0]["object"] == "embedding"
    vec = np.frombuffer(base64.b64decode(r.body["data"][0]["embedding"]), dtype="<f4")
    assert np.allclose(vec, want.embeddings[0].values, atol=1e-6)
    bad = call(f"{url}/v1/embeddings", {"input": "x", "dimensions": 7})
    assert bad.status == 400 and "384-dimensional" in bad.body["error"]["message"]
    ids = call(f"{url}/v1/embeddings", {"input": [[7592, 2088]]})  # the embedder's own ids: "hello world"
    hello = call(f"{url}/v1/embeddings", {"input": "hello world"})
    assert np.allclose(ids.body["data"][0]["embedding"], hello.body["data"][0]["embedding"], atol=1e-6)
    assert call(f"{url}/v1/embeddings", {"input": [[10**9]]}).status == 400


def test_tei_rerank_as_dify_and_llamaindex_send_it(url, grpc_scores):
    r = call(f"{url}/rerank", {"query": QUERY, "texts": DOCS, "return_text": True, "raw_scores": False,
                               "truncate": True})
    assert r.status == 200 and isinstance(r.body, list) and len(r.body) == len(DOCS)  # one score per input
    assert [x["score"] for x in r.body] == sorted((x["score"] for x in r.body), reverse=True)
    for x in r.body:
        assert x["text"] == DOCS[x["index"]] and x["score"] == pytest.approx(grpc_scores[x["index"]], rel=1e-6)
    raw = call(f"{url}/rerank", {"query": QUERY, "texts": DOCS, "raw_scores": True})
    assert "text" not in raw.body[0]
    for x in raw.body:  # logits: the sigmoid of each is the score
        assert 1 / (1 + np.exp(-x["score"])) == pytest.approx(grpc_scores[x["index"]], rel=1e-5)


def test_tei_info_and_embed(url, stubs):
    info = call(f"{url}/info")
    assert info.status == 200 and "reranker" in info.body["model_type"]
    assert info.body["max_client_batch_size"] == 256 and info.body["max_input_length"] > 0
    want = stubs.embed.Embed(embed_pb2.EmbedRequest(texts=["a", "b"]), timeout=60)
    r = call(f"{url}/embed", {"inputs": ["a", "b"]})
    assert r.status == 200 and np.allclose(r.body, [e.values for e in want.embeddings], atol=1e-6)
    one = call(f"{url}/embed", {"inputs": "a"})
    assert np.allclose(one.body[0], want.embeddings[0].values, atol=1e-6)
    assert call(f"{url}/health").status == 200


def test_documents_rerank_shape_leaves_document_out_unless_asked(url, grpc_scores):
    for path in ("/rerank", "/v1/rerank"):
        r = call(f"{url}{path}", {"query": QUERY, "documents": [{"text": d} for d in DOCS], "top_n": 2})
        assert r.status == 200 and r.body["usage"]["total_tokens"] > 0 and r.body["model"]
        assert all("document" not in x for x in r.body["results"]) and len(r.body["results"]) == 2
        asked = call(f"{url}{path}", {"query": QUERY, "documents": DOCS, "return_documents": True})
        assert [x["document"]["text"] for x in asked.body["results"]] == [DOCS[x["index"]] for x in
                                                                           asked.body["results"]]


def test_connect_unary_json_and_errors(url, grpc_scores):
    r = call(f"{url}/tandem.v1.RerankService/Rerank", {"query": QUERY, "documents": DOCS, "topN": 2})
    assert r.status == 200 and len(r.body["results"]) == 2
    assert r.body["results"][0]["relevanceScore"] == pytest.approx(max(grpc_scores.values()), rel=1e-6)
    assert "usage" in r.body and int(r.body["usage"]["tokens"]) > 0
    info = call(f"{url}/tandem.v1.InfoService/Info", {})
    assert info.status == 200 and info.body["limits"]["maxDocumentsPerRequest"] == 256
    bad = call(f"{url}/tandem.v1.RerankService/Rerank", {"query": "", "documents": DOCS})
    assert bad.status == 400 and bad.body["code"] == "invalid_argument" and "query is empty" in bad.body["message"]
    missing = call(f"{url}/tandem.v1.SearchService/Search", {"collection": "no_such_collection", "query": "x"})
    assert missing.status == 404 and missing.body["code"] == "not_found"
    late = call(f"{url}/tandem.v1.RerankService/Rerank", {"query": QUERY, "documents": DOCS * 40},
                headers={"connect-timeout-ms": "1"})
    assert late.status == 504 and late.body["code"] == "deadline_exceeded"
    proto = call(f"{url}/tandem.v1.RerankService/Rerank", raw=rerank_pb2.RerankRequest(
        query=QUERY, documents=DOCS).SerializeToString(), content_type="application/proto")
    assert proto.status == 200
    assert len(rerank_pb2.RerankResponse.FromString(proto.body).results) == len(DOCS)


def test_openapi_document_lists_every_route(url):
    doc = call(f"{url}/openapi.json")
    assert doc.status == 200
    paths = set(doc.body["paths"])
    assert {"/v2/rerank", "/v1/rerank", "/rerank", "/embed", "/v1/embeddings", "/info", "/health",
            "/tandem.v1.SearchService/Search", "/tandem.v1.IndexService/Upsert"} <= paths
    assert "/tandem.v1.IndexService/UpsertStream" not in paths  # client streaming stays on gRPC
    schemas = doc.body["components"]["schemas"]
    assert {"CohereV2Rerank", "CohereV2RerankResponse", "TeiRerank", "DocumentsRerank", "OpenAIEmbeddings",
            "OpenAIEmbeddingsResponse"} <= set(schemas)
    assert call(f"{url}/docs").status == 404  # no docs page that would load assets from a CDN
