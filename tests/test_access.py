"""Access control over real transports: every RPC and every HTTP route against seven kinds of caller, tenants kept
apart, a policy reloaded under a running server, per-principal quotas, and no secret in any output.

The expected outcome of each call comes from a small oracle written here with plain sets (which collections each
caller may read, write or administer), not from the server's own glob matching.
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import ssl
import struct
import threading
import time
from pathlib import Path

import grpc
import httpx
import pytest

from tandem.server.access import policy as policies
from tandem.server.access.tokens import digest
from tandem.v1 import (document_pb2, embed_pb2, embed_pb2_grpc, index_pb2, index_pb2_grpc, info_pb2, info_pb2_grpc,
                       rerank_pb2, rerank_pb2_grpc, search_pb2, search_pb2_grpc)
from tests.support.metricsparse import value
from tests.support.pki import MESH_URI

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "deploy" / "auth-policy.example.toml"
OK, UNAUTH, DENIED = "OK", "UNAUTHENTICATED", "PERMISSION_DENIED"
HTTP_STATUS = {OK: 200, UNAUTH: 401, DENIED: 403}

# The example policy as shipped, plus another tenant and a mesh service known only by its certificate.
EXTRA = f"""
[principals.tenant_b]
tokens = ["{digest('tenant-b-token')}"]
read = ["tenant_b_*"]
write = ["tenant_b_*"]
admin = ["tenant_b_*"]

[principals.indexer]
mtls = ["uri:{MESH_URI}"]
read = ["*"]
write = ["team_*"]
admin = ["team_*"]
"""
ALL = "*"
# credential -> (bearer token or None, uses the mesh certificate, {scope: collections allowed, or ALL})
CREDENTIALS = {
    "reader": ("reader-token", False, {"read": ALL}),
    "writer": ("writer-token", False, {"read": {"team_a"}, "write": {"team_a"}}),
    "admin": ("admin-token", False, {"read": ALL, "write": ALL, "admin": ALL}),
    "tenant": ("tenant-b-token", False, {"read": {"tenant_b_docs"}, "write": {"tenant_b_docs"},
                                         "admin": {"tenant_b_docs"}}),
    "wrong": ("not-a-token", False, None),
    "none": (None, False, None),
    "mtls": (None, True, {"read": ALL, "write": {"team_a"}, "admin": {"team_a"}}),
}
SECRETS = ["reader-token", "writer-token", "admin-token", "tenant-b-token", "not-a-token"]


def expected(cred: str, needs: list[tuple[str, str | None]]) -> str:
    """The oracle: UNAUTHENTICATED for an unknown caller, PERMISSION_DENIED unless every (scope, collection) the
    call needs is granted (collection None: the scope on any collection)."""
    rights = CREDENTIALS[cred][2]
    if rights is None:
        return UNAUTH
    for scope, coll in needs:
        allowed = rights.get(scope)
        if not allowed or (coll is not None and allowed is not ALL and coll not in allowed):
            return DENIED
    return OK


def _md(cred: str):
    token = CREDENTIALS[cred][0]
    return [("authorization", f"Bearer {token}")] if token else None


@pytest.fixture(scope="module")
def secured(make_module_server, pki, tiny_ce, tmp_path_factory):
    """A server with TLS, required client certificates and the example policy (plus EXTRA)."""
    d, files = pki
    policy = tmp_path_factory.mktemp("policy") / "policy.toml"
    policy.write_text(EXAMPLE.read_text() + EXTRA)
    s = make_module_server("--reranker", f"tiny={tiny_ce}", "--warmup", "false", "--tls-cert", str(d / "server.crt"),
                           "--tls-key", str(d / "server.key"), "--tls-client-ca", str(d / "ca.crt"),
                           "--auth-policy", str(policy), start=False)
    s.start(wait=False)
    plain = grpc.ssl_channel_credentials(files["ca"][1], files["client"][0], files["client"][1])
    mesh = grpc.ssl_channel_credentials(files["ca"][1], files["mesh"][0], files["mesh"][1])
    s.wait_ready(creds=plain)
    channels = {False: grpc.secure_channel(s.target, plain), True: grpc.secure_channel(s.target, mesh)}
    https = {}
    for is_mesh, name in ((False, "client"), (True, "mesh")):
        ctx = ssl.create_default_context(cafile=str(d / "ca.crt"))
        ctx.load_cert_chain(str(d / f"{name}.crt"), str(d / f"{name}.key"))
        https[is_mesh] = httpx.Client(base_url=f"https://localhost:{s.http_port}", verify=ctx, timeout=60)
    # Collections the calls use, made by the admin.
    admin = _stubs(channels[False])
    md = _md("admin")
    for name in ("team_a", "tenant_b_docs", "other"):
        admin["index"].CreateCollection(index_pb2.CreateCollectionRequest(collection=name), metadata=md, timeout=60)
        admin["index"].Upsert(index_pb2.UpsertRequest(collection=name, documents=[
            document_pb2.Document(id=f"{name}-{i}", text=t) for i, t in enumerate(
                ["wing stall at low speed", "boundary layer flow", "heat transfer in nozzles"])]),
            metadata=md, timeout=60)
    yield s, channels, https
    for c in (*channels.values(), *https.values()):
        c.close()


def _stubs(ch) -> dict:
    return {"index": index_pb2_grpc.IndexServiceStub(ch), "search": search_pb2_grpc.SearchServiceStub(ch),
            "rerank": rerank_pb2_grpc.RerankServiceStub(ch), "embed": embed_pb2_grpc.EmbedServiceStub(ch),
            "info": info_pb2_grpc.InfoServiceStub(ch)}


def _status(fn) -> str:
    try:
        fn()
        return OK
    except grpc.RpcError as e:
        leaked = [x for x in SECRETS if x in (e.details() or "") or digest(x)[7:] in (e.details() or "")]
        assert not leaked, f"an error message holds a credential: {e.details()}"
        return e.code().name


def _record(stubs) -> index_pb2.ImportRequest:
    """An Import's first message: the record and one row of team_a, as an export of it sends them."""
    msgs = list(stubs["index"].Export(index_pb2.ExportRequest(collection="team_a"), metadata=_md("admin"),
                                      timeout=60))
    return index_pb2.ImportRequest(record=msgs[0].record, collection="team_a", into_existing=True,
                                   rows=[msgs[1].rows[0]])


def _grpc_calls(stubs, counter):
    """Every RPC of the contract: (method, what it needs, call(metadata)). Collection-changing calls use a fresh
    name each time, so the matrix can run them for every caller."""
    ix = stubs["index"]
    record = _record(stubs)

    def create(md):
        counter[0] += 1
        return ix.CreateCollection(index_pb2.CreateCollectionRequest(collection=f"team_a_new{counter[0]}"),
                                   metadata=md, timeout=60)

    def drop(md):
        counter[0] += 1
        name = f"team_a_old{counter[0]}"
        ix.CreateCollection(index_pb2.CreateCollectionRequest(collection=name), metadata=_md("admin"), timeout=60)
        return ix.DropCollection(index_pb2.DropCollectionRequest(collection=name), metadata=md, timeout=60)

    doc = document_pb2.Document(id="m1", text="flutter of a thin wing")
    return [
        ("/tandem.v1.RerankService/Rerank", [("read", None)], lambda md: stubs["rerank"].Rerank(
            rerank_pb2.RerankRequest(query="stall", documents=["wing stall"]), metadata=md, timeout=60)),
        ("/tandem.v1.EmbedService/Embed", [("read", None)], lambda md: stubs["embed"].Embed(
            embed_pb2.EmbedRequest(texts=["wing"]), metadata=md, timeout=60)),
        ("/tandem.v1.InfoService/Info", [("read", None)], lambda md: stubs["info"].Info(
            info_pb2.InfoRequest(), metadata=md, timeout=60)),
        ("/tandem.v1.SearchService/Search", [("read", "team_a")], lambda md: stubs["search"].Search(
            search_pb2.SearchRequest(collection="team_a", query="wing stall", top_n=2), metadata=md, timeout=60)),
        ("/tandem.v1.IndexService/ListCollections", [("read", None)], lambda md: ix.ListCollections(
            index_pb2.ListCollectionsRequest(), metadata=md, timeout=60)),
        ("/tandem.v1.IndexService/DescribeCollection", [("read", "team_a")], lambda md: ix.DescribeCollection(
            index_pb2.DescribeCollectionRequest(collection="team_a"), metadata=md, timeout=60)),
        ("/tandem.v1.IndexService/Export", [("read", "team_a")], lambda md: list(ix.Export(
            index_pb2.ExportRequest(collection="team_a"), metadata=md, timeout=60))),
        ("/tandem.v1.IndexService/Upsert", [("write", "team_a")], lambda md: ix.Upsert(
            index_pb2.UpsertRequest(collection="team_a", documents=[doc]), metadata=md, timeout=60)),
        ("/tandem.v1.IndexService/UpsertStream", [("write", "team_a")], lambda md: ix.UpsertStream(
            iter([index_pb2.UpsertStreamRequest(collection="team_a", documents=[doc])]), metadata=md, timeout=60)),
        ("/tandem.v1.IndexService/Delete", [("write", "team_a")], lambda md: ix.Delete(
            index_pb2.DeleteRequest(collection="team_a", ids=["nothing-here"]), metadata=md, timeout=60)),
        ("/tandem.v1.IndexService/Import", [("write", "team_a")], lambda md: ix.Import(
            iter([record]), metadata=md, timeout=60)),
        # team_a_newN / team_a_oldN fall under the same grants as team_a (team_*) for every caller.
        ("/tandem.v1.IndexService/CreateCollection", [("admin", "team_a")], create),
        ("/tandem.v1.IndexService/DropCollection", [("admin", "team_a")], drop),
    ]


def test_every_rpc_for_every_kind_of_caller(secured):
    s, channels, _ = secured
    counter = [0]
    stubs = {mesh: _stubs(ch) for mesh, ch in channels.items()}
    calls = _grpc_calls(stubs[False], counter)
    served = {f"/{svc.full_name}/{m.name}" for svc in _services() for m in svc.methods}
    assert {c[0] for c in calls} == served, "every RPC of the contract is in the matrix"
    mesh_calls = {c[0]: c for c in _grpc_calls(stubs[True], counter)}
    wrong = []
    for cred, (token, mesh, _) in CREDENTIALS.items():
        for method, needs, fn in calls:
            fn = mesh_calls[method][2] if mesh else fn
            want = expected(cred, needs)
            got = _status(lambda: fn(_md(cred)))
            if got != want:
                wrong.append(f"{cred} {method}: {got}, expected {want}")
    assert not wrong, "\n".join(wrong)
    # The metrics count every refusal by reason, and no credential ever becomes a label.
    m = s.metrics_text()
    denied = {r: value(m, "tandem_auth_denied_total", reason=r) for r in
              ("unknown_identity", "unknown_token", "scope", "collection")}
    # "none" still shows a client certificate (the server requires one), whose identity the policy does not name.
    assert denied["unknown_identity"] >= len(calls) and denied["unknown_token"] >= len(calls)
    assert denied["scope"] > 0 and denied["collection"] > 0


def _services():
    from tandem.server.app import SERVICES

    return SERVICES


def _http_calls():
    """Every route the HTTP server lists: (method, path, body, what it needs)."""
    conn = "/tandem.v1."
    return [
        ("POST", "/v2/rerank", {"query": "stall", "documents": ["wing stall"]}, [("read", None)]),
        ("POST", "/v1/rerank", {"query": "stall", "documents": ["wing stall"]}, [("read", None)]),
        ("POST", "/rerank", {"query": "stall", "documents": ["wing stall"]}, [("read", None)]),
        ("POST", "/embed", {"inputs": "wing"}, [("read", None)]),
        ("POST", "/v1/embeddings", {"input": "wing"}, [("read", None)]),
        ("GET", "/info", None, [("read", None)]),
        ("GET", "/v1/models", None, [("read", None)]),
        ("GET", "/openapi.json", None, []),
        ("GET", "/metrics", None, []),  # any principal, as /openapi.json
        ("GET", "/health", None, None),  # public: served to anyone (auth_exempt_health)
        ("POST", conn + "RerankService/Rerank", {"query": "stall", "documents": ["wing stall"]}, [("read", None)]),
        ("POST", conn + "EmbedService/Embed", {"texts": ["wing"]}, [("read", None)]),
        ("POST", conn + "InfoService/Info", {}, [("read", None)]),
        ("POST", conn + "SearchService/Search", {"collection": "team_a", "query": "wing", "topN": 2},
         [("read", "team_a")]),
        ("POST", conn + "IndexService/ListCollections", {}, [("read", None)]),
        ("POST", conn + "IndexService/DescribeCollection", {"collection": "team_a"}, [("read", "team_a")]),
        ("POST", conn + "IndexService/Upsert", {"collection": "team_a", "documents": [{"id": "h1", "text": "x"}]},
         [("write", "team_a")]),
        ("POST", conn + "IndexService/Delete", {"collection": "team_a", "ids": ["nothing-here"]},
         [("write", "team_a")]),
        ("POST", conn + "IndexService/Export", ("stream", {"collection": "team_a"}), [("read", "team_a")]),
        ("POST", conn + "IndexService/CreateCollection", "create", [("admin", "team_a")]),
        ("POST", conn + "IndexService/DropCollection", "drop", [("admin", "team_a")]),
    ]


def test_every_http_route_for_every_kind_of_caller(secured):
    s, channels, https = secured
    calls = _http_calls()
    listed = {(m.upper(), p) for p, ops in https[False].get(
        "/openapi.json", headers={"authorization": "Bearer admin-token"}).json()["paths"].items() for m in ops}
    assert {(m, p) for m, p, _, _ in calls} == listed | {("GET", "/openapi.json")}, "every route is in the matrix"
    ix, n, wrong = _stubs(channels[False])["index"], 0, []
    for cred, (token, mesh, _) in CREDENTIALS.items():
        headers = {"authorization": f"Bearer {token}"} if token else {}
        for method, path, body, needs in calls:
            if body in ("create", "drop"):
                n += 1
                name = f"team_a_h{n}"
                if body == "drop":
                    ix.CreateCollection(index_pb2.CreateCollectionRequest(collection=name), metadata=_md("admin"),
                                        timeout=60)
                body = {"collection": name}
            if isinstance(body, tuple):  # a Connect server stream: an enveloped request, the error at the end
                data = json.dumps(body[1]).encode()
                r = https[mesh].request(method, path, content=struct.pack(">BI", 0, len(data)) + data,
                                        headers={**headers, "content-type": "application/connect+json"})
                r = _stream_status(r)
            else:
                r = https[mesh].request(method, path, json=body, headers=headers)
            assert not [x for x in SECRETS if x in r.text], r.text  # no credential in any answer
            want = 200 if needs is None else HTTP_STATUS[expected(cred, needs)]
            if r.status_code != want:
                wrong.append(f"{cred} {method} {path}: {r.status_code} {r.text[:200]}, expected {want}")
            elif want == 403:
                assert "may not" in r.text or "lacks" in r.text, r.text  # it says which right is missing
    assert not wrong, "\n".join(wrong)


def _stream_status(r: httpx.Response) -> httpx.Response:
    """A Connect stream's outcome as a unary call's status: its end-of-stream error's code (HTTP 200 carries it)."""
    if r.status_code != 200:
        return r
    raw, at = r.content, 0
    while at + 5 <= len(raw):
        flags, n = struct.unpack(">BI", raw[at:at + 5])
        if flags & 2:
            error = json.loads(raw[at + 5:at + 5 + n]).get("error")
            if error:
                status = {"permission_denied": 403, "unauthenticated": 401, "not_found": 404}[error["code"]]
                return httpx.Response(status, text=error["message"])
            return httpx.Response(200, text="")
        at += 5 + n
    raise AssertionError(f"a Connect stream without its end: {raw[:300]!r}")


def test_tenants_see_and_touch_only_their_own_collections(secured):
    s, channels, https = secured
    st = _stubs(channels[False])
    listed = {}
    for cred in ("reader", "writer", "tenant", "admin"):
        listed[cred] = set(st["index"].ListCollections(index_pb2.ListCollectionsRequest(), metadata=_md(cred),
                                                       timeout=60).collections)
        r = https[False].post("/tandem.v1.IndexService/ListCollections", json={},
                              headers={"authorization": f"Bearer {CREDENTIALS[cred][0]}"})
        assert set(r.json().get("collections", [])) == listed[cred], cred  # the same answer over HTTP
    assert {"team_a", "tenant_b_docs", "other"} <= listed["admin"] == listed["reader"]
    assert listed["tenant"] == {"tenant_b_docs"}
    assert "team_a" in listed["writer"] and not listed["writer"] & {"tenant_b_docs", "other"}
    assert all(n.startswith("team_") for n in listed["writer"])
    # The tenant reaches its own collection, and nothing of another's, whichever field names it.
    md = _md("tenant")
    hits = st["search"].Search(search_pb2.SearchRequest(collection="tenant_b_docs", query="wing", top_n=3),
                               metadata=md, timeout=60)
    assert {h.id for h in hits.hits} <= {f"tenant_b_docs-{i}" for i in range(3)} and hits.hits
    for call in (lambda: st["search"].Search(search_pb2.SearchRequest(collection="team_a", query="wing"),
                                             metadata=md, timeout=60),
                 lambda: st["index"].DescribeCollection(index_pb2.DescribeCollectionRequest(collection="other"),
                                                        metadata=md, timeout=60),
                 lambda: st["index"].Upsert(index_pb2.UpsertRequest(collection="team_a", documents=[
                     document_pb2.Document(id="x", text="x")]), metadata=md, timeout=60),
                 lambda: st["index"].DropCollection(index_pb2.DropCollectionRequest(collection="team_a"),
                                                    metadata=md, timeout=60),
                 # A stream that starts in the tenant's collection and switches to another's is cut there.
                 lambda: st["index"].UpsertStream(iter([
                     index_pb2.UpsertStreamRequest(collection="tenant_b_docs", documents=[
                         document_pb2.Document(id="s1", text="ok")]),
                     index_pb2.UpsertStreamRequest(collection="team_a", documents=[
                         document_pb2.Document(id="s2", text="not ok")])]), metadata=md, timeout=60)):
        with pytest.raises(grpc.RpcError) as e:
            call()
        assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED, e.value.details()
        assert "tenant_b" in e.value.details()
    # A collection that does not exist gets the same answer as one that does: nothing leaks about others.
    with pytest.raises(grpc.RpcError) as e:
        st["index"].DescribeCollection(index_pb2.DescribeCollectionRequest(collection="team_nonexistent"),
                                       metadata=md, timeout=60)
    assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED
    admin = _stubs(channels[False])["index"]
    ids = {r.id for m in admin.Export(index_pb2.ExportRequest(collection="team_a"), metadata=_md("admin"),
                                      timeout=60) for r in m.rows}
    assert "s2" not in ids and "x" not in ids  # nothing of the refused writes landed


def test_admin_calls_and_denials_leave_an_audit_line(secured):
    s, channels, _ = secured
    ix = _stubs(channels[False])["index"]
    ix.CreateCollection(index_pb2.CreateCollectionRequest(collection="team_audit"), metadata=_md("admin"), timeout=60)
    with pytest.raises(grpc.RpcError):
        ix.DropCollection(index_pb2.DropCollectionRequest(collection="team_audit"), metadata=_md("writer"),
                          timeout=60)
    end = time.monotonic() + 30
    while True:
        lines = [json.loads(ln.split("tandem.audit: ", 1)[1]) for ln in s.log().splitlines() if "tandem.audit: " in ln]
        mine = [e for e in lines if e.get("collection") == "team_audit"]
        if len(mine) >= 2 or time.monotonic() > end:
            break
        time.sleep(0.2)
    created = [e for e in mine if e["method"].endswith("/CreateCollection")]
    refused = [e for e in mine if e["method"].endswith("/DropCollection")]
    assert created and created[0]["principal"] == "admin" and created[0]["outcome"] == "OK"
    assert refused and {k: v for k, v in refused[0].items() if k != "peer"} == {
        "event": "access", "transport": "grpc", "method": "/tandem.v1.IndexService/DropCollection",
        "principal": "writer", "collection": "team_audit", "outcome": "PERMISSION_DENIED", "reason": "scope"}
    assert refused[0]["peer"].startswith("ipv4:127.0.0.1:")
    assert any(e["principal"] is None and e["outcome"] == UNAUTH for e in lines)
    _no_secrets(s)


def _no_secrets(s, extra: tuple = ()) -> None:
    """No token, and no digest of one, in the server's log or its metrics."""
    text = s.log() + s.metrics_text()
    for secret in (*SECRETS, *extra):
        assert secret not in text and digest(secret) not in text and digest(secret)[7:] not in text, secret


# -- reload and quotas: a plain server of their own, on a policy file the test rewrites --------------------------

def _policy(**principals) -> str:
    out = []
    for name, spec in principals.items():
        out.append(f"[principals.{name}]")
        out += [f"{k} = {json.dumps(v)}" for k, v in spec.items()]
        out.append("")
    return "\n".join(out)


def _grant(token: str, **more) -> dict:
    return {"tokens": [digest(token)], "read": ["*"], "write": ["*"], "admin": ["*"], **more}


@pytest.fixture(scope="module")
def plain(make_module_server, tiny_ce, tmp_path_factory):
    d = tmp_path_factory.mktemp("plain")
    path = d / "policy.toml"
    path.write_text(_policy(alice=_grant("alice-token"), bob=_grant("bob-token"),
                            reader={"tokens": [digest("reader-token")], "read": ["*"]},
                            slow=_grant("slow-token", rps=1, burst=1), narrow=_grant("narrow-token", max_in_flight=1)))
    s = make_module_server("--reranker", f"tiny={tiny_ce}", "--warmup", "false", "--auth-policy", str(path))
    with s.channel() as ch:  # where _held_stream writes
        index_pb2_grpc.IndexServiceStub(ch).CreateCollection(index_pb2.CreateCollectionRequest(collection="held"),
                                                            metadata=[("authorization", "Bearer alice-token")],
                                                            timeout=60)
    yield s, path


def _info_status(ch, token: str) -> str:
    return _status(lambda: info_pb2_grpc.InfoServiceStub(ch).Info(
        info_pb2.InfoRequest(), metadata=[("authorization", f"Bearer {token}")], timeout=30))


def _until(predicate, timeout: float = 30.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.1)
    return False


def _held_stream(s, ch, token: str):
    """An UpsertStream that stays open until released: a call in flight (the server says so) for as long as the
    test wants."""
    release, first_sent = threading.Event(), threading.Event()
    out = {}

    def messages():
        yield index_pb2.UpsertStreamRequest(collection="held", documents=[document_pb2.Document(id="1", text="a")])
        first_sent.set()
        release.wait(120)
        yield index_pb2.UpsertStreamRequest(documents=[document_pb2.Document(id="2", text="b")])

    def run():
        try:
            out["reply"] = index_pb2_grpc.IndexServiceStub(ch).UpsertStream(
                messages(), metadata=[("authorization", f"Bearer {token}")], timeout=120)
        except grpc.RpcError as e:
            out["error"] = e

    t = threading.Thread(target=run)
    t.start()
    assert first_sent.wait(30) and _until(lambda: _in_flight(s, "/tandem.v1.IndexService/UpsertStream") >= 1)
    return release, t, out


def _in_flight(s, method: str) -> float:
    return value(s.metrics_text(), "tandem_requests_in_flight", method=method)


def test_policy_reloads_on_sighup_and_on_change_and_a_broken_file_keeps_the_old(plain):
    s, path = plain
    original = path.read_text()
    try:
        _reloads(s, path, original)
    finally:
        path.write_text(original)  # the quota test's principals, whatever happened here


def _reloads(s, path: Path, original: str) -> None:
    with s.channel() as ch:
        assert _info_status(ch, "alice-token") == OK and _info_status(ch, "carol-token") == UNAUTH
        # A call in flight when alice is removed still finishes as alice.
        release, t, out = _held_stream(s, ch, "alice-token")
        try:
            # SIGHUP: carol replaces alice.
            path.write_text(original.replace("[principals.alice]", "[principals.carol]").replace(
                digest("alice-token"), digest("carol-token")))
            s.proc.send_signal(signal.SIGHUP)
            assert _until(lambda: _info_status(ch, "carol-token") == OK)
            assert _info_status(ch, "alice-token") == UNAUTH
            assert "access policy reloaded (SIGHUP)" in s.log()
        finally:
            release.set()
            t.join(60)
        assert "error" not in out, out.get("error") and out["error"].details()
        assert out["reply"].upserted == 2
        # A broken file (a typo'd scope) is rejected, naming its line; the policy in force stays.
        broken = _policy(carol=_grant("carol-token"), dave={"tokens": [digest("dave-token")], "raed": ["*"]})
        path.write_text(broken)
        assert _until(lambda: "principals.dave: unknown key 'raed'" in s.log())
        line = next(ln for ln in s.log().splitlines() if "unknown key 'raed'" in ln)
        number = broken.splitlines().index('raed = ["*"]') + 1
        assert f"line {number}:" in line and "stays in force" in line
        s.proc.send_signal(signal.SIGHUP)  # a signal with the broken file: rejected again, still in force
        assert _until(lambda: s.log().count("unknown key 'raed'") >= 2)
        assert _info_status(ch, "carol-token") == OK and _info_status(ch, "dave-token") == UNAUTH
        path.write_text("[principals.carol\n")  # not even TOML
        assert _until(lambda: "not valid TOML" in s.log())
        assert _info_status(ch, "carol-token") == OK
        # A change on disk, with no signal, is picked up.
        path.write_text(original)
        assert _until(lambda: _info_status(ch, "alice-token") == OK)
        assert _info_status(ch, "carol-token") == UNAUTH
        assert "access policy reloaded (file changed)" in s.log()
        m = s.metrics_text()
        assert value(m, "tandem_auth_policy_reloads_total", outcome="rejected") >= 3
        assert value(m, "tandem_auth_policy_reloads_total", outcome="loaded") >= 2
    assert s.proc.poll() is None
    _no_secrets(s, ("carol-token", "dave-token", "alice-token", "bob-token"))


def test_quotas_hold_one_principal_while_others_are_served(plain):
    s, path = plain
    with s.channel() as ch:
        # rps = 1, burst = 1: of a burst of 30 concurrent calls, at most 1 + 1/s of the time they took pass.
        results, start = [], time.monotonic()
        threads = [threading.Thread(target=lambda: results.append(_info_status(ch, "slow-token"))) for _ in range(30)]
        for t in threads:
            t.start()
        bob = [_info_status(ch, "bob-token") for _ in range(5)]  # another principal, meanwhile
        for t in threads:
            t.join(60)
        elapsed = time.monotonic() - start
        assert bob == [OK] * 5
        assert results.count("RESOURCE_EXHAUSTED") >= 1
        assert 1 <= results.count(OK) <= 1 + elapsed + 1
        # The refusal names the quota and says when to come back (gRPC pushback; Retry-After on HTTP).
        call = info_pb2_grpc.InfoServiceStub(ch).Info.with_call
        for _ in range(3):
            try:
                call(info_pb2.InfoRequest(), metadata=[("authorization", "Bearer slow-token")], timeout=30)
            except grpc.RpcError as e:
                assert e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "rps" in e.details()
                trailers = dict(e.trailing_metadata())
                assert 0 < int(trailers["grpc-retry-pushback-ms"]) <= 1001 and trailers["retry-after"] == "1"
                break
        else:
            pytest.fail("three calls within a second all passed an rps=1 quota")
        for _ in range(5):  # five in a row at 1 per second: one at least is over
            limited = httpx.get(f"{s.http_url}/info", headers={"authorization": "Bearer slow-token"})
            if limited.status_code == 429:
                break
        assert limited.status_code == 429 and int(limited.headers["retry-after"]) >= 1 and "rps" in limited.text
        # The Python client waits as long as the server's pushback says, so three calls in a row all succeed,
        # spread over at least two refills of the bucket.
        from tandem import Client

        with Client(s.target, token="slow-token", timeout=30) as c:
            start = time.monotonic()
            assert all(c.info().models for _ in range(3))
            assert time.monotonic() - start >= 1.5
        # max_in_flight = 1: while one call is open, the next is refused; other principals are untouched.
        release, t, out = _held_stream(s, ch, "narrow-token")
        try:
            refused = _info_status(ch, "narrow-token")
            h = httpx.get(f"{s.http_url}/info", headers={"authorization": "Bearer narrow-token"})
            assert refused == "RESOURCE_EXHAUSTED"
            assert h.status_code == 429 and "max_in_flight" in h.text and h.headers["retry-after"] == "1"
            assert _info_status(ch, "bob-token") == OK
        finally:
            release.set()
            t.join(60)
        assert "reply" in out
        assert _until(lambda: _info_status(ch, "narrow-token") == OK)
    m = s.metrics_text()
    assert value(m, "tandem_quota_rejected_total", principal="slow", quota="rps") >= 2
    assert value(m, "tandem_quota_rejected_total", principal="narrow", quota="max_in_flight") >= 2


# -- shapes that bypassed other servers' key checks --------------------------------------------------------------

def _raw(s, method: str, path: str, headers: list[tuple[str, str]], body: bytes | None = None) -> tuple[int, bytes]:
    """One HTTP/1.1 request sent exactly as written: the path unnormalised, headers repeated as given."""
    import http.client

    host, port = s.http_url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        conn.putrequest(method, path, skip_accept_encoding=True)
        for k, v in headers:
            conn.putheader(k, v)
        if body is not None and not any(k.lower() in ("content-length", "transfer-encoding") for k, _ in headers):
            conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


RERANK = json.dumps({"query": "q", "documents": ["a wing"]}).encode()
CREATE = json.dumps({"collection": "bypassed"}).encode()
JSON = ("Content-Type", "application/json")
BOB, READER = ("Authorization", "Bearer bob-token"), ("Authorization", "Bearer reader-token")
CREATE_PATH = "/tandem.v1.IndexService/CreateCollection"
# (what is tried, method, path, headers, body, the statuses a person would expect). Every row reaches a route that
# needs a scope the caller lacks (none, or `reader` on an admin call); none may reach the engine.
BYPASS = [
    ("no token", "POST", "/v1/rerank", [JSON], RERANK, {401}),
    ("double slash", "POST", "//v1/rerank", [JSON], RERANK, {404}),
    ("trailing slash", "POST", "/v1/rerank/", [JSON], RERANK, {404}),
    ("dot segments", "POST", "/v1/../v1/rerank", [JSON], RERANK, {404}),
    ("dot segment", "POST", "/v1/./rerank", [JSON], RERANK, {404}),
    ("upper case", "POST", "/V1/RERANK", [JSON], RERANK, {404}),
    ("percent-encoded letter (decoded: the same route, the same check)", "POST", "/v1/%72erank", [JSON], RERANK,
     {401}),
    ("percent-encoded slash", "POST", "/v1%2Frerank", [JSON], RERANK, {401, 404}),
    ("a query string", "POST", "/v1/rerank?x=/health", [JSON], RERANK, {401}),
    ("HEAD on a POST route", "HEAD", "/v1/rerank", [], None, {405}),
    ("OPTIONS (a CORS preflight)", "OPTIONS", "/v1/rerank", [], None, {405}),
    ("GET on a POST route", "GET", "/v1/rerank", [], None, {405}),
    ("token in the query string", "POST", "/v1/rerank?access_token=bob-token", [JSON], RERANK, {401}),
    ("token as ?authorization=", "POST", "/v1/rerank?authorization=Bearer%20bob-token", [JSON], RERANK, {401}),
    ("token in another header", "POST", "/v1/rerank", [JSON, ("X-Api-Key", "bob-token")], RERANK, {401}),
    ("Basic scheme", "POST", "/v1/rerank", [JSON, ("Authorization", "Basic Ym9iLXRva2Vu")], RERANK, {401}),
    ("two Authorization headers, the good one first", "POST", "/v1/rerank",
     [JSON, BOB, ("Authorization", "Bearer nobody")], RERANK, {401}),
    ("two Authorization headers, the good one last", "POST", "/v1/rerank",
     [JSON, ("Authorization", "Bearer nobody"), BOB], RERANK, {401}),
    ("Transfer-Encoding and Content-Length together", "POST", "/v1/rerank",
     [JSON, ("Transfer-Encoding", "chunked"), ("Content-Length", "5")], b"0\r\n\r\n", {400}),
    ("Transfer-Encoding: chunked, identity", "POST", "/v1/rerank", [JSON, ("Transfer-Encoding", "chunked, identity")],
     b"0\r\n\r\n", {400, 501}),
    ("reader on an admin call", "POST", CREATE_PATH, [JSON, READER], CREATE, {403}),
    ("reader, Connect route in lower case", "POST", CREATE_PATH.lower(), [JSON, READER], CREATE, {404}),
    ("reader, Connect route with a trailing slash", "POST", CREATE_PATH + "/", [JSON, READER], CREATE, {404}),
    ("reader, Connect route with a double slash", "POST", CREATE_PATH.replace("/Create", "//Create"),
     [JSON, READER], CREATE, {404}),
    ("reader, Connect route percent-encoded", "POST", CREATE_PATH.replace("Create", "%43reate"), [JSON, READER],
     CREATE, {403}),
    ("reader, Connect route without the package", "POST", "/IndexService/CreateCollection", [JSON, READER], CREATE,
     {404}),
    ("reader, the gRPC content type", "POST", CREATE_PATH, [("Content-Type", "application/grpc"), READER],
     b"\x00\x00\x00\x00\x0a\x0a\x08bypassed", {400, 403, 415}),  # refused by content type first
    ("reader with an admin token second", "POST", CREATE_PATH, [JSON, READER, BOB], CREATE, {401}),
]


@pytest.mark.parametrize("what, method, path, headers, body, expected", BYPASS, ids=[b[0] for b in BYPASS])
def test_no_bypass_shape_reaches_the_engine_over_http(plain, what, method, path, headers, body, expected):
    s, _ = plain
    status, payload = _raw(s, method, path, headers, body)
    assert status in expected, (what, status, payload[:300])


def test_no_bypass_shape_reaches_the_engine_over_grpc(plain):
    s, _ = plain
    req = index_pb2.CreateCollectionRequest(collection="bypassed")
    with s.channel() as ch:
        index = index_pb2_grpc.IndexServiceStub(ch)
        shapes = [  # (what, metadata, the code a person would expect)
            ("no token", [], UNAUTH),
            ("reader", [("authorization", "Bearer reader-token")], "PERMISSION_DENIED"),
            ("reader, then an admin token", [("authorization", "Bearer reader-token"),
                                             ("authorization", "Bearer bob-token")], UNAUTH),
            ("an admin token, then nobody", [("authorization", "Bearer bob-token"),
                                             ("authorization", "Bearer nobody")], UNAUTH),
            ("token under another key", [("x-api-key", "bob-token")], UNAUTH),
            ("token as binary metadata", [("authorization-bin", b"Bearer bob-token")], UNAUTH),
            ("lower-case scheme (RFC 7235: case-insensitive)", [("authorization", "bearer reader-token")],
             "PERMISSION_DENIED"),
        ]
        for what, md, code in shapes:
            assert _status(lambda: index.CreateCollection(req, metadata=md, timeout=30)) == code, what
        # Upper-case keys do not exist on the wire (HTTP/2 lower-cases them); the client library refuses them.
        with pytest.raises(Exception):
            index.CreateCollection(req, metadata=[("Authorization", "Bearer bob-token")], timeout=30)
        # The method spelled differently is no method at all.
        odd = ch.unary_unary("/tandem.v1.IndexService/createcollection", request_serializer=lambda m:
                             m.SerializeToString(), response_deserializer=index_pb2.CreateCollectionResponse.FromString)
        assert _status(lambda: odd(req, metadata=[("authorization", "Bearer reader-token")], timeout=30)) == \
            "UNIMPLEMENTED"
        listed = index.ListCollections(index_pb2.ListCollectionsRequest(),
                                       metadata=[("authorization", "Bearer bob-token")], timeout=30)
    assert "bypassed" not in listed.collections  # neither transport created it
    status, _ = _raw(s, "POST", "/v1/rerank", [JSON, BOB], RERANK)
    assert status == 200  # the server serves the right caller after all of the above


# -- no server needed ----------------------------------------------------------------------------------------------

def test_the_example_policy_loads_as_shipped_and_stores_no_token():
    text = EXAMPLE.read_text()
    p = policies.load(EXAMPLE)
    by = {x.name: x for x in p.principals}
    assert set(by) == {"reader", "writer", "admin"}
    for name in by:
        assert p.by_digest[digest(f"{name}-token")] is by[name]
    assert by["reader"].may("read", "anything") and not by["reader"].holds("write")
    assert by["writer"].may("write", "team_x") and not by["writer"].may("write", "other")
    assert not by["writer"].holds("admin") and by["admin"].may("admin", "x")
    for line in text.splitlines():
        if line.lstrip().startswith("tokens"):
            assert re.fullmatch(r'tokens = \["sha256:[0-9a-f]{64}"\]  # \w+-token', line.strip())


def test_tandem_auth_new_token_prints_a_token_and_a_line_the_policy_accepts(tmp_path):
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "tandem.cli", "auth", "new-token", "svc"], capture_output=True,
                         text=True, timeout=60, cwd=REPO)
    assert out.returncode == 0, out.stderr
    token = re.search(r"^(tdm_\S{40,})$", out.stdout, re.M).group(1)
    policy = out.stdout[out.stdout.index("[principals.svc]"):]
    assert token not in policy
    (tmp_path / "p.toml").write_text(policy)
    p = policies.load(tmp_path / "p.toml")
    assert p.by_digest[digest(token)].name == "svc"
    bad = subprocess.run([sys.executable, "-m", "tandem.cli", "auth", "new-token", "no spaces"],
                         capture_output=True, text=True, timeout=60, cwd=REPO)
    assert bad.returncode == 2 and "principal name" in bad.stderr


def test_a_server_does_not_start_on_a_broken_policy(tmp_path):
    import subprocess
    import sys

    bad = tmp_path / "policy.toml"
    bad.write_text(_policy(ok=_grant("ok-token")) + '\n[principals.typo]\ntokens = ["sha256:abc"]\nread = ["*"]\n')
    out = subprocess.run([sys.executable, "-m", "tandem.server.cli", "serve", "--auth-policy", str(bad),
                          "--port", "0", "--http-port", "0", "--metrics-port", "-1",
                          "--milvus-uri", str(tmp_path / "m.db")], capture_output=True, text=True, timeout=120,
                         cwd=REPO)
    assert out.returncode == 2, out.stderr[-2000:]
    line = bad.read_text().splitlines().index('tokens = ["sha256:abc"]') + 1
    assert f"line {line}: principals.typo.tokens" in out.stderr and "tandem auth new-token" in out.stderr
