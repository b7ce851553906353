"""The console (/console) in a real browser: Debian's chromium driven by Playwright, against a real server with an
access policy and a real collection. What the page shows is compared with what gRPC answers for the same request.

Skipped, with the command that enables it, where no chromium is installed (`make browser` installs it).
Screenshots of each page land in test-output/console/ for a reviewer.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import grpc
import httpx
import pytest

from tandem.server.access.tokens import digest
from tandem.v1 import (document_pb2, index_pb2, index_pb2_grpc, info_pb2, info_pb2_grpc, rerank_pb2, rerank_pb2_grpc,
                       search_pb2, search_pb2_grpc)
from tests.support.data import load_beir
from tests.support.serverproc import REFERENCE_RERANKER

REPO = Path(__file__).resolve().parents[1]
SHOTS = REPO / "test-output" / "console"
CHROMIUM = os.environ.get("TANDEM_TEST_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
playwright = pytest.importorskip("playwright.sync_api", reason="pip install playwright (make setup installs it)")
pytestmark = pytest.mark.skipif(not CHROMIUM, reason="no chromium: `make browser` (apt-get install chromium) or set "
                                "TANDEM_TEST_CHROMIUM to a Chromium binary")

POLICY = f"""
[principals.admin]
tokens = ["{digest('admin-token')}"]
read = ["*"]
write = ["*"]
admin = ["*"]

[principals.reader]
tokens = ["{digest('reader-token')}"]
read = ["cranfield"]

[principals.writer]
tokens = ["{digest('writer-token')}"]
read = ["team_*"]
write = ["team_*"]
"""
DOCS = 60


def _md(token: str):
    return [("authorization", f"Bearer {token}")]


@pytest.fixture(scope="module")
def console(make_module_server, minilm_ce, tmp_path_factory):
    """A server with the policy above, `cranfield` (60 abstracts with metadata) and an empty `team_docs`."""
    policy = tmp_path_factory.mktemp("policy") / "policy.toml"
    policy.write_text(POLICY)
    s = make_module_server("--reranker", f"ce={minilm_ce}", *REFERENCE_RERANKER, "--auth-policy", str(policy),
                           "--warmup", "false")
    ch = s.channel()
    ix = index_pb2_grpc.IndexServiceStub(ch)
    corpus, queries = load_beir("cranfield", limit=DOCS)
    ix.CreateCollection(index_pb2.CreateCollectionRequest(collection="cranfield"), metadata=_md("admin-token"),
                        timeout=120)
    docs = [document_pb2.Document(id=d["_id"], text=f"{d['title']} {d['text']}".strip()) for d in corpus]
    for i, d in enumerate(docs):
        d.metadata.update({"n": i, "half": "first" if i < DOCS // 2 else "second"})
    ix.Upsert(index_pb2.UpsertRequest(collection="cranfield", documents=docs), metadata=_md("admin-token"),
              timeout=300)
    ix.CreateCollection(index_pb2.CreateCollectionRequest(collection="team_docs"), metadata=_md("admin-token"),
                        timeout=120)
    # A chunked collection: three long documents in passages of 32 tokens.
    ix.CreateCollection(index_pb2.CreateCollectionRequest(collection="chunked", chunking=index_pb2.Chunking(
        max_tokens=32, overlap_tokens=8)), metadata=_md("admin-token"), timeout=120)
    ix.Upsert(index_pb2.UpsertRequest(collection="chunked", documents=[
        document_pb2.Document(id=f"long{i}", text=" ".join(f"{d['title']}. {d['text']}" for d in corpus[i::3][:4]))
        for i in range(3)]), metadata=_md("admin-token"), timeout=300)
    yield s, ch, queries
    ch.close()


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        yield b
        b.close()


@pytest.fixture
def page(browser, console):
    """A fresh tab (its own sessionStorage) that records every request it makes; none may leave the server."""
    s = console[0]
    ctx = browser.new_context(viewport={"width": 1400, "height": 1000})
    p = ctx.new_page()
    p.set_default_timeout(60_000)
    p.requests = []
    p.on("request", lambda r: p.requests.append(r.url))
    p.server = s.http_url
    yield p
    ctx.close()
    foreign = [u for u in p.requests if not u.startswith(s.http_url + "/")]
    assert p.requests and not foreign, f"requests to other hosts: {foreign}"


def _open(page, token: str | None, hash_: str = ""):
    page.goto(f"{page.server}/console{hash_}")
    if token:
        page.wait_for_selector("#signin:not([hidden])")
        page.fill("#token", token)
        page.click("#signin-form button")
        page.wait_for_selector("#who:has-text('signed in as')")


def _shot(page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def _ids(page, column: str) -> list[str]:
    return page.eval_on_selector_all(f"#{column} li", "items => items.map(li => li.dataset.id)")


def _search_done(page) -> None:
    page.wait_for_function("() => document.querySelector('#s-timings').dataset.clientMs !== undefined")


def test_the_page_loads_from_the_server_alone_without_a_token(page):
    r = httpx.get(page.server + "/console")
    assert r.status_code == 200 and "text/html" in r.headers["content-type"]
    assert "default-src 'none'" in r.headers["content-security-policy"]
    sizes = []
    page.on("response", lambda resp: sizes.append(len(resp.body())) if resp.ok else None)
    page.goto(page.server + "/console")
    page.wait_for_selector("#signin:not([hidden])")  # no token: the sign-in prompt, nothing else
    assert page.is_hidden("#page-search") and page.is_hidden("#page-collections")
    total = sum(sizes)
    print(f"first load: {len(sizes)} responses, {total} bytes")
    assert 0 < total <= 300_000, total
    page.fill("#token", "not-a-token")
    page.click("#signin-form button")
    page.wait_for_selector("#signin-error:has-text('token')")  # the server's 401 message, shown where it was typed
    assert page.is_visible("#signin")
    _shot(page, "signin")


def test_search_shows_recall_and_reranked_as_grpc_answers_them(page, console):
    s, ch, queries = console
    stub = search_pb2_grpc.SearchServiceStub(ch)
    query = queries[0]["text"]
    _open(page, "admin-token")
    page.select_option("#s-collection", "cranfield")
    page.fill("#s-query", query)
    page.fill("#s-top", "5")
    page.fill("#s-recall", "20")
    page.click("#search-form button[type=submit]")
    _search_done(page)
    base = dict(collection="cranfield", query=query, top_n=5, recall_k=20)
    want_recall = stub.Search(search_pb2.SearchRequest(**base, rerank=False), metadata=_md("admin-token"), timeout=60)
    want = stub.Search(search_pb2.SearchRequest(**base), metadata=_md("admin-token"), timeout=60)
    assert want.reranked
    assert _ids(page, "s-recall-hits") == [h.id for h in want_recall.hits]
    assert _ids(page, "s-rerank-hits") == [h.id for h in want.hits]
    # Each reranked hit says where recall had it.
    first = page.inner_text("#s-rerank-hits li:first-child")
    assert f"recall #{want.hits[0].recall_rank + 1}" in first
    client_ms = float(page.get_attribute("#s-timings", "data-client-ms"))
    call_ms = float(page.get_attribute("#s-timings", "data-call-ms"))
    print(f"search: {call_ms:.1f} ms in the Search calls, {client_ms:.1f} ms from submit to results shown")
    assert call_ms <= client_ms
    _shot(page, "search")
    # The URL holds the whole query: opened in another tab it runs the same search.
    url = page.url
    assert "q=" in url and "recall_k=20" in url

    # Another mode and depth: the request changes, and the answer with it.
    page.select_option("#s-mode", "sparse")
    page.fill("#s-depth", "3")
    page.evaluate("() => { delete document.querySelector('#s-timings').dataset.clientMs; }")
    page.click("#search-form button[type=submit]")
    _search_done(page)
    assert "mode=sparse" in page.url and "depth=3" in page.url
    sparse = dict(base, mode=search_pb2.SEARCH_MODE_SPARSE)
    want_recall = stub.Search(search_pb2.SearchRequest(**sparse, rerank=False), metadata=_md("admin-token"), timeout=60)
    want = stub.Search(search_pb2.SearchRequest(**sparse, rerank_depth=3), metadata=_md("admin-token"), timeout=60)
    assert _ids(page, "s-recall-hits") == [h.id for h in want_recall.hits]
    assert _ids(page, "s-rerank-hits") == [h.id for h in want.hits]
    # Depth 3: past the third recall candidate, hits keep recall order.
    assert [h.recall_rank for h in want.hits[3:]] == sorted(h.recall_rank for h in want.hits[3:])

    other = page.context.new_page()
    other.goto(url)
    other.wait_for_selector("#signin:not([hidden])")  # a new tab signs in itself: the token stays in its tab
    other.close()


def test_a_chunked_collections_hits_mark_the_passage_that_matched(page, console):
    s, ch, queries = console
    _open(page, "admin-token", "#search?collection=chunked&q=heat+transfer+to+a+heated+plate&top_n=3&recall_k=3")
    _search_done(page)
    want = search_pb2_grpc.SearchServiceStub(ch).Search(search_pb2.SearchRequest(
        collection="chunked", query="heat transfer to a heated plate", top_n=3, recall_k=3),
        metadata=_md("admin-token"), timeout=60)
    assert _ids(page, "s-rerank-hits") == [h.id for h in want.hits]
    marked = page.eval_on_selector_all("#s-rerank-hits li mark", "m => m.map(x => x.textContent)")
    assert marked == [h.passage for h in want.hits] and all(marked)
    # The mark sits where the passage sits in the document: the text before it ends where the passage starts.
    first = want.hits[0]
    before = page.eval_on_selector("#s-rerank-hits li:first-child mark", "m => m.previousSibling.textContent")
    assert first.text[:first.passage_offset].endswith(before)


def test_a_filter_the_server_cannot_read_is_shown_beside_the_box(page, console):
    s, ch, queries = console
    _open(page, "admin-token", "#search?collection=cranfield&q=wing")
    _search_done(page)
    page.fill("#s-filter", "half = second; 7up = 1")
    page.click("#search-form button[type=submit]")
    page.wait_for_selector("#s-filter-error:not(:empty)")
    with pytest.raises(grpc.RpcError) as e:
        search_pb2_grpc.SearchServiceStub(ch).Search(search_pb2.SearchRequest(
            collection="cranfield", query="wing", filter_text="half = second; 7up = 1"), metadata=_md("admin-token"),
            timeout=60)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert page.inner_text("#s-filter-error") == e.value.details()
    _shot(page, "filter-error")
    # The page keeps working: a filter it can read narrows the hits to the second half.
    page.fill("#s-filter", "half = second")
    page.click("#search-form button[type=submit]")
    page.wait_for_function("() => document.querySelectorAll('#s-rerank-hits li').length > 0")
    assert page.inner_text("#s-filter-error") == ""
    ids = _ids(page, "s-rerank-hits")
    corpus, _ = load_beir("cranfield", limit=DOCS)
    second = {d["_id"] for d in corpus[DOCS // 2:]}
    assert ids and set(ids) <= second


def test_the_rerank_sandbox_scores_as_grpc_rerank(page, console):
    s, ch, queries = console
    corpus, _ = load_beir("cranfield", limit=6)
    docs = [d["text"][:300] for d in corpus]
    _open(page, "reader-token", "#rerank")
    page.fill("#r-query", queries[1]["text"])
    page.fill("#r-docs", "\n".join(docs))
    page.click("#rerank-form button[type=submit]")
    page.wait_for_selector("#r-results[data-scores]")
    shown = json.loads(page.get_attribute("#r-results", "data-scores"))
    want = rerank_pb2_grpc.RerankServiceStub(ch).Rerank(rerank_pb2.RerankRequest(
        query=queries[1]["text"], documents=docs, model="ce"), metadata=_md("reader-token"), timeout=60)
    assert [i for i, _ in shown] == [r.index for r in want.results]
    assert [sc for _, sc in shown] == pytest.approx([r.relevance_score for r in want.results], abs=1e-6)
    _shot(page, "rerank")


def test_each_principal_sees_only_what_it_may_do(page, console):
    _open(page, "reader-token", "#collections")
    page.wait_for_selector("#c-table tbody tr")
    assert page.eval_on_selector_all("#c-table tbody tr td:first-child", "c => c.map(x => x.textContent)") == [
        "cranfield"]
    assert page.is_hidden("#create-form") and page.is_hidden("#ingest") and page.locator("button.drop").count() == 0
    # A call the reader may not make (a URL naming another collection) shows the server's 403 message.
    page.goto(f"{page.server}/console#search?collection=team_docs&q=wing")
    page.reload()
    page.wait_for_selector("#s-error:not(:empty)")
    assert "may not read" in page.inner_text("#s-error") or "team_docs" in page.inner_text("#s-error")
    page.click("#signout")
    page.wait_for_selector("#signin:not([hidden])")

    _open(page, "writer-token", "#collections")
    page.wait_for_selector("#c-table tbody tr")
    assert page.eval_on_selector_all("#c-table tbody tr td:first-child", "c => c.map(x => x.textContent)") == [
        "team_docs"]
    assert page.is_hidden("#create-form") and page.is_visible("#ingest")
    assert page.eval_on_selector_all("#i-collection option", "o => o.map(x => x.value)") == ["team_docs"]
    assert page.locator("button.drop").count() == 0

    page.click("#signout")
    _open(page, "admin-token", "#collections")
    page.wait_for_function("() => document.querySelectorAll('button.drop').length === 3")
    assert page.is_visible("#create-form")
    _shot(page, "collections")


def test_export_saves_the_documents_grpc_export_holds(page, console, tmp_path):
    s, ch, _ = console
    _open(page, "reader-token", "#collections")
    page.wait_for_selector("button.export[data-collection=cranfield]")
    with page.expect_download() as d:
        page.click("button.export[data-collection=cranfield]")
    saved = tmp_path / "cranfield.jsonl"
    d.value.save_as(saved)
    assert d.value.suggested_filename == "cranfield.jsonl"
    got = {r["id"]: r for r in map(json.loads, saved.read_text().splitlines())}
    rows = [row for msg in index_pb2_grpc.IndexServiceStub(ch).Export(
        index_pb2.ExportRequest(collection="cranfield"), metadata=_md("reader-token"), timeout=120) for row in msg.rows]
    assert len(got) == len(rows) == DOCS
    for row in rows:
        assert got[row.id]["text"] == row.text and got[row.id]["metadata"] == json.loads(row.metadata_json)
    page.wait_for_selector(f"#c-status:has-text('exported {DOCS} documents')")


def test_a_jsonl_file_dropped_on_the_page_is_ingested_whole(page, console):
    s, ch, _ = console
    corpus, _ = load_beir("cisi", limit=25)
    lines = "\n".join(json.dumps({"id": d["_id"], "text": d["text"][:400], "metadata": {"k": i}})
                      for i, d in enumerate(corpus))
    _open(page, "writer-token", "#collections")
    page.wait_for_selector("#ingest:not([hidden])")
    # A real drop event carrying the file, as a browser makes one for a file dragged from the desktop.
    page.evaluate("""([name, text]) => {
        const dt = new DataTransfer();
        dt.items.add(new File([text], name, {type: 'application/jsonl'}));
        document.querySelector('#dropzone').dispatchEvent(new DragEvent('drop', {dataTransfer: dt, bubbles: true}));
    }""", ["docs.jsonl", lines])
    page.wait_for_selector("#i-status:has-text('done')", timeout=120_000)
    assert page.inner_text("#i-status").startswith("done: 25 of 25 documents acknowledged")
    info = index_pb2_grpc.IndexServiceStub(ch).DescribeCollection(
        index_pb2.DescribeCollectionRequest(collection="team_docs"), metadata=_md("admin-token"), timeout=60).info
    assert info.documents == 25
    assert float(page.get_attribute("#i-progress", "value")) == 25


def test_the_server_page_shows_models_limits_and_live_figures(page, console):
    s, ch, queries = console
    _open(page, "admin-token", "#server")
    page.wait_for_selector("#v-methods tbody tr")
    info = info_pb2_grpc.InfoServiceStub(ch).Info(info_pb2.InfoRequest(), metadata=_md("admin-token"), timeout=60)
    text = page.inner_text("#v-models")
    for m in info.models:
        assert m.name in text and f"{m.backend} {m.precision}" in text
    assert str(info.limits.max_recall_k) in page.inner_text("#v-limits")

    def searches() -> int:
        rows = page.eval_on_selector_all("#v-methods tbody tr", "rs => rs.map(r => [...r.cells].map(c => c.textContent))")
        return next((int(r[1]) for r in rows if r[0] == "/tandem.v1.SearchService/Search"), 0)

    before = searches()
    stub = search_pb2_grpc.SearchServiceStub(ch)
    for q in queries[:8]:
        stub.Search(search_pb2.SearchRequest(collection="cranfield", query=q["text"], top_n=3, recall_k=10),
                    metadata=_md("admin-token"), timeout=60)
    deadline = time.monotonic() + 60
    while searches() < before + 8 and time.monotonic() < deadline:
        page.wait_for_timeout(250)
    assert searches() >= before + 8
    assert page.locator("#v-charts figure").count() == 4
    _shot(page, "server")
