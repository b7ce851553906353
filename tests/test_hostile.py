"""Hostile and malformed input: each request gets the right status and a clear message, and
the server stays healthy. Plus a hypothesis property test over every RPC."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf import struct_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tandem.v1 import document_pb2, embed_pb2, filter_pb2, index_pb2, info_pb2, rerank_pb2, search_pb2

COLL = "hostile"
Op = filter_pb2.Operator
INV, NF, RE = "INVALID_ARGUMENT", "NOT_FOUND", "RESOURCE_EXHAUSTED"


def nested(depth: int) -> struct_pb2.Struct:
    d: dict = {"leaf": 1}
    for _ in range(depth):
        d = {"k": d}
    s = struct_pb2.Struct()
    s.update(d)
    return s


def big_struct(n_bytes: int) -> struct_pb2.Struct:
    s = struct_pb2.Struct()
    s.update({f"k{i}": "x" * 1000 for i in range(n_bytes // 1000)})
    return s


def doc(id="a", text="text", metadata=None):
    return document_pb2.Document(id=id, text=text, metadata=metadata)


def cond(field, op, **value):
    return filter_pb2.Condition(field=field, op=op, value=struct_pb2.Value(**value))


def flt(*conds):
    return filter_pb2.Filter(all=list(conds))


S, U, R, E = "search", "upsert", "rerank", "embed"
CASES = [
    # (id, rpc, request, expected status, words in the message)
    ("empty query", R, rerank_pb2.RerankRequest(query="", documents=["d"]), INV, "query is empty"),
    ("whitespace query", R, rerank_pb2.RerankRequest(query=" \t\n ", documents=["d"]), INV, "query is empty"),
    ("whitespace search", S, search_pb2.SearchRequest(collection=COLL, query="\u3000 \n"), INV, "query is empty"),
    ("no documents", R, rerank_pb2.RerankRequest(query="q"), INV, "documents is empty"),
    ("10k documents", R, rerank_pb2.RerankRequest(query="q", documents=["d"] * 10_000), INV, "limit is 256"),
    ("10k upsert", U, index_pb2.UpsertRequest(collection=COLL, documents=[doc(str(i)) for i in range(10_000)]),
     INV, "limit is 256"),
    ("5 MB document", R, rerank_pb2.RerankRequest(query="q", documents=["x" * 5_000_000]), INV, "max_text_bytes"),
    ("5 MB upsert text", U, index_pb2.UpsertRequest(collection=COLL, documents=[doc(text="y" * 5_000_000)]),
     INV, "bytes; the limit"),
    ("NUL in query", R, rerank_pb2.RerankRequest(query="a\x00b", documents=["d"]), INV, "NUL"),
    ("NUL in search", S, search_pb2.SearchRequest(collection=COLL, query="\x00"), INV, "NUL"),
    ("NUL in id", U, index_pb2.UpsertRequest(collection=COLL, documents=[doc(id="a\x00")]), INV, "NUL"),
    ("NUL in text", U, index_pb2.UpsertRequest(collection=COLL, documents=[doc(text="t\x00")]), INV, "NUL"),
    ("huge top_n", R, rerank_pb2.RerankRequest(query="q", documents=["d"], top_n=2**32 - 1), INV, "top_n"),
    ("huge search top_n", S, search_pb2.SearchRequest(collection=COLL, query="q", top_n=2**32 - 1), INV, "top_n"),
    ("huge recall_k", S, search_pb2.SearchRequest(collection=COLL, query="q", recall_k=2**32 - 1), INV, "recall_k"),
    ("top_n over recall_k", S, search_pb2.SearchRequest(collection=COLL, query="q", top_n=20, recall_k=5), INV, "top_n"),
    ("unknown mode", S, search_pb2.SearchRequest(collection=COLL, query="q", mode=42), INV, "SearchMode"),
    ("unknown operator", S, search_pb2.SearchRequest(collection=COLL, query="q", filter=flt(
        filter_pb2.Condition(field="a", op=77, value=struct_pb2.Value(number_value=1)))), INV, "unknown operator"),
    ("filter injection in field", S, search_pb2.SearchRequest(collection=COLL, query="q", filter=flt(
        cond('a"] == 1 or id != "', Op.OPERATOR_EQ, number_value=1))), INV, "metadata key path"),
    ("filter function call", S, search_pb2.SearchRequest(collection=COLL, query="q", filter=flt(
        cond("json_contains(metadata", Op.OPERATOR_EQ, number_value=1))), INV, "metadata key path"),
    ("filter too deep path", S, search_pb2.SearchRequest(collection=COLL, query="q", filter=flt(
        cond(".".join(["a"] * 20), Op.OPERATOR_EQ, number_value=1))), INV, "levels"),
    ("filter huge list", S, search_pb2.SearchRequest(collection=COLL, query="q", filter=flt(filter_pb2.Condition(
        field="a", op=Op.OPERATOR_IN, value=struct_pb2.Value(list_value=struct_pb2.ListValue(
            values=[struct_pb2.Value(number_value=i) for i in range(1000)]))))), INV, "limit is 256"),
    ("filter null value", S, search_pb2.SearchRequest(collection=COLL, query="q", filter=flt(
        cond("a", Op.OPERATOR_EQ, null_value=0))), INV, "value must be"),
    ("filter struct value", S, search_pb2.SearchRequest(collection=COLL, query="q", filter=flt(
        cond("a", Op.OPERATOR_EQ, struct_value=nested(1)))), INV, "value must be"),
    ("filter infinite number", S, search_pb2.SearchRequest(collection=COLL, query="q", filter=flt(
        cond("a", Op.OPERATOR_LT, number_value=float("inf")))), INV, "finite"),
    ("filter long string", S, search_pb2.SearchRequest(collection=COLL, query="q", filter=flt(
        cond("a", Op.OPERATOR_EQ, string_value="s" * 5000))), INV, "longer than"),
    ("unknown collection search", S, search_pb2.SearchRequest(collection="nope_nope", query="q"), NF, "does not exist"),
    ("unknown collection upsert", U, index_pb2.UpsertRequest(collection="nope_nope", documents=[doc()]), NF,
     "does not exist"),
    ("collection name injection", S, search_pb2.SearchRequest(collection="a; drop", query="q"), INV, "valid name"),
    ("empty collection name", S, search_pb2.SearchRequest(collection="", query="q"), INV, "valid name"),
    ("duplicate ids", U, index_pb2.UpsertRequest(collection=COLL, documents=[doc("x"), doc("x")]), INV,
     "more than once"),
    ("empty id", U, index_pb2.UpsertRequest(collection=COLL, documents=[doc(id="")]), INV, "id is empty"),
    ("over-long id", U, index_pb2.UpsertRequest(collection=COLL, documents=[doc(id="i" * 513)]), INV, "limit is 512"),
    ("empty text", U, index_pb2.UpsertRequest(collection=COLL, documents=[doc(text="")]), INV, "text is empty"),
    ("metadata too deep", U, index_pb2.UpsertRequest(collection=COLL, documents=[doc(metadata=nested(20))]), INV,
     "levels deep"),
    ("metadata too large", U, index_pb2.UpsertRequest(collection=COLL, documents=[doc(metadata=big_struct(100_000))]),
     INV, "bytes as JSON"),
    ("unknown reranker", R, rerank_pb2.RerankRequest(query="q", documents=["d"], model="../../etc/passwd"), NF,
     "not loaded"),
    ("unknown embedder", E, embed_pb2.EmbedRequest(texts=["t"], model="x"), NF, "not loaded"),
    ("embed nothing", E, embed_pb2.EmbedRequest(), INV, "texts is empty"),
    ("embed empty text", E, embed_pb2.EmbedRequest(texts=["ok", ""]), INV, "texts[1] is empty"),
]


@pytest.fixture(scope="module")
def hostile(stubs):
    try:
        stubs.index.CreateCollection(index_pb2.CreateCollectionRequest(collection=COLL), timeout=30)
    except grpc.RpcError as e:
        assert e.code() == grpc.StatusCode.ALREADY_EXISTS
    stubs.index.Upsert(index_pb2.UpsertRequest(collection=COLL, documents=[doc(str(i), f"text {i}") for i in range(5)]),
                       timeout=60)
    return stubs


def _fn(stubs, rpc):
    return {S: stubs.search.Search, U: stubs.index.Upsert, R: stubs.rerank.Rerank, E: stubs.embed.Embed}[rpc]


def _healthy(stubs):
    h = health_pb2_grpc.HealthStub(stubs.channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert h.status == health_pb2.HealthCheckResponse.SERVING
    assert stubs.info.Info(info_pb2.InfoRequest(), timeout=5).models


@pytest.mark.parametrize("name, rpc, req, code, words", CASES, ids=[c[0] for c in CASES])
def test_hostile_input(hostile, name, rpc, req, code, words):
    with pytest.raises(grpc.RpcError) as e:
        _fn(hostile, rpc)(req, timeout=60)
    assert e.value.code().name == code, e.value.details()
    assert words in (e.value.details() or "")
    _healthy(hostile)


def test_message_over_the_grpc_limit(hostile, server):
    big = rerank_pb2.RerankRequest(query="q", documents=["z" * 200_000] * 360)  # ~72 MB > max_message_bytes (64 MiB)
    with grpc.insecure_channel(server.target, options=[("grpc.max_send_message_length", -1)]) as ch:
        from tandem.v1 import rerank_pb2_grpc

        with pytest.raises(grpc.RpcError) as e:
            rerank_pb2_grpc.RerankServiceStub(ch).Rerank(big, timeout=60)
    assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "larger than max" in e.value.details()
    _healthy(hostile)


def test_odd_unicode_is_served(hostile):
    texts = ["\u202eevil rtl", "zero\u200bwidth", "emoji \U0001f680\U0001f9ea", "combining e\u0301\u0301\u0301",
             "\ufeffbom", "ﷺ" * 50, "𝔘𝔫𝔦𝔠𝔬𝔡𝔢"]
    r = hostile.rerank.Rerank(rerank_pb2.RerankRequest(query="\u202e\u200b?", documents=texts), timeout=30)
    assert len(r.results) == len(texts)
    up = hostile.index.Upsert(index_pb2.UpsertRequest(collection=COLL, documents=[
        doc(f"u{i}\u200b\U0001f680", t) for i, t in enumerate(texts)]), timeout=60)
    assert up.upserted == len(texts)
    s = hostile.search.Search(search_pb2.SearchRequest(collection=COLL, query="emoji \U0001f680", recall_k=20,
                                                       mode=search_pb2.SEARCH_MODE_HYBRID), timeout=30)
    assert s.hits


def test_metadata_beyond_the_protobuf_nesting_limit(hostile):
    """A Struct nested past protobuf's parser limit cannot even be decoded; it must not be INTERNAL/UNKNOWN."""
    import struct as pystruct

    def varint(n):
        out = b""
        while True:
            b, n = n & 0x7F, n >> 7
            out += bytes([b | (0x80 if n else 0)])
            if not n:
                return out

    def ld(field, payload):  # a length-delimited field
        return varint(field << 3 | 2) + varint(len(payload)) + payload

    struct = ld(1, ld(1, b"k") + ld(2, b"\x11" + pystruct.pack("<d", 1.0)))  # Struct{"k": 1.0}
    for _ in range(80):  # Struct{"k": Value{struct_value: Struct{...}}}: 160+ levels, past the parser's limit
        struct = ld(1, ld(1, b"k") + ld(2, ld(5, struct)))
    raw = ld(1, COLL.encode()) + ld(2, ld(1, b"deep") + ld(2, b"text") + ld(3, struct))
    # The client library itself refuses to build this message, so send the bytes as they are.
    call = hostile.channel.unary_unary("/tandem.v1.IndexService/Upsert")
    with pytest.raises(grpc.RpcError) as e:
        call(raw, timeout=30)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (e.value.code(), e.value.details())
    assert "could not be decoded" in e.value.details()
    with pytest.raises(grpc.RpcError) as e:  # plain garbage too
        call(b"\xff\xff\xff\xff", timeout=30)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    _healthy(hostile)


# -- property test: random (valid and invalid) requests to every RPC --------------------------------------------

BAD = {grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL, grpc.StatusCode.UNIMPLEMENTED}
text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=40)
names = st.one_of(st.just(COLL), st.just("nope"), text)
values = st.one_of(st.none(), st.booleans(), st.floats(allow_nan=True), st.integers(-10**6, 10**6), text)


def _value(v):
    if v is None:
        return struct_pb2.Value(null_value=0)
    if isinstance(v, bool):
        return struct_pb2.Value(bool_value=v)
    if isinstance(v, (int, float)):
        return struct_pb2.Value(number_value=float(v))
    return struct_pb2.Value(string_value=v)


conditions = st.builds(lambda f, op, v: filter_pb2.Condition(field=f, op=op, value=_value(v)),
                       st.one_of(text, st.sampled_from(["year", "a.b", "title"])), st.integers(0, 12), values)
filters = st.builds(lambda a, b, c: filter_pb2.Filter(all=a, any=b, none=c), st.lists(conditions, max_size=3),
                    st.lists(conditions, max_size=2), st.lists(conditions, max_size=2))
u32 = st.one_of(st.integers(0, 200), st.integers(0, 2**32 - 1))

requests = st.one_of(
    st.builds(lambda q, d, n, raw, m: (R, rerank_pb2.RerankRequest(query=q, documents=d, top_n=n, raw_scores=raw,
                                                                   model=m)),
              text, st.lists(text, max_size=5), u32, st.booleans(), st.one_of(st.just(""), text)),
    st.builds(lambda c, q, n, k, f, m, r: (S, search_pb2.SearchRequest(collection=c, query=q, top_n=n, recall_k=k,
                                                                       filter=f, mode=m, rerank=r)),
              names, text, u32, u32, filters, st.integers(0, 5), st.booleans()),
    st.builds(lambda c, ds: (U, index_pb2.UpsertRequest(collection=c, documents=[doc(i, t) for i, t in ds])),
              names, st.lists(st.tuples(text, text), max_size=3)),
    st.builds(lambda t, m: (E, embed_pb2.EmbedRequest(texts=t, model=m)), st.lists(text, max_size=3),
              st.one_of(st.just(""), text)),
    st.builds(lambda c, ids: ("delete", index_pb2.DeleteRequest(collection=c, ids=ids)), names, st.lists(text, max_size=3)),
    st.builds(lambda c: ("describe", index_pb2.DescribeCollectionRequest(collection=c)), names),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(requests)
def test_fuzz_every_rpc(hostile, item):
    rpc, req = item
    fn = {"delete": hostile.index.Delete, "describe": hostile.index.DescribeCollection}.get(rpc) or _fn(hostile, rpc)
    try:
        resp = fn(req, timeout=60)
    except grpc.RpcError as e:
        assert e.code() not in BAD, (rpc, req, e.code(), e.details())
        assert e.details(), "every error carries a message"
        return
    _check_answer(rpc, req, resp)


def _check_answer(rpc, req, resp):
    """An OK answer must be a right one for what was sent: a request that should have been refused, or a
    wrong-shaped answer, fails here."""
    if rpc == R:
        assert req.query.strip() and req.documents, ("an empty query or no documents was accepted", req)
        want = min(req.top_n or len(req.documents), len(req.documents))
        got = [r.index for r in resp.results]
        assert len(got) == want and len(set(got)) == want and all(0 <= i < len(req.documents) for i in got)
        scores = [r.relevance_score for r in resp.results]
        assert scores == sorted(scores, reverse=True)
        assert req.raw_scores or all(0.0 <= x <= 1.0 for x in scores)
    elif rpc == S:
        assert req.collection == COLL and req.query.strip(), ("a search that should fail succeeded", req)
        assert len(resp.hits) <= (req.top_n or 10) and len(resp.hits) <= resp.recalled
    elif rpc == U:
        assert req.collection == COLL and req.documents, ("an upsert that should fail succeeded", req)
        assert all(d.id and d.text.strip() for d in req.documents)
        assert resp.upserted == len(req.documents)
    elif rpc == E:
        assert req.texts and all(t.strip() for t in req.texts), ("an empty text was embedded", req)
        assert len(resp.embeddings) == len(req.texts) and resp.dimension > 0
        for e in resp.embeddings:
            assert len(e.values) == resp.dimension and abs(sum(v * v for v in e.values) - 1.0) < 1e-3
    elif rpc == "delete":
        assert req.collection == COLL and req.ids and all(req.ids), ("a delete that should fail succeeded", req)
        assert resp.deleted == len(req.ids)
    else:
        assert req.collection == COLL and resp.info.collection == COLL


def test_server_healthy_after_fuzzing(hostile):
    _healthy(hostile)
